//! The fused statistics (`redreg::stats`) on every executor, written once: each body is
//! generic over `TestStats` (tests/common/stats.rs) and `backend_tests!` runs it as
//! `reference::…` (the f64 oracle `stats::reference::run`), `cpu::…` (`CpuStats`) and,
//! with feature `cuda`, `cuda::…` (`CudaStats` on a real GPU or the emulated driver, SKIP
//! convention of tests/common/gpu.rs; `REDREG_GPU_QUICK=1` shrinks the largest inputs).
//! Every value is checked against plain f64 computations written here, independent of the
//! crate's code, or against the crate's oracle on the same host data:
//! - each statistic × dtype × shape, large inputs, a mixed plan run repeatedly;
//! - labels out of range, extreme logits, zero rows, NaN/Inf isolation, validation;
//! - determinism (runs bitwise identical; results independent of the buffers' alignment);
//! - any batch size up to the declared one (bit for bit a plan declared with exactly those
//!   rows; finishes spanning several batches of tasks), data-parallel sums and counts.
//!
//! On the emulated driver (tests/emu) a run of any size is one launch, one host-to-device
//! and one device-to-host copy, and a rejected run is none. CPU-only properties (thread
//! counts, allocations) are in `mod cpu_only`; CUDA-only ones (NVRTC, the NaN-payload rule)
//! in `mod cuda_only`. The emulated runs select the CUDA tests with the filter `cuda`.

mod common;

use common::backends::quick;
use common::stats::{exclusive, shared, Elem, TestStats};
use redreg::stats::{
    reference as oracle, Buf, CpuStats, Input, StatHandle, Stats, StatsPlan, StatsResults,
    REDUNDANCY_EPS, STATS_CHUNK,
};
use redreg::testing::{from_f64_vec, signed_vec, to_f64_vec, Rng};
use redreg::{bf16, f16, DType, Element, Error, Segments};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

// ---- allocation counting (for the "plan reuse allocates nothing" test) ----------------

struct Counting;
static TRACK: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---- data ------------------------------------------------------------------------------

/// `n` class labels uniform in `0..c`.
fn labels(rng: &mut Rng, n: usize, c: usize) -> Vec<i64> {
    (0..n).map(|_| rng.below(c) as i64).collect()
}

/// Data rounded to T, plus its exact f64 widening.
fn data<T: Element>(rng: &mut Rng, n: usize, scale: f64) -> (Vec<T>, Vec<f64>) {
    let v: Vec<f64> = rng
        .signed_vec(n, 2.0)
        .into_iter()
        .map(|x| x * scale)
        .collect();
    let t: Vec<T> = from_f64_vec(&v);
    let w = to_f64_vec(&t);
    (t, w)
}

/// The whole of a buffer of executor `S` as an operand.
fn all<S: TestStats, T: Elem>(b: &S::Buf<T>) -> Buf<'_, S::Memory> {
    S::buf(b, ..)
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---- independent oracles ---------------------------------------------------------------

fn o_sqd(x: &[f64], y: &[f64]) -> f64 {
    let s: f64 = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum();
    s / x.len() as f64
}

fn o_cos(a: &[f64], b: &[f64], rows: usize, dim: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..rows {
        let ra = &a[i * dim..(i + 1) * dim];
        let rb = &b[i * dim..(i + 1) * dim];
        let d: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        let na: f64 = ra.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = rb.iter().map(|x| x * x).sum::<f64>().sqrt();
        s += if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            d / (na * nb)
        };
    }
    s / rows as f64
}

fn o_prob(l: &[f64], labels: &[i64], rows: usize, c: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..rows {
        let r = &l[i * c..(i + 1) * c];
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = r.iter().map(|x| (x - m).exp()).sum();
        s += (r[labels[i] as usize] - m).exp() / z;
    }
    s / rows as f64
}

/// (Σx, Σx², Σ|x|, Σ|x|² as scale) per segment.
fn o_sums(segs: &Segments, x: &[f64]) -> Vec<[f64; 3]> {
    segs.iter()
        .map(|r| {
            let s = &x[r];
            [
                s.iter().sum(),
                s.iter().map(|v| v * v).sum(),
                s.iter().map(|v| v.abs()).sum(),
            ]
        })
        .collect()
}

fn o_dots(segs: &Segments, x: &[f64], y: &[f64]) -> (Vec<f64>, Vec<f64>) {
    segs.iter()
        .map(|r| {
            let d: f64 = r.clone().map(|e| x[e] * y[e]).sum();
            let sc: f64 = r.map(|e| (x[e] * y[e]).abs()).sum();
            (d, sc)
        })
        .unzip()
}

#[track_caller]
fn close(what: &str, got: f64, want: f64, scale: f64) {
    if want.is_nan() {
        assert!(got.is_nan(), "{what}: got {got}, want NaN");
        return;
    }
    let err = (got - want).abs();
    assert!(
        err <= 1e-12 * scale.abs().max(f64::MIN_POSITIVE),
        "{what}: got {got}, want {want} (err {err:e}, scale {scale:e})"
    );
}

/// The NaN policy of docs/numerics.md: values are compared bitwise, except that any NaN
/// equals any NaN (the payload is not part of the contract: narrowing a NaN from f64 gives
/// `0x7fffffff` on NVIDIA GPUs and `0x7fc00000` on the CPU). Returns the first index where
/// `a` and `b` differ, or `None`.
#[track_caller]
fn first_difference_nan_any(a: &[f32], b: &[f32]) -> Option<usize> {
    assert_eq!(a.len(), b.len(), "lengths");
    (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits() && !(a[i].is_nan() && b[i].is_nan()))
}

/// Equal up to f64 summation order (docs/numerics.md), NaN only where the oracle has NaN.
#[track_caller]
fn same(what: &str, g: f64, c: f64) {
    if c.is_nan() {
        assert!(g.is_nan(), "{what}: got {g}, oracle NaN");
    } else {
        assert!(
            (g - c).abs() <= 1e-11 * c.abs().max(1e-3),
            "{what}: got {g} vs oracle {c}"
        );
    }
}

/// `acc[e] = f32(f64(acc[e]) + x[e]^2)`, written here.
fn acc_update(acc: &mut [f32], x: &[f64]) {
    for (a, x) in acc.iter_mut().zip(x) {
        *a = (*a as f64 + x * x) as f32;
    }
}

backend_tests!(
    sq_diff_mean_matches_f64,
    row_cos_mean_matches_f64,
    true_prob_mean_matches_f64,
    segment_sums_dots_and_accumulator_match_f64,
    large_inputs_match_f64,
    mixed_plan_reuse_and_reference_agree,
    plan_matches_the_oracle_and_is_deterministic,
    results_do_not_depend_on_alignment,
    label_out_of_range_is_an_error_after_the_run,
    extreme_logits_are_stable,
    zero_rows_have_cosine_zero,
    nan_and_inf_poison_only_their_statistics,
    validation_errors_name_the_numbers,
    any_batch_size_up_to_the_declared_one,
    finishes_span_several_batches,
    uneven_batches_reduce_to_the_whole_batch,
    short_batch_errors_name_the_numbers,
);

// ---- each statistic x dtype x shape ------------------------------------------------------

const LENS: [usize; 9] = [
    0,
    1,
    2,
    33,
    1023,
    1025,
    STATS_CHUNK - 1,
    STATS_CHUNK + 1,
    3 * STATS_CHUNK + 7,
];

fn sq_diff_case<S: TestStats, T: Elem>(s: &S, len: usize, rng: &mut Rng) {
    let (x, xw) = data::<T>(rng, len, 1.0);
    let (y, yw) = data::<T>(rng, len, 1.0);
    let (dx, dy) = (s.upload(&x), s.upload(&y));
    let mut plan = StatsPlan::new();
    let h = plan.sq_diff_mean("d", T::DTYPE, 1, len).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let got = ex
        .run(&mut [h.bind((all::<S, T>(&dx), all::<S, T>(&dy)))])
        .unwrap()
        .get(h)
        .unwrap();
    let want = o_sqd(&xw, &yw);
    close(&format!("sq_diff {} len {len}", T::DTYPE), got, want, want);
    if len == 0 {
        assert!(got.is_nan(), "mean of nothing is NaN");
    }
}

fn sq_diff_mean_matches_f64<S: TestStats>(s: &S) {
    let _g = s.lock();
    let mut rng = Rng::new(1);
    for len in LENS {
        sq_diff_case::<S, f32>(s, len, &mut rng);
        sq_diff_case::<S, f16>(s, len, &mut rng);
        sq_diff_case::<S, bf16>(s, len, &mut rng);
    }
}

const ROWS: [(usize, usize); 10] = [
    (1, 1),
    (1, 33),
    (33, 1),
    (7, 1023),
    (5, 1025),
    (1025, 16),
    (0, 5),
    (3, 0),
    (2, STATS_CHUNK + 3),
    (3, 2 * STATS_CHUNK),
];

fn cos_case<S: TestStats, T: Elem>(s: &S, rows: usize, dim: usize, rng: &mut Rng) {
    let (mut a, _) = data::<T>(rng, rows * dim, 1.0);
    let (b, bw) = data::<T>(rng, rows * dim, 1.0);
    // make the first row of `a` zero when there is one
    if rows > 0 {
        a[..dim].iter_mut().for_each(|v| *v = T::from_f64(0.0));
    }
    let aw = to_f64_vec(&a);
    let (da, db) = (s.upload(&a), s.upload(&b));
    let mut plan = StatsPlan::new();
    let h = plan.row_cos_mean("c", T::DTYPE, rows, dim).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let got = ex
        .run(&mut [h.bind((all::<S, T>(&da), all::<S, T>(&db)))])
        .unwrap()
        .get(h)
        .unwrap();
    let want = o_cos(&aw, &bw, rows, dim);
    close(&format!("cos {} {rows}x{dim}", T::DTYPE), got, want, 1.0);
}

fn row_cos_mean_matches_f64<S: TestStats>(s: &S) {
    let _g = s.lock();
    let mut rng = Rng::new(2);
    for (r, d) in ROWS {
        cos_case::<S, f32>(s, r, d, &mut rng);
        cos_case::<S, f16>(s, r, d, &mut rng);
        cos_case::<S, bf16>(s, r, d, &mut rng);
    }
}

fn prob_case<S: TestStats, T: Elem>(s: &S, rows: usize, c: usize, scale: f64, rng: &mut Rng) {
    let (l, lw) = data::<T>(rng, rows * c, scale);
    let labels = labels(rng, rows, c);
    let (dl, dy) = (s.upload(&l), s.upload(&labels));
    let mut plan = StatsPlan::new();
    let h = plan.true_prob_mean("p", T::DTYPE, rows, c).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let got = ex
        .run(&mut [h.bind((all::<S, T>(&dl), S::labels(&dy, ..)))])
        .unwrap()
        .get(h)
        .unwrap();
    let want = o_prob(&lw, &labels, rows, c);
    close(
        &format!("prob {} {rows}x{c} scale {scale}", T::DTYPE),
        got,
        want,
        1.0,
    );
}

fn true_prob_mean_matches_f64<S: TestStats>(s: &S) {
    let _g = s.lock();
    let mut rng = Rng::new(3);
    for (r, c) in ROWS {
        if c == 0 && r > 0 {
            continue; // every label out of range: tested separately
        }
        for scale in [1.0, 30.0] {
            prob_case::<S, f32>(s, r, c, scale, &mut rng);
            prob_case::<S, f16>(s, r, c, scale, &mut rng);
            prob_case::<S, bf16>(s, r, c, scale, &mut rng);
        }
    }
}

fn segs() -> Segments {
    Segments::from_lengths(&[0, 1, 33, 0, 1023, 1025, STATS_CHUNK + 1, 2, 2 * STATS_CHUNK]).unwrap()
}

fn seg_case<S: TestStats, T: Elem>(s: &S, segs: &Segments, rng: &mut Rng) {
    let n = segs.total();
    let (x, xw) = data::<T>(rng, n, 1.0);
    let (y, yw) = data::<T>(rng, n, 1.0);
    let acc0: Vec<f32> = rng
        .signed_vec(n, 2.0)
        .into_iter()
        .map(|v| v.abs() as f32)
        .collect();
    let (dx, dy, mut dacc) = (s.upload(&x), s.upload(&y), s.upload(&acc0));
    let mut plan = StatsPlan::new();
    let hs = plan.seg_sums("s", T::DTYPE, segs, true).unwrap();
    let hn = plan.seg_sums("s_noacc", T::DTYPE, segs, false).unwrap();
    let hd = plan.seg_dots("d", T::DTYPE, segs).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let r = ex
        .run(&mut [
            hs.bind_acc(all::<S, T>(&dx), S::acc(&mut dacc, ..)),
            hd.bind((all::<S, T>(&dx), all::<S, T>(&dy))),
            hn.bind(all::<S, T>(&dx)),
        ])
        .unwrap();
    let sums = r.get(hs).unwrap();
    assert_eq!(sums, r.get(hn).unwrap(), "with and without accumulator");
    let want = o_sums(segs, &xw);
    let (wd, sd) = o_dots(segs, &xw, &yw);
    for (i, w) in want.iter().enumerate() {
        let what = format!("{} seg {i} (len {})", T::DTYPE, segs.seg_len(i));
        close(&format!("sum {what}"), sums.sum[i], w[0], w[2]);
        close(&format!("sum_sq {what}"), sums.sum_sq[i], w[1], w[1]);
        close(&format!("sum_abs {what}"), sums.sum_abs[i], w[2], w[2]);
        close(&format!("dot {what}"), r.get(hd).unwrap()[i], wd[i], sd[i]);
    }
    let acc = s.download(&dacc);
    for e in 0..n {
        let want = (acc0[e] as f64 + xw[e] * xw[e]) as f32;
        assert_eq!(acc[e].to_bits(), want.to_bits(), "acc[{e}]");
    }
}

fn segment_sums_dots_and_accumulator_match_f64<S: TestStats>(s: &S) {
    let _g = s.lock();
    let mut rng = Rng::new(4);
    for segs in [
        segs(),
        Segments::from_lengths(&[]).unwrap(),
        Segments::from_lengths(&[0]).unwrap(),
        Segments::from_lengths(&[1]).unwrap(),
    ] {
        seg_case::<S, f32>(s, &segs, &mut rng);
        seg_case::<S, f16>(s, &segs, &mut rng);
        seg_case::<S, bf16>(s, &segs, &mut rng);
    }
}

/// 20M elements (`REDREG_GPU_QUICK=1`: 300 000, still many chunks and tasks per statistic).
fn large_inputs_match_f64<S: TestStats>(s: &S) {
    let _g = s.lock();
    let mut rng = Rng::new(5);
    let n = if quick() { 300_000 } else { 20_000_000 };
    let (x, xw) = data::<f32>(&mut rng, n, 1.0);
    let (y, yw) = data::<f32>(&mut rng, n, 1.0);
    // 4M elements: the exp-heavy oracle is the slow part
    let (rows, c) = if quick() {
        (200, 1_000)
    } else {
        (4_000, 1_000)
    };
    let labels = labels(&mut rng, rows, c);
    let segs = Segments::from_lengths(&[n / 2, 3, n / 2 - 1003, 1000]).unwrap();
    let (dx, dy, dl) = (s.upload(&x), s.upload(&y), s.upload(&labels));
    let mut dacc = s.upload(&vec![0.5f32; n]);

    let mut plan = StatsPlan::new();
    let hq = plan.sq_diff_mean("q", DType::F32, 1, n).unwrap();
    let hc = plan.row_cos_mean("c", DType::F32, rows, c).unwrap();
    let hp = plan.true_prob_mean("p", DType::F32, rows, c).unwrap();
    let hs = plan.seg_sums("s", DType::F32, &segs, true).unwrap();
    let hd = plan.seg_dots("d", DType::F32, &segs).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let r = ex
        .run(&mut [
            hq.bind((S::buf(&dx, ..), S::buf(&dy, ..))),
            hc.bind((S::buf(&dx, ..rows * c), S::buf(&dy, ..rows * c))),
            hp.bind((S::buf(&dy, ..rows * c), S::labels(&dl, ..))),
            hs.bind_acc(S::buf(&dx, ..), S::acc(&mut dacc, ..)),
            hd.bind((S::buf(&dx, ..), S::buf(&dy, ..))),
        ])
        .unwrap();
    let want = o_sqd(&xw, &yw);
    close("large sq_diff", r.get(hq).unwrap(), want, want);
    close(
        "large cos",
        r.get(hc).unwrap(),
        o_cos(&xw, &yw, rows, c),
        1.0,
    );
    close(
        "large prob",
        r.get(hp).unwrap(),
        o_prob(&yw, &labels, rows, c),
        1.0,
    );
    let sums = r.get(hs).unwrap();
    let ws = o_sums(&segs, &xw);
    let (wd, sd) = o_dots(&segs, &xw, &yw);
    for i in 0..segs.len() {
        close("large sum", sums.sum[i], ws[i][0], ws[i][2]);
        close("large sum_sq", sums.sum_sq[i], ws[i][1], ws[i][1]);
        close("large sum_abs", sums.sum_abs[i], ws[i][2], ws[i][2]);
        close("large dot", r.get(hd).unwrap()[i], wd[i], sd[i]);
    }
    let acc = s.download(&dacc);
    assert_eq!(acc[12345], (0.5 + xw[12345] * xw[12345]) as f32);
}

// ---- plans --------------------------------------------------------------------------------

struct Mixed {
    z1: Vec<f16>,
    z2: Vec<f16>,
    x1: Vec<f32>,
    x2: Vec<f32>,
    fa: Vec<bf16>,
    fv: Vec<bf16>,
    logits: Vec<f32>,
    labels: Vec<i64>,
    g: Vec<bf16>,
    d: Vec<bf16>,
    acc: Vec<f32>,
}

const B: usize = 37;
const C: usize = 10;
const D: usize = 512;

fn mixed_segs() -> Segments {
    Segments::from_lengths(&[9408, 64, 64, 0, 36864, 147456, 512, 5]).unwrap()
}

fn mixed(rng: &mut Rng) -> Mixed {
    let n = mixed_segs().total();
    Mixed {
        z1: data(rng, 4 * B * D, 1.0).0,
        z2: data(rng, 4 * B * D, 1.0).0,
        x1: data(rng, 3 * 1000, 1.0).0,
        x2: data(rng, 3 * 1000, 1.0).0,
        fa: data(rng, B * D, 1.0).0,
        fv: data(rng, B * D, 1.0).0,
        logits: data(rng, B * C, 5.0).0,
        labels: labels(rng, B, C),
        g: data(rng, n, 1e-2).0,
        d: data(rng, n, 1e-3).0,
        acc: vec![0.0; n],
    }
}

fn mixed_plan_reuse_and_reference_agree<S: TestStats>(s: &S) {
    let _g = s.lock();
    let segs = mixed_segs();
    let mut plan = StatsPlan::new();
    let num = plan.sq_diff_mean("z_a", DType::F16, 1, 4 * B * D).unwrap();
    let den = plan.sq_diff_mean("x_a", DType::F32, 1, 3000).unwrap();
    let sim = plan.row_cos_mean("pos_sim", DType::BF16, B, D).unwrap();
    let p = plan.true_prob_mean("p_a", DType::F32, B, C).unwrap();
    let sums = plan.seg_sums("grad_a", DType::BF16, &segs, true).unwrap();
    let dots = plan.seg_dots("drift.grad", DType::BF16, &segs).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let mut oracle = plan.new_results();
    let mut rng = Rng::new(6);
    for step in 0..3 {
        let m = mixed(&mut rng);
        let mut acc_ref = m.acc.clone();
        let (dz1, dz2, dx1, dx2) = (
            s.upload(&m.z1),
            s.upload(&m.z2),
            s.upload(&m.x1),
            s.upload(&m.x2),
        );
        let (dfa, dfv, dl, dy) = (
            s.upload(&m.fa),
            s.upload(&m.fv),
            s.upload(&m.logits),
            s.upload(&m.labels),
        );
        let (dg, dd, mut dacc) = (s.upload(&m.g), s.upload(&m.d), s.upload(&m.acc));
        let r = ex
            .run(&mut [
                // any order
                dots.bind((all::<S, bf16>(&dd), all::<S, bf16>(&dg))),
                num.bind((all::<S, f16>(&dz1), all::<S, f16>(&dz2))),
                sums.bind_acc(all::<S, bf16>(&dg), S::acc(&mut dacc, ..)),
                sim.bind((all::<S, bf16>(&dfa), all::<S, bf16>(&dfv))),
                den.bind((all::<S, f32>(&dx1), all::<S, f32>(&dx2))),
                p.bind((all::<S, f32>(&dl), S::labels(&dy, ..))),
            ])
            .unwrap();
        // the crate's oracle on the same plan
        oracle::run(
            &plan,
            &mut [
                num.bind((&m.z1, &m.z2)),
                den.bind((&m.x1, &m.x2)),
                sim.bind((&m.fa, &m.fv)),
                p.bind((&m.logits, &m.labels)),
                sums.bind_acc(&m.g, &mut acc_ref),
                dots.bind((&m.d, &m.g)),
            ],
            &mut oracle,
        )
        .unwrap();
        let w = |v: &[f16]| to_f64_vec(v);
        let wb = |v: &[bf16]| to_f64_vec(v);
        let (wz1, wz2, wx1, wx2) = (w(&m.z1), w(&m.z2), to_f64_vec(&m.x1), to_f64_vec(&m.x2));
        let wnum = o_sqd(&wz1, &wz2);
        let wden = o_sqd(&wx1, &wx2);
        close("num", r.get(num).unwrap(), wnum, wnum);
        close("den", r.get(den).unwrap(), wden, wden);
        close(
            "redundancy",
            r.redundancy(num, den, REDUNDANCY_EPS).unwrap(),
            wnum / (wden + 1e-12),
            wnum / wden,
        );
        close(
            "sim",
            r.get(sim).unwrap(),
            o_cos(&wb(&m.fa), &wb(&m.fv), B, D),
            1.0,
        );
        let wl = to_f64_vec(&m.logits);
        close("p", r.get(p).unwrap(), o_prob(&wl, &m.labels, B, C), 1.0);
        let (wg, wd) = (wb(&m.g), wb(&m.d));
        let ws = o_sums(&segs, &wg);
        let (wdot, sdot) = o_dots(&segs, &wd, &wg);
        let sr = r.get(sums).unwrap();
        for i in 0..segs.len() {
            close("sum", sr.sum[i], ws[i][0], ws[i][2]);
            close("sum_sq", sr.sum_sq[i], ws[i][1], ws[i][1]);
            close("sum_abs", sr.sum_abs[i], ws[i][2], ws[i][2]);
            close("dot", r.get(dots).unwrap()[i], wdot[i], sdot[i]);
        }
        // backend vs crate oracle: same up to summation order
        for (i, (a, b)) in r.as_slice().iter().zip(oracle.as_slice()).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1e-300) || a.to_bits() == b.to_bits(),
                "step {step} value {i}: {a} vs {b}"
            );
        }
        let acc = s.download(&dacc);
        assert_eq!(acc, acc_ref, "accumulator: backend vs oracle, bitwise");
        let accs: Vec<f32> =
            m.g.iter()
                .map(|v| (v.to_f64() * v.to_f64()) as f32)
                .collect();
        assert_eq!(acc, accs, "acc starts at 0 each step here");
    }
}

/// Every statistic in one plan (f16, f32, bf16; a zero row, wide rows, 1e4 logits with a
/// masked class, a NaN in one segment) against the crate's oracle on the same host data,
/// three runs bitwise identical; then a label out of range and a run that fails validation.
fn plan_matches_the_oracle_and_is_deterministic<S: TestStats>(s: &S) {
    let _g = s.lock();
    let segs = Segments::from_lengths(&[9408, 0, 64, 1, 36864, 2 * STATS_CHUNK + 3, 5]).unwrap();
    let n = segs.total();
    let wide = STATS_CHUNK + 17;
    let (b, d, c) = (37usize, 512usize, 10usize);

    let z1: Vec<f16> = from_f64_vec(&signed_vec(4 * b * d, 1, 1.0));
    let z2: Vec<f16> = from_f64_vec(&signed_vec(4 * b * d, 2, 1.0));
    let x1: Vec<f32> = from_f64_vec(&signed_vec(3001, 3, 1.0));
    let x2: Vec<f32> = from_f64_vec(&signed_vec(3001, 4, 1.0));
    let mut fa: Vec<bf16> = from_f64_vec(&signed_vec(b * d, 5, 1.0));
    fa[..d].iter_mut().for_each(|v| *v = bf16::ZERO); // a zero row
    let fv: Vec<bf16> = from_f64_vec(&signed_vec(b * d, 6, 1.0));
    let mut logits: Vec<f32> = from_f64_vec(&signed_vec(b * c, 7, 1e4)); // extreme logits
    logits[3] = f32::NEG_INFINITY; // a masked class
    let labels: Vec<i64> = (0..b as i64).map(|i| i % c as i64).collect();
    let wl: Vec<bf16> = from_f64_vec(&signed_vec(3 * wide, 8, 20.0));
    let wlab = vec![0i64, wide as i64 - 1, 17];
    let wa: Vec<f32> = from_f64_vec(&signed_vec(2 * wide, 9, 1.0));
    let wb: Vec<f32> = from_f64_vec(&signed_vec(2 * wide, 10, 1.0));
    let mut g: Vec<f32> = from_f64_vec(&signed_vec(n, 11, 1e-2));
    g[9408 + 70] = f32::NAN; // poisons segment 4 only
    let dr: Vec<bf16> = from_f64_vec(&signed_vec(n, 12, 1e-3));
    let gh: Vec<f16> = from_f64_vec(&signed_vec(n, 13, 1.0));
    let acc0: Vec<f32> = from_f64_vec(&signed_vec(n, 14, 1.0))
        .iter()
        .map(|v: &f32| v.abs())
        .collect();

    let mut plan = StatsPlan::new();
    let num = plan.sq_diff_mean("z", DType::F16, 1, 4 * b * d).unwrap();
    let den = plan.sq_diff_mean("x", DType::F32, 1, 3001).unwrap();
    let sim = plan.row_cos_mean("sim", DType::BF16, b, d).unwrap();
    let simw = plan.row_cos_mean("simw", DType::F32, 2, wide).unwrap();
    let p = plan.true_prob_mean("p", DType::F32, b, c).unwrap();
    let pw = plan.true_prob_mean("pw", DType::BF16, 3, wide).unwrap();
    let sums = plan.seg_sums("g", DType::F32, &segs, true).unwrap();
    let sums16 = plan.seg_sums("gh", DType::F16, &segs, false).unwrap();
    let dots = plan.seg_dots("dg", DType::BF16, &segs).unwrap();

    // The crate's oracle on the host data.
    let mut oracle = plan.new_results();
    let mut acc_ref = acc0.clone();
    oracle::run(
        &plan,
        &mut [
            num.bind((&z1, &z2)),
            den.bind((&x1, &x2)),
            sim.bind((&fa, &fv)),
            simw.bind((&wa, &wb)),
            p.bind((&logits, &labels)),
            pw.bind((&wl, &wlab)),
            sums.bind_acc(&g, &mut acc_ref),
            sums16.bind(&gh),
            dots.bind((&dr, &dr)),
        ],
        &mut oracle,
    )
    .unwrap();
    let want = oracle.as_slice().to_vec();

    // The executor under test.
    let (dz1, dz2, dx1, dx2) = (s.upload(&z1), s.upload(&z2), s.upload(&x1), s.upload(&x2));
    let (dfa, dfv, dwa, dwb) = (s.upload(&fa), s.upload(&fv), s.upload(&wa), s.upload(&wb));
    let (dl, dlab, dwl, dwlab) = (
        s.upload(&logits),
        s.upload(&labels),
        s.upload(&wl),
        s.upload(&wlab),
    );
    let (dg, dgh, ddr) = (s.upload(&g), s.upload(&gh), s.upload(&dr));
    // Every statistic's input; `$pw`: the wide statistic's labels.
    macro_rules! inputs {
        ($pw:expr, $acc:expr) => {
            [
                dots.bind((all::<S, bf16>(&ddr), all::<S, bf16>(&ddr))),
                num.bind((all::<S, f16>(&dz1), all::<S, f16>(&dz2))),
                den.bind((all::<S, f32>(&dx1), all::<S, f32>(&dx2))),
                sim.bind((all::<S, bf16>(&dfa), all::<S, bf16>(&dfv))),
                simw.bind((all::<S, f32>(&dwa), all::<S, f32>(&dwb))),
                p.bind((all::<S, f32>(&dl), S::labels(&dlab, ..))),
                pw.bind((all::<S, bf16>(&dwl), S::labels(&$pw, ..))),
                sums.bind_acc(all::<S, f32>(&dg), S::acc(&mut $acc, ..)),
                sums16.bind(all::<S, f16>(&dgh)),
            ]
        };
    }
    let mut ex = s.exec(&plan).unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        // every run sees the same accumulator
        let mut dacc = s.upload(&acc0);
        let r = ex.run(&mut inputs!(dwlab, dacc)).unwrap();
        runs.push(r.as_slice().to_vec());
        if runs.len() == 1 {
            let acc = s.download(&dacc);
            if let Some(i) = first_difference_nan_any(&acc, &acc_ref) {
                panic!(
                    "accumulator: executor and oracle differ at {i}: {:#x} vs {:#x}",
                    acc[i].to_bits(),
                    acc_ref[i].to_bits()
                );
            }
            assert!(
                acc.iter().any(|x| x.is_nan()),
                "the injected NaN reaches the accumulator"
            );
        }
    }
    for r in &runs[1..] {
        assert!(bits(r) == bits(&runs[0]), "results differ between runs");
    }
    for (i, (gv, cv)) in runs[0].iter().zip(&want).enumerate() {
        if gv.to_bits() != cv.to_bits() {
            same(&format!("value {i}"), *gv, *cv);
        }
    }
    let r = ex.results();
    let sg = r.get(sums).unwrap();
    assert!(sg.sum[4].is_nan() && sg.sum[0].is_finite() && sg.sum[5].is_finite());
    assert!(
        r.get(p).unwrap().is_finite(),
        "masked class and 1e4 logits stay finite"
    );
    let red = r.redundancy(num, den, REDUNDANCY_EPS).unwrap();
    assert!(red.is_finite() && red > 0.0);

    // label out of range: Err after the run, flagged in the results
    let dbad = s.upload(&[0i64, wide as i64, -1]);
    let mut dacc = s.upload(&acc0);
    let e = ex.run(&mut inputs!(dbad, dacc)).unwrap_err();
    assert!(
        matches!(&e, Error::LabelOutOfRange { row: 1, label, classes, .. } if *label == wide as i64 && *classes == wide),
        "{e}"
    );
    assert!(ex.results().get(pw).unwrap().is_nan());
    same(
        "after fault",
        ex.results().get(num).unwrap(),
        oracle.get(num).unwrap(),
    );

    // validation before anything runs
    let e = ex
        .run(&mut [num.bind((all::<S, f16>(&dz1), all::<S, f16>(&dz2)))])
        .unwrap_err();
    assert!(e.to_string().contains("expected 9"), "{e}");
}

/// The same plan on the same values at other addresses (1–3 elements into their
/// allocations: 16-byte loads impossible, or possible for some buffers only) gives the same
/// bits: every task sums its elements in one canonical order (groups of 16 bytes from the
/// task's start) whatever the alignment. Thousands of elements per task, so the sums are
/// inexact and another order would show; the accumulator is compared too.
fn results_do_not_depend_on_alignment<S: TestStats>(s: &S) {
    let _g = s.lock();
    let segs = Segments::from_lengths(&[20_000, 777, 3 * STATS_CHUNK + 5]).unwrap();
    let n = segs.total();
    let x: Vec<f32> = from_f64_vec(&signed_vec(n, 21, 1.0));
    let y: Vec<f32> = from_f64_vec(&signed_vec(n, 22, 1.0));
    let h: Vec<bf16> = from_f64_vec(&signed_vec(n, 23, 1.0));
    let acc0: Vec<f32> = from_f64_vec(&signed_vec(n, 24, 1.0));
    let mut plan = StatsPlan::new();
    let sq = plan.sq_diff_mean("sq", DType::F32, 1, n).unwrap();
    let dots = plan.seg_dots("dots", DType::F32, &segs).unwrap();
    let sums = plan.seg_sums("sums", DType::BF16, &segs, true).unwrap();
    let cos = plan.row_cos_mean("cos", DType::F32, 1, n).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let mut runs = Vec::new();
    fn padded<T: Copy>(v: &[T], off: usize, pad: T) -> Vec<T> {
        let mut b = vec![pad; off + v.len()];
        b[off..].copy_from_slice(v);
        b
    }
    for (ox, oy) in [(0usize, 0usize), (1, 1), (2, 3), (3, 0)] {
        let (dx, dy) = (
            s.upload(&padded(&x, ox, 0.0)),
            s.upload(&padded(&y, oy, 0.0)),
        );
        let dh = s.upload(&padded(&h, ox, bf16::ZERO));
        let mut dacc = s.upload(&padded(&acc0, oy, 0.0));
        let r = ex
            .run(&mut [
                sq.bind((S::buf(&dx, ox..), S::buf(&dy, oy..))),
                dots.bind((S::buf(&dx, ox..), S::buf(&dy, oy..))),
                sums.bind_acc(S::buf(&dh, ox..), S::acc(&mut dacc, oy..)),
                cos.bind((S::buf(&dx, ox..), S::buf(&dy, oy..))),
            ])
            .unwrap();
        let rb = bits(r.as_slice());
        let acc: Vec<u32> = s.download(&dacc)[oy..]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        runs.push((rb, acc, (ox, oy)));
    }
    for r in &runs[1..] {
        assert!(
            r.0 == runs[0].0,
            "offsets {:?}: other result bits than offsets (0, 0) (first difference at {:?})",
            r.2,
            r.0.iter().zip(&runs[0].0).position(|(a, b)| a != b)
        );
        assert!(
            r.1 == runs[0].1,
            "offsets {:?}: other accumulator bits",
            r.2
        );
    }
}

// ---- labels, extremes, zero rows, non-finite --------------------------------------------

fn label_out_of_range_is_an_error_after_the_run<S: TestStats>(s: &S) {
    let _g = s.lock();
    for c in [3usize, STATS_CHUNK + 5] {
        let rows = 6;
        let logits = s.upload(&vec![0.0f32; rows * c]);
        let segs = Segments::from_lengths(&[2]).unwrap();
        let (g, zeros) = (s.upload(&[3.0f32, 4.0]), s.upload(&[0.0f32, 0.0]));
        let mut acc = s.upload(&[1.0f32, 1.0]);
        let mut plan = StatsPlan::new();
        let q = plan.sq_diff_mean("q", DType::F32, 1, 2).unwrap();
        let p = plan.true_prob_mean("p_v", DType::F32, rows, c).unwrap();
        let sh = plan.seg_sums("s", DType::F32, &segs, true).unwrap();
        let mut ex = s.exec(&plan).unwrap();
        for (labels, row, label) in [
            (vec![0, 1, 2, c as i64, -1, 0], 3usize, c as i64),
            (vec![0, -7, 2, c as i64, -1, 0], 1, -7),
            (vec![0, 1, 2, 0, 1, i64::MAX], 5, i64::MAX),
            (vec![i64::MIN, 1, 2, 0, 1, 1], 0, i64::MIN),
        ] {
            let labels = s.upload(&labels);
            let e = ex
                .run(&mut [
                    q.bind((all::<S, f32>(&g), all::<S, f32>(&zeros))),
                    p.bind((all::<S, f32>(&logits), S::labels(&labels, ..))),
                    sh.bind_acc(all::<S, f32>(&g), S::acc(&mut acc, ..)),
                ])
                .unwrap_err();
            match &e {
                Error::LabelOutOfRange {
                    name,
                    row: r,
                    label: l,
                    classes,
                } => {
                    assert_eq!(
                        (name.as_str(), *r, *l, *classes),
                        ("p_v", row, label, c),
                        "{e}"
                    );
                }
                other => panic!("unexpected {other}"),
            }
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("row {row}")) && msg.contains(&c.to_string()),
                "{msg}"
            );
            let r = ex.results();
            assert!(r.get(p).unwrap().is_nan());
            assert_eq!(r.get(q).unwrap(), 12.5, "other statistics still computed");
            assert_eq!(r.get(sh).unwrap().sum_sq, &[25.0]);
        }
        assert_eq!(
            s.download(&acc),
            [1.0 + 4.0 * 9.0, 1.0 + 4.0 * 16.0],
            "accumulated on every run"
        );
        // a good run afterwards clears the fault
        let labels = s.upload(&vec![0i64; rows]);
        let r = ex
            .run(&mut [
                q.bind((all::<S, f32>(&g), all::<S, f32>(&g))),
                p.bind((all::<S, f32>(&logits), S::labels(&labels, ..))),
                sh.bind_acc(all::<S, f32>(&g), S::acc(&mut acc, ..)),
            ])
            .unwrap();
        close("uniform", r.get(p).unwrap(), 1.0 / c as f64, 1.0);
    }
    // zero classes: any row is out of range
    let mut plan = StatsPlan::new();
    let p = plan.true_prob_mean("p", DType::F32, 2, 0).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let (none, labels) = (s.upload::<f32>(&[]), s.upload(&[0i64, 0]));
    let e = ex
        .run(&mut [p.bind((all::<S, f32>(&none), S::labels(&labels, ..)))])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                row: 0,
                label: 0,
                classes: 0,
                ..
            }
        ),
        "{e}"
    );
}

fn extreme<S: TestStats, T: Elem>(s: &S) {
    // rows of 3 classes; with C = 1 every probability is 1.
    let rows: Vec<[f64; 3]> = vec![
        [1e4, -1e4, 0.0],
        [1e4, -1e4, 0.0],
        [1e4, -1e4, 0.0],
        [-1e4, -1e4, -1e4],
        [1e4, 1e4, -1e4],
        [-1e4, 1e4 - 1.0, 1e4],
    ];
    let labels = [0i64, 1, 2, 1, 0, 1];
    let want = [
        1.0,
        0.0,
        0.0,
        1.0 / 3.0,
        0.5,
        (-1.0f64).exp() / (1.0 + (-1.0f64).exp()),
    ];
    let flat: Vec<f64> = rows.iter().flatten().cloned().collect();
    let l: Vec<T> = from_f64_vec(&flat);
    let lw = to_f64_vec(&l);
    let (dl, dy, dzero) = (s.upload(&l), s.upload(&labels), s.upload(&[0i64; 18]));
    let mut plan = StatsPlan::new();
    let p = plan.true_prob_mean("p", T::DTYPE, 6, 3).unwrap();
    let one = plan.true_prob_mean("one", T::DTYPE, 18, 1).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let r = ex
        .run(&mut [
            p.bind((all::<S, T>(&dl), S::labels(&dy, ..))),
            one.bind((all::<S, T>(&dl), S::labels(&dzero, ..))),
        ])
        .unwrap();
    let got = r.get(p).unwrap();
    assert!(got.is_finite(), "{}: {got}", T::DTYPE);
    close(
        &format!("extreme {}", T::DTYPE),
        got,
        o_prob(&lw, &labels, 6, 3),
        1.0,
    );
    if T::DTYPE == DType::F32 {
        // f16 and bf16 round 1e4 - 1 to 1e4
        close("extreme exact", got, want.iter().sum::<f64>() / 6.0, 1.0);
    }
    assert_eq!(r.get(one).unwrap(), 1.0);
}

fn extreme_logits_are_stable<S: TestStats>(s: &S) {
    let _g = s.lock();
    extreme::<S, f32>(s);
    extreme::<S, f16>(s);
    extreme::<S, bf16>(s);
}

fn zero_rows_have_cosine_zero<S: TestStats>(s: &S) {
    let _g = s.lock();
    let a = s.upload(&[0.0f32, 0.0, 1.0, 0.0, 0.0, -0.0, 1.0, 1.0]);
    let b = s.upload(&[1.0f32, 2.0, 2.0, 0.0, 0.0, 0.0, -1.0, -1.0]);
    let mut plan = StatsPlan::new();
    let h = plan.row_cos_mean("c", DType::F32, 4, 2).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let mut cos = |x: &S::Buf<f32>, y: &S::Buf<f32>| {
        ex.run(&mut [h.bind((all::<S, f32>(x), all::<S, f32>(y)))])
            .unwrap()
            .get(h)
            .unwrap()
    };
    // rows: a zero -> 0; cos = 1; both zero -> 0; cos = -1
    close("zero rows", cos(&a, &b), 0.0, 1.0);
    let b2 = s.upload(&[1.0f32, 2.0, 2.0, 0.0, 5.0, 5.0, 1.0, 1.0]);
    close("zero rows", cos(&a, &b2), 0.5, 1.0);
    // all zero
    let z = s.upload(&[0.0f32; 8]);
    assert_eq!(cos(&z, &z), 0.0);
}

fn nan_isolation<S: TestStats, T: Elem>(s: &S, bad: f64) {
    let segs = Segments::from_lengths(&[5, 3, STATS_CHUNK + 2]).unwrap();
    let n = segs.total();
    let mut rng = Rng::new(8);
    let (mut x, _) = data::<T>(&mut rng, n, 1.0);
    let (y, _) = data::<T>(&mut rng, n, 1.0);
    let (mut fa, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    let (fb, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    let (mut l, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    let (l2, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    x[6] = T::from_f64(bad); // segment 1
    fa[9] = T::from_f64(bad); // row 1
    l[31] = T::from_f64(bad); // row 3
    let (dx, dy, dfa, dfb) = (s.upload(&x), s.upload(&y), s.upload(&fa), s.upload(&fb));
    let (dl, dl2, labels) = (s.upload(&l), s.upload(&l2), s.upload(&[0i64, 1, 2, 3]));
    let mut dacc = s.upload(&vec![0.0f32; n]);
    let mut plan = StatsPlan::new();
    let q_bad = plan.sq_diff_mean("q_bad", T::DTYPE, 1, n).unwrap();
    let q_ok = plan.sq_diff_mean("q_ok", T::DTYPE, 1, n).unwrap();
    let c_bad = plan.row_cos_mean("c_bad", T::DTYPE, 4, 8).unwrap();
    let c_ok = plan.row_cos_mean("c_ok", T::DTYPE, 4, 8).unwrap();
    let p_bad = plan.true_prob_mean("p_bad", T::DTYPE, 4, 8).unwrap();
    let p_ok = plan.true_prob_mean("p_ok", T::DTYPE, 4, 8).unwrap();
    let sh = plan.seg_sums("s", T::DTYPE, &segs, true).unwrap();
    let d = plan.seg_dots("d", T::DTYPE, &segs).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let r = ex
        .run(&mut [
            q_bad.bind((all::<S, T>(&dx), all::<S, T>(&dy))),
            q_ok.bind((all::<S, T>(&dy), all::<S, T>(&dy))),
            c_bad.bind((all::<S, T>(&dfa), all::<S, T>(&dfb))),
            c_ok.bind((all::<S, T>(&dfb), all::<S, T>(&dfb))),
            p_bad.bind((all::<S, T>(&dl), S::labels(&labels, ..))),
            p_ok.bind((all::<S, T>(&dl2), S::labels(&labels, ..))),
            sh.bind_acc(all::<S, T>(&dx), S::acc(&mut dacc, ..)),
            d.bind((all::<S, T>(&dy), all::<S, T>(&dx))),
        ])
        .unwrap();
    let what = format!("{} with {bad}", T::DTYPE);
    assert!(!r.get(q_bad).unwrap().is_finite(), "{what}");
    assert_eq!(r.get(q_ok).unwrap(), 0.0, "{what}");
    assert!(r.get(c_bad).unwrap().is_nan(), "{what}");
    close(&what, r.get(c_ok).unwrap(), 1.0, 1.0);
    if bad == f64::NEG_INFINITY {
        // a -Inf logit is a masked class (probability 0), not poison
        assert!(r.get(p_bad).unwrap().is_finite(), "{what}");
    } else {
        assert!(r.get(p_bad).unwrap().is_nan(), "{what}");
    }
    assert!(r.get(p_ok).unwrap().is_finite(), "{what}");
    let ss = r.get(sh).unwrap();
    let dd = r.get(d).unwrap();
    for (i, v) in [ss.sum, ss.sum_sq, ss.sum_abs, dd].iter().enumerate() {
        assert!(
            v[0].is_finite() && v[2].is_finite(),
            "{what} kind {i}: {v:?}"
        );
        assert!(!v[1].is_finite(), "{what} kind {i}: {v:?}");
    }
    let acc = s.download(&dacc);
    assert!(!acc[6].is_finite() && acc[5].is_finite() && acc[7].is_finite());
    assert_eq!(acc.iter().filter(|a| !a.is_finite()).count(), 1);
}

fn nan_and_inf_poison_only_their_statistics<S: TestStats>(s: &S) {
    let _g = s.lock();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        nan_isolation::<S, f32>(s, bad);
        nan_isolation::<S, f16>(s, bad);
        nan_isolation::<S, bf16>(s, bad);
    }
}

// ---- validation -----------------------------------------------------------------------------

fn validation_errors_name_the_numbers<S: TestStats>(s: &S) {
    let _g = s.lock();
    let segs = Segments::from_lengths(&[2, 3]).unwrap();
    let mut plan = StatsPlan::new();
    let q = plan.sq_diff_mean("z_a", DType::F16, 1, 4).unwrap();
    let p = plan.true_prob_mean("p_a", DType::F32, 2, 3).unwrap();
    let sh = plan.seg_sums("g", DType::F32, &segs, true).unwrap();
    let s2 = plan.seg_sums("g2", DType::F32, &segs, false).unwrap();
    let mut ex = s.exec(&plan).unwrap();
    let (h4, h3) = (s.upload(&[f16::ZERO; 4]), s.upload(&[f16::ZERO; 3]));
    let (f4, f5, f6) = (
        s.upload(&[0.0f32; 4]),
        s.upload(&[0.0f32; 5]),
        s.upload(&[0.0f32; 6]),
    );
    let lab = s.upload(&[0i64, 1]);
    let (mut acc5, mut acc4) = (s.upload(&[0.0f32; 5]), s.upload(&[0.0f32; 4]));
    let expect = |e: Error, parts: &[&str]| {
        let m = e.to_string();
        for p in parts {
            assert!(m.contains(p), "`{m}` lacks `{p}`");
        }
    };
    let c0 = s.counts();
    expect(
        ex.run(&mut [q.bind((all::<S, f16>(&h4), all::<S, f16>(&h4)))])
            .unwrap_err(),
        &["expected 4", "got 1"],
    );
    // A good set of inputs with input `$i` replaced by `$bad`.
    macro_rules! rejects {
        ($i:expr, $bad:expr, $parts:expr $(,)?) => {{
            let mut inputs = vec![
                q.bind((all::<S, f16>(&h4), all::<S, f16>(&h4))),
                p.bind((all::<S, f32>(&f6), S::labels(&lab, ..))),
                sh.bind_acc(all::<S, f32>(&f5), S::acc(&mut acc5, ..)),
                s2.bind(all::<S, f32>(&f5)),
            ];
            inputs[$i] = $bad;
            expect(ex.run(&mut inputs).unwrap_err(), $parts);
        }};
    }
    let (h, f) = (all::<S, f16>, all::<S, f32>);
    rejects!(
        0,
        q.bind((h(&h4), h(&h3))),
        &["z_a", "`y` has 3 elements, expected 4"]
    );
    rejects!(
        0,
        q.bind((f(&f4), f(&f4))),
        &["z_a", "`x` is f32, declared f16"]
    );
    rejects!(
        1,
        p.bind((f(&f6), S::labels(&lab, ..1))),
        &["p_a", "`labels` has 1 elements, expected 2"],
    );
    rejects!(
        1,
        p.bind((f(&f5), S::labels(&lab, ..))),
        &[
            "p_a",
            "2x3",
            "`logits` has 5 elements, not a whole number of rows of 3",
        ],
    );
    rejects!(
        2,
        sh.bind_acc(f(&f5), S::acc(&mut acc4, ..)),
        &["`g`", "`acc` has 4 elements, expected 5"],
    );
    rejects!(2, sh.bind(f(&f5)), &["`g`", "bound without one"]);
    rejects!(
        3,
        s2.bind_acc(f(&f5), S::acc(&mut acc4, ..)),
        &["`g2`", "bound with one"],
    );
    rejects!(
        2,
        q.bind((h(&h4), h(&h4))),
        &["z_a", "bound twice (inputs 0 and 2)"],
    );
    // a handle of another plan
    let mut other = StatsPlan::new();
    let oq = other.sq_diff_mean("o", DType::F16, 1, 4).unwrap();
    rejects!(0, oq.bind((h(&h4), h(&h4))), &["another plan"]);
    assert!(ex.results().get(oq).is_err());
    // a statistic declared after the executor was built
    let late = plan.sq_diff_mean("late", DType::F16, 1, 4).unwrap();
    rejects!(0, late.bind((h(&h4), h(&h4))), &["statistic 4", "knows 4"]);
    assert!(ex.results().get(late).is_err());
    // nothing was launched, copied or written by the failed runs
    if let (Some(c0), Some(c1)) = (c0, s.counts()) {
        assert_eq!(c0, c1, "a rejected run launched or copied");
    }
    assert_eq!(s.download(&acc5), [0.0; 5]);
    assert!(ex.results().get(q).unwrap().is_nan());
    // shape overflow at declaration
    assert!(plan.row_cos_mean("big", DType::F32, usize::MAX, 2).is_err());
    assert!(plan
        .true_prob_mean("big", DType::F32, 2, usize::MAX)
        .is_err());
    // the crate's oracle validates the same way
    let mut out = plan.new_results();
    let h4 = [f16::ZERO; 4];
    assert!(oracle::run(&plan, &mut [q.bind((&h4, &h4))], &mut out).is_err());
}

#[test]
fn redundancy_ratio_helper() {
    let _g = shared();
    assert_eq!(redreg::stats::redundancy_ratio(2.0, 1.0, 0.0), 2.0);
    assert_eq!(
        redreg::stats::redundancy_ratio(1.0, 0.0, REDUNDANCY_EPS),
        1e12
    );
}

#[test]
fn crate_reference_matches_independent_oracle() {
    let _g = shared();
    let mut rng = Rng::new(10);
    let (a, aw) = data::<f16>(&mut rng, 33 * 7, 3.0);
    let (b, bw) = data::<f16>(&mut rng, 33 * 7, 3.0);
    let labels = labels(&mut rng, 33, 7);
    close(
        "ref sqd",
        oracle::sq_diff_mean(&a, &b).unwrap(),
        o_sqd(&aw, &bw),
        o_sqd(&aw, &bw),
    );
    close(
        "ref cos",
        oracle::row_cos_mean(&a, &b, 33, 7).unwrap(),
        o_cos(&aw, &bw, 33, 7),
        1.0,
    );
    close(
        "ref prob",
        oracle::true_prob_mean(&a, &labels, 33, 7).unwrap(),
        o_prob(&aw, &labels, 33, 7),
        1.0,
    );
    assert!(matches!(
        oracle::true_prob_mean(&a, &[7; 33], 33, 7),
        Err(Error::LabelOutOfRange {
            row: 0,
            label: 7,
            ..
        })
    ));
}

// ---- any batch size up to the declared one (issue #26) -----------------------------------

/// Declared maxima of the short-batch plan: narrow rows (several rows per task; the
/// squared difference spans chunks, a cut falls inside a chunk) and wide rows (a row longer
/// than a chunk: row pieces).
const MAX_ROWS: usize = 37;
const WIDE_ROWS: usize = 3;
const FEAT: usize = 1000; // per row of the squared difference: 37 000 elements, 3 chunks
const DIM: usize = 512; // 32 rows per cosine task
const CLASSES: usize = 10;
const WIDE: usize = STATS_CHUNK + 17;

type Data<T> = (Vec<T>, Vec<f64>);

/// One step's buffers at the declared maxima (runs take prefixes of them), with their f64
/// widenings: the squared difference's `Z`, the cosine's `A`, the wide cosine's `W`, and
/// `L` for the logits (narrow and wide) and the per-segment statistic.
struct Batch<Z, A, L, W> {
    z: [Data<Z>; 2],
    a: [Data<A>; 2],
    l: Data<L>,
    y: Vec<i64>,
    wa: [Data<W>; 2],
    wl: Data<L>,
    wy: Vec<i64>,
    g: Data<L>,
}

fn batch<Z: Elem, A: Elem, L: Elem, W: Elem>(
    rng: &mut Rng,
    wide_rows: usize,
    segs: &Segments,
) -> Batch<Z, A, L, W> {
    Batch {
        z: [0; 2].map(|_| data::<Z>(rng, MAX_ROWS * FEAT, 1.0)),
        a: [0; 2].map(|_| data::<A>(rng, MAX_ROWS * DIM, 1.0)),
        wa: [0; 2].map(|_| data::<W>(rng, wide_rows * WIDE, 1.0)),
        l: data::<L>(rng, MAX_ROWS * CLASSES, 4.0),
        y: labels(rng, MAX_ROWS, CLASSES),
        wl: data::<L>(rng, wide_rows * WIDE, 20.0),
        wy: labels(rng, wide_rows, WIDE),
        g: data::<L>(rng, segs.total(), 1.0),
    }
}

/// A batch in the memory of executor `S`.
struct Dev<S: TestStats, Z: Elem, A: Elem, L: Elem, W: Elem> {
    z: [S::Buf<Z>; 2],
    a: [S::Buf<A>; 2],
    l: S::Buf<L>,
    y: S::Buf<i64>,
    wa: [S::Buf<W>; 2],
    wl: S::Buf<L>,
    wy: S::Buf<i64>,
    g: S::Buf<L>,
}

fn upload<S: TestStats, Z: Elem, A: Elem, L: Elem, W: Elem>(
    s: &S,
    b: &Batch<Z, A, L, W>,
) -> Dev<S, Z, A, L, W> {
    Dev {
        z: [s.upload(&b.z[0].0), s.upload(&b.z[1].0)],
        a: [s.upload(&b.a[0].0), s.upload(&b.a[1].0)],
        l: s.upload(&b.l.0),
        y: s.upload(&b.y),
        wa: [s.upload(&b.wa[0].0), s.upload(&b.wa[1].0)],
        wl: s.upload(&b.wl.0),
        wy: s.upload(&b.wy),
        g: s.upload(&b.g.0),
    }
}

/// The plan of every row statistic (declared for `rows` narrow and `wide` wide rows) plus a
/// per-segment statistic with an accumulator, and its handles.
struct RowPlan {
    plan: StatsPlan,
    sq: redreg::stats::SqDiffMean,
    cos: redreg::stats::RowCosMean,
    prob: redreg::stats::TrueProbMean,
    wcos: redreg::stats::RowCosMean,
    wprob: redreg::stats::TrueProbMean,
    sums: redreg::stats::SegSums,
}

fn row_plan<Z: Elem, A: Elem, L: Elem, W: Elem>(
    rows: usize,
    wide: usize,
    segs: &Segments,
) -> RowPlan {
    let mut plan = StatsPlan::new();
    RowPlan {
        sq: plan.sq_diff_mean("z1-z2", Z::DTYPE, rows, FEAT).unwrap(),
        cos: plan.row_cos_mean("pos_sim", A::DTYPE, rows, DIM).unwrap(),
        prob: plan.true_prob_mean("p", L::DTYPE, rows, CLASSES).unwrap(),
        wcos: plan.row_cos_mean("wide cos", W::DTYPE, wide, WIDE).unwrap(),
        wprob: plan.true_prob_mean("wide p", L::DTYPE, wide, WIDE).unwrap(),
        sums: plan.seg_sums("g", L::DTYPE, segs, true).unwrap(),
        plan,
    }
}

/// The inputs of `p` for the first `n` narrow and `w` wide rows of `d`.
fn row_inputs<'a, S: TestStats, Z: Elem, A: Elem, L: Elem, W: Elem>(
    p: &RowPlan,
    d: &'a Dev<S, Z, A, L, W>,
    n: usize,
    w: usize,
    acc: &'a mut S::Buf<f32>,
) -> Vec<Input<'a, S::Memory>> {
    vec![
        p.sq.bind((S::buf(&d.z[0], ..n * FEAT), S::buf(&d.z[1], ..n * FEAT))),
        p.cos
            .bind((S::buf(&d.a[0], ..n * DIM), S::buf(&d.a[1], ..n * DIM))),
        p.prob
            .bind((S::buf(&d.l, ..n * CLASSES), S::labels(&d.y, ..n))),
        p.wcos
            .bind((S::buf(&d.wa[0], ..w * WIDE), S::buf(&d.wa[1], ..w * WIDE))),
        p.wprob
            .bind((S::buf(&d.wl, ..w * WIDE), S::labels(&d.wy, ..w))),
        p.sums.bind_acc(S::buf(&d.g, ..), S::acc(acc, ..)),
    ]
}

fn means(p: &RowPlan, r: &StatsResults) -> [f64; 3] {
    [r.get(p.sq), r.get(p.cos), r.get(p.prob)].map(|m| m.unwrap())
}

/// Runs of (narrow rows, wide rows) of one batch with `wide_rows` wide rows declared: each
/// against the independent f64 formulas over the rows given, bit for bit the run of a plan
/// declared with exactly those rows, not the full batch's means, the per-segment statistic
/// unaffected, the sums and counts of an all-reduce counting the rows of the run, and the
/// accumulator bit for bit `f32(f64(acc) + x^2)` after every run. On the emulated driver a
/// run of any size is one launch, one host-to-device and one device-to-host copy.
fn short_batches<S: TestStats, Z: Elem, A: Elem, L: Elem, W: Elem>(
    s: &S,
    seed: u64,
    wide_rows: usize,
    segs: &Segments,
    runs: &[(usize, usize)],
) {
    let mut rng = Rng::new(seed);
    let b = batch::<Z, A, L, W>(&mut rng, wide_rows, segs);
    let d = upload(s, &b);
    let max = row_plan::<Z, A, L, W>(MAX_ROWS, wide_rows, segs);
    let mut exec = s.exec(&max.plan).unwrap();
    let mut acc_h = vec![0.5f32; segs.total()];
    let mut acc = s.upload(&acc_h);
    let full = exec
        .run(&mut row_inputs(&max, &d, MAX_ROWS, wide_rows, &mut acc))
        .unwrap()
        .clone();
    acc_update(&mut acc_h, &b.g.1);
    let full_sums = full.get(max.sums).unwrap().sum.to_vec();
    for &(n, w) in runs {
        let what = format!("{} {}: {n} rows (wide {w})", Z::DTYPE, L::DTYPE);
        let c0 = s.counts();
        let r = exec.run(&mut row_inputs(&max, &d, n, w, &mut acc)).unwrap();
        if let (Some(c0), Some(c1)) = (c0, s.counts()) {
            let dc: Vec<u64> = c1.iter().zip(c0).map(|(a, b)| a - b).collect();
            assert_eq!(dc, [1, 1, 1, 0], "{what}: launches and copies");
        }
        acc_update(&mut acc_h, &b.g.1);
        // The independent f64 formulas over the rows given.
        let sq = o_sqd(&b.z[0].1[..n * FEAT], &b.z[1].1[..n * FEAT]);
        close(&format!("{what}: sq"), r.get(max.sq).unwrap(), sq, sq);
        let cos = o_cos(&b.a[0].1, &b.a[1].1, n, DIM);
        close(&format!("{what}: cos"), r.get(max.cos).unwrap(), cos, 1.0);
        let p = o_prob(&b.l.1, &b.y, n, CLASSES);
        close(&format!("{what}: prob"), r.get(max.prob).unwrap(), p, 1.0);
        let wcos = o_cos(&b.wa[0].1, &b.wa[1].1, w, WIDE);
        close(
            &format!("{what}: wide cos"),
            r.get(max.wcos).unwrap(),
            wcos,
            1.0,
        );
        let wp = o_prob(&b.wl.1, &b.wy, w, WIDE);
        close(
            &format!("{what}: wide prob"),
            r.get(max.wprob).unwrap(),
            wp,
            1.0,
        );
        // A short batch is not the full batch (the checks above can fail).
        let (m, mf) = (means(&max, r), means(&max, &full));
        assert!(
            n == MAX_ROWS || (0..3).all(|i| m[i] != mf[i]),
            "{what}: {m:?} vs {mf:?}"
        );
        // The per-segment statistic of the same run keeps its layout and values.
        assert_eq!(r.get(max.sums).unwrap().sum, &full_sums[..], "{what}");
        // Sums and counts for an all-reduce count the rows of this run.
        let red = r.to_sums(&max.plan).unwrap();
        let v = red.as_slice();
        assert_eq!((v[1], v[3], v[5]), ((n * FEAT) as f64, n as f64, n as f64));
        assert_eq!((v[8], v[10]), (w as f64, w as f64));
        let short = r.as_slice().to_vec();

        // Bit for bit the run of a plan declared with exactly these rows.
        let exact = row_plan::<Z, A, L, W>(n, w, segs);
        let mut acc2 = s.upload(&vec![0.5f32; segs.total()]);
        let e = s
            .exec(&exact.plan)
            .unwrap()
            .run(&mut row_inputs(&exact, &d, n, w, &mut acc2))
            .unwrap()
            .as_slice()
            .to_vec();
        assert_eq!(
            bits(&short),
            bits(&e),
            "{what}: vs a plan declared with {n} rows"
        );
    }
    let acc = s.download(&acc);
    assert_eq!(
        first_difference_nan_any(&acc, &acc_h),
        None,
        "accumulator after {} runs",
        runs.len() + 1
    );
}

/// Short batches (1 row up to the declared 37; wide rows 1 to 3) in f32, in bf16, and in a
/// plan mixing f16, f32 and bf16.
fn any_batch_size_up_to_the_declared_one<S: TestStats>(s: &S) {
    let _g = s.lock();
    let segs = Segments::from_lengths(&[700, 0, STATS_CHUNK + 5]).unwrap();
    // 32: a cosine task boundary; 31, 33: one row either side; 1: the smallest batch.
    let runs = [MAX_ROWS, 33, 32, 31, 2, 1].map(|n| (n, n.min(WIDE_ROWS)));
    short_batches::<S, f32, f32, f32, f32>(s, 0x5407, WIDE_ROWS, &segs, &runs);
    short_batches::<S, bf16, bf16, bf16, bf16>(s, 0x5408, WIDE_ROWS, &segs, &runs);
    short_batches::<S, f16, f32, f32, bf16>(s, 0x540b, WIDE_ROWS, &segs, &runs);
}

/// The same with statistics of more tasks than a block has threads: the CUDA kernel's
/// finishing block stages the partials `RR_THREADS` (256) tasks at a time
/// (kernels/stats.cu, st_finish), so here a per-segment statistic of 600 tasks and
/// wide-row statistics of 300 row pieces span three and two batches, and the short batches
/// cut the wide rows inside the second batch (139 rows: the first rejected piece is task
/// 278).
fn finishes_span_several_batches<S: TestStats>(s: &S) {
    let _g = s.lock();
    let lens: Vec<usize> = (0..600).map(|i| 1 + (i * 7) % 40).collect();
    let segs = Segments::from_lengths(&lens).unwrap();
    let runs = [(MAX_ROWS, 150), (31, 139), (1, 129), (2, 1)];
    short_batches::<S, f16, f32, f32, bf16>(s, 0x540c, 150, &segs, &runs);
}

/// Two data-parallel ranks with batches of 20 and 17 rows (one declared maximum of 37):
/// their summed sums and counts give the means of all 37 rows.
fn uneven_batches_reduce_to_the_whole_batch<S: TestStats>(s: &S) {
    let _g = s.lock();
    let mut rng = Rng::new(0x5409);
    let segs = Segments::from_lengths(&[5]).unwrap();
    let b = batch::<f32, f32, f32, f32>(&mut rng, WIDE_ROWS, &segs);
    let p = row_plan::<f32, f32, f32, f32>(MAX_ROWS, WIDE_ROWS, &segs);
    let mut exec = s.exec(&p.plan).unwrap();
    let mut acc = s.upload(&vec![0.0f32; segs.total()]);
    let d = upload(s, &b);
    let whole = exec
        .run(&mut row_inputs(&p, &d, MAX_ROWS, WIDE_ROWS, &mut acc))
        .unwrap()
        .clone();
    // Rank 0: rows 0..20 (wide 0..2); rank 1: rows 20..37 (wide 2..3).
    let (n0, w0) = (20, 2);
    let r0 = exec
        .run(&mut row_inputs(&p, &d, n0, w0, &mut acc))
        .unwrap()
        .to_sums(&p.plan)
        .unwrap();
    let tail = |x: &Data<f32>, from: usize| (x.0[from..].to_vec(), x.1.clone());
    let b1 = Batch {
        z: [tail(&b.z[0], n0 * FEAT), tail(&b.z[1], n0 * FEAT)],
        a: [tail(&b.a[0], n0 * DIM), tail(&b.a[1], n0 * DIM)],
        l: tail(&b.l, n0 * CLASSES),
        y: b.y[n0..].to_vec(),
        wa: [tail(&b.wa[0], w0 * WIDE), tail(&b.wa[1], w0 * WIDE)],
        wl: tail(&b.wl, w0 * WIDE),
        wy: b.wy[w0..].to_vec(),
        g: b.g.clone(),
    };
    let d1 = upload(s, &b1);
    let mut sum = exec
        .run(&mut row_inputs(
            &p,
            &d1,
            MAX_ROWS - n0,
            WIDE_ROWS - w0,
            &mut acc,
        ))
        .unwrap()
        .to_sums(&p.plan)
        .unwrap();
    for (s, x) in sum.as_mut_slice().iter_mut().zip(r0.as_slice()) {
        *s += x;
    }
    let m = sum.means().unwrap();
    for (what, got, want) in [
        ("sq", m.get(p.sq), whole.get(p.sq)),
        ("cos", m.get(p.cos), whole.get(p.cos)),
        ("prob", m.get(p.prob), whole.get(p.prob)),
        ("wide cos", m.get(p.wcos), whole.get(p.wcos)),
        ("wide prob", m.get(p.wprob), whole.get(p.wprob)),
    ] {
        let (got, want) = (got.unwrap(), want.unwrap());
        close(what, got, want, want.abs().max(1.0));
    }
}

/// More rows than declared, no rows, a length that is not a whole number of rows, buffers
/// of different lengths, labels that do not match the logits' rows: each a clear `Err`
/// before anything is read or written (the accumulator and the last results stay; on the
/// emulated driver nothing is launched or copied).
fn short_batch_errors_name_the_numbers<S: TestStats>(s: &S) {
    let _g = s.lock();
    let mut rng = Rng::new(0x540a);
    let segs = Segments::from_lengths(&[9]).unwrap();
    let b = batch::<f32, f32, f32, f32>(&mut rng, WIDE_ROWS, &segs);
    let d = upload(s, &b);
    let p = row_plan::<f32, f32, f32, f32>(MAX_ROWS, WIDE_ROWS, &segs);
    let mut exec = s.exec(&p.plan).unwrap();
    let mut acc = s.upload(&vec![1.0f32; segs.total()]);
    exec.run(&mut row_inputs(&p, &d, 5, 1, &mut acc)).unwrap();
    let (before, acc_before) = (exec.results().as_slice().to_vec(), s.download(&acc));
    let more_z = s.upload(&vec![0.0f32; (MAX_ROWS + 1) * FEAT]);
    let more_l = s.upload(&vec![0.0f32; (MAX_ROWS + 1) * CLASSES]);
    let more_y = s.upload(&vec![0i64; MAX_ROWS + 1]);
    let c0 = s.counts();
    macro_rules! check {
        ($i:expr, $bad:expr, $parts:expr $(,)?) => {{
            let mut inputs = row_inputs(&p, &d, 5, 1, &mut acc);
            inputs[$i] = $bad;
            let m = exec.run(&mut inputs).unwrap_err().to_string();
            for part in $parts {
                assert!(m.contains(part), "`{m}` lacks `{part}`");
            }
        }};
    }
    check!(
        0,
        p.sq.bind((all::<S, f32>(&more_z), all::<S, f32>(&more_z))),
        &["z1-z2", "38 rows of 1000, more than the 37 rows declared"],
    );
    check!(
        0,
        p.sq.bind((
            S::buf(&d.z[0], ..5 * FEAT + 1),
            S::buf(&d.z[1], ..5 * FEAT + 1)
        )),
        &[
            "z1-z2",
            "`x` has 5001 elements, not a whole number of rows of 1000"
        ],
    );
    check!(
        0,
        p.sq.bind((S::buf(&d.z[0], ..0), S::buf(&d.z[1], ..0))),
        &["z1-z2", "`x` is empty", "1 to 37 rows"]
    );
    check!(
        0,
        p.sq.bind((S::buf(&d.z[0], ..5 * FEAT), S::buf(&d.z[1], ..4 * FEAT))),
        &["`y` has 4000 elements, expected 5000"],
    );
    check!(
        1,
        p.cos
            .bind((S::buf(&d.a[0], ..DIM + 1), S::buf(&d.a[1], ..DIM + 1))),
        &["pos_sim", "not a whole number of rows of 512"],
    );
    check!(
        2,
        p.prob
            .bind((all::<S, f32>(&more_l), S::labels(&more_y, ..))),
        &["`p`", "38 rows of 10, more than the 37 rows declared"],
    );
    check!(
        2,
        p.prob
            .bind((S::buf(&d.l, ..4 * CLASSES), S::labels(&d.y, ..5))),
        &["`p`", "`labels` has 5 elements, expected 4"],
    );
    check!(
        4,
        p.wprob.bind((S::buf(&d.wl, ..0), S::labels(&d.wy, ..0))),
        &["wide p", "`logits` is empty"],
    );
    if let (Some(c0), Some(c1)) = (c0, s.counts()) {
        assert_eq!(c0, c1, "a rejected run launched or copied");
    }
    assert_eq!(
        s.download(&acc),
        acc_before,
        "a rejected run wrote the accumulator"
    );
    assert_eq!(
        bits(exec.results().as_slice()),
        bits(&before),
        "a rejected run wrote results"
    );
}

/// Properties of `CpuStats` alone: no allocation when a built plan runs again, results
/// bitwise identical for any number of rayon threads.
mod cpu_only {
    use super::*;

    #[test]
    fn plan_reuse_allocates_nothing() {
        let _g = exclusive();
        let segs = mixed_segs();
        let mut plan = StatsPlan::new();
        let num = plan.sq_diff_mean("z", DType::F16, 1, 4 * B * D).unwrap();
        let sim = plan.row_cos_mean("sim", DType::BF16, B, D).unwrap();
        let p = plan.true_prob_mean("p", DType::F32, B, C).unwrap();
        let sums = plan.seg_sums("g", DType::BF16, &segs, true).unwrap();
        let dots = plan.seg_dots("d", DType::BF16, &segs).unwrap();
        let mut ex = CpuStats::new(&plan).unwrap();
        let mut rng = Rng::new(7);
        let mut ms = [mixed(&mut rng), mixed(&mut rng)];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // Every pool thread must have started before counting: a thread's start-up
        // allocates (thread-locals, its deque), and on a loaded machine a thread the warm-up
        // runs did not need can start late, inside the counted window.
        pool.broadcast(|_| ());
        let counted = pool.install(|| {
            let mut counted = 0;
            for step in 0..6 {
                let m = &mut ms[step % 2];
                TRACK.store(step >= 2, Ordering::SeqCst); // two warm-up runs
                let before = ALLOCS.load(Ordering::SeqCst);
                ex.run(&mut [
                    num.bind((&m.z1, &m.z2)),
                    sim.bind((&m.fa, &m.fv)),
                    p.bind((&m.logits, &m.labels)),
                    sums.bind_acc(&m.g, &mut m.acc),
                    dots.bind((&m.d, &m.g)),
                ])
                .unwrap();
                counted += ALLOCS.load(Ordering::SeqCst) - before;
                TRACK.store(false, Ordering::SeqCst);
            }
            counted
        });
        assert_eq!(counted, 0, "allocations during 4 runs of a built plan");
    }

    #[test]
    fn bitwise_identical_across_thread_counts_and_runs() {
        let _g = shared();
        let segs =
            Segments::from_lengths(&[3 * STATS_CHUNK + 11, 0, 1000, 2 * STATS_CHUNK]).unwrap();
        let n = segs.total();
        let mut rng = Rng::new(9);
        let (x, _) = data::<f32>(&mut rng, n, 1.0);
        let (y, _) = data::<f32>(&mut rng, n, 1.0);
        let (h, _) = data::<f16>(&mut rng, 300 * 1000, 8.0);
        let (h2, _) = data::<f16>(&mut rng, 300 * 1000, 1.0);
        let labels = labels(&mut rng, 300, 1000);
        let (wide, _) = data::<bf16>(&mut rng, 2 * (2 * STATS_CHUNK + 5), 3.0);
        let mut plan = StatsPlan::new();
        let hq = plan.sq_diff_mean("q", DType::F32, 1, n).unwrap();
        let hc = plan.row_cos_mean("c", DType::F16, 300, 1000).unwrap();
        let hcw = plan
            .row_cos_mean("cw", DType::BF16, 2, 2 * STATS_CHUNK + 5)
            .unwrap();
        let hp = plan.true_prob_mean("p", DType::F16, 300, 1000).unwrap();
        let hpw = plan
            .true_prob_mean("pw", DType::BF16, 2, 2 * STATS_CHUNK + 5)
            .unwrap();
        let hs = plan.seg_sums("s", DType::F32, &segs, true).unwrap();
        let hd = plan.seg_dots("d", DType::F32, &segs).unwrap();
        let mut first: Option<(Vec<u64>, Vec<u32>)> = None;
        for threads in [1, 2, 8, 1, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut acc = vec![0.25f32; n];
            let vals = pool.install(|| {
                let mut ex = CpuStats::new(&plan).unwrap();
                let r = ex
                    .run(&mut [
                        hq.bind((&x, &y)),
                        hc.bind((&h, &h2)),
                        hcw.bind((&wide, &wide[..])),
                        hp.bind((&h, &labels)),
                        hpw.bind((&wide, &[1, 2 * STATS_CHUNK as i64 + 4])),
                        hs.bind_acc(&x, &mut acc),
                        hd.bind((&x, &y)),
                    ])
                    .unwrap();
                r.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            });
            let accb: Vec<u32> = acc.iter().map(|a| a.to_bits()).collect();
            match &first {
                None => first = Some((vals, accb)),
                Some((v0, a0)) => {
                    assert_eq!(&vals, v0, "results with {threads} threads");
                    assert_eq!(&accb, a0, "accumulator with {threads} threads");
                }
            }
        }
    }
}

/// CUDA alone: the NVRTC compile of the statistics module, and the NaN-payload rule the
/// bodies' accumulator comparisons follow.
#[cfg(feature = "cuda")]
mod cuda_only {
    use super::*;
    use common::gpu;
    use common::stats::serial;

    #[test]
    fn nvrtc_compiles_stats_module() {
        if let Err(reason) = redreg::cuda::nvrtc_available() {
            gpu::skip(
                "nvrtc_compiles_stats_module",
                "REDREG_REQUIRE_NVRTC",
                &reason,
            );
            return;
        }
        let _g = shared();
        let _s = serial();
        let ptx = redreg::cuda::nvrtc_compile("stats", "compute_75").unwrap();
        // One kernel: the finish is folded into the task kernel (one launch per run).
        assert!(ptx.contains(".entry stats_tasks("), "PTX lacks stats_tasks");
        assert!(
            !ptx.contains("stats_finish"),
            "a separate finish kernel is back"
        );
    }

    #[test]
    fn nan_comparison_ignores_the_payload_only() {
        let gpu_nan = f32::from_bits(0x7fff_ffff);
        let cpu_nan = f32::from_bits(0x7fc0_0000);
        assert_eq!(
            first_difference_nan_any(&[1.0, gpu_nan], &[1.0, cpu_nan]),
            None
        );
        assert_eq!(
            first_difference_nan_any(&[1.0, gpu_nan], &[1.0, 1.0]),
            Some(1)
        );
        assert_eq!(
            first_difference_nan_any(&[0.0, cpu_nan], &[-0.0, cpu_nan]),
            Some(0)
        );
    }
}
