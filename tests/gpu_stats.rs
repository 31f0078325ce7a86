//! GPU tests of the fused statistics (feature `cuda`): the CUDA executor against the CPU
//! executor and the f64 oracle. SKIP convention: tests/common/gpu.rs.
#![cfg(feature = "cuda")]

mod common;

use common::emu::Counters;
use common::gpu;

use cudarc::driver::CudaSlice;
use redreg::stats::{
    reference, CpuStats, CudaStats, StatHandle, Stats, StatsPlan, REDUNDANCY_EPS, STATS_CHUNK,
};
use redreg::testing::from_f64_vec;
use redreg::testing::signed_vec;
use redreg::{bf16, f16, DType, Error, Segments};
use std::sync::{Mutex, MutexGuard};

/// Every test of this binary holds it: the launch and copy counts asserted on the emulated
/// driver are process-wide, so no other test may launch meanwhile.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _s = serial();
    let ptx = redreg::cuda::nvrtc_compile("stats", "compute_75").unwrap();
    // One kernel: the finish is folded into the task kernel (one launch per run).
    assert!(ptx.contains(".entry stats_tasks("), "PTX lacks stats_tasks");
    assert!(
        !ptx.contains("stats_finish"),
        "a separate finish kernel is back"
    );
}

#[track_caller]
/// The NaN policy of docs/numerics.md: values are compared bitwise, except that any NaN
/// equals any NaN (the payload is not part of the contract: narrowing a NaN from f64 gives
/// `0x7fffffff` on NVIDIA GPUs and `0x7fc00000` on the CPU). Returns the first index where
/// `a` and `b` differ, or `None`.
fn first_difference_nan_any(a: &[f32], b: &[f32]) -> Option<usize> {
    assert_eq!(a.len(), b.len(), "lengths");
    (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits() && !(a[i].is_nan() && b[i].is_nan()))
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

fn same(what: &str, g: f64, c: f64) {
    if c.is_nan() {
        assert!(g.is_nan(), "{what}: gpu {g}, cpu NaN");
    } else {
        assert!(
            (g - c).abs() <= 1e-11 * c.abs().max(1e-3),
            "{what}: gpu {g} vs cpu {c}"
        );
    }
}

#[test]
fn gpu_plan_matches_cpu_and_is_deterministic() {
    let _s = serial();
    let Some(be) = gpu::backend("gpu_plan_matches_cpu_and_is_deterministic") else {
        return;
    };
    let s = be.stream();
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

    // CPU
    let mut acc_cpu = acc0.clone();
    let mut cpu = CpuStats::new(&plan).unwrap();
    cpu.run(&mut [
        num.bind((&z1, &z2)),
        den.bind((&x1, &x2)),
        sim.bind((&fa, &fv)),
        simw.bind((&wa, &wb)),
        p.bind((&logits, &labels)),
        pw.bind((&wl, &wlab)),
        sums.bind_acc(&g, &mut acc_cpu),
        sums16.bind(&gh),
        dots.bind((&dr, &dr)),
    ])
    .unwrap();
    let cpu_vals = cpu.results().as_slice().to_vec();

    // GPU
    let up = |v: &[f32]| -> CudaSlice<f32> { s.clone_htod(v).unwrap() };
    let (dz1, dz2) = (s.clone_htod(&z1).unwrap(), s.clone_htod(&z2).unwrap());
    let (dx1, dx2) = (up(&x1), up(&x2));
    let (dfa, dfv) = (s.clone_htod(&fa).unwrap(), s.clone_htod(&fv).unwrap());
    let (dwa, dwb) = (up(&wa), up(&wb));
    let dl = up(&logits);
    let dlab = s.clone_htod(&labels).unwrap();
    let dwl = s.clone_htod(&wl).unwrap();
    let dwlab = s.clone_htod(&wlab).unwrap();
    let dg = up(&g);
    let dgh = s.clone_htod(&gh).unwrap();
    let ddr = s.clone_htod(&dr).unwrap();
    let mut dacc = up(&acc0);
    let mut gpu = CudaStats::new(be, &plan).unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let r = gpu
            .run(&mut [
                dots.bind((&ddr, &ddr)),
                num.bind((&dz1, &dz2)),
                den.bind((&dx1, &dx2)),
                sim.bind((&dfa, &dfv)),
                simw.bind((&dwa, &dwb)),
                p.bind((&dl, dlab.as_view())),
                pw.bind((&dwl, dwlab.as_view())),
                sums.bind_acc(&dg, dacc.as_view_mut()),
                sums16.bind(&dgh),
            ])
            .unwrap();
        runs.push(r.as_slice().to_vec());
        // reset the accumulator so every run sees the same input
        if runs.len() == 1 {
            let acc_gpu = s.clone_dtoh(&dacc).unwrap();
            if let Some(i) = first_difference_nan_any(&acc_gpu, &acc_cpu) {
                panic!(
                    "accumulator: GPU and CPU differ at {i}: {:#x} vs {:#x}",
                    acc_gpu[i].to_bits(),
                    acc_cpu[i].to_bits()
                );
            }
            assert!(
                acc_gpu.iter().any(|x| x.is_nan()),
                "the injected NaN reaches the accumulator"
            );
        }
        s.memcpy_htod(&acc0, &mut dacc).unwrap();
    }
    for r in &runs[1..] {
        let a: Vec<u64> = r.iter().map(|v| v.to_bits()).collect();
        let b: Vec<u64> = runs[0].iter().map(|v| v.to_bits()).collect();
        assert!(a == b, "GPU results differ between runs");
    }
    for (i, (gv, cv)) in runs[0].iter().zip(&cpu_vals).enumerate() {
        if gv.to_bits() == cv.to_bits() {
            continue;
        }
        same(&format!("value {i}"), *gv, *cv);
    }
    let r = gpu.results();
    let sg = r.get(sums).unwrap();
    assert!(sg.sum[4].is_nan() && sg.sum[0].is_finite() && sg.sum[5].is_finite());
    assert!(
        r.get(p).unwrap().is_finite(),
        "masked class and 1e4 logits stay finite"
    );
    let red = r.redundancy(num, den, REDUNDANCY_EPS).unwrap();
    assert!(red.is_finite() && red > 0.0);
    println!(
        "GPU stats: {} values match the CPU, 3 runs bitwise identical",
        cpu_vals.len()
    );

    // label out of range: Err after the run, flagged in the result buffer
    let bad = vec![0i64, wide as i64, -1];
    let dbad = s.clone_htod(&bad).unwrap();
    let e = gpu
        .run(&mut [
            dots.bind((&ddr, &ddr)),
            num.bind((&dz1, &dz2)),
            den.bind((&dx1, &dx2)),
            sim.bind((&dfa, &dfv)),
            simw.bind((&dwa, &dwb)),
            p.bind((&dl, dlab.as_view())),
            pw.bind((&dwl, dbad.as_view())),
            sums.bind_acc(&dg, dacc.as_view_mut()),
            sums16.bind(&dgh),
        ])
        .unwrap_err();
    assert!(
        matches!(&e, Error::LabelOutOfRange { row: 1, label, classes, .. } if *label == wide as i64 && *classes == wide),
        "{e}"
    );
    assert!(gpu.results().get(pw).unwrap().is_nan());
    same(
        "after fault",
        gpu.results().get(num).unwrap(),
        cpu.results().get(num).unwrap(),
    );

    // validation before launch
    let e = gpu.run(&mut [num.bind((&dz1, &dz2))]).unwrap_err();
    assert!(e.to_string().contains("expected 9"), "{e}");

    // the oracle agrees with the CPU on this plan (sanity of the comparison itself)
    let mut out = plan.new_results();
    let mut acc_ref = acc0.clone();
    let _ = reference::run(
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
        &mut out,
    );
    // Both hold the injected NaN (NaN != NaN, so no assert_eq! on the vectors).
    assert_eq!(
        first_difference_nan_any(&acc_ref, &acc_cpu),
        None,
        "oracle vs CPU accumulator"
    );
}

/// The same plan on the same values at other addresses (1–3 elements into their
/// allocations: 16-byte loads impossible, or possible for some buffers only) gives the same
/// bits: every task sums its elements in one canonical order (groups of 16 bytes from the
/// task's start) whatever the alignment. Thousands of elements per task, so the sums are
/// inexact and another order would show; the accumulator is compared too.
#[test]
fn results_do_not_depend_on_alignment() {
    let _s = serial();
    let Some(be) = gpu::backend("results_do_not_depend_on_alignment") else {
        return;
    };
    let s = be.stream();
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
    let mut gpu = CudaStats::new(be, &plan).unwrap();
    let mut runs = Vec::new();
    for (ox, oy) in [(0usize, 0usize), (1, 1), (2, 3), (3, 0)] {
        let up32 = |v: &[f32], off: usize| {
            let mut b = vec![0.0f32; off + v.len()];
            b[off..].copy_from_slice(v);
            s.clone_htod(&b).unwrap()
        };
        let mut hb = vec![bf16::ZERO; ox + n];
        hb[ox..].copy_from_slice(&h);
        let (dx, dy, dh) = (up32(&x, ox), up32(&y, oy), s.clone_htod(&hb).unwrap());
        let mut dacc = up32(&acc0, oy);
        let r = gpu
            .run(&mut [
                sq.bind((dx.slice(ox..), dy.slice(oy..))),
                dots.bind((dx.slice(ox..), dy.slice(oy..))),
                sums.bind_acc(dh.slice(ox..), dacc.slice_mut(oy..)),
                cos.bind((dx.slice(ox..), dy.slice(oy..))),
            ])
            .unwrap();
        let bits: Vec<u64> = r.as_slice().iter().map(|v| v.to_bits()).collect();
        let acc: Vec<u32> = s.clone_dtoh(&dacc).unwrap()[oy..]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        runs.push((bits, acc, (ox, oy)));
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

// ---- any batch size up to the declared one (issue #26) -----------------------------------

const MAX_ROWS: usize = 37;
const WIDE_ROWS: usize = 3;
const FEAT: usize = 1000; // 37 000 elements: 3 chunks, cut inside one by a short batch
const DIM: usize = 512; // 32 rows per cosine task
const CLASSES: usize = 10;
const WIDE: usize = STATS_CHUNK + 17; // a row longer than a chunk: row pieces

struct RowPlan {
    plan: StatsPlan,
    sq: redreg::stats::SqDiffMean,
    cos: redreg::stats::RowCosMean,
    prob: redreg::stats::TrueProbMean,
    wcos: redreg::stats::RowCosMean,
    wprob: redreg::stats::TrueProbMean,
    sums: redreg::stats::SegSums,
}

/// Every row statistic, declared for `rows` narrow and `wide` wide rows (f16 and bf16 among
/// them), and a per-segment statistic with an accumulator.
fn row_plan(rows: usize, wide: usize, segs: &Segments) -> RowPlan {
    let mut plan = StatsPlan::new();
    RowPlan {
        sq: plan.sq_diff_mean("z1-z2", DType::F16, rows, FEAT).unwrap(),
        cos: plan.row_cos_mean("pos_sim", DType::F32, rows, DIM).unwrap(),
        prob: plan.true_prob_mean("p", DType::F32, rows, CLASSES).unwrap(),
        wcos: plan
            .row_cos_mean("wide cos", DType::BF16, wide, WIDE)
            .unwrap(),
        wprob: plan
            .true_prob_mean("wide p", DType::F32, wide, WIDE)
            .unwrap(),
        sums: plan.seg_sums("g", DType::F32, segs, true).unwrap(),
        plan,
    }
}

/// The step's buffers at the declared maxima (runs take prefixes): f16, f32, bf16 and
/// label buffers, on the host (`Vec`) or the device (`CudaSlice`).
struct Batch<H, F, B, I> {
    z: [H; 2],
    a: [F; 2],
    l: F,
    y: I,
    wa: [B; 2],
    wl: F,
    wy: I,
    g: F,
}
type Host = Batch<Vec<f16>, Vec<f32>, Vec<bf16>, Vec<i64>>;
type Dev = Batch<CudaSlice<f16>, CudaSlice<f32>, CudaSlice<bf16>, CudaSlice<i64>>;

fn host_inputs<'a>(
    p: &RowPlan,
    h: &'a Host,
    n: usize,
    w: usize,
    acc: &'a mut [f32],
) -> Vec<redreg::stats::Input<'a>> {
    vec![
        p.sq.bind((&h.z[0][..n * FEAT], &h.z[1][..n * FEAT])),
        p.cos.bind((&h.a[0][..n * DIM], &h.a[1][..n * DIM])),
        p.prob.bind((&h.l[..n * CLASSES], &h.y[..n])),
        p.wcos.bind((&h.wa[0][..w * WIDE], &h.wa[1][..w * WIDE])),
        p.wprob.bind((&h.wl[..w * WIDE], &h.wy[..w])),
        p.sums.bind_acc(&h.g[..], acc),
    ]
}

fn dev_inputs<'a>(
    p: &RowPlan,
    d: &'a Dev,
    n: usize,
    w: usize,
    acc: &'a mut CudaSlice<f32>,
) -> Vec<redreg::stats::Input<'a, redreg::cuda::Device>> {
    vec![
        p.sq.bind((d.z[0].slice(..n * FEAT), d.z[1].slice(..n * FEAT))),
        p.cos
            .bind((d.a[0].slice(..n * DIM), d.a[1].slice(..n * DIM))),
        p.prob.bind((d.l.slice(..n * CLASSES), d.y.slice(..n))),
        p.wcos
            .bind((d.wa[0].slice(..w * WIDE), d.wa[1].slice(..w * WIDE))),
        p.wprob.bind((d.wl.slice(..w * WIDE), d.wy.slice(..w))),
        p.sums.bind_acc(&d.g, acc.as_view_mut()),
    ]
}

/// Short batches on the device (1 row up to the declared 37; wide rows 1 to 3): every value
/// matches the CPU executor's run on the same rows (within the f64 summation-order
/// tolerance of docs/numerics.md), equals bit for bit the device run of a plan declared
/// with exactly those rows, and differs from the full batch's; the per-segment statistic
/// and its accumulator are unaffected. On the emulated driver, a run of any size is one
/// launch, one host-to-device and one device-to-host copy, and a rejected one is none.
#[test]
fn short_batches_match_the_cpu_in_one_launch() {
    let _s = serial();
    let Some(be) = gpu::backend("short_batches_match_the_cpu_in_one_launch") else {
        return;
    };
    let segs = Segments::from_lengths(&[700, 0, STATS_CHUNK + 5]).unwrap();
    let runs = [MAX_ROWS, 33, 32, 31, 2, 1].map(|n| (n, n.min(WIDE_ROWS)));
    short_batches(be, WIDE_ROWS, &segs, &runs, true);
}

/// The same with statistics of more tasks than a block has threads: the finishing block
/// stages the partials `RR_THREADS` (256) tasks at a time (kernels/stats.cu, st_finish), so
/// here a per-segment statistic of 600 tasks and wide-row statistics of 300 row pieces span
/// three and two batches, and the short batches cut the wide rows inside the second batch
/// (139 rows: the first rejected piece is task 278).
#[test]
fn finishes_span_several_batches() {
    let _s = serial();
    let Some(be) = gpu::backend("finishes_span_several_batches") else {
        return;
    };
    let lens: Vec<usize> = (0..600).map(|i| 1 + (i * 7) % 40).collect();
    let segs = Segments::from_lengths(&lens).unwrap();
    short_batches(
        be,
        150,
        &segs,
        &[(MAX_ROWS, 150), (31, 139), (1, 129), (2, 1)],
        false,
    );
}

/// Runs of (narrow rows, wide rows) against the CPU executor and exact-size plans; with
/// `errors`, also the rejected runs.
fn short_batches(
    be: &redreg::cuda::CudaBackend,
    wide_rows: usize,
    segs: &Segments,
    runs: &[(usize, usize)],
    errors: bool,
) {
    let s = be.stream();
    let counters = Counters::open().ok(); // the emulated driver only
    let v = |n, seed, scale| signed_vec(n, seed, scale);
    let h = Host {
        z: [
            from_f64_vec(&v(MAX_ROWS * FEAT, 31, 1.0)),
            from_f64_vec(&v(MAX_ROWS * FEAT, 32, 1.0)),
        ],
        a: [
            from_f64_vec(&v(MAX_ROWS * DIM, 33, 1.0)),
            from_f64_vec(&v(MAX_ROWS * DIM, 34, 1.0)),
        ],
        l: from_f64_vec(&v(MAX_ROWS * CLASSES, 35, 4.0)),
        y: (0..MAX_ROWS as i64)
            .map(|i| (i * 7) % CLASSES as i64)
            .collect(),
        wa: [
            from_f64_vec(&v(wide_rows * WIDE, 36, 1.0)),
            from_f64_vec(&v(wide_rows * WIDE, 37, 1.0)),
        ],
        wl: from_f64_vec(&v(wide_rows * WIDE, 38, 20.0)),
        wy: (0..wide_rows as i64)
            .map(|i| [3, WIDE as i64 - 1, 0][i as usize % 3])
            .collect(),
        g: from_f64_vec(&v(segs.total(), 39, 1.0)),
    };
    let d = Dev {
        z: [
            s.clone_htod(&h.z[0]).unwrap(),
            s.clone_htod(&h.z[1]).unwrap(),
        ],
        a: [
            s.clone_htod(&h.a[0]).unwrap(),
            s.clone_htod(&h.a[1]).unwrap(),
        ],
        l: s.clone_htod(&h.l).unwrap(),
        y: s.clone_htod(&h.y).unwrap(),
        wa: [
            s.clone_htod(&h.wa[0]).unwrap(),
            s.clone_htod(&h.wa[1]).unwrap(),
        ],
        wl: s.clone_htod(&h.wl).unwrap(),
        wy: s.clone_htod(&h.wy).unwrap(),
        g: s.clone_htod(&h.g).unwrap(),
    };
    let max = row_plan(MAX_ROWS, wide_rows, segs);
    let mut cpu = CpuStats::new(&max.plan).unwrap();
    let mut gpu = CudaStats::new(be, &max.plan).unwrap();
    let (mut acc_h, mut acc_d) = (
        vec![0.5f32; segs.total()],
        s.alloc_zeros::<f32>(segs.total()).unwrap(),
    );
    s.memcpy_htod(&acc_h, &mut acc_d).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut full: Option<redreg::stats::StatsResults> = None;
    for &(n, w) in runs {
        let want = cpu
            .run(&mut host_inputs(&max, &h, n, w, &mut acc_h))
            .unwrap()
            .as_slice()
            .to_vec();
        let c0 = counters.as_ref().map(|c| c.now());
        let got = gpu
            .run(&mut dev_inputs(&max, &d, n, w, &mut acc_d))
            .unwrap()
            .as_slice()
            .to_vec();
        if let (Some(c), Some(c0)) = (&counters, c0) {
            let dc = c.now() - c0;
            assert_eq!(
                (dc.launches, dc.htod, dc.dtoh, dc.dtod),
                (1, 1, 1, 0),
                "{n} rows: launches and copies"
            );
        }
        for (i, (g, c)) in got.iter().zip(&want).enumerate() {
            if g.to_bits() != c.to_bits() {
                same(&format!("{n} rows, value {i}"), *g, *c);
            }
        }
        // Bit for bit the device run of a plan declared with exactly n (w) rows.
        let exact = row_plan(n, w, segs);
        let mut acc_e = s.clone_htod(&vec![0.5f32; segs.total()]).unwrap();
        let e = CudaStats::new(be, &exact.plan)
            .unwrap()
            .run(&mut dev_inputs(&exact, &d, n, w, &mut acc_e))
            .unwrap()
            .as_slice()
            .to_vec();
        assert_eq!(
            bits(&got),
            bits(&e),
            "{n} rows: vs a plan declared with {n} rows"
        );
        // A short batch is not the full batch (the comparisons above can fail); the
        // per-segment statistic of the same run is.
        let r = gpu.results();
        let means = |r: &redreg::stats::StatsResults| {
            [r.get(max.sq), r.get(max.cos), r.get(max.prob)].map(|m| m.unwrap())
        };
        match &full {
            None => full = Some(r.clone()),
            Some(f) => {
                let (m, mf) = (means(r), means(f));
                assert!(
                    (0..3).all(|i| m[i] != mf[i]),
                    "{n} rows: {m:?} vs the full {mf:?}"
                );
                assert_eq!(r.get(max.sums).unwrap().sum, f.get(max.sums).unwrap().sum);
            }
        }
    }
    let acc_back = s.clone_dtoh(&acc_d).unwrap();
    assert_eq!(
        first_difference_nan_any(&acc_back, &acc_h),
        None,
        "accumulators after {} runs",
        runs.len()
    );
    if !errors {
        return;
    }
    // More rows than declared: Err before anything runs.
    let big = s.alloc_zeros::<f16>((MAX_ROWS + 1) * FEAT).unwrap();
    let c0 = counters.as_ref().map(|c| c.now());
    let mut inputs = dev_inputs(&max, &d, 5, 1, &mut acc_d);
    inputs[0] = max.sq.bind((&big, &big));
    let e = gpu.run(&mut inputs).unwrap_err().to_string();
    assert!(
        e.contains("38 rows of 1000, more than the 37 rows declared"),
        "{e}"
    );
    let mut inputs = dev_inputs(&max, &d, 5, 1, &mut acc_d);
    inputs[2] = max.prob.bind((d.l.slice(..4 * CLASSES), d.y.slice(..5)));
    let e = gpu.run(&mut inputs).unwrap_err().to_string();
    assert!(e.contains("`labels` has 5 elements, expected 4"), "{e}");
    if let (Some(c), Some(c0)) = (&counters, c0) {
        assert_eq!(
            c.now() - c0,
            Default::default(),
            "a rejected run launched or copied"
        );
    }
}
