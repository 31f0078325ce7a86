//! Distributed scenarios shared by the in-process test (`dist_threads.rs`, a group of
//! threads) and the MPI test (`mpi_dist.rs`, one process per rank): every rank runs the
//! same function with its own `AllReduce`. Every rank also computes the single-process
//! oracle itself (the data is a function of a seed), so no result travels except through
//! the collective under test.
//!
//! Failed checks are collected, not panicked on, so a failing rank keeps taking part in
//! the collectives and the group cannot hang on a test failure.
#![allow(dead_code)]

use redreg::{Backend, Projection};
use std::ops::Range;

use redreg::controller::{Config, Controller, Decision, ModalityShapes, RedRegStats, StepInputs};
use redreg::dist::{agree, project_sharded, AllReduce};
use redreg::stats::{CpuStats, ReducibleStats, StatHandle, Stats as _, StatsPlan};
use redreg::{reference, Beta, CpuBackend, DType, Output, ProjectOptions, Segments};

use super::{eps, to_f64, Rng};

/// Collected check failures of one rank.
#[derive(Debug, Default)]
pub struct Checks {
    pub failures: Vec<String>,
    pub passed: usize,
}

impl Checks {
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else if self.failures.len() < 20 {
            self.failures.push(what());
        }
    }
}

/// Rank `rank`'s part of `0..total`, uneven: weights `((i + salt) % size) + 1`.
pub fn cut(total: usize, rank: usize, size: usize, salt: usize) -> Range<usize> {
    let w = |i: usize| ((i + salt) % size) + 1;
    let all: usize = (0..size).map(w).sum();
    let before: usize = (0..rank).map(w).sum();
    total * before / all..total * (before + w(rank)) / all
}

/// FNV-1a over the bits of `xs`.
pub fn hash_bits(xs: impl IntoIterator<Item = u64>) -> u64 {
    xs.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ x).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub const B: usize = 11;
const C: usize = 3;
const FZ: usize = 5;
const FX: usize = 4;
const D: usize = 3;

/// One step's whole batch, both modalities (audio 0, visual 1).
pub struct Batch {
    logits: [Vec<f32>; 2],
    labels: Vec<i64>,
    z1: [Vec<f32>; 2],
    z2: [Vec<f32>; 2],
    x1: [Vec<f32>; 2],
    x2: [Vec<f32>; 2],
    pooled: [Vec<f32>; 2],
}

fn f32s(g: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (g.normal() * scale) as f32).collect()
}

/// Data whose decisions change along the sequence: the stronger modality alternates by
/// epoch, and the agreement of the pooled features sweeps across the gate's threshold.
pub fn batch(epoch: usize, step: usize) -> Batch {
    let mut g = Rng::new((epoch * 1000 + step) as u64);
    let labels: Vec<i64> = (0..B).map(|_| g.below(C) as i64).collect();
    let strength = if epoch % 2 == 0 {
        [0.4, 1.6]
    } else {
        [1.7, 0.5]
    };
    let logits = std::array::from_fn(|m| {
        let mut l = f32s(&mut g, B * C, 1.0);
        let s = strength[m] * (1.0 + 0.04 * step as f64);
        for (i, &y) in labels.iter().enumerate() {
            l[i * C + y as usize] += (2.0 * s) as f32;
        }
        l
    });
    let z1: [Vec<f32>; 2] = std::array::from_fn(|_| f32s(&mut g, B * FZ, 1.0));
    let noise = 0.1 + 0.05 * ((step * 7) % 5) as f64;
    let z2 = std::array::from_fn(|m| {
        z1[m]
            .iter()
            .map(|&z| z + (g.normal() * noise) as f32)
            .collect()
    });
    let x1: [Vec<f32>; 2] = std::array::from_fn(|_| f32s(&mut g, B * FX, 1.0));
    let x2 = std::array::from_fn(|m| {
        x1[m]
            .iter()
            .map(|&x| x + (g.normal() * 0.0424) as f32)
            .collect()
    });
    let a = f32s(&mut g, B * D, 1.0);
    let c = 0.05 + 0.1 * (step % 8) as f64;
    let v = a
        .iter()
        .map(|&x| (c * x as f64 + (1.0 - c) * g.normal()) as f32)
        .collect();
    Batch {
        logits,
        labels,
        z1,
        z2,
        x1,
        x2,
        pooled: [a, v],
    }
}

/// A plan for `rows` rows of the batch, its executor and handles.
pub struct Stats {
    pub plan: StatsPlan,
    pub exec: CpuStats,
    pub h: RedRegStats,
}

impl Stats {
    pub fn new(rows: usize) -> Self {
        let sh = ModalityShapes {
            dtype: DType::F32,
            batch: rows,
            classes: C,
            features: rows * FZ,
            inputs: rows * FX,
            pooled: D,
        };
        let mut plan = StatsPlan::new();
        let h = RedRegStats::declare(&mut plan, &[sh, sh]).unwrap();
        let exec = CpuStats::new(&plan).unwrap();
        Self { plan, exec, h }
    }

    /// Runs the plan on rows `r` of the batch, with `labels` as given (may be faulty).
    /// Returns whether the run reported a label fault.
    pub fn run(&mut self, b: &Batch, r: Range<usize>, labels: &[i64]) -> bool {
        let h = &self.h;
        let s = |v: &[f32], w: usize| v[r.start * w..r.end * w].to_vec();
        let (l0, l1) = (s(&b.logits[0], C), s(&b.logits[1], C));
        let (za1, za2, zv1, zv2) = (
            s(&b.z1[0], FZ),
            s(&b.z2[0], FZ),
            s(&b.z1[1], FZ),
            s(&b.z2[1], FZ),
        );
        let (xa1, xa2, xv1, xv2) = (
            s(&b.x1[0], FX),
            s(&b.x2[0], FX),
            s(&b.x1[1], FX),
            s(&b.x2[1], FX),
        );
        let (pa, pv) = (s(&b.pooled[0], D), s(&b.pooled[1], D));
        let res = self.exec.run(&mut [
            h.score[0].bind((&l0, labels)),
            h.score[1].bind((&l1, labels)),
            h.feature_diff[0].bind((&za1, &za2)),
            h.feature_diff[1].bind((&zv1, &zv2)),
            h.input_diff[0].bind((&xa1, &xa2)),
            h.input_diff[1].bind((&xv1, &xv2)),
            h.agreement[0].bind((&pa, &pv)),
        ]);
        match res {
            Ok(_) => false,
            Err(redreg::Error::LabelOutOfRange { .. }) => true,
            Err(e) => panic!("stats run: {e}"),
        }
    }
}

fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

fn inputs_close(a: &StepInputs, b: &StepInputs) -> bool {
    let tol = 1e-12;
    let red = |x: &redreg::controller::Redundancy| x.value(1e-12).unwrap_or(f64::NAN);
    a.scores
        .iter()
        .zip(&b.scores)
        .all(|(x, y)| rel(*x, *y) < tol)
        && a.redundancy
            .iter()
            .zip(&b.redundancy)
            .all(|(x, y)| rel(red(x), red(y)) < tol)
        && a.agreement
            .iter()
            .zip(&b.agreement)
            .all(|(x, y)| (x - y).abs() < tol)
}

fn decision_bits(d: &Decision) -> Vec<u64> {
    vec![
        d.suppressed.map_or(u64::MAX, |m| m as u64),
        d.gate.to_bits(),
        d.beta.to_bits(),
        d.pos_sim.to_bits(),
        hash_bits(d.modalities.iter().map(|m| m.r.to_bits())),
    ]
}

/// (a) Data parallel: every rank runs the plan on its uneven slice of each step's batch,
/// all-reduces the sums once, and decides; the decision must equal the single-process
/// decision on the whole batch and agree bit for bit across ranks. Returns this rank's
/// decisions.
pub fn ddp_decisions<A: AllReduce>(
    comm: &A,
    rank: usize,
    size: usize,
    epochs: usize,
    steps: usize,
    ck: &mut Checks,
) -> Vec<Decision> {
    let mine = cut(B, rank, size, 0);
    let mut whole = Stats::new(B);
    let mut local = Stats::new(mine.len());
    let mut sums = ReducibleStats::new(&local.plan);
    let mut ctl_whole = Controller::new(Config::new(epochs), 2).unwrap();
    let mut ctl_local = Controller::new(Config::new(epochs), 2).unwrap();
    let mut out = Vec::new();
    for epoch in 0..epochs {
        ctl_whole.begin_epoch(epoch).unwrap();
        ctl_local.begin_epoch(epoch).unwrap();
        for step in 0..steps {
            let b = batch(epoch, step);
            whole.run(&b, 0..B, &b.labels);
            let want_in = whole.h.inputs(whole.exec.results()).unwrap();
            let want = ctl_whole.observe(&want_in).unwrap();

            local.run(&b, mine.clone(), &b.labels[mine.clone()]);
            sums.fill(local.exec.results()).unwrap();
            comm.all_reduce_sum_checked(sums.as_mut_slice()).unwrap();
            let got_in = local.h.from_reduced(&sums).unwrap();
            let got = ctl_local.observe(&got_in).unwrap();

            let at = format!("rank {rank}/{size}, epoch {epoch} step {step}");
            ck.check(inputs_close(&got_in, &want_in), || {
                format!("{at}: inputs {got_in:?} vs whole batch {want_in:?}")
            });
            ck.check(got.suppressed == want.suppressed, || {
                format!(
                    "{at}: suppressed {:?} vs {:?}",
                    got.suppressed, want.suppressed
                )
            });
            ck.check(got.gate == want.gate, || {
                format!("{at}: gate {} vs {}", got.gate, want.gate)
            });
            ck.check(rel(got.beta, want.beta) <= 1e-12, || {
                format!("{at}: beta {} vs {}", got.beta, want.beta)
            });
            let same = agree(comm, &decision_bits(&got)).unwrap();
            ck.check(same, || format!("{at}: ranks decided differently"));
            out.push(got);
        }
    }
    // The sequence must exercise every branch, or the comparison proves little.
    let seen = |p: &dyn Fn(&Decision) -> bool| out.iter().any(p);
    ck.check(seen(&|d| d.suppressed == Some(0)), || {
        "no step suppressed audio".into()
    });
    ck.check(seen(&|d| d.suppressed == Some(1)), || {
        "no step suppressed visual".into()
    });
    ck.check(seen(&|d| d.dominant.is_some() && d.gate == 0.0), || {
        "no step had its gate closed on a dominant modality".into()
    });
    out
}

/// A label out of range on one rank only: the reduced statistics give `Err` on every rank.
pub fn ddp_label_fault<A: AllReduce>(comm: &A, rank: usize, size: usize, ck: &mut Checks) {
    let mine = cut(B, rank, size, 0);
    let mut local = Stats::new(mine.len());
    let mut sums = ReducibleStats::new(&local.plan);
    let b = batch(0, 0);
    let mut labels = b.labels[mine.clone()].to_vec();
    let faulty = size - 1;
    if rank == faulty {
        if let Some(l) = labels.first_mut() {
            *l = 7;
        }
    }
    let saw = local.run(&b, mine.clone(), &labels);
    ck.check(saw == (rank == faulty && !mine.is_empty()), || {
        format!("rank {rank}: local fault {saw}")
    });
    sums.fill(local.exec.results()).unwrap();
    comm.all_reduce_sum_checked(sums.as_mut_slice()).unwrap();
    let r = local.h.from_reduced(&sums);
    ck.check(
        matches!(&r, Err(e) if e.to_string().contains("label out of range")),
        || format!("rank {rank}: a label fault on rank {faulty} gave {r:?}"),
    );
}

const SEG_LENS: [usize; 7] = [0, 1, 7, 300, 5000, 40_000, 3];

/// (b) Sharded: every rank holds an uneven slice of every tensor; `project_sharded`
/// must equal the f64 oracle on the whole tensors, the ranks must have solved bit-identical
/// partials, and the assembled result must agree bit for bit across ranks.
pub fn sharded<A: AllReduce>(comm: &A, rank: usize, size: usize, k: usize, ck: &mut Checks) {
    let segs = Segments::from_lengths(&SEG_LENS).unwrap();
    let n = segs.total();
    let mut g = Rng::new(100 + k as u64);
    let v = f32s(&mut g, n, 1.0);
    let base = f32s(&mut g, n, 1.0);
    let mut basis: Vec<Vec<f32>> = (0..k).map(|_| f32s(&mut g, n, 1.0)).collect();
    if k >= 3 {
        // Rank-deficient on segment 3: the third vector repeats the first.
        let r = segs.range(3);
        let copy = basis[0][r.clone()].to_vec();
        basis[2][r].copy_from_slice(&copy);
    }
    let betas: Vec<f64> = (0..segs.len()).map(|s| 0.5 + 0.25 * s as f64).collect();
    let opts = ProjectOptions::default();
    let views: Vec<&[f32]> = basis.iter().map(|b| b.as_slice()).collect();

    // The oracle on the whole tensors.
    let mut want = vec![0f32; n];
    let want_ranks = reference::project_out(
        &segs,
        Projection::host(
            &v,
            &views,
            Output::Write {
                base: Some(&base),
                out: &mut want,
            },
        )
        .alpha(0.5)
        .beta(Beta::PerSegment(&betas))
        .opts(opts),
    )
    .unwrap();

    // This rank's slices, segment after segment.
    let pieces: Vec<Range<usize>> = segs
        .iter()
        .enumerate()
        .map(|(s, r)| {
            let c = cut(r.len(), rank, size, s);
            r.start + c.start..r.start + c.end
        })
        .collect();
    let take =
        |x: &[f32]| -> Vec<f32> { pieces.iter().flat_map(|r| x[r.clone()].to_vec()).collect() };
    let lsegs =
        Segments::from_lengths(&pieces.iter().map(|r| r.len()).collect::<Vec<_>>()).unwrap();
    let (lv, lbase) = (take(&v), take(&base));
    let lbasis: Vec<Vec<f32>> = basis.iter().map(|b| take(b)).collect();
    let lviews: Vec<&[f32]> = lbasis.iter().map(|b| b.as_slice()).collect();
    let be = CpuBackend::new().with_chunk(1000).unwrap();

    let mut got = vec![0f32; lv.len()];
    let ranks = project_sharded(
        &be,
        comm,
        &lsegs,
        Projection::host(
            &lv,
            &lviews,
            Output::Write {
                base: Some(&lbase),
                out: &mut got,
            },
        )
        .alpha(0.5)
        .beta(Beta::PerSegment(&betas))
        .opts(opts),
    )
    .unwrap();
    let at = format!("rank {rank}/{size}, k = {k}");
    ck.check(ranks == want_ranks, || {
        format!("{at}: ranks {ranks:?} vs whole {want_ranks:?}")
    });
    let wanted: Vec<f32> = pieces
        .iter()
        .flat_map(|r| want[r.clone()].to_vec())
        .collect();
    let (gf, wf) = (to_f64(&got), to_f64(&wanted));
    let atol = 1e-12 * 4.0 * (k as f64 + 2.0);
    let bad = gf
        .iter()
        .zip(&wf)
        .position(|(a, b)| (a - b).abs() > atol + eps::<f32>() * b.abs());
    ck.check(bad.is_none(), || {
        let i = bad.unwrap_or(0);
        format!(
            "{at}: element {i} of the slice: {} vs oracle {}",
            gf[i], wf[i]
        )
    });

    // The same by hand: the summed partials must be bit-identical on every rank, and pass 2
    // on them gives project_sharded's output exactly.
    let mut p = super::host_partials(&be, &lsegs, &lv, None, &lviews).unwrap();
    comm.all_reduce_sum_checked(p.as_mut_slice()).unwrap();
    let bits: Vec<u64> = p.as_slice().iter().map(|x| x.to_bits()).collect();
    ck.check(agree(comm, &bits).unwrap(), || {
        format!("{at}: summed partials differ between ranks")
    });
    let mut again = vec![0f32; lv.len()];
    be.apply(
        &lsegs,
        &p,
        Projection::host(
            &lv,
            &lviews,
            Output::Write {
                base: Some(&lbase),
                out: &mut again,
            },
        )
        .alpha(0.5)
        .beta(Beta::PerSegment(&betas))
        .opts(opts),
    )
    .unwrap();
    ck.check(got == again, || {
        format!("{at}: project_sharded != partials+reduce+apply")
    });

    // Assemble the whole result (others contribute exact zeros) and compare across ranks.
    let mut full = vec![0f64; n];
    let mut off = 0;
    for r in &pieces {
        for (i, x) in r.clone().zip(&got[off..off + r.len()]) {
            full[i] = *x as f64;
        }
        off += r.len();
    }
    comm.all_reduce_sum_checked(&mut full).unwrap();
    let h = hash_bits(full.iter().map(|x| (*x as f32).to_bits() as u64));
    ck.check(agree(comm, &[h]).unwrap(), || {
        format!("{at}: assembled results differ between ranks")
    });
    let close = full
        .iter()
        .zip(&want)
        .all(|(a, b)| (a - *b as f64).abs() <= atol + eps::<f32>() * (*b as f64).abs());
    ck.check(close, || {
        format!("{at}: assembled result differs from the oracle")
    });
}

/// (c) Wrong lengths: the last rank passes one more value; every rank gets `Err` and its
/// buffer back unchanged, and the group still works afterwards. Also a sharded call where
/// the last rank has another k, and one with invalid arguments on one rank. Needs >= 2
/// ranks; returns false (nothing checked) on one.
pub fn wrong_length<A: AllReduce>(comm: &A, rank: usize, size: usize, ck: &mut Checks) -> bool {
    if size < 2 {
        return false;
    }
    let last = rank == size - 1;
    let mut buf = vec![rank as f64 + 1.0; if last { 5 } else { 4 }];
    let before = buf.clone();
    let r = comm.all_reduce_sum_checked(&mut buf);
    ck.check(r.is_err(), || {
        format!("rank {rank}: wrong length gave {r:?}")
    });
    ck.check(buf == before, || {
        format!("rank {rank}: buffer changed to {buf:?}")
    });

    let mut ok = vec![rank as f64 + 1.0; 4];
    comm.all_reduce_sum_checked(&mut ok).unwrap();
    let want = (size * (size + 1) / 2) as f64;
    ck.check(ok == vec![want; 4], || {
        format!("rank {rank}: after the error the sum is {ok:?}, want {want}")
    });

    // Data parallel with a plan that declares one more statistic on the last rank.
    let mut plan = StatsPlan::new();
    plan.sq_diff_mean("a", DType::F32, 1, 3).unwrap();
    if last {
        plan.sq_diff_mean("extra", DType::F32, 1, 3).unwrap();
    }
    let mut sums = ReducibleStats::new(&plan);
    let r = comm.all_reduce_sum_checked(sums.as_mut_slice());
    ck.check(r.is_err(), || {
        format!("rank {rank}: mismatched plans gave {r:?}")
    });

    // Sharded: k differs on the last rank.
    let segs = Segments::from_lengths(&[3, 2]).unwrap();
    let v = [1f32, 2.0, 3.0, 4.0, 5.0];
    let b1 = [1f32, 0.0, 1.0, 1.0, 0.0];
    let basis: Vec<&[f32]> = if last { vec![&b1, &v] } else { vec![&b1] };
    let mut out = [0f32; 5];
    let r = project_sharded(
        &CpuBackend::new(),
        comm,
        &segs,
        Projection::host(
            &v,
            &basis,
            Output::Write {
                base: None,
                out: &mut out,
            },
        ),
    );
    ck.check(r.is_err() && out == [0f32; 5], || {
        format!("rank {rank}: k mismatch gave {r:?}, out {out:?}")
    });

    // Sharded: invalid β on rank 0 only.
    let beta = if rank == 0 { f64::NAN } else { 1.0 };
    let r = project_sharded(
        &CpuBackend::new(),
        comm,
        &segs,
        Projection::host(
            &v,
            &[&b1[..]],
            Output::Write {
                base: None,
                out: &mut out,
            },
        )
        .beta(beta),
    );
    ck.check(r.is_err() && out == [0f32; 5], || {
        format!("rank {rank}: invalid beta on rank 0 gave {r:?}, out {out:?}")
    });
    true
}
