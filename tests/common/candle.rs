//! Helpers shared by the candle adapter tests (CPU: tests/candle_adapter.rs, CUDA:
//! tests/gpu_candle.rs): deterministic data, host copies, the f64 reference of one tensor
//! and (re-exported from `redreg::testing`) the `|got - want| <= atol + rtol·|want|` check.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use redreg::Projection;
use redreg::{reference, Beta, Element, Output, ProjectOptions, Segments};

pub use super::{assert_close, Rng};

/// Deterministic values in [-1, 1): [`Rng::signed_f32`] (24-bit draws, exact in f32).
pub fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.signed_f32(1.0)).collect()
}

/// An f32 tensor of `shape` with [`data`] on `dev`.
pub fn tensor(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(data(seed, n), shape, dev).unwrap()
}

/// The elements on the host (a copy, for checking only).
pub fn flat<T: Element + candle_core::WithDType>(x: &Tensor) -> Vec<T> {
    x.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

/// Reference `alpha·base + beta·(v - P v)` of one tensor (f64 inside, one rounding to `T`).
pub fn reference_one<T: Element>(
    v: &[T],
    basis: &[Vec<T>],
    base: Option<&[T]>,
    alpha: f64,
    beta: f64,
) -> Vec<T> {
    let segs = Segments::from_lengths(&[v.len()]).unwrap();
    let b: Vec<&[T]> = basis.iter().map(|x| x.as_slice()).collect();
    let mut out = vec![T::default(); v.len()];
    reference::project_out(
        &segs,
        Projection::host(
            v,
            &b,
            Output::Write {
                base,
                out: &mut out,
            },
        )
        .alpha(alpha)
        .beta(beta),
    )
    .unwrap();
    out
}

/// `project_out_tensors` with k = 2 and a base term on four tensors of `dt` on `dev`
/// against [`reference_one`]: one tensor has a start offset (a row of a bigger tensor), one
/// a rank-deficient basis (rank 1), one is larger than a chunk; per-tensor β.
pub fn check_project_dtype(
    be: impl redreg::candle::OnTensors<redreg::candle::Backends>,
    dev: &Device,
    dt: candle_core::DType,
    atol: f64,
    rtol: f64,
) {
    use candle_core::DType;
    let shapes: [&[usize]; 4] = [&[7, 9], &[33], &[2, 3, 4], &[70_001]];
    let mk = |seed: u64| -> Vec<Tensor> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| tensor(seed + i as u64, s, dev).to_dtype(dt).unwrap())
            .collect()
    };
    // The second tensor of v is a row of a bigger tensor: contiguous, start offset > 0.
    let mut v = mk(10);
    v[1] = tensor(15, &[3, 33], dev)
        .to_dtype(dt)
        .unwrap()
        .narrow(0, 1, 1)
        .unwrap()
        .reshape(33)
        .unwrap();
    let (b0, base) = (mk(20), mk(40));
    // Tensor 2's second basis vector is 2·b0: rank 1 there, rank 2 elsewhere.
    let mut b1 = mk(30);
    b1[2] = (&b0[2] * 2.0).unwrap();
    let betas = [0.5, 1.7, -0.25, 1.0];
    let (outs, ranks) = redreg::candle::project_out_tensors(
        be,
        &v,
        &[&b0[..], &b1[..]],
        Some(&base[..]),
        0.75,
        Beta::PerSegment(&betas),
        &ProjectOptions::default(),
    )
    .unwrap();
    assert_eq!(ranks, vec![2, 2, 1, 2]);
    for i in 0..v.len() {
        assert_eq!(outs[i].dims(), v[i].dims());
        assert_eq!(outs[i].dtype(), dt);
        assert!(outs[i].device().same_device(dev), "output changed device");
        macro_rules! cmp {
            ($ty:ty) => {{
                let want = reference_one::<$ty>(
                    &flat(&v[i]),
                    &[flat(&b0[i]), flat(&b1[i])],
                    Some(&flat::<$ty>(&base[i])),
                    0.75,
                    betas[i],
                );
                assert_close(
                    &format!("{dt:?} tensor {i}"),
                    &flat::<$ty>(&outs[i]),
                    &want,
                    atol,
                    rtol,
                );
            }};
        }
        match dt {
            DType::F32 => cmp!(f32),
            DType::F16 => cmp!(half::f16),
            DType::BF16 => cmp!(half::bf16),
            other => panic!("no reference for {other:?}"),
        }
    }
}

/// The authors' script for one tensor, in f64: `d_perp = d - (d·g / (g·g + 1e-12)) g`,
/// `grad = g + beta·d_perp` (the k = 1 closed form the adapter must reproduce).
pub fn script_update(d: &[f64], g: &[f64], beta: f64) -> Vec<f32> {
    let dg: f64 = d.iter().zip(g).map(|(a, b)| a * b).sum();
    let gg: f64 = g.iter().map(|x| x * x).sum();
    let c = dg / (gg + 1e-12);
    d.iter()
        .zip(g)
        .map(|(d, g)| (g + beta * (d - c * g)) as f32)
        .collect()
}
