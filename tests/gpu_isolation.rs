//! Each call owns its results and its buffers (issue 13, items 2 and 4): per-call ranks
//! under concurrent use of one backend and one layout; foreign buffers that overlap (the
//! kernels assume no aliasing) and bad foreign addresses are `Err`; statistics buffers of
//! another context are `Err`. SKIP convention: tests/common/gpu.rs.
#![cfg(feature = "cuda")]

mod common;

use common::gpu;

use cudarc::driver::{CudaContext, CudaSlice, DevicePtr};
use redreg::cuda::{CudaBackend, ForeignSlice};
use redreg::stats::{CudaStats, StatHandle, Stats, StatsPlan};
use redreg::{Backend, Output, Projection};
use redreg::{DType, ProjectOptions, Segments};
use std::sync::Arc;

fn wave(n: usize, f: f64) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f64 + 1.0) * f).sin() as f32)
        .collect()
}

/// Two threads share one backend and one layout; one projects onto two independent
/// vectors (rank 2 everywhere), the other onto a vector and its copy (rank 1). With
/// per-layout rank state in the backend, a thread could read the other's ranks.
#[test]
fn concurrent_calls_with_one_layout_keep_their_own_ranks() {
    let Some(b) = gpu::backend("concurrent_calls_with_one_layout_keep_their_own_ranks") else {
        return;
    };
    let segs = Arc::new(Segments::from_lengths(&[100; 64]).unwrap());
    let n = segs.total();
    let handles: Vec<_> = [2u32, 1]
        .into_iter()
        .map(|want| {
            let segs = segs.clone();
            std::thread::spawn(move || {
                let s = b.stream();
                let v: CudaSlice<f32> = s.clone_htod(&wave(n, 0.3)).unwrap();
                let g: CudaSlice<f32> = s.clone_htod(&wave(n, 0.7)).unwrap();
                let h: CudaSlice<f32> = if want == 2 {
                    s.clone_htod(&wave(n, 1.9)).unwrap()
                } else {
                    s.clone_htod(&wave(n, 0.7)).unwrap()
                };
                let mut out = s.alloc_zeros::<f32>(n).unwrap();
                for round in 0..20 {
                    let ranks = b
                        .project_out(
                            &segs,
                            Projection::new(
                                v.slice(..),
                                [g.slice(..), h.slice(..)],
                                Output::Write {
                                    base: None,
                                    out: out.slice_mut(..),
                                },
                            ),
                        )
                        .unwrap();
                    let got = ranks.to_vec().unwrap();
                    assert_eq!(got.len(), segs.len());
                    assert!(
                        got.iter().all(|&r| r == want),
                        "round {round}: expected rank {want} everywhere, got {:?}",
                        &got[..8]
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn overlapping_foreign_buffers_are_rejected() {
    let Some(b) = gpu::backend("overlapping_foreign_buffers_are_rejected") else {
        return;
    };
    let s = b.stream();
    let buf: CudaSlice<f32> = s.clone_htod(&wave(96, 0.5)).unwrap();
    let base = buf.device_ptr(s).0;
    let segs = Segments::from_lengths(&[32]).unwrap();
    // SAFETY: every wrapped range lies inside `buf` (96 f32), which outlives the slices.
    let (v, g, mut same, mut half, mut apart) = unsafe {
        (
            ForeignSlice::<f32>::new(b, base, 32).unwrap(),
            ForeignSlice::<f32>::new(b, base + 128, 32).unwrap(),
            ForeignSlice::<f32>::new(b, base, 32).unwrap(),
            ForeignSlice::<f32>::new(b, base + 64, 32).unwrap(),
            ForeignSlice::<f32>::new(b, base + 256, 32).unwrap(),
        )
    };
    let opts = ProjectOptions::default();
    let run = |out: &mut ForeignSlice<f32>| {
        b.project_out(
            &segs,
            Projection::new(
                v.view(),
                [g.view()],
                Output::Write {
                    base: None,
                    out: out.view_mut(),
                },
            )
            .opts(opts),
        )
        .map(|r| r.to_vec().unwrap())
    };
    let e = run(&mut same).unwrap_err().to_string();
    assert!(e.contains("overlaps `v`"), "{e}");
    // Half of it overlaps v, the other half g.
    let e = run(&mut half).unwrap_err().to_string();
    assert!(e.contains("overlaps"), "{e}");
    // Adjacent, not overlapping: accepted.
    assert_eq!(run(&mut apart).unwrap(), vec![1]);
    // In place, the basis vectors must be distinct too.
    let (mut b0, mut b1) = unsafe {
        (
            ForeignSlice::<f32>::new(b, base, 32).unwrap(),
            ForeignSlice::<f32>::new(b, base, 32).unwrap(),
        )
    };
    let e = b
        .orthonormalize(&segs, &mut [b0.view_mut(), b1.view_mut()], 1e-7)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaps"), "{e}");
    b.synchronize().unwrap();
    drop(buf);
}

#[test]
fn bad_foreign_addresses_are_errors() {
    let Some(b) = gpu::backend("bad_foreign_addresses_are_errors") else {
        return;
    };
    // SAFETY: each call fails its argument checks before wrapping anything.
    unsafe {
        assert!(ForeignSlice::<f32>::new(b, 0, 4).is_err(), "null");
        assert!(
            ForeignSlice::<f32>::new(b, 0x1002, 4).is_err(),
            "misaligned"
        );
        let e = ForeignSlice::<f32>::new(b, u64::MAX - 3, 2).unwrap_err();
        assert!(e.to_string().contains("address space"), "{e}");
    }
}

#[test]
fn stats_buffers_of_another_context_are_rejected() {
    let Some(b) = gpu::backend("stats_buffers_of_another_context_are_rejected") else {
        return;
    };
    let devices = CudaContext::device_count().unwrap_or(1);
    if devices < 2 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: stats_buffers_of_another_context_are_rejected: needs 2 GPUs, found {devices}"
        );
        return;
    }
    let other = CudaBackend::new(1).unwrap();
    let mut plan = StatsPlan::new();
    let h = plan.sq_diff_mean("x", DType::F32, 1, 16).unwrap();
    let mut stats = CudaStats::new(b, &plan).unwrap();
    let mine: CudaSlice<f32> = b.stream().clone_htod(&[1f32; 16]).unwrap();
    let theirs: CudaSlice<f32> = other.stream().clone_htod(&[1f32; 16]).unwrap();
    let e = stats
        .run(&mut [h.bind((&mine, &theirs))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("context"), "{e}");
    // The same statistic on this device's buffers runs.
    let r = stats.run(&mut [h.bind((&mine, &mine))]).unwrap();
    assert_eq!(r.get(h).unwrap(), 0.0);
}
