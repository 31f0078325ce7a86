//! The projection on every backend against the f64 oracle (`redreg::reference`), one body
//! each, run by `backend_tests!` (tests/common/backends.rs) as `reference::…`, `cpu::…` and,
//! with feature `cuda`, `cuda::…` (a real GPU or the emulated driver; SKIP convention of
//! tests/common/gpu.rs):
//! - `project_out` for every dtype × k × output mode (write, base, accumulate; a scalar and a
//!   per-segment β) on single segments around the CPU and CUDA chunk sizes, ragged and
//!   many-tiny layouts and the ResNet-18 layout; a segment of over 1e6 elements (16 Mi
//!   elements, beyond a GPU's L2, outside quick mode);
//! - the split form (`partials`, then `apply` with the oracle's partials);
//! - `orthonormalize` (the Gram-based CholQR2 of the backends against explicit CGS2);
//! - bitwise reproducibility run to run; views that are not 16-byte aligned (on CUDA the
//!   scalar path); bad arguments are `Err`.
//!
//! Backend-specific checks: `cpu_only` (random ragged layouts by proptest, bitwise equality
//! across thread counts and the inline path, shards of the split form adding up, the CPU
//! backend's own bad arguments) and `cuda_only` (NVRTC compiles every module, every kernel
//! symbol loads).

mod common;

use common::backends::TestBackend;
use common::{eps, ranks, Mode};
use redreg::reference as oracle;
use redreg::testing::{assert_close, elements};
use redreg::{bf16, f16, Beta, Element, Output, Projection, Reference};
use redreg::{DType, ProjectOptions, Segments};

backend_tests!(
    project_out_matches_reference_f32,
    project_out_matches_reference_f16,
    project_out_matches_reference_bf16,
    large_segment_matches_reference,
    bitwise_reproducible,
    split_form_matches_reference,
    orthonormalize_matches_reference,
    misaligned_views_match_reference,
    invalid_arguments_are_errors,
);

/// Single segments around the chunk sizes (the CPU tests' 64, CUDA's 16384), empty and
/// tiny segments among long ones, thousands of tiny segments and, outside quick mode, the
/// ResNet-18 layout.
fn layouts(quick: bool) -> Vec<(String, Segments)> {
    let mut v = vec![];
    let lens: &[usize] = if quick {
        &[0, 1, 33, 257, 16385]
    } else {
        &[0, 1, 31, 32, 33, 255, 256, 257, 16383, 16384, 16385, 50_000]
    };
    for &n in lens {
        v.push((format!("len{n}"), Segments::from_lengths(&[n]).unwrap()));
    }
    v.push((
        "mixed".into(),
        Segments::from_lengths(&[0, 5, 0, 7, 16385, 1, 0]).unwrap(),
    ));
    let tiny: Vec<usize> = (0..3000).map(|i| i % 9).collect();
    v.push(("many_tiny".into(), Segments::from_lengths(&tiny).unwrap()));
    if !quick {
        v.push((
            "resnet18".into(),
            Segments::from_shapes(&redreg::testing::layouts::resnet18(3)).unwrap(),
        ));
    }
    v
}

/// One `project_out` on `b` against `reference::project_out`; returns the output.
///
/// Tolerance: the backends and the oracle compute the same f64 values up to the summation
/// order (and, on CUDA, fused multiply-adds) of the pass-1 sums, then round once to `T`:
/// within one unit of `T`'s rounding, plus an absolute floor of f64 noise for cancellation
/// (docs/numerics.md). Ranks: equal, except a borderline decision (tests/common/ranks.rs).
#[allow(clippy::too_many_arguments)]
fn project_case<B: TestBackend, T: Element>(
    b: &B,
    name: &str,
    segs: &Segments,
    k: usize,
    mode: Mode,
    per_seg_beta: bool,
    seed: u64,
) -> Vec<T> {
    let n = segs.total();
    let v: Vec<T> = elements(n, seed, 1.0);
    let basis: Vec<Vec<T>> = (0..k)
        .map(|i| elements(n, seed + 1 + i as u64, 1.0))
        .collect();
    let base: Vec<T> = elements(n, seed + 100, 1.0);
    let betas: Vec<f64> = (0..segs.len())
        .map(|s| 0.25 * (s % 9) as f64 - 1.0)
        .collect();
    let beta = if per_seg_beta {
        Beta::PerSegment(&betas)
    } else {
        Beta::Scalar(1.3)
    };
    let (alpha, opts) = (0.75, ProjectOptions::default());
    let what = format!(
        "project_out {} {name} k={k} {mode:?} per_seg={per_seg_beta}",
        T::DTYPE
    );

    let brefs: Vec<&[T]> = basis.iter().map(|x| x.as_slice()).collect();
    let mut want = base.clone();
    let want_ranks = {
        let p = mode.projection(&v[..], &v[..], brefs.clone(), &base[..], &mut want[..]);
        oracle::project_out(segs, p.alpha(alpha).beta(beta).opts(opts)).unwrap()
    };

    let (dv, dbase) = (b.upload(&v), b.upload(&base));
    let dbasis: Vec<B::Buf<T>> = basis.iter().map(|x| b.upload(x)).collect();
    let mut dout = b.upload(&base);
    let got_ranks = {
        let bv: Vec<_> = dbasis.iter().map(|x| B::view(x, 0..n)).collect();
        let (vv, bb) = (B::view(&dv, 0..n), B::view(&dbase, 0..n));
        let p = mode.projection(B::view(&dv, 0..n), vv, bv, bb, B::view_mut(&mut dout, 0..n));
        B::host_ranks(
            &b.project_out(segs, p.alpha(alpha).beta(beta).opts(opts))
                .unwrap(),
        )
    };
    let got = b.download(&dout);
    assert_close_spanned(&what, segs, k, &got, &want);
    let oracle = common::host_partials(&Reference, segs, &v, None, &brefs).unwrap();
    let r = opts.tol;
    ranks::assert_ranks_match(&what, segs, k, &got_ranks, &want_ranks, &oracle, true, r);
    got
}

/// `got` against `want` within one rounding of T plus an absolute floor of f64 noise
/// (cancellation), except in segments no longer than k: the basis spans them, `v − P v` is
/// cancellation noise amplified by the condition of their Gram matrix (values ~1e-5 whose
/// f64 computation differs between summation orders by ~1e-9), compared with the absolute
/// floor of the first GPU tests.
fn assert_close_spanned<T: Element>(what: &str, segs: &Segments, k: usize, got: &[T], want: &[T]) {
    let (mut long, mut spanned) = ((vec![], vec![]), (vec![], vec![]));
    for (s, r) in segs.iter().enumerate() {
        let to = if k > 0 && segs.seg_len(s) <= k {
            &mut spanned
        } else {
            &mut long
        };
        to.0.extend(got[r.clone()].iter().map(|x| x.to_f64()));
        to.1.extend(want[r].iter().map(|x| x.to_f64()));
    }
    let u = eps::<T>();
    assert_close(what, &long.0, &long.1, 1e-12 * 4.0 * (k as f64 + 2.0), u);
    let floor = match T::DTYPE {
        DType::F32 => 2e-5,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
    };
    let what = format!("{what}, segments no longer than k");
    assert_close(&what, &spanned.0, &spanned.1, floor, u);
}

fn all_project<B: TestBackend, T: Element>(b: &B) {
    let ks: &[usize] = if B::quick() {
        &[0, 1, 8]
    } else {
        &[0, 1, 2, 3, 5, 8]
    };
    for (name, segs) in layouts(B::quick()) {
        for &k in ks {
            for mode in [Mode::Write, Mode::Base, Mode::Accumulate] {
                let per_seg = matches!(mode, Mode::Base);
                project_case::<B, T>(b, &name, &segs, k, mode, per_seg, 7 + k as u64);
            }
        }
    }
}

fn project_out_matches_reference_f32<B: TestBackend>(b: &B) {
    all_project::<B, f32>(b);
}

fn project_out_matches_reference_f16<B: TestBackend>(b: &B) {
    all_project::<B, f16>(b);
}

fn project_out_matches_reference_bf16<B: TestBackend>(b: &B) {
    all_project::<B, bf16>(b);
}

/// One segment of more than 1e6 elements between small ones; outside quick mode 16 Mi
/// elements: three f32 buffers of 64 MiB, beyond the 50–60 MiB L2 of an H100/H200.
fn large_segment_matches_reference<B: TestBackend>(b: &B) {
    let n = if B::quick() { 1_000_003 } else { 16 << 20 };
    let segs = Segments::from_lengths(&[3, n, 64]).unwrap();
    project_case::<B, f32>(b, "large", &segs, 2, Mode::Write, false, 5);
    project_case::<B, f32>(b, "large", &segs, 1, Mode::Accumulate, false, 3);
    project_case::<B, bf16>(b, "large", &segs, 2, Mode::Base, false, 4);
}

/// The same call four times: the same bits (no atomics in the sums, chunk order fixed).
fn bitwise_reproducible<B: TestBackend>(b: &B) {
    // Quick mode: the same shape of problem (a segment of many chunks between small ones,
    // and many small segments) at a tenth of the size.
    let (shapes, big) = if B::quick() {
        (12, 300_001)
    } else {
        (usize::MAX, 3_000_001)
    };
    let resnet = redreg::testing::layouts::resnet18(3);
    let cases = [
        (
            "resnet18",
            Segments::from_shapes(&resnet[..shapes.min(resnet.len())]).unwrap(),
        ),
        ("big", Segments::from_lengths(&[big, 17, 65536]).unwrap()),
    ];
    for (name, segs) in cases {
        let a = project_case::<B, f32>(b, name, &segs, 3, Mode::Base, true, 11);
        for _ in 0..3 {
            let c = project_case::<B, f32>(b, name, &segs, 3, Mode::Base, true, 11);
            assert!(
                a.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: results differ between runs"
            );
        }
    }
}

/// `partials` against the oracle's (f64 sums of exact products: only the order differs);
/// `apply` with the oracle's partials (as after an all-reduce) against the oracle's
/// `apply`: the same ranks — the same partials and the same non-contracted solve
/// (src/project/solve.rs) — and the output within one rounding.
fn split_form<B: TestBackend, T: Element>(b: &B) {
    for (name, segs) in layouts(B::quick()) {
        for k in [0usize, 1, 4, 8] {
            let n = segs.total();
            let what = format!("{} {name} k={k}", T::DTYPE);
            let v: Vec<T> = elements(n, 5, 1.0);
            let basis: Vec<Vec<T>> = (0..k).map(|i| elements(n, 50 + i as u64, 1.0)).collect();
            let brefs: Vec<&[T]> = basis.iter().map(|x| x.as_slice()).collect();
            let pref = common::host_partials(&Reference, &segs, &v, None, &brefs).unwrap();
            let dv = b.upload(&v);
            let dbasis: Vec<B::Buf<T>> = basis.iter().map(|x| b.upload(x)).collect();
            let mut dout = b.upload(&vec![T::default(); n]);
            let p = {
                let bv: Vec<_> = dbasis.iter().map(|x| B::view(x, 0..n)).collect();
                let out = Output::Write {
                    base: None,
                    out: B::view_mut(&mut dout, 0..n),
                };
                b.partials(&segs, &Projection::new(B::view(&dv, 0..n), bv, out))
                    .unwrap()
            };
            assert_close(
                &format!("partials {what}"),
                p.as_slice(),
                pref.as_slice(),
                1e-12 + 1e-13 * n as f64,
                1e-11,
            );

            let opts = ProjectOptions::exact();
            let mut want: Vec<T> = vec![T::default(); n];
            let out = Output::Write {
                base: None,
                out: &mut want[..],
            };
            let p = Projection::host(&v, &brefs, out).opts(opts);
            let want_ranks = oracle::apply(&segs, &pref, p).unwrap();
            let got_ranks = {
                let bv: Vec<_> = dbasis.iter().map(|x| B::view(x, 0..n)).collect();
                let out = Output::Write {
                    base: None,
                    out: B::view_mut(&mut dout, 0..n),
                };
                let p = Projection::new(B::view(&dv, 0..n), bv, out).opts(opts);
                B::host_ranks(&b.apply(&segs, &pref, p).unwrap())
            };
            assert_eq!(got_ranks, want_ranks, "apply {what}: ranks");
            assert_close(
                &format!("apply {what}"),
                &common::to_f64(&b.download(&dout)),
                &common::to_f64(&want),
                1e-12 * 4.0 * (k as f64 + 2.0),
                eps::<T>(),
            );
        }
    }
}

fn split_form_matches_reference<B: TestBackend>(b: &B) {
    split_form::<B, f32>(b);
    split_form::<B, f16>(b);
    split_form::<B, bf16>(b);
}

/// The backends orthonormalise by the Gram matrix (CholQR2); the oracle of the vectors is
/// explicit CGS2 and the oracle of the ranks the Gram-based rule on the oracle's Gram
/// matrix (`reference::orth_coefficients`). CGS2 can keep a vector whose residual the Gram
/// matrix cannot resolve (src/project/solve.rs, Limits): where the kept vectors differ, the
/// backend must have followed the Gram rule or the decision must be borderline, and those
/// segments (rare: at most one in fifty) are left out of the element comparison.
fn orth<B: TestBackend, T: Element>(b: &B) {
    let mut cases = layouts(B::quick());
    cases.push((
        "ragged".into(),
        Segments::from_lengths(&[0, 1, 5, 300, 4000, 2]).unwrap(),
    ));
    for (name, segs) in cases {
        for k in [1usize, 2, 3, 5, 8] {
            let n = segs.total();
            let what = format!("orthonormalize {} {name} k={k}", T::DTYPE);
            let mut basis: Vec<Vec<T>> = (0..k).map(|i| elements(n, 90 + i as u64, 1.0)).collect();
            if k >= 3 {
                // An exactly dependent vector: b2 = b0 (dropped by both methods).
                basis[2] = basis[0].clone();
            }
            let mut dbasis: Vec<B::Buf<T>> = basis.iter().map(|x| b.upload(x)).collect();
            let got_ranks = {
                let mut views: Vec<_> = dbasis.iter_mut().map(|x| B::view_mut(x, 0..n)).collect();
                B::host_ranks(&b.orthonormalize(&segs, &mut views, 1e-7).unwrap())
            };
            let brefs: Vec<&[T]> = basis.iter().map(|x| x.as_slice()).collect();
            let (_, gram_ranks) = oracle::orth_coefficients(&segs, &brefs, 1e-7).unwrap();
            let zeros = vec![T::default(); n];
            let oracle = common::host_partials(&Reference, &segs, &zeros, None, &brefs).unwrap();
            let mut refs: Vec<&mut [T]> = basis.iter_mut().map(|x| x.as_mut_slice()).collect();
            let cgs2_ranks = oracle::orthonormalize(&segs, &mut refs, 1e-7).unwrap();
            // Each vector converted once: per segment only its own range is read (a copy per
            // segment made the ResNet-18 layout quadratic: minutes on the first GPU run).
            let got: Vec<Vec<f64>> = dbasis
                .iter()
                .map(|d| common::to_f64(&b.download(d)))
                .collect();
            let want: Vec<Vec<f64>> = basis.iter().map(|x| common::to_f64(x)).collect();
            let kept = |vecs: &[Vec<f64>], s: usize| -> Vec<bool> {
                vecs.iter()
                    .map(|v| v[segs.range(s)].iter().any(|&x| x != 0.0))
                    .collect()
            };
            let mut skipped = Vec::new();
            for s in 0..segs.len() {
                let got_kept = kept(&got, s);
                if got_kept == kept(&want, s) {
                    continue;
                }
                let cap = segs.seg_len(s).min(k);
                let mut m = vec![0.0; k * k];
                let g = oracle.segment(s).unwrap();
                redreg::testing::solve::orth_segment(k, g, cap, 1e-7, &mut m);
                let gram_kept: Vec<bool> = (0..k).map(|j| m[j * k + j] != 0.0).collect();
                let margin = redreg::testing::solve::decision_margin(k, g, cap, 1e-7);
                assert!(
                    got_kept == gram_kept || margin < ranks::BORDERLINE,
                    "{what}: segment {s}: kept {got_kept:?}, the Gram rule keeps {gram_kept:?} \
                     (margin {margin})"
                );
                skipped.push(s);
            }
            if !skipped.is_empty() {
                eprintln!(
                    "{what}: {} segment(s) where CGS2 keeps other vectors than the Gram rule; \
                     values not compared: {skipped:?}",
                    skipped.len()
                );
            }
            assert!(
                skipped.len() * 50 <= segs.len().max(50),
                "{what}: {} of {} segments differ from CGS2",
                skipped.len(),
                segs.len()
            );
            // CholQR2 and CGS2 agree within a few roundings of T, relative to the entries of
            // a segment's orthonormal vectors (~1/√len). A segment no longer than k is
            // spanned: its last kept vectors can be nearly dependent (large κ), where the two
            // methods differ by more than rounding; those keep the looser bound of the
            // first GPU tests (f32: about 300 units of its rounding).
            for s in (0..segs.len()).filter(|&s| !skipped.contains(&s)) {
                let (r, len) = (segs.range(s), segs.seg_len(s));
                let (atol, rtol) = if len > k {
                    (8.0 * eps::<T>() / (len as f64).sqrt(), 8.0 * eps::<T>())
                } else {
                    match T::DTYPE {
                        DType::F32 => (1e-6, 4e-5),
                        DType::F16 => (2e-4, 8e-3),
                        DType::BF16 => (1.5e-3, 6.4e-2),
                    }
                };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let what = format!("{what} segment {s} vector {i}");
                    assert_close(&what, &g[r.clone()], &w[r.clone()], atol, rtol);
                }
            }
            ranks::assert_ranks_match(
                &what,
                &segs,
                k,
                &got_ranks,
                &gram_ranks,
                &oracle,
                true,
                1e-7,
            );
            // Explicit CGS2's ranks obey the cap too.
            ranks::assert_ranks_match(
                &what,
                &segs,
                k,
                &cgs2_ranks,
                &cgs2_ranks,
                &oracle,
                true,
                1e-7,
            );
        }
    }
}

fn orthonormalize_matches_reference<B: TestBackend>(b: &B) {
    orth::<B, f32>(b);
    orth::<B, f16>(b);
    orth::<B, bf16>(b);
}

/// `v` one element into its buffer, the basis at the start of its own: on CUDA the
/// operands are not 16-byte aligned together, so the kernels take the scalar path.
fn misaligned_views_match_reference<B: TestBackend>(b: &B) {
    let segs = Segments::from_lengths(&[40_000, 3, 1000]).unwrap();
    let n = segs.total();
    let v: Vec<f32> = elements(n + 1, 1, 1.0);
    let g: Vec<f32> = elements(n, 2, 1.0);
    let (dv, dg) = (b.upload(&v), b.upload(&g));
    let mut dout = b.upload(&vec![0f32; n]);
    {
        let out = Output::Write {
            base: None,
            out: B::view_mut(&mut dout, 0..n),
        };
        let p = Projection::new(B::view(&dv, 1..n + 1), [B::view(&dg, 0..n)], out);
        b.project_out(&segs, p).unwrap();
    }
    let mut want = vec![0f32; n];
    let out = Output::Write {
        base: None,
        out: &mut want[..],
    };
    oracle::project_out(&segs, Projection::host(&v[1..], &[&g[..]], out)).unwrap();
    let (got, want) = (common::to_f64(&b.download(&dout)), common::to_f64(&want));
    assert_close("misaligned", &got, &want, 1e-12 * 12.0, eps::<f32>());
}

/// Bad lengths, too many basis vectors, a NaN α, a per-segment β of the wrong length, an
/// `orthonormalize` of the wrong length or with a negative tolerance: `Err`, nothing
/// written.
fn invalid_arguments_are_errors<B: TestBackend>(b: &B) {
    let segs = Segments::from_lengths(&[3, 7]).unwrap();
    let dv = b.upload(&[1f32; 10]);
    let short = b.upload(&[1f32; 9]);
    let mut dout = b.upload(&[5f32; 10]);
    {
        let out = Output::Accumulate(B::view_mut(&mut dout, 0..10));
        let e = b.project_out(
            &segs,
            Projection::new(B::view(&dv, 0..10), [B::view(&short, 0..9)], out),
        );
        let e = e.err().expect("a basis vector of 9 elements for 10");
        assert!(e.to_string().contains("expected 10"), "{e}");
    }
    {
        let nine: Vec<_> = (0..9).map(|_| B::view(&dv, 0..10)).collect();
        let out = Output::Accumulate(B::view_mut(&mut dout, 0..10));
        assert!(b
            .project_out(&segs, Projection::new(B::view(&dv, 0..10), nine, out))
            .is_err());
    }
    {
        let out = Output::Accumulate(B::view_mut(&mut dout, 0..10));
        let p = Projection::new(B::view(&dv, 0..10), [], out).alpha(f64::NAN);
        assert!(b.project_out(&segs, p).is_err());
    }
    {
        let out = Output::Accumulate(B::view_mut(&mut dout, 0..10));
        let p =
            Projection::new(B::view(&dv, 0..10), [], out).beta(Beta::PerSegment(&[1.0, 2.0, 3.0]));
        assert!(b.project_out(&segs, p).is_err());
    }
    assert!(b.download(&dout).iter().all(|&x| x == 5.0), "an Err wrote");
    let mut b9 = b.upload(&[1f32; 9]);
    let mut b10 = b.upload(&[1f32; 10]);
    assert!(b
        .orthonormalize(&segs, &mut [B::view_mut(&mut b9, 0..9)], 1e-7)
        .is_err());
    assert!(b
        .orthonormalize(&segs, &mut [B::view_mut(&mut b10, 0..10)], -1.0)
        .is_err());
    assert!(b.download(&b10).iter().all(|&x| x == 1.0), "an Err wrote");
}

mod cpu_only {
    use super::common::{self, gather, host_partials, random_lengths, shard_layout, Rng};
    use super::project_case;
    use proptest::prelude::*;
    use redreg::{bf16, f16, Backend, CpuBackend, Element, Output, Partials, Projection};
    use redreg::{DType, Segments};

    fn refs<T>(b: &[Vec<T>]) -> Vec<&[T]> {
        b.iter().map(|x| x.as_slice()).collect()
    }

    /// `project_case` on a random ragged layout, with a 257-element chunk so that segments
    /// span many chunks.
    fn ragged<T: Element>(seed: u64, k: usize, m: usize, per_seg: bool) {
        let mut rng = Rng::new(seed);
        let segs = Segments::from_lengths(&random_lengths(&mut rng, 9, 3000)).unwrap();
        let be = CpuBackend::with_threads(2)
            .unwrap()
            .with_chunk(257)
            .unwrap();
        let mode = [
            common::Mode::Write,
            common::Mode::Base,
            common::Mode::Accumulate,
        ][m];
        project_case::<CpuBackend, T>(&be, "ragged", &segs, k, mode, per_seg, seed);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn ragged_layouts_match_reference_f32(seed in any::<u64>(), k in 0usize..=8, m in 0usize..3, pb in any::<bool>()) {
            ragged::<f32>(seed >> 8, k, m, pb)
        }
        #[test]
        fn ragged_layouts_match_reference_f16(seed in any::<u64>(), k in 0usize..=8, m in 0usize..3, pb in any::<bool>()) {
            ragged::<f16>(seed >> 8, k, m, pb)
        }
        #[test]
        fn ragged_layouts_match_reference_bf16(seed in any::<u64>(), k in 0usize..=8, m in 0usize..3, pb in any::<bool>()) {
            ragged::<bf16>(seed >> 8, k, m, pb)
        }

        /// Shards through the backend's split form equal the unsharded backend result.
        #[test]
        fn sharded_partials_add_up(seed in any::<u64>(), k in 1usize..=4, shards_ix in 0usize..3) {
            let shards = [2usize, 3, 7][shards_ix];
            let mut rng = Rng::new(seed);
            let segs = Segments::from_lengths(&random_lengths(&mut rng, 5, 2000)).unwrap();
            let n = segs.total();
            let v = common::to_t::<f32>(&rng.normals(n));
            let basis: Vec<Vec<f32>> = (0..k).map(|_| common::to_t(&rng.normals(n))).collect();
            let be = CpuBackend::new().with_chunk(100).unwrap();
            let whole = host_partials(&be, &segs, &v, None, &refs(&basis)).unwrap();
            let mut sum = Partials::zeros(k, segs.len()).unwrap();
            for ranges in shard_layout(&mut rng, &segs, shards) {
                let lsegs = Segments::from_lengths(&ranges.iter().map(|r| r.len()).collect::<Vec<_>>()).unwrap();
                let lb: Vec<Vec<f32>> = basis.iter().map(|x| gather(x, &ranges)).collect();
                sum.add(&host_partials(&be, &lsegs, &gather(&v, &ranges), None, &refs(&lb)).unwrap()).unwrap();
            }
            // Compensated sums: shard order changes at most the last bits.
            for (a, b) in sum.as_slice().iter().zip(whole.as_slice()) {
                prop_assert!((a - b).abs() <= 1e-13 * b.abs().max(1.0), "{} vs {}", a, b);
            }
        }
    }

    /// The cache-aware schedule (`with_cache_bytes`) changes no bit: every output, k and β
    /// form, with budgets from a few elements (every tensor its own group, the larger ones
    /// with pass 2 backwards) to everything in one group, against the same backend with
    /// the schedule off (one pass 1 over all tensors, then one pass 2); `project_case`
    /// also holds both to the oracle.
    fn cache_groups_case<T: Element>(seed: u64, k: usize, m: usize, per_seg: bool, budget: usize) {
        let mut rng = Rng::new(seed);
        let segs = Segments::from_lengths(&random_lengths(&mut rng, 12, 3000)).unwrap();
        let be = |bytes| {
            CpuBackend::with_threads(2)
                .unwrap()
                .with_chunk(257)
                .unwrap()
                .with_inline_elements(0)
                .with_cache_bytes(bytes)
        };
        let mode = [
            common::Mode::Write,
            common::Mode::Base,
            common::Mode::Accumulate,
        ][m];
        let off =
            project_case::<CpuBackend, T>(&be(0), "groups off", &segs, k, mode, per_seg, seed);
        let on =
            project_case::<CpuBackend, T>(&be(budget), "groups on", &segs, k, mode, per_seg, seed);
        let bits = |x: &[T]| x.iter().map(|e| e.to_f64().to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&off) == bits(&on),
            "cache budget {budget} B changed the result"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn cache_groups_change_no_bit_f32(seed in any::<u64>(), k in 0usize..=8, m in 0usize..3, pb in any::<bool>(), budget in 1usize..200_000) {
            cache_groups_case::<f32>(seed >> 8, k, m, pb, budget)
        }
        #[test]
        fn cache_groups_change_no_bit_bf16(seed in any::<u64>(), k in 0usize..=8, m in 0usize..3, pb in any::<bool>(), budget in 1usize..200_000) {
            cache_groups_case::<bf16>(seed >> 8, k, m, pb, budget)
        }
    }

    /// The drift step (θ − θ₀ against the gradient, written into the gradient: the
    /// controller's step) with θ₀ ≠ θ, grouped and not: the same bits.
    #[test]
    fn cache_groups_keep_the_drift_step() {
        let mut rng = Rng::new(7);
        let segs = Segments::from_lengths(&[70_000, 3, 0, 5_000, 120_000, 1, 9_000]).unwrap();
        let n = segs.total();
        let theta = common::to_t::<f32>(&rng.normals(n));
        let theta0 = common::to_t::<f32>(&rng.normals(n));
        let grad = common::to_t::<f32>(&rng.normals(n));
        let run = |bytes: usize| {
            let be = CpuBackend::with_threads(2).unwrap().with_cache_bytes(bytes);
            let mut g = grad.clone();
            let p = Projection::drift(&theta[..], &theta0[..], Vec::new(), &mut g[..]).beta(0.7);
            let ranks = be.project_out(&segs, p).unwrap();
            (g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), ranks)
        };
        let off = run(0);
        // 200 KiB: the small tensors share groups; 70 000 and 120 000 elements (three
        // operands of 4 bytes) run alone, pass 2 backwards.
        for bytes in [1, 200 << 10, CpuBackend::DEFAULT_CACHE_BYTES] {
            assert!(
                run(bytes) == off,
                "cache budget {bytes} B changed the drift step"
            );
        }
        assert_ne!(off.0, grad.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    /// The step's schedule (one parallel region: pass 2 of a tensor as soon as its pass 1 and
    /// solve are done, pass 1 at most one cache group ahead) gives the bits of the split
    /// form, whose `partials` and `apply` each run as one parallel loop over every chunk:
    /// the drift step with θ₀ and extra basis vectors, a per-tensor β, 1 to 3 threads,
    /// every tensor its own group, shared groups, and one group. Every tensor is longer
    /// than k, so that the split form's ranks (not capped at the length) are the same.
    #[test]
    fn the_step_schedule_gives_the_split_forms_bits() {
        let mut rng = Rng::new(14);
        let segs = Segments::from_lengths(&[70_000, 9, 5_000, 120_000, 12, 0, 9_000]).unwrap();
        let n = segs.total();
        let theta = common::to_t::<bf16>(&rng.normals(n));
        let theta0 = common::to_t::<bf16>(&rng.normals(n));
        let grad = common::to_t::<bf16>(&rng.normals(n));
        let extra: Vec<Vec<bf16>> = (0..2).map(|_| common::to_t(&rng.normals(n))).collect();
        let beta: Vec<f64> = (0..segs.len()).map(|s| 0.25 + s as f64 / 8.0).collect();
        fn drift<'a>(
            t: &'a [bf16],
            t0: &'a [bf16],
            extra: &'a [Vec<bf16>],
            beta: &'a [f64],
            g: &'a mut [bf16],
        ) -> Projection<'a, &'a [bf16], &'a mut [bf16]> {
            let extra = extra.iter().map(|e| &e[..]);
            Projection::drift(t, t0, extra, g).beta(beta)
        }
        let bits = |g: &[bf16]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for threads in [1, 2, 3] {
            for bytes in [0, 1, 200 << 10] {
                let be = CpuBackend::with_threads(threads)
                    .unwrap()
                    .with_chunk(1000)
                    .unwrap()
                    .with_inline_elements(0)
                    .with_cache_bytes(bytes);
                let mut g = grad.clone();
                let parts = be
                    .partials(&segs, &drift(&theta, &theta0, &extra, &beta, &mut g))
                    .unwrap();
                let split_ranks = be
                    .apply(&segs, &parts, drift(&theta, &theta0, &extra, &beta, &mut g))
                    .unwrap();
                let mut h = grad.clone();
                let ranks = be
                    .project_out(&segs, drift(&theta, &theta0, &extra, &beta, &mut h))
                    .unwrap();
                assert_eq!(ranks, split_ranks, "{threads} threads, {bytes} B");
                assert!(
                    bits(&h) == bits(&g),
                    "{threads} threads, {bytes} B: other bits"
                );
                assert_ne!(bits(&h), bits(&grad));
            }
        }
    }

    /// Bitwise identical results for 1, 2 and 8 threads, run to run, and on the calling
    /// thread (`with_inline_elements(usize::MAX)`: the inline path of small calls).
    #[test]
    fn deterministic_across_thread_counts() {
        let mut rng = Rng::new(99);
        let segs = Segments::from_lengths(&[100_000, 0, 7, 65_537, 1, 250_000]).unwrap();
        let n = segs.total();
        let v = common::to_t::<f32>(&rng.normals(n));
        let basis: Vec<Vec<f32>> = (0..3).map(|_| common::to_t(&rng.normals(n))).collect();
        let grad = common::to_t::<f32>(&rng.normals(n));
        let mut results = Vec::new();
        for (threads, inline) in [(1usize, 0), (2, 0), (8, 0), (2, 0), (2, usize::MAX)] {
            let be = CpuBackend::with_threads(threads)
                .unwrap()
                .with_inline_elements(inline);
            let p = host_partials(&be, &segs, &v, None, &refs(&basis)).unwrap();
            let mut out = grad.clone();
            let o = Output::Accumulate(&mut out[..]);
            be.project_out(&segs, Projection::host(&v, &refs(&basis), o).beta(0.9))
                .unwrap();
            let mut q = basis.clone();
            let mut views: Vec<&mut [f32]> = q.iter_mut().map(|b| b.as_mut_slice()).collect();
            be.orthonormalize(&segs, &mut views, 1e-7).unwrap();
            let bits: Vec<u64> = p.as_slice().iter().map(|x| x.to_bits()).collect();
            let obits: Vec<u32> = out
                .iter()
                .chain(q.iter().flatten())
                .map(|x| x.to_bits())
                .collect();
            results.push((bits, obits));
        }
        for r in &results[1..] {
            assert!(r.0 == results[0].0, "partials differ between thread counts");
            assert!(r.1 == results[0].1, "outputs differ between thread counts");
        }
    }

    /// The CPU backend's own arguments: no threads, no chunk.
    #[test]
    fn bad_backend_arguments_are_errors() {
        assert!(CpuBackend::with_threads(0).is_err());
        assert!(CpuBackend::new().with_chunk(0).is_err());
        // The element types of this file, spelled once for the unused-import lint.
        assert_eq!(f32::DTYPE, DType::F32);
    }
}

#[cfg(feature = "cuda")]
mod cuda_only {
    use super::common::gpu;

    /// NVRTC compiles every embedded module to PTX (every projection kernel an entry) and to
    /// a cubin for a real architecture (the fallback for a driver older than the NVRTC).
    #[test]
    fn nvrtc_compiles_embedded_sources() {
        if let Err(reason) = redreg::cuda::nvrtc_available() {
            let test = "nvrtc_compiles_embedded_sources";
            gpu::skip(test, "REDREG_REQUIRE_NVRTC", &reason);
            return;
        }
        for m in redreg::cuda::module_names() {
            let ptx = redreg::cuda::nvrtc_compile(m, "compute_75")
                .unwrap_or_else(|e| panic!("module {m}: {e}"));
            if m == "project" {
                for k in redreg::testing::project_kernel_names() {
                    let entry = format!(".entry {k}(");
                    assert!(ptx.contains(&entry), "PTX of {m} lacks {k}");
                }
            }
            println!("NVRTC: module {m}: {} bytes of PTX", ptx.len());
            let cubin = redreg::cuda::nvrtc_compile_cubin(m, "sm_75")
                .unwrap_or_else(|e| panic!("module {m}: {e}"));
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "module {m}: a cubin is an ELF file"
            );
        }
    }

    #[test]
    fn every_kernel_symbol_loads() {
        if let Some(b) = gpu::backend("every_kernel_symbol_loads") {
            b.preload_project().unwrap();
            let paths: Vec<String> = redreg::cuda::module_names()
                .into_iter()
                .map(|m| format!("{m}={}", b.kernel_source(m).unwrap()))
                .collect();
            let cc = b.compute_capability();
            // One line that scripts/gpu-check.sh copies into its summary.
            println!(
                "KERNEL-PATH: {} (sm_{}{}, prebuilt fatbin embedded: {})",
                paths.join(" "),
                cc.0,
                cc.1,
                redreg::cuda::PREBUILT_KERNELS
            );
            let n = redreg::testing::project_kernel_names().len();
            println!("loaded {n} kernels");
        }
    }
}
