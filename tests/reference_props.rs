//! Properties of the f64 oracle (`redreg::reference`) against math identities and an
//! independent explicit-CGS2 computation: orthogonality, idempotence, the script's k = 1
//! closed form, rank-deficient bases, conditioning up to 1e6 (the CPU backend's too), and
//! sharded = unsharded.

mod common;

use common::Rng; // (not proptest's `Rng`)
use common::*;
use proptest::prelude::*;
use redreg::{bf16, f16, reference, Beta, Element, Output, Partials, ProjectOptions, Segments};
use redreg::{Projection, RankList, Reference};

/// Random layout + data: v and k basis vectors, all in `T`.
fn case<T: Element>(
    seed: u64,
    nseg: usize,
    max_len: usize,
    k: usize,
) -> (Segments, Vec<T>, Vec<Vec<T>>) {
    let mut rng = Rng::new(seed);
    let segs = Segments::from_lengths(&random_lengths(&mut rng, nseg, max_len)).unwrap();
    let n = segs.total();
    let v = to_t::<T>(&rng.normals(n));
    let basis = (0..k).map(|_| to_t::<T>(&rng.normals(n))).collect();
    (segs, v, basis)
}

fn refs<T>(b: &[Vec<T>]) -> Vec<&[T]> {
    b.iter().map(|x| x.as_slice()).collect()
}

fn perp<T: Element>(
    segs: &Segments,
    v: &[T],
    basis: &[&[T]],
    opts: &ProjectOptions,
) -> (Vec<T>, Vec<u32>) {
    let mut out = vec![T::default(); v.len()];
    let ranks = reference::project_out(
        segs,
        Projection::host(
            v,
            basis,
            Output::Write {
                base: None,
                out: &mut out,
            },
        )
        .opts(*opts),
    )
    .unwrap();
    (out, ranks)
}

/// Output orthogonal to every basis vector of a segment: |<out, b_i>| <= tol·|out|·|b_i|.
fn check_orthogonal<T: Element>(r: std::ops::Range<usize>, out: &[T], basis: &[&[T]], tol: f64) {
    let o = to_f64(&out[r.clone()]);
    for b in basis {
        let b = to_f64(&b[r.clone()]);
        let d = dot(&o, &b).abs();
        let bound = tol * norm(&o) * norm(&b) + 1e-300;
        assert!(d <= bound, "segment {r:?}: |<out,b>| = {d:e} > {bound:e}");
    }
}

fn orthogonality<T: Element>(seed: u64, k: usize) {
    let (segs, v, basis) = case::<T>(seed, 6, 400, k);
    let b = refs(&basis);
    let (out, ranks) = perp(&segs, &v, &b, &ProjectOptions::exact());
    for (s, r) in segs.iter().enumerate() {
        if r.len() > k {
            // Gaussian vectors in more dimensions than vectors are independent.
            assert_eq!(ranks[s] as usize, k, "segment {s} rank");
            // Rounding `out` to T perturbs it by ≤ eps·|out|.
            let tol = 4.0 * eps::<T>() * (k as f64).max(1.0);
            check_orthogonal(r.clone(), &out, &b, tol);
        } else {
            // The basis spans the whole segment: nothing is left. (The Gram criterion may
            // keep exactly dependent vectors as tiny directions inside the span when the
            // earlier ones are ill-conditioned — harmless here, see src/project/solve.rs.)
            assert!(
                ranks[s] as usize >= r.len(),
                "segment {s} rank {}",
                ranks[s]
            );
            let o = norm(&to_f64(&out[r.clone()]));
            let vn = norm(&to_f64(&v[r.clone()]));
            assert!(
                o <= 1e-4 * vn + eps::<T>() * vn,
                "segment {s}: |out| = {o:e}, |v| = {vn:e}"
            );
        }
    }
}

fn idempotence<T: Element>(seed: u64, k: usize) {
    let (segs, v, basis) = case::<T>(seed, 5, 300, k);
    let b = refs(&basis);
    let opts = ProjectOptions::exact();
    let (once, _) = perp(&segs, &v, &b, &opts);
    let (twice, _) = perp(&segs, &once, &b, &opts);
    let scale = once.iter().map(|x| x.to_f64().abs()).fold(0.0, f64::max);
    assert_close(
        "P⊥(P⊥ v) = P⊥ v",
        &to_f64(&twice),
        &to_f64(&once),
        8.0 * eps::<T>() * scale * (k as f64 + 1.0),
        0.0,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn orthogonal_to_basis_f32(seed in any::<u64>(), k in 0usize..=8) { orthogonality::<f32>(seed, k) }
    #[test]
    fn orthogonal_to_basis_f16(seed in any::<u64>(), k in 0usize..=8) { orthogonality::<f16>(seed, k) }
    #[test]
    fn orthogonal_to_basis_bf16(seed in any::<u64>(), k in 0usize..=8) { orthogonality::<bf16>(seed, k) }

    #[test]
    fn idempotent_f32(seed in any::<u64>(), k in 0usize..=8) { idempotence::<f32>(seed, k) }
    #[test]
    fn idempotent_bf16(seed in any::<u64>(), k in 0usize..=8) { idempotence::<bf16>(seed, k) }

    /// k = 1 with default options is the script's closed form
    /// `d - (d·g / (g·g + 1e-12)) g` (computed here independently in f64), to the last
    /// bit of f64 before the single rounding to f32: at most one f32 ulp apart.
    #[test]
    fn k1_equals_script_closed_form(seed in any::<u64>(), scale_exp in -8i32..4, beta in -2.0f64..2.0) {
        let mut rng = Rng::new(seed);
        let segs = Segments::from_lengths(&random_lengths(&mut rng, 7, 500)).unwrap();
        let n = segs.total();
        let scale = 10f64.powi(scale_exp);
        let d = to_t::<f32>(&rng.normals(n));
        let g = to_t::<f32>(&rng.normals(n).iter().map(|x| x * scale).collect::<Vec<_>>());
        let grad = to_t::<f32>(&rng.normals(n));
        let mut out = grad.clone();
        reference::project_out(&segs, Projection::host(&d, &[&g], Output::Accumulate(&mut out)).beta(beta)).unwrap();
        for r in segs.iter() {
            let dd = to_f64(&d[r.clone()]);
            let gg = to_f64(&g[r.clone()]);
            let c = dot(&dd, &gg) / (dot(&gg, &gg) + 1e-12);
            for (i, e) in r.clone().enumerate() {
                let want = grad[e] as f64 + beta * (dd[i] - c * gg[i]);
                let got = out[e] as f64;
                let ulp = (want as f32).abs().max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
                prop_assert!((got - want).abs() <= ulp + 1e-12 * (dd[i].abs() + (c * gg[i]).abs()),
                    "element {}: got {} want {}", e, got, want);
            }
        }
    }

    /// Duplicated, scaled and zero basis vectors: the rank counts independent directions and
    /// the projection equals the one onto the independent vectors alone.
    #[test]
    fn rank_deficient_bases(seed in any::<u64>(), k0 in 1usize..=4, pattern in 0usize..3) {
        let mut rng = Rng::new(seed);
        let segs = Segments::from_lengths(&[0, 50, 333, 1, 64]).unwrap();
        let n = segs.total();
        let v = to_t::<f32>(&rng.normals(n));
        let indep: Vec<Vec<f32>> = (0..k0).map(|_| to_t(&rng.normals(n))).collect();
        let mut all = indep.clone();
        match pattern {
            0 => all.push(indep[0].clone()),                                   // duplicate
            1 => all.push(indep[k0 - 1].iter().map(|x| x * 2.0).collect()),    // exact scaling
            _ => all.insert(0, vec![0.0; n]),                                  // zero vector first
        }
        let opts = ProjectOptions::exact();
        let (got, ranks) = perp(&segs, &v, &refs(&all), &opts);
        let (want, want_ranks) = perp(&segs, &v, &refs(&indep), &opts);
        prop_assert_eq!(&ranks, &want_ranks);
        let scale = v.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
        assert_close("rank-deficient", &to_f64(&got), &to_f64(&want), 1e-5 * scale, 1e-5);
    }

    /// Split form: every segment cut across 2, 3 or 7 shards; summed shard partials applied
    /// per shard give the unsharded result.
    #[test]
    fn sharded_equals_unsharded(seed in any::<u64>(), k in 0usize..=4, shards_ix in 0usize..3) {
        let shards = [2usize, 3, 7][shards_ix];
        let (segs, v, basis) = case::<f32>(seed, 6, 300, k);
        let b = refs(&basis);
        let opts = ProjectOptions::default();
        let base = to_t::<f32>(&Rng::new(seed ^ 1).normals(v.len()));
        let beta: Vec<f64> = (0..segs.len()).map(|s| 0.5 + s as f64).collect();
        let mut whole = vec![0f32; v.len()];
        reference::project_out(&segs, Projection::host(&v, &b, Output::Write { base: Some(&base), out: &mut whole }).alpha(0.7).beta(Beta::PerSegment(&beta)).opts(opts)).unwrap();

        let mut rng = Rng::new(seed ^ 2);
        let layout = shard_layout(&mut rng, &segs, shards);
        let mut sum = Partials::zeros(k, segs.len()).unwrap();
        let mut local = Vec::new();
        for ranges in &layout {
            let lsegs = Segments::from_lengths(&ranges.iter().map(|r| r.len()).collect::<Vec<_>>()).unwrap();
            let lv = gather(&v, ranges);
            let lb: Vec<Vec<f32>> = basis.iter().map(|x| gather(x, ranges)).collect();
            sum.add(&host_partials(&Reference, &lsegs, &lv, None, &refs(&lb)).unwrap()).unwrap();
            local.push((lsegs, lv, lb, gather(&base, ranges)));
        }
        let mut sharded = vec![0f32; v.len()];
        for (ranges, (lsegs, lv, lb, lbase)) in layout.iter().zip(&local) {
            let mut lout = vec![0f32; lv.len()];
            reference::apply(lsegs, &sum, Projection::host(lv, &refs(lb), Output::Write { base: Some(lbase), out: &mut lout }).alpha(0.7).beta(Beta::PerSegment(&beta)).opts(opts)).unwrap();
            let mut pos = 0;
            for r in ranges {
                sharded[r.clone()].copy_from_slice(&lout[pos..pos + r.len()]);
                pos += r.len();
            }
        }
        // Partials summed in another order differ in the last f64 bits only.
        let scale = whole.iter().map(|x| x.abs() as f64).fold(1.0, f64::max);
        assert_close("sharded", &to_f64(&sharded), &to_f64(&whole), 1e-6 * scale, 2.0 * f32::EPSILON as f64);
    }
}

/// The Gram-matrix method agrees with explicit CGS2 to 1e-5 (relative, 2-norm per segment)
/// for f32 bases with condition numbers up to 1e6, with `|P v| ≈ |v - P v|`. (The error
/// grows like `1e-16·κ²·|Pv|/|v - Pv|`: see `src/project/solve.rs`, Limits.)
#[test]
fn gram_method_matches_cgs2_up_to_cond_1e6() {
    let worst = cgs2_agreement(&Reference, 1e-5);
    println!("oracle: worst relative error vs CGS2: {worst:e}");
}

/// The same for the CPU backend, whose pass 1 sums 64 products per lane plainly before
/// each compensated add (the oracle compensates every product), to 1e-6: the bound its
/// run length must keep (measured 3.2e-7 with runs of 64, 1.0e-7 with 16; one plain sum
/// per lane, no compensation, gives 4.2e-6 and fails).
#[test]
fn cpu_gram_method_matches_cgs2_up_to_cond_1e6() {
    let worst = cgs2_agreement(&redreg::CpuBackend::new(), 1e-6);
    println!("CPU backend: worst relative error vs CGS2: {worst:e}");
}

/// The worst relative error of `be`'s projection against explicit CGS2 (see above);
/// asserts `tol` and full rank.
fn cgs2_agreement<B: redreg::Backend<Memory = redreg::Host>>(be: &B, tol: f64) -> f64 {
    let mut worst: f64 = 0.0;
    for (seed, &cond) in [1.0f64, 1e2, 1e4, 1e5, 1e6].iter().enumerate() {
        for k in [2usize, 4, 8] {
            let mut rng = Rng::new(seed as u64 * 31 + k as u64);
            let n = 20_000;
            let s: Vec<f64> = (0..k)
                .map(|i| cond.powf(-(i as f64) / (k - 1) as f64))
                .collect();
            let basis: Vec<Vec<f32>> = conditioned_basis(&mut rng, n, &s)
                .iter()
                .map(|b| to_t(b))
                .collect();
            let x = rng.normals(k);
            let noise = rng.normals(n);
            // |P v| ≈ |v - P v|: the in-span part is scaled to the norm of the noise part.
            let inspan: Vec<f64> = (0..n)
                .map(|e| (0..k).map(|i| basis[i][e] as f64 * x[i]).sum::<f64>())
                .collect();
            let sc = norm(&noise) / norm(&inspan);
            let v64: Vec<f64> = (0..n).map(|e| sc * inspan[e] + noise[e]).collect();
            let v = to_t::<f32>(&v64);
            let segs = Segments::from_lengths(&[n]).unwrap();
            let b = refs(&basis);
            let mut got = vec![0.0f32; n];
            let ranks = be
                .project_out(
                    &segs,
                    Projection::host(
                        &v[..],
                        &b,
                        Output::Write {
                            base: None,
                            out: &mut got[..],
                        },
                    )
                    .opts(ProjectOptions::exact()),
                )
                .unwrap()
                .to_vec()
                .unwrap();
            assert_eq!(
                ranks,
                vec![k as u32],
                "cond {cond:e} k {k}: nothing may be dropped"
            );
            let want = reference::residual_cgs2(&segs, &v, &b, 1e-7).unwrap();
            let diff: Vec<f64> = to_f64(&got).iter().zip(&want).map(|(a, b)| a - b).collect();
            let rel = norm(&diff) / norm(&want);
            worst = worst.max(rel);
            assert!(rel <= tol, "cond {cond:e} k {k}: relative error {rel:e}");
        }
    }
    worst
}

/// CGS2 orthonormalisation: QᵀQ = I on kept vectors, zeros for dropped ones, and the span
/// is preserved (projecting the original basis onto Q leaves nothing).
#[test]
fn orthonormalize_gives_orthonormal_span() {
    let mut rng = Rng::new(7);
    let segs = Segments::from_lengths(&[0, 1, 40, 1000, 3]).unwrap();
    let n = segs.total();
    let mut basis: Vec<Vec<f32>> = (0..4).map(|_| to_t(&rng.normals(n))).collect();
    basis.push(basis[1].iter().map(|x| -3.0 * x).collect()); // dependent: dropped
    let orig = basis.clone();
    let mut views: Vec<&mut [f32]> = basis.iter_mut().map(|b| b.as_mut_slice()).collect();
    let ranks = reference::orthonormalize(&segs, &mut views, 1e-7).unwrap();
    assert_eq!(ranks, vec![0, 1, 4, 4, 3]);
    for (s, r) in segs.iter().enumerate() {
        let q: Vec<Vec<f64>> = basis.iter().map(|b| to_f64(&b[r.clone()])).collect();
        for i in 0..5 {
            for j in 0..5 {
                let want = if i == j && norm(&q[i]) > 0.0 {
                    1.0
                } else {
                    0.0
                };
                let g = dot(&q[i], &q[j]);
                assert!((g - want).abs() < 1e-6, "segment {s}: <q{i},q{j}> = {g}");
            }
        }
        assert!(
            norm(&q[4]) == 0.0,
            "segment {s}: the dependent vector must be dropped"
        );
        // Span preserved: every original vector is reproduced by its projection onto Q.
        for o in &orig {
            let o = to_f64(&o[r.clone()]);
            let mut res = o.clone();
            for qi in &q {
                let c = dot(qi, &o);
                res.iter_mut().zip(qi).for_each(|(x, y)| *x -= c * y);
            }
            assert!(
                norm(&res) <= 1e-6 * norm(&o) + 1e-30,
                "segment {s}: span changed"
            );
        }
    }
}

/// A zero gradient leaves the drift unchanged (the script's `if g.abs().sum() == 0`).
#[test]
fn zero_gradient_leaves_drift_unchanged() {
    let segs = Segments::from_lengths(&[5, 3]).unwrap();
    let d: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    let g = vec![0f32; 8];
    let (out, ranks) = perp(&segs, &d, &[&g], &ProjectOptions::default());
    assert_eq!(ranks, vec![0, 0]);
    assert_eq!(out, d);
}

/// NaN in one segment's basis poisons that segment only.
#[test]
fn nan_poisons_its_segment_only() {
    let segs = Segments::from_lengths(&[4, 4]).unwrap();
    let v = vec![1f32; 8];
    let mut g = vec![0.5f32; 8];
    g[1] = f32::NAN;
    let (out, ranks) = perp(&segs, &v, &[&g], &ProjectOptions::default());
    assert!(out[..4].iter().all(|x| x.is_nan()), "{out:?}");
    assert!(out[4..].iter().all(|x| x.abs() < 1e-6), "{out:?}");
    assert_eq!(ranks, vec![0, 1]);
}

/// Bad input is an `Err` naming the numbers, never a panic.
#[test]
fn bad_input_is_a_clear_error() {
    let segs = Segments::from_lengths(&[3, 2]).unwrap();
    let v = vec![1f32; 5];
    let b = vec![1f32; 4];
    let mut out = vec![0f32; 5];
    let e = reference::project_out(
        &segs,
        Projection::host(
            &v,
            &[&b],
            Output::Write {
                base: None,
                out: &mut out,
            },
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected 5") && e.contains("got 4"), "{e}");
    let nine: Vec<&[f32]> = vec![&v; 9];
    let e = reference::project_out(
        &segs,
        Projection::host(
            &v,
            &nine,
            Output::Write {
                base: None,
                out: &mut out,
            },
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("got 9"), "{e}");
    let e = reference::project_out(
        &segs,
        Projection::host(
            &v,
            &[],
            Output::Write {
                base: None,
                out: &mut out,
            },
        )
        .beta(Beta::PerSegment(&[1.0])),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected 2") && e.contains("got 1"), "{e}");
    assert!(reference::project_out(
        &segs,
        Projection::host(
            &v,
            &[],
            Output::Write {
                base: None,
                out: &mut out
            }
        )
        .alpha(f64::NAN)
    )
    .is_err());
    assert!(reference::project_out(
        &segs,
        Projection::host(&v, &[], Output::Accumulate(&mut out)).opts(ProjectOptions {
            tol: 1.5,
            ridge: 0.0
        })
    )
    .is_err());
    let short = vec![0f32; 4];
    let e = reference::project_out(
        &segs,
        Projection::host(
            &v,
            &[],
            Output::Write {
                base: Some(&short),
                out: &mut out,
            },
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("base"), "{e}");
    let p = Partials::zeros(2, 2).unwrap();
    assert!(reference::apply(
        &segs,
        &p,
        Projection::host(&v, &[&v], Output::Accumulate(&mut out))
    )
    .is_err());
}
