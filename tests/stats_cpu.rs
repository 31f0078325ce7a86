//! CPU statistics plan (issue 4) against plain f64 computations written here, independent
//! of the crate's code.

use redreg::stats::{
    reference, Buf, CpuStats, StatHandle, Stats, StatsPlan, REDUNDANCY_EPS, STATS_CHUNK,
};
use redreg::testing::Rng;
use redreg::testing::{from_f64_vec, to_f64_vec};
use redreg::{bf16, f16, DType, Element, Error, Segments};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;

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

/// Every test takes this shared; the allocation test takes it exclusively so no other test
/// allocates while it counts.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

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

fn buf<T: Element>(t: &[T]) -> Buf<'_> {
    Buf::of(t).unwrap()
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

fn run1<'a>(
    exec: &'a mut CpuStats,
    inputs: &mut [redreg::stats::Input<'_>],
) -> &'a redreg::stats::StatsResults {
    exec.run(inputs).unwrap()
}

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

fn sq_diff_case<T: Element>(len: usize, rng: &mut Rng) {
    let (x, xw) = data::<T>(rng, len, 1.0);
    let (y, yw) = data::<T>(rng, len, 1.0);
    let mut plan = StatsPlan::new();
    let h = plan.sq_diff_mean("d", T::DTYPE, 1, len).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let got = run1(&mut ex, &mut [h.bind((buf(&x), buf(&y)))])
        .get(h)
        .unwrap();
    let want = o_sqd(&xw, &yw);
    close(&format!("sq_diff {} len {len}", T::DTYPE), got, want, want);
    if len == 0 {
        assert!(got.is_nan(), "mean of nothing is NaN");
    }
}

#[test]
fn sq_diff_mean_matches_f64() {
    let _g = shared();
    let mut rng = Rng::new(1);
    for len in LENS {
        sq_diff_case::<f32>(len, &mut rng);
        sq_diff_case::<f16>(len, &mut rng);
        sq_diff_case::<bf16>(len, &mut rng);
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

fn cos_case<T: Element>(rows: usize, dim: usize, rng: &mut Rng) {
    let (mut a, _) = data::<T>(rng, rows * dim, 1.0);
    let (b, bw) = data::<T>(rng, rows * dim, 1.0);
    // make the first row of `a` zero when there is one
    if rows > 0 {
        a[..dim].iter_mut().for_each(|v| *v = T::from_f64(0.0));
    }
    let aw = to_f64_vec(&a);
    let mut plan = StatsPlan::new();
    let h = plan.row_cos_mean("c", T::DTYPE, rows, dim).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let got = run1(&mut ex, &mut [h.bind((buf(&a), buf(&b)))])
        .get(h)
        .unwrap();
    let want = o_cos(&aw, &bw, rows, dim);
    close(&format!("cos {} {rows}x{dim}", T::DTYPE), got, want, 1.0);
}

#[test]
fn row_cos_mean_matches_f64() {
    let _g = shared();
    let mut rng = Rng::new(2);
    for (r, d) in ROWS {
        cos_case::<f32>(r, d, &mut rng);
        cos_case::<f16>(r, d, &mut rng);
        cos_case::<bf16>(r, d, &mut rng);
    }
}

fn prob_case<T: Element>(rows: usize, c: usize, scale: f64, rng: &mut Rng) {
    let (l, lw) = data::<T>(rng, rows * c, scale);
    let labels = labels(rng, rows, c);
    let mut plan = StatsPlan::new();
    let h = plan.true_prob_mean("p", T::DTYPE, rows, c).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let got = run1(&mut ex, &mut [h.bind((buf(&l), &labels))])
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

#[test]
fn true_prob_mean_matches_f64() {
    let _g = shared();
    let mut rng = Rng::new(3);
    for (r, c) in ROWS {
        if c == 0 && r > 0 {
            continue; // every label out of range: tested separately
        }
        for scale in [1.0, 30.0] {
            prob_case::<f32>(r, c, scale, &mut rng);
            prob_case::<f16>(r, c, scale, &mut rng);
            prob_case::<bf16>(r, c, scale, &mut rng);
        }
    }
}

fn segs() -> Segments {
    Segments::from_lengths(&[0, 1, 33, 0, 1023, 1025, STATS_CHUNK + 1, 2, 2 * STATS_CHUNK]).unwrap()
}

fn seg_case<T: Element>(segs: &Segments, rng: &mut Rng) {
    let n = segs.total();
    let (x, xw) = data::<T>(rng, n, 1.0);
    let (y, yw) = data::<T>(rng, n, 1.0);
    let acc0: Vec<f32> = rng
        .signed_vec(n, 2.0)
        .into_iter()
        .map(|v| v.abs() as f32)
        .collect();
    let mut acc = acc0.clone();
    let mut plan = StatsPlan::new();
    let hs = plan.seg_sums("s", T::DTYPE, segs, true).unwrap();
    let hn = plan.seg_sums("s_noacc", T::DTYPE, segs, false).unwrap();
    let hd = plan.seg_dots("d", T::DTYPE, segs).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let r = run1(
        &mut ex,
        &mut [
            hs.bind_acc(buf(&x), &mut acc),
            hd.bind((buf(&x), buf(&y))),
            hn.bind(buf(&x)),
        ],
    );
    let s = r.get(hs).unwrap();
    assert_eq!(s, r.get(hn).unwrap(), "with and without accumulator");
    let want = o_sums(segs, &xw);
    let (wd, sd) = o_dots(segs, &xw, &yw);
    for (i, w) in want.iter().enumerate() {
        let what = format!("{} seg {i} (len {})", T::DTYPE, segs.seg_len(i));
        close(&format!("sum {what}"), s.sum[i], w[0], w[2]);
        close(&format!("sum_sq {what}"), s.sum_sq[i], w[1], w[1]);
        close(&format!("sum_abs {what}"), s.sum_abs[i], w[2], w[2]);
        close(&format!("dot {what}"), r.get(hd).unwrap()[i], wd[i], sd[i]);
    }
    for e in 0..n {
        let want = (acc0[e] as f64 + xw[e] * xw[e]) as f32;
        assert_eq!(acc[e].to_bits(), want.to_bits(), "acc[{e}]");
    }
}

#[test]
fn segment_sums_dots_and_accumulator_match_f64() {
    let _g = shared();
    let mut rng = Rng::new(4);
    for segs in [
        segs(),
        Segments::from_lengths(&[]).unwrap(),
        Segments::from_lengths(&[0]).unwrap(),
        Segments::from_lengths(&[1]).unwrap(),
    ] {
        seg_case::<f32>(&segs, &mut rng);
        seg_case::<f16>(&segs, &mut rng);
        seg_case::<bf16>(&segs, &mut rng);
    }
}

#[test]
fn large_inputs_match_f64() {
    let _g = shared();
    let mut rng = Rng::new(5);
    let n = 20_000_000;
    let (x, xw) = data::<f32>(&mut rng, n, 1.0);
    let (y, yw) = data::<f32>(&mut rng, n, 1.0);
    let (rows, c) = (4_000, 1_000); // 4M elements: the exp-heavy oracle is the slow part
    let labels = labels(&mut rng, rows, c);
    let segs = Segments::from_lengths(&[n / 2, 3, n / 2 - 1003, 1000]).unwrap();
    let mut acc = vec![0.5f32; n];

    let mut plan = StatsPlan::new();
    let hq = plan.sq_diff_mean("q", DType::F32, 1, n).unwrap();
    let hc = plan.row_cos_mean("c", DType::F32, rows, c).unwrap();
    let hp = plan.true_prob_mean("p", DType::F32, rows, c).unwrap();
    let hs = plan.seg_sums("s", DType::F32, &segs, true).unwrap();
    let hd = plan.seg_dots("d", DType::F32, &segs).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let r = run1(
        &mut ex,
        &mut [
            hq.bind((&x, &y)),
            hc.bind((&x[..rows * c], &y[..rows * c])),
            hp.bind((&y[..rows * c], &labels)),
            hs.bind_acc(&x, &mut acc),
            hd.bind((&x, &y)),
        ],
    );
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
    let s = r.get(hs).unwrap();
    let ws = o_sums(&segs, &xw);
    let (wd, sd) = o_dots(&segs, &xw, &yw);
    for i in 0..segs.len() {
        close("large sum", s.sum[i], ws[i][0], ws[i][2]);
        close("large sum_sq", s.sum_sq[i], ws[i][1], ws[i][1]);
        close("large sum_abs", s.sum_abs[i], ws[i][2], ws[i][2]);
        close("large dot", r.get(hd).unwrap()[i], wd[i], sd[i]);
    }
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

#[test]
fn mixed_plan_reuse_and_reference_agree() {
    let _g = shared();
    let segs = mixed_segs();
    let mut plan = StatsPlan::new();
    let num = plan.sq_diff_mean("z_a", DType::F16, 1, 4 * B * D).unwrap();
    let den = plan.sq_diff_mean("x_a", DType::F32, 1, 3000).unwrap();
    let sim = plan.row_cos_mean("pos_sim", DType::BF16, B, D).unwrap();
    let p = plan.true_prob_mean("p_a", DType::F32, B, C).unwrap();
    let sums = plan.seg_sums("grad_a", DType::BF16, &segs, true).unwrap();
    let dots = plan.seg_dots("drift.grad", DType::BF16, &segs).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let mut oracle = plan.new_results();
    let mut rng = Rng::new(6);
    for step in 0..3 {
        let mut m = mixed(&mut rng);
        let mut acc_ref = m.acc.clone();
        let r = ex
            .run(&mut [
                // any order
                dots.bind((&m.d, &m.g)),
                num.bind((&m.z1, &m.z2)),
                sums.bind_acc(&m.g, &mut m.acc),
                sim.bind((&m.fa, &m.fv)),
                den.bind((&m.x1, &m.x2)),
                p.bind((&m.logits, &m.labels)),
            ])
            .unwrap();
        // the crate's oracle on the same plan
        reference::run(
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
        let s = r.get(sums).unwrap();
        for i in 0..segs.len() {
            close("sum", s.sum[i], ws[i][0], ws[i][2]);
            close("sum_sq", s.sum_sq[i], ws[i][1], ws[i][1]);
            close("sum_abs", s.sum_abs[i], ws[i][2], ws[i][2]);
            close("dot", r.get(dots).unwrap()[i], wdot[i], sdot[i]);
        }
        // backend vs crate oracle: same up to summation order
        for (i, (a, b)) in r.as_slice().iter().zip(oracle.as_slice()).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1e-300) || a.to_bits() == b.to_bits(),
                "step {step} value {i}: {a} vs {b}"
            );
        }
        assert_eq!(m.acc, acc_ref, "accumulator: backend vs oracle, bitwise");
        let accs: Vec<f32> =
            m.g.iter()
                .map(|v| (v.to_f64() * v.to_f64()) as f32)
                .collect();
        assert_eq!(m.acc, accs, "acc starts at 0 each step here");
    }
}

#[test]
fn plan_reuse_allocates_nothing() {
    let _g = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
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
    // Every pool thread must have started before counting: a thread's start-up allocates
    // (thread-locals, its deque), and on a loaded machine a thread the warm-up runs did not
    // need can start late, inside the counted window.
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

// ---- labels, extremes, zero rows, non-finite --------------------------------------------

#[test]
fn label_out_of_range_is_an_error_after_the_run() {
    let _g = shared();
    for c in [3usize, STATS_CHUNK + 5] {
        let rows = 6;
        let logits = vec![0.0f32; rows * c];
        let segs = Segments::from_lengths(&[2]).unwrap();
        let g = [3.0f32, 4.0];
        let mut acc = [1.0f32, 1.0];
        let mut plan = StatsPlan::new();
        let q = plan.sq_diff_mean("q", DType::F32, 1, 2).unwrap();
        let p = plan.true_prob_mean("p_v", DType::F32, rows, c).unwrap();
        let s = plan.seg_sums("s", DType::F32, &segs, true).unwrap();
        let mut ex = CpuStats::new(&plan).unwrap();
        for (labels, row, label) in [
            (vec![0, 1, 2, c as i64, -1, 0], 3usize, c as i64),
            (vec![0, -7, 2, c as i64, -1, 0], 1, -7),
            (vec![0, 1, 2, 0, 1, i64::MAX], 5, i64::MAX),
            (vec![i64::MIN, 1, 2, 0, 1, 1], 0, i64::MIN),
        ] {
            let e = ex
                .run(&mut [
                    q.bind((&g, &[0.0f32, 0.0])),
                    p.bind((&logits, &labels)),
                    s.bind_acc(&g, &mut acc),
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
            assert_eq!(r.get(s).unwrap().sum_sq, &[25.0]);
        }
        assert_eq!(
            acc,
            [1.0 + 4.0 * 9.0, 1.0 + 4.0 * 16.0],
            "accumulated on every run"
        );
        // a good run afterwards clears the fault
        let labels = vec![0i64; rows];
        let r = ex
            .run(&mut [
                q.bind((&g, &g)),
                p.bind((&logits, &labels)),
                s.bind_acc(&g, &mut acc),
            ])
            .unwrap();
        close("uniform", r.get(p).unwrap(), 1.0 / c as f64, 1.0);
    }
    // zero classes: any row is out of range
    let mut plan = StatsPlan::new();
    let p = plan.true_prob_mean("p", DType::F32, 2, 0).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let e = ex.run(&mut [p.bind((&[] as &[f32], &[0, 0]))]).unwrap_err();
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

fn extreme<T: Element>() {
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
    let mut plan = StatsPlan::new();
    let p = plan.true_prob_mean("p", T::DTYPE, 6, 3).unwrap();
    let one = plan.true_prob_mean("one", T::DTYPE, 18, 1).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let r = ex
        .run(&mut [p.bind((buf(&l), &labels)), one.bind((buf(&l), &[0; 18]))])
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

#[test]
fn extreme_logits_are_stable() {
    let _g = shared();
    extreme::<f32>();
    extreme::<f16>();
    extreme::<bf16>();
}

#[test]
fn zero_rows_have_cosine_zero() {
    let _g = shared();
    let a = [0.0f32, 0.0, 1.0, 0.0, 0.0, -0.0, 1.0, 1.0];
    let b = [1.0f32, 2.0, 2.0, 0.0, 0.0, 0.0, -1.0, -1.0];
    let mut plan = StatsPlan::new();
    let h = plan.row_cos_mean("c", DType::F32, 4, 2).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    // rows: a zero -> 0; cos = 1; both zero -> 0; cos = -1
    let got = ex.run(&mut [h.bind((&a, &b))]).unwrap().get(h).unwrap();
    close("zero rows", got, 0.0, 1.0);
    let b2 = [1.0f32, 2.0, 2.0, 0.0, 5.0, 5.0, 1.0, 1.0];
    let got = ex.run(&mut [h.bind((&a, &b2))]).unwrap().get(h).unwrap();
    close("zero rows", got, 0.5, 1.0);
    // all zero
    let z = [0.0f32; 8];
    assert_eq!(
        ex.run(&mut [h.bind((&z, &z))]).unwrap().get(h).unwrap(),
        0.0
    );
}

fn nan_isolation<T: Element>(bad: f64) {
    let segs = Segments::from_lengths(&[5, 3, STATS_CHUNK + 2]).unwrap();
    let n = segs.total();
    let mut rng = Rng::new(8);
    let (mut x, _) = data::<T>(&mut rng, n, 1.0);
    let (y, _) = data::<T>(&mut rng, n, 1.0);
    let (mut fa, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    let (fb, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    let (mut l, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    let (l2, _) = data::<T>(&mut rng, 4 * 8, 1.0);
    let labels = [0i64, 1, 2, 3];
    x[6] = T::from_f64(bad); // segment 1
    fa[9] = T::from_f64(bad); // row 1
    l[31] = T::from_f64(bad); // row 3
    let mut acc = vec![0.0f32; n];
    let mut plan = StatsPlan::new();
    let q_bad = plan.sq_diff_mean("q_bad", T::DTYPE, 1, n).unwrap();
    let q_ok = plan.sq_diff_mean("q_ok", T::DTYPE, 1, n).unwrap();
    let c_bad = plan.row_cos_mean("c_bad", T::DTYPE, 4, 8).unwrap();
    let c_ok = plan.row_cos_mean("c_ok", T::DTYPE, 4, 8).unwrap();
    let p_bad = plan.true_prob_mean("p_bad", T::DTYPE, 4, 8).unwrap();
    let p_ok = plan.true_prob_mean("p_ok", T::DTYPE, 4, 8).unwrap();
    let s = plan.seg_sums("s", T::DTYPE, &segs, true).unwrap();
    let d = plan.seg_dots("d", T::DTYPE, &segs).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let r = ex
        .run(&mut [
            q_bad.bind((buf(&x), buf(&y))),
            q_ok.bind((buf(&y), buf(&y))),
            c_bad.bind((buf(&fa), buf(&fb))),
            c_ok.bind((buf(&fb), buf(&fb))),
            p_bad.bind((buf(&l), &labels)),
            p_ok.bind((buf(&l2), &labels)),
            s.bind_acc(buf(&x), &mut acc),
            d.bind((buf(&y), buf(&x))),
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
    let ss = r.get(s).unwrap();
    let dd = r.get(d).unwrap();
    for (i, v) in [ss.sum, ss.sum_sq, ss.sum_abs, dd].iter().enumerate() {
        assert!(
            v[0].is_finite() && v[2].is_finite(),
            "{what} kind {i}: {v:?}"
        );
        assert!(!v[1].is_finite(), "{what} kind {i}: {v:?}");
    }
    assert!(!acc[6].is_finite() && acc[5].is_finite() && acc[7].is_finite());
    assert_eq!(acc.iter().filter(|a| !a.is_finite()).count(), 1);
}

#[test]
fn nan_and_inf_poison_only_their_statistics() {
    let _g = shared();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        nan_isolation::<f32>(bad);
        nan_isolation::<f16>(bad);
        nan_isolation::<bf16>(bad);
    }
}

// ---- determinism ----------------------------------------------------------------------------

#[test]
fn bitwise_identical_across_thread_counts_and_runs() {
    let _g = shared();
    let segs = Segments::from_lengths(&[3 * STATS_CHUNK + 11, 0, 1000, 2 * STATS_CHUNK]).unwrap();
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

// ---- validation -----------------------------------------------------------------------------

#[test]
fn validation_errors_name_the_numbers() {
    let _g = shared();
    let segs = Segments::from_lengths(&[2, 3]).unwrap();
    let mut plan = StatsPlan::new();
    let q = plan.sq_diff_mean("z_a", DType::F16, 1, 4).unwrap();
    let p = plan.true_prob_mean("p_a", DType::F32, 2, 3).unwrap();
    let s = plan.seg_sums("g", DType::F32, &segs, true).unwrap();
    let s2 = plan.seg_sums("g2", DType::F32, &segs, false).unwrap();
    let mut ex = CpuStats::new(&plan).unwrap();
    let h4 = [f16::ZERO; 4];
    let h3 = [f16::ZERO; 3];
    let f4 = [0.0f32; 4];
    let f5 = [0.0f32; 5];
    let f6 = [0.0f32; 6];
    let lab = [0i64, 1];
    let mut acc5 = [0.0f32; 5];
    let mut acc4 = [0.0f32; 4];
    let expect = |e: Error, parts: &[&str]| {
        let m = e.to_string();
        for p in parts {
            assert!(m.contains(p), "`{m}` lacks `{p}`");
        }
    };
    expect(
        ex.run(&mut [q.bind((&h4, &h4))]).unwrap_err(),
        &["expected 4", "got 1"],
    );
    expect(
        ex.run(&mut [
            q.bind((&h4, &h3)),
            p.bind((&f6, &lab)),
            s.bind_acc(&f5, &mut acc5),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["z_a", "`y` has 3 elements, expected 4"],
    );
    expect(
        ex.run(&mut [
            q.bind((&f4, &f4)),
            p.bind((&f6, &lab)),
            s.bind_acc(&f5, &mut acc5),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["z_a", "`x` is f32, declared f16"],
    );
    expect(
        ex.run(&mut [
            q.bind((&h4, &h4)),
            p.bind((&f6, &lab[..1])),
            s.bind_acc(&f5, &mut acc5),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["p_a", "`labels` has 1 elements, expected 2"],
    );
    expect(
        ex.run(&mut [
            q.bind((&h4, &h4)),
            p.bind((&f5, &lab)),
            s.bind_acc(&f5, &mut acc5),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &[
            "p_a",
            "2x3",
            "`logits` has 5 elements, not a whole number of rows of 3",
        ],
    );
    expect(
        ex.run(&mut [
            q.bind((&h4, &h4)),
            p.bind((&f6, &lab)),
            s.bind_acc(&f5, &mut acc4),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["`g`", "`acc` has 4 elements, expected 5"],
    );
    expect(
        ex.run(&mut [
            q.bind((&h4, &h4)),
            p.bind((&f6, &lab)),
            s.bind(&f5),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["`g`", "bound without one"],
    );
    expect(
        ex.run(&mut [
            q.bind((&h4, &h4)),
            p.bind((&f6, &lab)),
            s.bind_acc(&f5, &mut acc5),
            s2.bind_acc(&f5, &mut acc4),
        ])
        .unwrap_err(),
        &["`g2`", "bound with one"],
    );
    expect(
        ex.run(&mut [
            q.bind((&h4, &h4)),
            p.bind((&f6, &lab)),
            q.bind((&h4, &h4)),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["z_a", "bound twice (inputs 0 and 2)"],
    );
    // a handle of another plan
    let mut other = StatsPlan::new();
    let oq = other.sq_diff_mean("o", DType::F16, 1, 4).unwrap();
    expect(
        ex.run(&mut [
            oq.bind((&h4, &h4)),
            p.bind((&f6, &lab)),
            s.bind_acc(&f5, &mut acc5),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["another plan"],
    );
    assert!(ex.results().get(oq).is_err());
    // a statistic declared after the executor was built
    let late = plan.sq_diff_mean("late", DType::F16, 1, 4).unwrap();
    expect(
        ex.run(&mut [
            late.bind((&h4, &h4)),
            p.bind((&f6, &lab)),
            s.bind_acc(&f5, &mut acc5),
            s2.bind(&f5),
        ])
        .unwrap_err(),
        &["statistic 4", "knows 4"],
    );
    assert!(ex.results().get(late).is_err());
    // nothing was written by the failed runs
    assert_eq!(acc5, [0.0; 5]);
    assert!(ex.results().get(q).unwrap().is_nan());
    // shape overflow at declaration
    assert!(plan.row_cos_mean("big", DType::F32, usize::MAX, 2).is_err());
    assert!(plan
        .true_prob_mean("big", DType::F32, 2, usize::MAX)
        .is_err());
    // the crate's oracle validates the same way
    let mut out = plan.new_results();
    assert!(reference::run(&plan, &mut [q.bind((&h4, &h4))], &mut out).is_err());
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
        reference::sq_diff_mean(&a, &b).unwrap(),
        o_sqd(&aw, &bw),
        o_sqd(&aw, &bw),
    );
    close(
        "ref cos",
        reference::row_cos_mean(&a, &b, 33, 7).unwrap(),
        o_cos(&aw, &bw, 33, 7),
        1.0,
    );
    close(
        "ref prob",
        reference::true_prob_mean(&a, &labels, 33, 7).unwrap(),
        o_prob(&aw, &labels, 33, 7),
        1.0,
    );
    assert!(matches!(
        reference::true_prob_mean(&a, &[7; 33], 33, 7),
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

/// One step's buffers at the declared maxima (runs take prefixes of them).
struct Batch<T> {
    z: [(Vec<T>, Vec<f64>); 2],
    a: [(Vec<T>, Vec<f64>); 2],
    l: (Vec<T>, Vec<f64>),
    y: Vec<i64>,
    wa: [(Vec<T>, Vec<f64>); 2],
    wl: (Vec<T>, Vec<f64>),
    wy: Vec<i64>,
    g: Vec<T>,
}

fn batch<T: Element>(rng: &mut Rng, segs: &Segments) -> Batch<T> {
    let mut two = |n, s| [data::<T>(rng, n, s), data::<T>(rng, n, s)];
    let (z, a, wa) = (
        two(MAX_ROWS * FEAT, 1.0),
        two(MAX_ROWS * DIM, 1.0),
        two(WIDE_ROWS * WIDE, 1.0),
    );
    Batch {
        z,
        a,
        wa,
        l: data::<T>(rng, MAX_ROWS * CLASSES, 4.0),
        y: labels(rng, MAX_ROWS, CLASSES),
        wl: data::<T>(rng, WIDE_ROWS * WIDE, 20.0),
        wy: labels(rng, WIDE_ROWS, WIDE),
        g: data::<T>(rng, segs.total(), 1.0).0,
    }
}

/// The plan of every row statistic (declared for `rows` narrow and `wide` wide rows) plus a
/// per-segment statistic, and its handles.
struct RowPlan {
    plan: StatsPlan,
    sq: redreg::stats::SqDiffMean,
    cos: redreg::stats::RowCosMean,
    prob: redreg::stats::TrueProbMean,
    wcos: redreg::stats::RowCosMean,
    wprob: redreg::stats::TrueProbMean,
    sums: redreg::stats::SegSums,
}

fn row_plan(dt: DType, rows: usize, wide: usize, segs: &Segments) -> RowPlan {
    let mut plan = StatsPlan::new();
    let sq = plan.sq_diff_mean("z1-z2", dt, rows, FEAT).unwrap();
    let cos = plan.row_cos_mean("pos_sim", dt, rows, DIM).unwrap();
    let prob = plan.true_prob_mean("p", dt, rows, CLASSES).unwrap();
    let wcos = plan.row_cos_mean("wide cos", dt, wide, WIDE).unwrap();
    let wprob = plan.true_prob_mean("wide p", dt, wide, WIDE).unwrap();
    let sums = plan.seg_sums("g", dt, segs, true).unwrap();
    RowPlan {
        plan,
        sq,
        cos,
        prob,
        wcos,
        wprob,
        sums,
    }
}

/// The inputs of `p` for the first `n` narrow and `w` wide rows of `b`.
fn row_inputs<'a, T: Element>(
    p: &RowPlan,
    b: &'a Batch<T>,
    n: usize,
    w: usize,
    acc: &'a mut [f32],
) -> Vec<redreg::stats::Input<'a>> {
    vec![
        p.sq.bind((buf(&b.z[0].0[..n * FEAT]), buf(&b.z[1].0[..n * FEAT]))),
        p.cos
            .bind((buf(&b.a[0].0[..n * DIM]), buf(&b.a[1].0[..n * DIM]))),
        p.prob.bind((buf(&b.l.0[..n * CLASSES]), &b.y[..n])),
        p.wcos
            .bind((buf(&b.wa[0].0[..w * WIDE]), buf(&b.wa[1].0[..w * WIDE]))),
        p.wprob.bind((buf(&b.wl.0[..w * WIDE]), &b.wy[..w])),
        p.sums.bind_acc(buf(&b.g), acc),
    ]
}

fn short_batches<T: Element>(seed: u64) {
    let mut rng = Rng::new(seed);
    let segs = Segments::from_lengths(&[700, 0, STATS_CHUNK + 5]).unwrap();
    let b = batch::<T>(&mut rng, &segs);
    let max = row_plan(T::DTYPE, MAX_ROWS, WIDE_ROWS, &segs);
    let mut exec = CpuStats::new(&max.plan).unwrap();
    let mut acc = vec![0.0f32; segs.total()];
    let full = exec
        .run(&mut row_inputs(&max, &b, MAX_ROWS, WIDE_ROWS, &mut acc))
        .unwrap()
        .clone();
    let full_sums = full.get(max.sums).unwrap().sum.to_vec();
    // 32: a cosine task boundary; 31, 33: one row either side; 1: the smallest batch.
    for n in [MAX_ROWS, 33, 32, 31, 2, 1] {
        let w = n.min(WIDE_ROWS);
        let what = format!("{} rows (wide {w})", n);
        let r = exec.run(&mut row_inputs(&max, &b, n, w, &mut acc)).unwrap();
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
        let means = |r: &redreg::stats::StatsResults| {
            [r.get(max.sq), r.get(max.cos), r.get(max.prob)].map(|m| m.unwrap())
        };
        let (m, mf) = (means(r), means(&full));
        assert!(
            n == MAX_ROWS || (0..3).all(|i| m[i] != mf[i]),
            "{what}: {m:?} vs {mf:?}"
        );
        // The per-segment statistic of the same run keeps its layout and values.
        assert_eq!(r.get(max.sums).unwrap().sum, &full_sums[..], "{what}");
        let short = r.as_slice().to_vec();

        // Bit for bit the run of a plan declared with exactly these rows.
        let exact = row_plan(T::DTYPE, n, w, &segs);
        let mut acc2 = vec![0.0f32; segs.total()];
        let e = CpuStats::new(&exact.plan)
            .unwrap()
            .run(&mut row_inputs(&exact, &b, n, w, &mut acc2))
            .unwrap()
            .as_slice()
            .to_vec();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&short),
            bits(&e),
            "{what}: vs a plan declared with {n} rows"
        );

        // The crate's oracle takes short batches the same way.
        let mut out = max.plan.new_results();
        let mut acc3 = vec![0.0f32; segs.total()];
        reference::run(
            &max.plan,
            &mut row_inputs(&max, &b, n, w, &mut acc3),
            &mut out,
        )
        .unwrap();
        close(
            &format!("{what}: oracle sq"),
            out.get(max.sq).unwrap(),
            sq,
            sq,
        );
        close(
            &format!("{what}: oracle cos"),
            out.get(max.cos).unwrap(),
            cos,
            1.0,
        );
        close(
            &format!("{what}: oracle p"),
            out.get(max.prob).unwrap(),
            p,
            1.0,
        );
        close(
            &format!("{what}: oracle wide p"),
            out.get(max.wprob).unwrap(),
            wp,
            1.0,
        );

        // Sums and counts for an all-reduce count the rows of this run.
        let red = r.to_sums(&max.plan).unwrap();
        let v = red.as_slice();
        assert_eq!((v[1], v[3], v[5]), ((n * FEAT) as f64, n as f64, n as f64));
        assert_eq!((v[8], v[10]), (w as f64, w as f64));
    }
}

#[test]
fn any_batch_size_up_to_the_declared_one() {
    let _g = shared();
    short_batches::<f32>(0x5407);
    short_batches::<bf16>(0x5408);
}

/// Two data-parallel ranks with batches of 20 and 17 rows (one declared maximum of 37):
/// their summed sums and counts give the means of all 37 rows.
#[test]
fn uneven_batches_reduce_to_the_whole_batch() {
    let _g = shared();
    let mut rng = Rng::new(0x5409);
    let segs = Segments::from_lengths(&[5]).unwrap();
    let b = batch::<f32>(&mut rng, &segs);
    let p = row_plan(DType::F32, MAX_ROWS, WIDE_ROWS, &segs);
    let mut exec = CpuStats::new(&p.plan).unwrap();
    let mut acc = vec![0.0f32; segs.total()];
    let whole = exec
        .run(&mut row_inputs(&p, &b, MAX_ROWS, WIDE_ROWS, &mut acc))
        .unwrap()
        .clone();
    // Rank 0: rows 0..20 (wide 0..2); rank 1: rows 20..37 (wide 2..3).
    let (n0, w0) = (20, 2);
    let r0 = exec
        .run(&mut row_inputs(&p, &b, n0, w0, &mut acc))
        .unwrap()
        .to_sums(&p.plan)
        .unwrap();
    let tail = |x: &(Vec<f32>, Vec<f64>), from: usize| (x.0[from..].to_vec(), x.1.clone());
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
    let mut sum = exec
        .run(&mut row_inputs(
            &p,
            &b1,
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
/// before anything is read or written (the accumulator and the last results stay).
#[test]
fn short_batch_errors_name_the_numbers() {
    let _g = shared();
    let mut rng = Rng::new(0x540a);
    let segs = Segments::from_lengths(&[9]).unwrap();
    let b = batch::<f32>(&mut rng, &segs);
    let p = row_plan(DType::F32, MAX_ROWS, WIDE_ROWS, &segs);
    let mut exec = CpuStats::new(&p.plan).unwrap();
    let mut acc = vec![1.0f32; segs.total()];
    exec.run(&mut row_inputs(&p, &b, 5, 1, &mut acc)).unwrap();
    let (before, acc_before) = (exec.results().as_slice().to_vec(), acc.clone());
    let more_z: Vec<f32> = vec![0.0; (MAX_ROWS + 1) * FEAT];
    let more_l: Vec<f32> = vec![0.0; (MAX_ROWS + 1) * CLASSES];
    let more_y = vec![0i64; MAX_ROWS + 1];
    macro_rules! check {
        ($i:expr, $bad:expr, $parts:expr $(,)?) => {{
            let mut inputs = row_inputs(&p, &b, 5, 1, &mut acc);
            inputs[$i] = $bad;
            let m = exec.run(&mut inputs).unwrap_err().to_string();
            for part in $parts {
                assert!(m.contains(part), "`{m}` lacks `{part}`");
            }
        }};
    }
    check!(
        0,
        p.sq.bind((buf(&more_z), buf(&more_z))),
        &["z1-z2", "38 rows of 1000, more than the 37 rows declared"],
    );
    check!(
        0,
        p.sq.bind((
            buf(&b.z[0].0[..5 * FEAT + 1]),
            buf(&b.z[1].0[..5 * FEAT + 1])
        )),
        &[
            "z1-z2",
            "`x` has 5001 elements, not a whole number of rows of 1000"
        ],
    );
    check!(
        0,
        p.sq.bind((buf(&b.z[0].0[..0]), buf(&b.z[1].0[..0]))),
        &["z1-z2", "`x` is empty", "1 to 37 rows"]
    );
    check!(
        0,
        p.sq.bind((buf(&b.z[0].0[..5 * FEAT]), buf(&b.z[1].0[..4 * FEAT]))),
        &["`y` has 4000 elements, expected 5000"],
    );
    check!(
        1,
        p.cos
            .bind((buf(&b.a[0].0[..DIM + 1]), buf(&b.a[1].0[..DIM + 1]))),
        &["pos_sim", "not a whole number of rows of 512"],
    );
    check!(
        2,
        p.prob.bind((buf(&more_l), &more_y)),
        &["`p`", "38 rows of 10, more than the 37 rows declared"],
    );
    check!(
        2,
        p.prob.bind((buf(&b.l.0[..4 * CLASSES]), &b.y[..5])),
        &["`p`", "`labels` has 5 elements, expected 4"],
    );
    check!(
        4,
        p.wprob.bind((buf(&b.wl.0[..0]), &b.wy[..0])),
        &["wide p", "`logits` is empty"],
    );
    assert_eq!(acc, acc_before, "a rejected run wrote the accumulator");
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(exec.results().as_slice()),
        bits(&before),
        "a rejected run wrote results"
    );
    // The oracle refuses the same way.
    let mut out = p.plan.new_results();
    let mut acc2 = acc.clone();
    let mut inputs = row_inputs(&p, &b, 5, 1, &mut acc2);
    inputs[0] = p.sq.bind((buf(&more_z), buf(&more_z)));
    assert!(reference::run(&p.plan, &mut inputs, &mut out).is_err());
}
