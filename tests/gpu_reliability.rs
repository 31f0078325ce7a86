//! Reliability of the CUDA backend (issue 8): `Send + Sync`, two backends on two streams
//! driven from two threads, 20 bitwise-identical runs, the NaN policy, buffers of another
//! context, and indices above 2^31 on a real allocation. Without a usable GPU each GPU
//! test prints `SKIP: <reason>`; `REDREG_REQUIRE_GPU=1` makes that a failure.
#![cfg(feature = "cuda")]

mod common;

use common::gpu;

use cudarc::driver::{CudaContext, CudaSlice};
use redreg::cuda::CudaBackend;
use redreg::testing::elements;
use redreg::{f16, reference, Output, Segments};
use redreg::{Backend, Element, Projection};
use std::sync::Arc;

fn up<T: Element>(b: &CudaBackend, x: &[T]) -> CudaSlice<T> {
    b.stream().clone_htod(x).unwrap()
}

/// Compiles anywhere: the backend may be shared across threads.
#[test]
fn backend_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CudaBackend>();
}

fn run_once(b: &CudaBackend, segs: &Segments, v: &[f32], g: &[f32], base: &[f32]) -> Vec<f32> {
    let (dv, dg) = (up(b, v), up(b, g));
    let mut out = up(b, base);
    b.project_out(
        segs,
        Projection::new(
            dv.slice(..),
            [dg.slice(..)],
            Output::Accumulate(out.slice_mut(..)),
        )
        .beta(1.25),
    )
    .unwrap();
    b.stream().clone_dtoh(&out).unwrap()
}

#[test]
fn two_backends_two_streams_two_threads() {
    let Some(b0) = gpu::backend("two_backends_two_streams_two_threads") else {
        return;
    };
    let segs = Arc::new(Segments::from_shapes(&redreg::testing::layouts::resnet18(3)).unwrap());
    let n = segs.total();
    let (v, g, base) = (
        elements::<f32>(n, 1, 1.0),
        elements::<f32>(n, 2, 1.0),
        elements::<f32>(n, 3, 1.0),
    );
    let want = run_once(b0, &segs, &v, &g, &base);
    let ctx = b0.context().clone();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (ctx, segs, v, g, base) = (
                ctx.clone(),
                segs.clone(),
                v.clone(),
                g.clone(),
                base.clone(),
            );
            std::thread::spawn(move || {
                let b = CudaBackend::from_stream(ctx.new_stream().unwrap()).unwrap();
                (0..5)
                    .map(|_| run_once(&b, &segs, &v, &g, &base))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for got in h.join().unwrap() {
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "a second stream/thread changed the bits"
            );
        }
    }
}

#[test]
fn twenty_runs_are_bitwise_identical() {
    let Some(b) = gpu::backend("twenty_runs_are_bitwise_identical") else {
        return;
    };
    let segs = Segments::from_lengths(&[5_000_011, 0, 3, 70_000]).unwrap();
    let n = segs.total();
    let (v, g, base) = (
        elements::<f32>(n, 4, 1.0),
        elements::<f32>(n, 5, 1.0),
        elements::<f32>(n, 6, 1.0),
    );
    let first = run_once(b, &segs, &v, &g, &base);
    for run in 1..20 {
        let again = run_once(b, &segs, &v, &g, &base);
        assert!(
            again
                .iter()
                .zip(&first)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "run {run} differs"
        );
    }
}

#[test]
fn nan_policy_matches_the_cpu() {
    let Some(b) = gpu::backend("nan_policy_matches_the_cpu") else {
        return;
    };
    let segs = Segments::from_lengths(&[1000, 1000, 5]).unwrap();
    let n = segs.total();
    let v = elements::<f32>(n, 7, 1.0);
    let mut g = elements::<f32>(n, 8, 1.0);
    g[10] = f32::NAN;
    let mut base = elements::<f32>(n, 9, 1.0);
    base[1500] = f32::INFINITY;
    let got = run_once(b, &segs, &v, &g, &base);
    let mut want = base.clone();
    reference::project_out(
        &segs,
        Projection::host(&v, &[&g], Output::Accumulate(&mut want)).beta(1.25),
    )
    .unwrap();
    assert!(
        got[..1000].iter().all(|x| x.is_nan()),
        "segment 0 must be poisoned"
    );
    assert!(got[1500].is_infinite() && got[1000..].iter().filter(|x| !x.is_finite()).count() == 1);
    for e in 1000..n {
        if e != 1500 {
            assert!(
                (got[e] - want[e]).abs() <= 1e-6 + 1e-6 * want[e].abs(),
                "[{e}] {} vs {}",
                got[e],
                want[e]
            );
        }
    }
}

#[test]
fn buffers_of_another_context_are_rejected() {
    let Some(b) = gpu::backend("buffers_of_another_context_are_rejected") else {
        return;
    };
    let devices = CudaContext::device_count().unwrap_or(1);
    if devices < 2 {
        // Not a missing GPU: this machine has one device, hence one primary context.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: buffers_of_another_context_are_rejected: needs 2 GPUs, found {devices}"
        );
        return;
    }
    let other = CudaBackend::new(1).unwrap();
    let segs = Segments::from_lengths(&[16]).unwrap();
    let v = up(&other, &[1f32; 16]);
    let mut out = up(b, &[0f32; 16]);
    let e = b
        .project_out(
            &segs,
            Projection::new(v.slice(..), [], Output::Accumulate(out.slice_mut(..))),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("another") || e.to_string().contains("context"),
        "{e}"
    );
}

/// One segment of 2^31 + 4099 f16 elements (≈ 4.3 GB per buffer, 3 buffers): zeros except a
/// tail beyond index 2^31 uploaded from the host, so the result is checked on the tail
/// against the oracle and the 64-bit index arithmetic is exercised for real.
#[test]
fn indices_above_2_pow_31() {
    let Some(b) = gpu::backend("indices_above_2_pow_31") else {
        return;
    };
    if std::env::var("REDREG_GPU_QUICK").is_ok_and(|v| v == "1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: indices_above_2_pow_31: REDREG_GPU_QUICK=1"
        );
        return;
    }
    let tail = 4099usize;
    let n = (1usize << 31) + tail;
    let segs = Segments::from_lengths(&[n]).unwrap();
    let (tv, tg, tb) = (
        elements::<f16>(tail, 10, 1.0),
        elements::<f16>(tail, 11, 1.0),
        elements::<f16>(tail, 12, 1.0),
    );
    let s = b.stream();
    let mut v = s.alloc_zeros::<f16>(n).unwrap();
    let mut g = s.alloc_zeros::<f16>(n).unwrap();
    let mut out = s.alloc_zeros::<f16>(n).unwrap();
    s.memcpy_htod(&tv, &mut v.slice_mut(n - tail..)).unwrap();
    s.memcpy_htod(&tg, &mut g.slice_mut(n - tail..)).unwrap();
    s.memcpy_htod(&tb, &mut out.slice_mut(n - tail..)).unwrap();
    b.project_out(
        &segs,
        Projection::new(
            v.slice(..),
            [g.slice(..)],
            Output::Accumulate(out.slice_mut(..)),
        )
        .beta(0.75),
    )
    .unwrap();
    let got: Vec<f16> = s.clone_dtoh(&out.slice(n - tail..)).unwrap();
    let head: Vec<f16> = s.clone_dtoh(&out.slice(..4096)).unwrap();
    assert!(
        head.iter().all(|x| x.to_f64() == 0.0),
        "the zero head must stay zero"
    );
    let tsegs = Segments::from_lengths(&[tail]).unwrap();
    let mut want = tb.clone();
    reference::project_out(
        &tsegs,
        Projection::host(&tv, &[&tg], Output::Accumulate(&mut want)).beta(0.75),
    )
    .unwrap();
    for (i, (x, y)) in got.iter().zip(&want).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        assert!(
            (x - y).abs() <= 1e-3 * (1.0 + y.abs()),
            "tail [{i}]: {x} vs {y}"
        );
    }
}
