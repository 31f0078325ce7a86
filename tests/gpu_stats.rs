//! GPU tests of the fused statistics (feature `cuda`): the CUDA executor against the CPU
//! executor and the f64 oracle. SKIP convention: tests/common/gpu.rs.
#![cfg(feature = "cuda")]

mod common;

use common::gpu;

use cudarc::driver::CudaSlice;
use redreg::dtype::from_f64_vec;
use redreg::stats::{
    reference, CpuStats, CudaStats, StatHandle, Stats, StatsPlan, REDUNDANCY_EPS, STATS_CHUNK,
};
use redreg::testing::signed_vec;
use redreg::{bf16, f16, DType, Error, Segments};

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
    let ptx = redreg::cuda::nvrtc_compile("stats", "compute_75").unwrap();
    for k in ["stats_tasks", "stats_finish"] {
        assert!(ptx.contains(&format!(".entry {k}(")), "PTX lacks {k}");
    }
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
