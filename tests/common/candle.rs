//! Helpers shared by the candle adapter tests (CPU: tests/candle_adapter.rs, CUDA:
//! tests/gpu_candle.rs): deterministic data, host copies, the f64 reference of one tensor
//! and the `|got - want| <= atol + rtol·|want|` check.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use redreg::{reference, Beta, Element, Output, ProjectOptions, Segments};

/// Deterministic values in [-1, 1) (xorshift).
pub fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
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
        v,
        &b,
        Output::Write {
            base,
            out: &mut out,
        },
        alpha,
        Beta::Scalar(beta),
        &ProjectOptions::default(),
    )
    .unwrap();
    out
}

/// `|got - want| <= atol + rtol·|want|` elementwise, reporting the first mismatches.
pub fn assert_close<T: Element>(what: &str, got: &[T], want: &[T], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| (g.to_f64() - w.to_f64()).abs() > atol + rtol * w.to_f64().abs())
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {} want {}", g.to_f64(), w.to_f64()))
        .collect();
    assert!(bad.is_empty(), "{what}: mismatches: {}", bad.join(", "));
}
