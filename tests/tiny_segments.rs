//! The rank rule on tiny segments (issue 13, item 0): k = 2..8 basis vectors on thousands
//! of segments of length 0..8 holding uniform [-1, 1) data. Before the noise floor of
//! `src/project/solve.rs`, ~4 % of them reported a rank above their length (noise counted as
//! signal), on the CPU backend and in the reference alike.

mod common;

use common::Rng;
use redreg::{reference, Backend, CpuBackend, Output, ProjectOptions, Projection, Segments};

const SEGMENTS: usize = 3000;

/// Layout of `SEGMENTS` segments of length 0..=8 and `k + 1` f32 vectors (v, then the
/// basis) of uniform [-1, 1) data.
fn tiny(k: usize, seed: u64) -> (Segments, Vec<f32>, Vec<Vec<f32>>) {
    let mut rng = Rng::new(seed);
    let lens: Vec<usize> = (0..SEGMENTS).map(|_| rng.below(9)).collect();
    let segs = Segments::from_lengths(&lens).unwrap();
    let vec_of =
        |rng: &mut Rng| -> Vec<f32> { (0..segs.total()).map(|_| rng.signed(1.0) as f32).collect() };
    let v = vec_of(&mut rng);
    let basis = (0..k).map(|_| vec_of(&mut rng)).collect();
    (segs, v, basis)
}

/// Random vectors are independent with probability 1 and, at these sizes, far from the
/// noise floor: every segment has rank exactly `min(length, k)`.
fn assert_full_rank(what: &str, segs: &Segments, k: usize, ranks: &[u32]) {
    let bad: Vec<(usize, usize, u32)> = (0..segs.len())
        .filter(|&s| ranks[s] as usize != segs.seg_len(s).min(k))
        .map(|s| (s, segs.seg_len(s), ranks[s]))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} segments with rank != min(length, k={k}) (seg, length, rank): {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

#[test]
fn tiny_segments_rank_is_min_of_length_and_k() {
    let cpu = CpuBackend::new();
    for k in 2..=8 {
        let (segs, v, basis) = tiny(k, 1300 + k as u64);
        let b: Vec<&[f32]> = basis.iter().map(|x| x.as_slice()).collect();
        for (name, opts) in [
            ("default", ProjectOptions::default()),
            ("exact", ProjectOptions::exact()),
        ] {
            let mut out_ref = vec![0f32; segs.total()];
            let mut out_cpu = vec![0f32; segs.total()];
            let write = |out: &mut Vec<f32>| -> Vec<f32> { std::mem::take(out) };
            let r_ref = reference::project_out(
                &segs,
                Projection::host(
                    &v,
                    &b,
                    Output::Write {
                        base: None,
                        out: &mut out_ref,
                    },
                )
                .opts(opts),
            )
            .unwrap();
            let r_cpu = cpu
                .project_out(
                    &segs,
                    Projection::host(
                        &v,
                        &b,
                        Output::Write {
                            base: None,
                            out: &mut out_cpu,
                        },
                    )
                    .opts(opts),
                )
                .unwrap();
            assert_full_rank(&format!("reference {name} k={k}"), &segs, k, &r_ref);
            assert_full_rank(&format!("cpu {name} k={k}"), &segs, k, &r_cpu);
            // Exact projector, full rank on a segment of length <= k: v lies in the span,
            // v - Pv ~ 0. (The default ridge 1e-12 leaves a part of v when a basis vector's
            // squared norm is ~1e-12 itself, as the authors' script does.)
            let (o_ref, o_cpu) = (write(&mut out_ref), write(&mut out_cpu));
            for (s, r) in segs.iter().enumerate() {
                if name == "exact" && segs.seg_len(s) <= k {
                    for e in r {
                        assert!(
                            o_ref[e].abs() < 1e-3 && o_cpu[e].abs() < 1e-3,
                            "{name} k={k} seg {s} len {}: {} {}",
                            segs.seg_len(s),
                            o_ref[e],
                            o_cpu[e]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn tiny_segments_orthonormalize_rank_is_capped() {
    let cpu = CpuBackend::new();
    for k in 2..=8 {
        let (segs, _, basis) = tiny(k, 1400 + k as u64);
        let mut b_cpu = basis.clone();
        let mut b_ref = basis.clone();
        let mut m_cpu: Vec<&mut [f32]> = b_cpu.iter_mut().map(|x| x.as_mut_slice()).collect();
        let r_cpu = cpu.orthonormalize(&segs, &mut m_cpu, 1e-7).unwrap();
        let mut m_ref: Vec<&mut [f32]> = b_ref.iter_mut().map(|x| x.as_mut_slice()).collect();
        let r_ref = reference::orthonormalize(&segs, &mut m_ref, 1e-7).unwrap();
        let b: Vec<&[f32]> = basis.iter().map(|x| x.as_slice()).collect();
        let (_, r_gram) = reference::orth_coefficients(&segs, &b, 1e-7).unwrap();
        assert_full_rank(&format!("cpu orthonormalize k={k}"), &segs, k, &r_cpu);
        assert_full_rank(&format!("reference CGS2 k={k}"), &segs, k, &r_ref);
        assert_full_rank(&format!("reference Cholesky-QR k={k}"), &segs, k, &r_gram);
    }
}

/// The split form's `apply` does not know the global segment length (its partials may be
/// summed over shards), so it relies on the noise floor alone: it still must not report
/// noise as rank on these segments.
#[test]
fn tiny_segments_split_form_relies_on_the_floor() {
    let cpu = CpuBackend::new();
    for k in 2..=8 {
        let (segs, v, basis) = tiny(k, 1500 + k as u64);
        let b: Vec<&[f32]> = basis.iter().map(|x| x.as_slice()).collect();
        let p = common::host_partials(&cpu, &segs, &v, None, &b).unwrap();
        let mut out = vec![0f32; segs.total()];
        let r = cpu
            .apply(
                &segs,
                &p,
                Projection::host(
                    &v,
                    &b,
                    Output::Write {
                        base: None,
                        out: &mut out,
                    },
                )
                .opts(ProjectOptions::exact()),
            )
            .unwrap();
        assert_full_rank(&format!("cpu apply k={k}"), &segs, k, &r);
    }
}
