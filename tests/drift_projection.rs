//! The fused drift projection (`Projection::drift`, `Projection::minus`, `out_in_basis`)
//! on the host backends, against independent oracles:
//! - k = 1: the authors' script's closed form `g + β(d − (d·g / (g·g + 1e-12)) g)` with
//!   `d = θ − θ₀` in f64, computed here by hand;
//! - the destination as basis vector 0 equals an explicit copy of it as the basis, bit for
//!   bit (the same values reach the same arithmetic);
//! - `v − v0` equals projecting the difference itself when that difference is exact in the
//!   element type, bit for bit;
//! - the CPU backend equals the oracle within rounding, for any thread count bitwise;
//! - bad combinations are `Err` and leave the destination untouched.

use redreg::testing::{assert_close, elements, Rng};
use redreg::{
    bf16, f16, Backend, CpuBackend, Element, Output, ProjectOptions, Projection, Reference,
    Segments,
};

fn layout() -> Segments {
    // Empty, tiny, odd, several chunks of the CPU backend's 7-element test chunk.
    Segments::from_lengths(&[0, 1, 3, 37, 200]).unwrap()
}

/// `g + β(d − (d·g / (g·g + 1e-12)) g)` per segment, all in f64, `d = θ − θ₀`.
fn script_closed_form<T: Element>(
    segs: &Segments,
    theta: &[T],
    theta0: &[T],
    g: &[T],
    beta: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; segs.total()];
    for r in segs.iter() {
        let d: Vec<f64> = r
            .clone()
            .map(|e| theta[e].to_f64() - theta0[e].to_f64())
            .collect();
        let gs: Vec<f64> = r.clone().map(|e| g[e].to_f64()).collect();
        let dg: f64 = d.iter().zip(&gs).map(|(a, b)| a * b).sum();
        let gg: f64 = gs.iter().map(|x| x * x).sum();
        let c = dg / (gg + 1e-12);
        for (i, e) in r.enumerate() {
            out[e] = gs[i] + beta * (d[i] - c * gs[i]);
        }
    }
    out
}

fn drift_k1_matches_script<T: Element, B: Backend<Memory = redreg::Host>>(backend: &B, rtol: f64)
where
    B::Ranks: std::fmt::Debug,
{
    let segs = layout();
    let n = segs.total();
    let theta: Vec<T> = elements(n, 1, 1.0);
    let theta0: Vec<T> = elements(n, 2, 1.0);
    let g0: Vec<T> = elements(n, 3, 1e-2);
    let beta = 1.37;
    let want = script_closed_form(&segs, &theta, &theta0, &g0, beta);
    let mut g = g0.clone();
    backend
        .project_out(
            &segs,
            Projection::drift(&theta[..], &theta0[..], [], &mut g[..]).beta(beta),
        )
        .unwrap();
    let want_t: Vec<T> = want.iter().map(|&x| T::from_f64(x)).collect();
    // One rounding of the result; the coefficient differs from the closed form only by
    // summation order (compensated sums vs a plain sum): a few f64 ulp.
    assert_close(&format!("drift k=1 {}", T::DTYPE), &g, &want_t, 1e-30, rtol);
}

#[test]
fn drift_k1_is_the_scripts_closed_form() {
    let cpu = CpuBackend::with_threads(2).unwrap().with_chunk(7).unwrap();
    drift_k1_matches_script::<f32, _>(&Reference, 2.0 * f32::EPSILON as f64);
    drift_k1_matches_script::<f32, _>(&cpu, 2.0 * f32::EPSILON as f64);
    drift_k1_matches_script::<bf16, _>(&Reference, 7.8125e-3);
    drift_k1_matches_script::<f16, _>(&cpu, 9.8e-4);
}

/// The destination as basis vector 0 vs the same projection with an explicit copy of it.
fn out_in_basis_equals_copy<B: Backend<Memory = redreg::Host, Ranks = Vec<u32>>>(backend: &B) {
    let segs = layout();
    let n = segs.total();
    for k_extra in [0usize, 1, 3, 7] {
        let theta: Vec<f32> = elements(n, 10, 1.0);
        let theta0: Vec<f32> = elements(n, 11, 1.0);
        let extra: Vec<Vec<f32>> = (0..k_extra)
            .map(|i| elements(n, 20 + i as u64, 0.1))
            .collect();
        let extra_refs: Vec<&[f32]> = extra.iter().map(|x| x.as_slice()).collect();
        let g0: Vec<f32> = elements(n, 12, 1e-2);

        let mut fused = g0.clone();
        let r1 = backend
            .project_out(
                &segs,
                Projection::drift(&theta[..], &theta0[..], extra_refs.clone(), &mut fused[..])
                    .beta(0.8),
            )
            .unwrap();

        let copy = g0.clone();
        let mut basis: Vec<&[f32]> = vec![&copy];
        basis.extend(&extra_refs);
        let mut explicit = g0.clone();
        let r2 = backend
            .project_out(
                &segs,
                Projection::host(&theta, &basis, Output::Accumulate(&mut explicit))
                    .minus(&theta0)
                    .beta(0.8),
            )
            .unwrap();
        assert_eq!(r1, r2, "ranks, k = {}", 1 + k_extra);
        let same = fused
            .iter()
            .zip(&explicit)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "k = {}: fused differs from the explicit copy",
            1 + k_extra
        );
        assert_ne!(fused, g0, "the update must change the gradient");
    }
}

#[test]
fn out_in_basis_is_bitwise_an_explicit_copy() {
    out_in_basis_equals_copy(&Reference);
    out_in_basis_equals_copy(&CpuBackend::new());
    out_in_basis_equals_copy(&CpuBackend::with_threads(3).unwrap().with_chunk(5).unwrap());
}

#[test]
fn minus_equals_the_exact_difference() {
    // v and v0 on a grid of 1/64 in [-2, 2): their difference is exact in f32, f16 and
    // bf16 alike, so projecting `v - v0` and projecting the stored difference are the
    // same arithmetic.
    let segs = layout();
    let n = segs.total();
    let mut rng = Rng::new(5);
    let grid = |r: &mut Rng| (r.below(256) as f64 - 128.0) / 64.0;
    let v: Vec<f64> = (0..n).map(|_| grid(&mut rng)).collect();
    let v0: Vec<f64> = (0..n).map(|_| grid(&mut rng)).collect();
    let b: Vec<f32> = elements(n, 6, 1.0);
    let base: Vec<f32> = elements(n, 7, 1.0);
    let vt: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let v0t: Vec<f32> = v0.iter().map(|&x| x as f32).collect();
    let dt: Vec<f32> = v.iter().zip(&v0).map(|(a, c)| (a - c) as f32).collect();
    let opts = ProjectOptions::exact();
    for backend in [CpuBackend::new(), CpuBackend::with_threads(2).unwrap()] {
        let mut a = vec![0.0f32; n];
        let mut c = vec![0.0f32; n];
        let out_a = Output::Write {
            base: Some(&base[..]),
            out: &mut a[..],
        };
        backend
            .project_out(
                &segs,
                Projection::host(&vt, &[&b], out_a)
                    .minus(&v0t)
                    .alpha(0.5)
                    .beta(2.0)
                    .opts(opts),
            )
            .unwrap();
        let out_c = Output::Write {
            base: Some(&base[..]),
            out: &mut c[..],
        };
        backend
            .project_out(
                &segs,
                Projection::host(&dt, &[&b], out_c)
                    .alpha(0.5)
                    .beta(2.0)
                    .opts(opts),
            )
            .unwrap();
        assert!(a.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn fused_cpu_is_deterministic_across_threads_and_matches_the_oracle() {
    let segs = Segments::from_lengths(&[5000, 1, 70_001, 0, 333]).unwrap();
    let n = segs.total();
    let theta: Vec<bf16> = elements(n, 30, 1.0);
    let theta0: Vec<bf16> = elements(n, 31, 1.0);
    let extra: Vec<bf16> = elements(n, 32, 0.5);
    let g0: Vec<bf16> = elements(n, 33, 1e-2);
    let run = |b: &dyn Fn(&mut [bf16]) -> Vec<u32>| {
        let mut g = g0.clone();
        let r = b(&mut g);
        (g, r)
    };
    let extra_refs = [extra.as_slice()];
    let with = |be: CpuBackend| {
        run(&|g: &mut [bf16]| {
            be.project_out(
                &segs,
                Projection::drift(&theta[..], &theta0[..], extra_refs, g).beta(1.1),
            )
            .unwrap()
        })
    };
    let (g1, r1) = with(CpuBackend::with_threads(1).unwrap());
    for t in [2, 8] {
        let (gt, rt) = with(CpuBackend::with_threads(t).unwrap());
        assert_eq!(r1, rt);
        assert!(
            g1.iter().zip(&gt).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{t} threads"
        );
    }
    let (gr, rr) = run(&|g: &mut [bf16]| {
        Reference
            .project_out(
                &segs,
                Projection::drift(&theta[..], &theta0[..], extra_refs, g).beta(1.1),
            )
            .unwrap()
    });
    assert_eq!(r1, rr);
    assert_close("fused CPU vs oracle (bf16)", &g1, &gr, 1e-6, 7.8125e-3);
}

#[test]
fn bad_fused_arguments_are_errors() {
    let segs = Segments::from_lengths(&[4, 4]).unwrap();
    let theta = vec![1.0f32; 8];
    let short = [1.0f32; 7];
    let mut g = vec![0.5f32; 8];
    let before = g.clone();
    let b = CpuBackend::new();
    // out_in_basis needs Accumulate.
    let e = b
        .project_out(
            &segs,
            Projection::host(
                &theta,
                &[],
                Output::Write {
                    base: None,
                    out: &mut g,
                },
            )
            .implicit(redreg::project::Implicit::Out),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("Implicit::Out"), "{e}");
    // v0 of the wrong length.
    let e = b
        .project_out(
            &segs,
            Projection::drift(&theta[..], &short[..], [], &mut g[..]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("v0") && e.contains("7"), "{e}");
    // The destination plus 8 extras is k = 9 > 8.
    let extra: Vec<&[f32]> = vec![&theta; 8];
    let e = Reference
        .project_out(
            &segs,
            Projection::drift(&theta[..], &theta[..], extra, &mut g[..]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("MAX_K") || e.contains("8"), "{e}");
    assert_eq!(g, before, "an Err must not touch the destination");
}
