//! Fuzzing the safe CPU API (proptest): random layouts, dtypes, k, output modes and values
//! drawn from normal, huge, tiny (subnormal), zero, NaN and ±Inf. Checks: no panic; the
//! backend agrees with the f64 oracle (same NaN poisoning per segment, same values within
//! tolerance elsewhere); bad shapes are `Err`, never a panic.
//!
//! Cases: `REDREG_FUZZ_CASES` (default 128; `.ci/run` runs a bounded larger count).

mod common;

use common::Rng; // (not proptest's `Rng`)
use common::*;
use proptest::prelude::*;
use redreg::{bf16, f16, reference, Beta, CpuBackend, Element, Output, ProjectOptions, Segments};
use redreg::{Backend, Projection};

fn cases() -> u32 {
    std::env::var("REDREG_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

/// A value of one of the awkward kinds, as f64 (rounded to T by the caller).
fn awkward<T: Element>(rng: &mut Rng, nasty: bool) -> f64 {
    let max = match T::DTYPE {
        redreg::DType::F32 => 1e30,
        redreg::DType::F16 => 6e4,
        redreg::DType::BF16 => 1e30,
    };
    let tiny = match T::DTYPE {
        redreg::DType::F32 => 1e-42,
        redreg::DType::F16 => 1e-7,
        redreg::DType::BF16 => 1e-40,
    };
    match rng.below(if nasty { 9 } else { 6 }) {
        0..=2 => rng.normal(),
        3 => rng.normal() * max * 0.5,
        4 => rng.normal() * tiny,
        5 => 0.0,
        6 => f64::NAN,
        7 => f64::INFINITY,
        _ => f64::NEG_INFINITY,
    }
}

fn fuzz_one<T: Element>(seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let nseg = rng.below(6);
    let segs = Segments::from_lengths(&random_lengths(&mut rng, nseg, 300)).unwrap();
    let n = segs.total();
    let k = rng.below(9);
    // Nasty values are rare per element so most segments stay finite.
    let nasty_rate = [0.0, 0.001, 0.02][rng.below(3)];
    let gen = |rng: &mut Rng| -> Vec<T> {
        (0..n)
            .map(|_| {
                let nasty = rng.unit() < nasty_rate;
                T::from_f64(awkward::<T>(rng, nasty))
            })
            .collect()
    };
    let v = gen(&mut rng);
    let basis: Vec<Vec<T>> = (0..k).map(|_| gen(&mut rng)).collect();
    let base = gen(&mut rng);
    let b: Vec<&[T]> = basis.iter().map(|x| x.as_slice()).collect();
    let opts = if rng.below(2) == 0 {
        ProjectOptions::default()
    } else {
        ProjectOptions::exact()
    };
    let beta = rng.normal();
    let chunk = 1 + rng.below(200);
    let be = CpuBackend::new().with_chunk(chunk).unwrap();

    let mut want = base.clone();
    let mut got = base.clone();
    let wr = reference::project_out(
        &segs,
        Projection::host(&v, &b, Output::Accumulate(&mut want))
            .alpha(0.5)
            .beta(beta)
            .opts(opts),
    );
    let gr = be.project_out(
        &segs,
        Projection::host(&v, &b, Output::Accumulate(&mut got))
            .alpha(0.5)
            .beta(beta)
            .opts(opts),
    );
    let (wr, gr) = (wr.unwrap(), gr.unwrap());
    for (s, r) in segs.iter().enumerate() {
        let w = to_f64(&want[r.clone()]);
        let g = to_f64(&got[r.clone()]);
        let finite_in = v[r.clone()]
            .iter()
            .chain(b.iter().flat_map(|x| x[r.clone()].iter()))
            .all(|x| x.to_f64().is_finite());
        if k > 0 && !finite_in {
            // Policy: a non-finite v or basis value poisons the whole segment (rank 0).
            prop_assert!(
                g.iter().all(|x| x.is_nan()) && w.iter().all(|x| x.is_nan()),
                "segment {} not poisoned",
                s
            );
            prop_assert_eq!(gr[s], 0);
            continue;
        }
        prop_assert_eq!(gr[s], wr[s], "segment {} rank", s);
        // Same f64 value up to summation order, then one rounding: compare with a tolerance
        // scaled by the segment's magnitudes (huge/tiny mixes cancel).
        let scale = w
            .iter()
            .chain(to_f64(&v[r.clone()]).iter())
            .chain(to_f64(&base[r.clone()]).iter())
            .filter(|x| x.is_finite())
            .fold(0.0f64, |a, x| a.max(x.abs()));
        for (i, (x, y)) in g.iter().zip(&w).enumerate() {
            if y.is_nan() || y.is_infinite() {
                prop_assert!(
                    x.is_nan() || x == y,
                    "segment {} element {}: {} vs {}",
                    s,
                    i,
                    x,
                    y
                );
            } else {
                prop_assert!(
                    (x - y).abs() <= 1e-9 * scale * (1.0 + beta.abs()) + 2.0 * eps::<T>() * y.abs(),
                    "segment {} element {}: got {} want {} (scale {})",
                    s,
                    i,
                    x,
                    y,
                    scale
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn fuzz_project_f32(seed in any::<u64>()) { fuzz_one::<f32>(seed)? }
    #[test]
    fn fuzz_project_f16(seed in any::<u64>()) { fuzz_one::<f16>(seed)? }
    #[test]
    fn fuzz_project_bf16(seed in any::<u64>()) { fuzz_one::<bf16>(seed)? }

    /// Arbitrary (mostly wrong) buffer lengths: `Err` or success, never a panic, and
    /// success only when every length matches the layout.
    #[test]
    fn fuzz_shapes_never_panic(lens in proptest::collection::vec(0usize..20, 0..5),
                               vlen in 0usize..60, blen in 0usize..60, olen in 0usize..60,
                               k in 0usize..11, nbeta in 0usize..6) {
        let segs = Segments::from_lengths(&lens).unwrap();
        let v = vec![1f32; vlen];
        let bs = vec![vec![0.5f32; blen]; k];
        let b: Vec<&[f32]> = bs.iter().map(|x| x.as_slice()).collect();
        let mut out = vec![0f32; olen];
        let betas = vec![1.0; nbeta];
        let r = CpuBackend::new().project_out(&segs, Projection::host(&v, &b, Output::Accumulate(&mut out)).beta(Beta::PerSegment(&betas)));
        let t = segs.total();
        let valid = vlen == t && olen == t && (k == 0 || blen == t) && k <= 8 && nbeta == segs.len();
        prop_assert_eq!(r.is_ok(), valid, "{:?}", r.err());
        let mut bm: Vec<Vec<f32>> = bs.clone();
        let mut views: Vec<&mut [f32]> = bm.iter_mut().map(|x| x.as_mut_slice()).collect();
        let r = CpuBackend::new().orthonormalize(&segs, &mut views, 1e-7);
        prop_assert_eq!(r.is_ok(), (k == 0 || blen == t) && k <= 8);
    }
}
