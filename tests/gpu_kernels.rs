//! Every kernel of module `project` (each dtype × each k) runs at least once, on a small
//! layout, and matches the f64 reference: `project_out` for k = 0..=8 in the three output
//! modes, with 16-byte-aligned views (vector path) and with views shifted by one element
//! (scalar path), `orthonormalize` for k = 1..=8, and the fused drift projection
//! (`Projection::drift`: `v - v0` in the kernels, the destination as basis vector 0) for
//! k = 1..=8 against the oracle and, bit for bit, against an explicit copy of the gradient. Small on purpose: it is the launch
//! coverage of `scripts/emu-check.sh` (every kernel must run on the emulated driver) and
//! cheap enough for compute-sanitizer. See tests/common/gpu.rs for the SKIP convention.
#![cfg(feature = "cuda")]

mod common;

use common::gpu;

use cudarc::driver::CudaSlice;
use redreg::cuda::CudaBackend;
use redreg::testing::{assert_close, elements};
use redreg::{bf16, f16, reference, Beta, DType, Output, ProjectOptions, Segments};
use redreg::{Backend, Element, Projection};

/// A few units in the last place of the output type (the first GPU tests' bounds; tests/project.rs holds every backend to one rounding).
fn tol_of(dt: DType) -> (f64, f64) {
    match dt {
        DType::F32 => (2e-5, 1e-5),
        DType::F16 => (4e-3, 2e-3),
        DType::BF16 => (3e-2, 1.6e-2),
    }
}

/// Segments of 0, 37, 1000 and 16390 elements (two chunks): every segment is at least 4×
/// longer than k, so the random bases have full rank far from the rank threshold.
fn layout() -> Segments {
    Segments::from_lengths(&[0, 37, 1000, 16390]).unwrap()
}

fn project_all_k<T: Element>(b: &CudaBackend) {
    let segs = layout();
    let n = segs.total();
    for shift in [0usize, 1] {
        for k in 0..=8usize {
            let mode = k % 3;
            let seed = 100 * k as u64 + shift as u64;
            // Host data with `shift` leading elements, so the device views start misaligned.
            let host = |s: u64| elements::<T>(n + shift, s, 1.0);
            let v = host(seed);
            let basis: Vec<Vec<T>> = (0..k).map(|i| host(seed + 1 + i as u64)).collect();
            let base = host(seed + 50);
            let opts = ProjectOptions::default();
            let (alpha, beta) = (0.5, Beta::Scalar(1.25));

            let brefs: Vec<&[T]> = basis.iter().map(|x| &x[shift..]).collect();
            let mut want = base[shift..].to_vec();
            let out = match mode {
                0 => Output::Write {
                    base: None,
                    out: &mut want[..],
                },
                1 => Output::Write {
                    base: Some(&base[shift..]),
                    out: &mut want[..],
                },
                _ => Output::Accumulate(&mut want[..]),
            };
            let ranks = reference::project_out(
                &segs,
                Projection::host(&v[shift..], &brefs, out)
                    .alpha(alpha)
                    .beta(beta)
                    .opts(opts),
            )
            .unwrap();

            let up = |x: &[T]| -> CudaSlice<T> { b.stream().clone_htod(x).unwrap() };
            let dv = up(&v);
            let db: Vec<CudaSlice<T>> = basis.iter().map(|x| up(x)).collect();
            let dbase = up(&base);
            let mut dout = up(&base);
            let views: Vec<_> = db.iter().map(|x| x.slice(shift..)).collect();
            let base_view = dbase.slice(shift..);
            let dranks = {
                let mut o = dout.slice_mut(shift..);
                let out = match mode {
                    0 => Output::Write {
                        base: None,
                        out: o.slice_mut(..),
                    },
                    1 => Output::Write {
                        base: Some(base_view.slice(..)),
                        out: o.slice_mut(..),
                    },
                    _ => Output::Accumulate(o.slice_mut(..)),
                };
                b.project_out(
                    &segs,
                    Projection::new(dv.slice(shift..), views, out)
                        .alpha(alpha)
                        .beta(beta)
                        .opts(opts),
                )
                .unwrap()
            };
            let got: Vec<T> = b.stream().clone_dtoh(&dout.slice(shift..)).unwrap();
            let what = format!("project_out {} k={k} mode={mode} shift={shift}", T::DTYPE);
            let (atol, rtol) = tol_of(T::DTYPE);
            assert_close(&what, &got, &want, atol, rtol);
            // Every segment is >= 4k long with random data: far from the rank threshold.
            assert_eq!(dranks.to_vec().unwrap(), ranks, "{what}: ranks");
        }
    }
}

fn orth_all_k<T: Element>(b: &CudaBackend) {
    let segs = layout();
    let n = segs.total();
    for k in 1..=8usize {
        let mut basis: Vec<Vec<T>> = (0..k)
            .map(|i| elements::<T>(n, 900 + 10 * k as u64 + i as u64, 1.0))
            .collect();
        let mut db: Vec<CudaSlice<T>> = basis
            .iter()
            .map(|x| b.stream().clone_htod(x).unwrap())
            .collect();
        let ranks_dev = {
            let mut views: Vec<_> = db.iter_mut().map(|x| x.slice_mut(..)).collect();
            b.orthonormalize(&segs, &mut views, 1e-7).unwrap()
        }
        .to_vec()
        .unwrap();
        let mut refs: Vec<&mut [T]> = basis.iter_mut().map(|x| x.as_mut_slice()).collect();
        let ranks = reference::orthonormalize(&segs, &mut refs, 1e-7).unwrap();
        let (atol, rtol) = tol_of(T::DTYPE);
        for (i, d) in db.iter().enumerate() {
            let got: Vec<T> = b.stream().clone_dtoh(d).unwrap();
            // Orthonormal vectors of a long segment have small entries: a tighter atol.
            assert_close(
                &format!("orthonormalize {} k={k} vector {i}", T::DTYPE),
                &got,
                &basis[i],
                atol * 0.05,
                rtol * 4.0,
            );
        }
        assert_eq!(ranks_dev, ranks, "orthonormalize {} k={k}: ranks", T::DTYPE);
    }
}

/// `grad += beta (d - P d)`, `d = theta - theta0` formed in the kernels, basis
/// `{grad, extra...}` with the gradient read in place: against the f64 oracle's same fused
/// projection, and bitwise against the device projection with an explicit copy of the
/// gradient as basis vector 0 (the same values reach the same arithmetic).
fn drift_all_k<T: Element>(b: &CudaBackend) {
    let segs = layout();
    let n = segs.total();
    let up = |x: &[T]| -> CudaSlice<T> { b.stream().clone_htod(x).unwrap() };
    for shift in [0usize, 1] {
        for k in 1..=8usize {
            let seed = 700 + 100 * k as u64 + shift as u64;
            let host = |s: u64, sc: f64| elements::<T>(n + shift, s, sc);
            let (theta, theta0, g0) = (host(seed, 1.0), host(seed + 1, 1.0), host(seed + 2, 0.1));
            let extra: Vec<Vec<T>> = (1..k).map(|i| host(seed + 10 + i as u64, 0.1)).collect();
            let erefs: Vec<&[T]> = extra.iter().map(|x| &x[shift..]).collect();
            let mut want = g0[shift..].to_vec();
            let ranks = reference::project_out(
                &segs,
                Projection::drift(&theta[shift..], &theta0[shift..], erefs, &mut want[..])
                    .beta(1.25),
            )
            .unwrap();

            let (dt, dt0) = (up(&theta), up(&theta0));
            let dextra: Vec<CudaSlice<T>> = extra.iter().map(|x| up(x)).collect();
            let eviews: Vec<_> = dextra.iter().map(|x| x.slice(shift..)).collect();
            let mut fused = up(&g0);
            let franks = b
                .project_out(
                    &segs,
                    Projection::drift(
                        dt.slice(shift..),
                        dt0.slice(shift..),
                        eviews,
                        fused.slice_mut(shift..),
                    )
                    .beta(1.25),
                )
                .unwrap();
            let copy = up(&g0);
            let mut basis = vec![copy.slice(shift..)];
            basis.extend(dextra.iter().map(|x| x.slice(shift..)));
            let mut explicit = up(&g0);
            let eranks = b
                .project_out(
                    &segs,
                    Projection::new(
                        dt.slice(shift..),
                        basis,
                        Output::Accumulate(explicit.slice_mut(shift..)),
                    )
                    .minus(dt0.slice(shift..))
                    .beta(1.25),
                )
                .unwrap();
            let what = format!("drift {} k={k} shift={shift}", T::DTYPE);
            let got: Vec<T> = b.stream().clone_dtoh(&fused.slice(shift..)).unwrap();
            let exp: Vec<T> = b.stream().clone_dtoh(&explicit.slice(shift..)).unwrap();
            assert_eq!(franks.to_vec().unwrap(), ranks, "{what}: ranks");
            assert_eq!(eranks.to_vec().unwrap(), ranks, "{what}: explicit ranks");
            let (atol, rtol) = tol_of(T::DTYPE);
            assert_close(&what, &got, &want, atol, rtol);
            let bitwise = got
                .iter()
                .zip(&exp)
                .all(|(a, c)| bytemuck::bytes_of(a) == bytemuck::bytes_of(c));
            assert!(
                bitwise,
                "{what}: in-place basis differs from the explicit copy"
            );
        }
    }
}

#[test]
fn every_project_kernel_f32() {
    if let Some(b) = gpu::backend("every_project_kernel_f32") {
        project_all_k::<f32>(b);
        orth_all_k::<f32>(b);
        drift_all_k::<f32>(b);
    }
}

#[test]
fn every_project_kernel_f16() {
    if let Some(b) = gpu::backend("every_project_kernel_f16") {
        project_all_k::<f16>(b);
        orth_all_k::<f16>(b);
        drift_all_k::<f16>(b);
    }
}

#[test]
fn every_project_kernel_bf16() {
    if let Some(b) = gpu::backend("every_project_kernel_bf16") {
        project_all_k::<bf16>(b);
        orth_all_k::<bf16>(b);
        drift_all_k::<bf16>(b);
    }
}
