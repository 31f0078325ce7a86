//! Launch counts of the projection, asserted on the emulated CUDA driver (tests/emu), which
//! exports `emu_counters` (launches, blocks, threads, fiber switches) from its
//! `libcuda.so.1`. NVIDIA's driver has no such symbol: there the test prints `SKIP` and
//! passes (`REDREG_REQUIRE_EMU=1` makes that skip fail; scripts/emu-check.sh fails on any
//! SKIP anyway). See tests/common/gpu.rs for the SKIP convention.
//!
//! One `#[test]` only: the counters are process-wide, a second test running in parallel
//! would add its launches.
#![cfg(feature = "cuda")]

mod common;

use common::emu::Counters;
use common::gpu;

use cudarc::driver::{CudaSlice, CudaView};
use redreg::cuda::CudaBackend;
use redreg::testing::elements;
use redreg::{f16, reference, Beta, Output, ProjectOptions, Segments};
use redreg::{Backend, Element, Projection};

/// 120 tensors: empty ones, small ones, ones of several chunks (RR_CHUNK = 16384), none shorter
/// than 40 (so that the split form, which does not cap ranks at the length, must give
/// the same bits as project_out).
fn layout() -> Segments {
    let lens: Vec<usize> = (0..120)
        .map(|i| match i {
            _ if i % 23 == 0 => 0,
            _ if i % 40 == 7 => 16384 * 2 + 3 + i,
            _ => 40 + (i * 7919) % 1500,
        })
        .collect();
    Segments::from_lengths(&lens).unwrap()
}

fn download<T: Element>(b: &CudaBackend, x: &CudaSlice<T>) -> Vec<T> {
    b.stream().clone_dtoh(x).unwrap()
}

/// project_out (alpha·base + beta·(v − Pv)) on `segs` with k basis vectors: checks the
/// launch counts of project_out (2 for k >= 1, 1 for k = 0), partials (1) and apply (2; 1
/// for k = 0), the results against the f64 reference, and that the split form (whose solve
/// is project_finish's) gives the same bits as the folded one.
fn check<T: Element>(c: &Counters, b: &CudaBackend, segs: &Segments, k: usize) {
    let n = segs.total();
    let seed = 17 + k as u64;
    let v: Vec<T> = elements(n, seed, 1.0);
    let basis: Vec<Vec<T>> = (0..k)
        .map(|i| elements(n, seed + 1 + i as u64, 1.0))
        .collect();
    let base: Vec<T> = elements(n, seed + 100, 1.0);
    let (alpha, beta, opts) = (0.5, Beta::Scalar(1.25), ProjectOptions::default());
    let what = format!("{} k={k}", T::DTYPE);

    let brefs: Vec<&[T]> = basis.iter().map(|x| x.as_slice()).collect();
    let mut out_ref = base.clone();
    let out_spec = Output::Write {
        base: Some(&base[..]),
        out: &mut out_ref[..],
    };
    let ranks_ref = reference::project_out(
        segs,
        Projection::host(&v, &brefs, out_spec)
            .alpha(alpha)
            .beta(beta)
            .opts(opts),
    )
    .unwrap();

    let s = b.stream();
    let dv = s.clone_htod(&v).unwrap();
    let dbasis: Vec<CudaSlice<T>> = basis.iter().map(|x| s.clone_htod(x).unwrap()).collect();
    let dbase = s.clone_htod(&base).unwrap();
    let mut dout = s.alloc_zeros::<T>(n).unwrap();
    let mut dout2 = s.alloc_zeros::<T>(n).unwrap();
    let bviews: Vec<CudaView<'_, T>> = dbasis.iter().map(|x| x.as_view()).collect();
    let (vview, base_view) = (dv.as_view(), dbase.as_view());
    // The first call of a layout creates its workspace (copies, no launch): warm it up.
    let mut scratch = s.alloc_zeros::<T>(n).unwrap();
    let partials_of = |scratch: &mut CudaSlice<T>| {
        let views = dbasis.iter().map(|x| x.as_view());
        let out = Output::Write {
            base: None,
            out: scratch.as_view_mut(),
        };
        b.partials(segs, &Projection::new(dv.as_view(), views, out))
    };
    partials_of(&mut scratch).unwrap();

    for round in 0..2 {
        let before = c.launches();
        let ranks = {
            let mut o = dout.as_view_mut();
            let out = Output::Write {
                base: Some(base_view.slice(..)),
                out: o.slice_mut(..),
            };
            b.project_out(
                segs,
                Projection::new(vview.slice(..), bviews.iter().map(|x| x.slice(..)), out)
                    .alpha(alpha)
                    .beta(beta)
                    .opts(opts),
            )
            .unwrap()
        };
        s.synchronize().unwrap();
        let launched = c.launches() - before;
        let want = if k == 0 { 1 } else { 2 };
        assert_eq!(
            launched, want,
            "{what} round {round}: project_out made {launched} launches"
        );
        let got = download(b, &dout);
        let ranks = ranks.to_vec().unwrap();
        assert_eq!(ranks, ranks_ref, "{what}: ranks vs the f64 reference");
        let (atol, rtol) = match T::DTYPE {
            redreg::DType::F32 => (2e-5, 1e-5),
            redreg::DType::F16 => (4e-3, 2e-3),
            redreg::DType::BF16 => (3e-2, 1.6e-2),
        };
        for (i, (g, r)) in got.iter().zip(&out_ref).enumerate() {
            let (g, r) = (g.to_f64(), r.to_f64());
            assert!(
                (g - r).abs() <= atol + rtol * r.abs(),
                "{what}: element {i}: gpu {g} vs reference {r}"
            );
        }
    }

    // The split form: partials (1 launch, the fold without solve) then apply (project_finish
    // SOLVE + pass 2). The same partials and the same solve arithmetic: the same bits.
    let stride = redreg::testing::solve::partial_stride(k);
    if k > 0 {
        // Leave other values in the workspace's per-segment partials (apply uploads its
        // partials there), also at the empty segments, which no block of pass 1 reduces.
        let poison = redreg::Partials::from_vec(k, segs.len(), vec![1.0; segs.len() * stride]);
        let mut o = dout2.as_view_mut();
        let out = Output::Write {
            base: None,
            out: o.slice_mut(..),
        };
        b.apply(
            segs,
            &poison.unwrap(),
            Projection::new(vview.slice(..), bviews.iter().map(|x| x.slice(..)), out)
                .alpha(alpha)
                .beta(beta)
                .opts(opts),
        )
        .unwrap();
    }
    let before = c.launches();
    let p = partials_of(&mut scratch).unwrap();
    assert_eq!(
        c.launches() - before,
        if k == 0 { 0 } else { 1 },
        "{what}: partials launches"
    );
    let before = c.launches();
    let ranks2 = {
        let mut o = dout2.as_view_mut();
        let out = Output::Write {
            base: Some(base_view.slice(..)),
            out: o.slice_mut(..),
        };
        b.apply(
            segs,
            &p,
            Projection::new(vview.slice(..), bviews.iter().map(|x| x.slice(..)), out)
                .alpha(alpha)
                .beta(beta)
                .opts(opts),
        )
        .unwrap()
    };
    s.synchronize().unwrap();
    assert_eq!(
        c.launches() - before,
        if k == 0 { 1 } else { 2 },
        "{what}: apply launches"
    );
    let bits = |x: &[T]| x.iter().map(|e| e.to_f64().to_bits()).collect::<Vec<u64>>();
    assert!(
        bits(&download(b, &dout2)) == bits(&download(b, &dout)),
        "{what}: the split form differs from project_out"
    );
    assert_eq!(
        ranks2.to_vec().unwrap(),
        ranks_ref,
        "{what}: split-form ranks"
    );
    // Empty segments have zero partials (no block reduces them).
    let ps = p.as_slice();
    for sg in (0..segs.len()).filter(|&sg| segs.seg_len(sg) == 0) {
        assert!(
            ps[sg * stride..(sg + 1) * stride].iter().all(|&x| x == 0.0),
            "{what}: empty segment {sg} has nonzero partials"
        );
    }
}

#[test]
fn project_out_launch_count_120_tensors() {
    let Some(b) = gpu::backend("project_out_launch_count_120_tensors") else {
        return;
    };
    let c = match Counters::open() {
        Ok(c) => c,
        Err(reason) => {
            gpu::skip(
                "project_out_launch_count_120_tensors",
                "REDREG_REQUIRE_EMU",
                &reason,
            );
            return;
        }
    };
    let segs = layout();
    assert_eq!(segs.len(), 120);
    for k in [0, 1, 3, 8] {
        check::<f32>(&c, b, &segs, k);
    }
    check::<f16>(&c, b, &segs, 2);
    controller_step(&c, b, &segs);
    orthonormalize(&c, b, &segs);
    tensor_list(&c, b, &segs);
}

/// The RedReg step over 120 tensors, each its own allocation (`project_list` with
/// `Projection::drift`, k = 2): 2 launches per call whatever the tensor count; the pointer
/// table is uploaded with one host-to-device copy on the first call, none when the same
/// tensors come again, one when a tensor moved; the result equals the flat call on the
/// packed values bit for bit.
fn tensor_list(c: &Counters, b: &CudaBackend, segs: &Segments) {
    use redreg::TensorList;
    let s = b.stream();
    let n = segs.total();
    let flat = |seed: u64| elements::<f32>(n, seed, 1.0);
    let (theta, theta0, extra, g0) = (flat(61), flat(62), flat(63), flat(64));
    let per_tensor = |x: &[f32]| -> Vec<CudaSlice<f32>> {
        segs.iter().map(|r| s.clone_htod(&x[r]).unwrap()).collect()
    };
    let (tt, tt0, te) = (per_tensor(&theta), per_tensor(&theta0), per_tensor(&extra));
    let mut grads = per_tensor(&g0);
    let mut moved = per_tensor(&g0);
    fn views(x: &[CudaSlice<f32>]) -> TensorList<CudaView<'_, f32>> {
        x.iter().map(|t| t.slice(..)).collect()
    }
    let call = |grads: &mut Vec<CudaSlice<f32>>| -> (u64, u64) {
        let extra = [views(&te)];
        let out: TensorList<_> = grads.iter_mut().map(|t| t.slice_mut(..)).collect();
        let p = Projection::drift(views(&tt), views(&tt0), extra, out).beta(0.5);
        let (l0, h0) = (c.launches(), c.htod());
        let ranks = b.project_list(segs, p).unwrap();
        b.synchronize().unwrap();
        let counts = (c.launches() - l0, c.htod() - h0);
        assert_eq!(ranks.to_vec().unwrap().len(), 120);
        counts
    };
    // (The layout's workspace exists already: check() used it.)
    assert_eq!(
        call(&mut grads),
        (2, 1),
        "first list call: launches, uploads"
    );
    let mut again = per_tensor(&g0);
    assert_eq!(
        call(&mut again),
        (2, 1),
        "a tensor list at new addresses: one upload"
    );
    assert_eq!(
        call(&mut again),
        (2, 0),
        "the same tensors again: no upload"
    );
    assert_eq!(call(&mut moved), (2, 1), "moved tensors: one upload");

    // The same step on the packed values, flat: the same bits.
    let (dt, dt0, de) = (
        s.clone_htod(&theta).unwrap(),
        s.clone_htod(&theta0).unwrap(),
        s.clone_htod(&extra).unwrap(),
    );
    let mut dg = s.clone_htod(&g0).unwrap();
    let extra_flat = [de.slice(..)];
    let p = Projection::drift(dt.slice(..), dt0.slice(..), extra_flat, dg.slice_mut(..)).beta(0.5);
    b.project_out(segs, p).unwrap();
    let want = download(b, &dg);
    let got: Vec<f32> = grads.iter().flat_map(|t| download(b, t)).collect();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "tensor list vs flat: results differ"
    );
}

/// `orthonormalize` (CholQR2) is 3 launches for any number of tensors: two Gram passes,
/// each with its per-segment finish folded in, and the apply; orthonormal results.
fn orthonormalize(c: &Counters, b: &CudaBackend, segs: &Segments) {
    let n = segs.total();
    for k in [1usize, 3] {
        let mut bufs: Vec<CudaSlice<f32>> = (0..k)
            .map(|i| {
                b.stream()
                    .clone_htod(&elements::<f32>(n, 40 + i as u64, 1.0))
                    .unwrap()
            })
            .collect();
        let before = c.launches();
        let ranks = {
            let mut views: Vec<_> = bufs.iter_mut().map(|x| x.slice_mut(..)).collect();
            b.orthonormalize(segs, &mut views, 1e-7).unwrap()
        };
        b.synchronize().unwrap();
        let launched = c.launches() - before;
        assert_eq!(launched, 3, "orthonormalize k={k}: {launched} launches");
        let ranks = ranks.to_vec().unwrap();
        let host: Vec<Vec<f32>> = bufs.iter().map(|x| download(b, x)).collect();
        for (s, r) in segs.iter().enumerate() {
            let want = segs.seg_len(s).min(k) as u32;
            assert_eq!(ranks[s], want, "orthonormalize k={k} segment {s}: rank");
            for (i, q) in host.iter().take(want as usize).enumerate() {
                let norm: f64 = q[r.clone()].iter().map(|&x| (x as f64).powi(2)).sum();
                assert!(
                    (norm - 1.0).abs() < 1e-5,
                    "k={k} seg {s} q{i}: |q|^2 = {norm}"
                );
            }
        }
    }
}

/// The controller's step on CUDA (the fused drift projection): 2 launches over 120 tensors
/// when a modality is suppressed, none when the gate is closed; no other launch (no drift
/// kernel, no copy kernel).
fn controller_step(c: &Counters, b: &CudaBackend, segs: &Segments) {
    use redreg::controller::StepInputs;
    use redreg::controller::{Config, Controller, DeviceEncoder, JointBasis, Redundancy};
    let n = segs.total();
    let s = b.stream();
    let up = |seed: u64| s.clone_htod(&elements::<f32>(n, seed, 1.0)).unwrap();
    let (ta, t0a, tv, t0v) = (up(1), up(2), up(3), up(4));
    let (mut ga, mut gv) = (up(5), up(6));
    let mut ctl = Controller::new(Config::new(3), 2).unwrap();
    ctl.begin_epoch(0).unwrap();
    for (gate, want) in [(0.9, 2u64), (0.1, 0)] {
        let mut encs = [
            DeviceEncoder {
                segs,
                theta: ta.slice(..),
                theta0: t0a.slice(..),
                grad: ga.slice_mut(..),
                basis: JointBasis::Gradient,
            },
            DeviceEncoder {
                segs,
                theta: tv.slice(..),
                theta0: t0v.slice(..),
                grad: gv.slice_mut(..),
                basis: JointBasis::Gradient,
            },
        ];
        let r = Redundancy::ratio(0.5);
        let inputs = StepInputs::pair(0.3, 0.7, r, r, gate);
        let before = c.launches();
        let (d, ranks) = ctl.step(&inputs, b, &mut encs).unwrap();
        b.synchronize().unwrap();
        let launched = c.launches() - before;
        assert_eq!(d.suppressed.is_some(), want > 0, "gate {gate}");
        assert_eq!(
            launched, want,
            "controller step, gate {gate}: {launched} launches"
        );
        if let Some(r) = ranks {
            assert_eq!(r.to_vec().unwrap().len(), 120);
        }
    }
}
