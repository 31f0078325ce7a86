//! GPU benches (criterion, `iter_custom` timed with CUDA events — timing-enabled events,
//! not the host clock): the projection (k = 1, 2, 4, 8; f32, bf16, f16; a working set
//! ≥ 4 × L2 and the ResNet-18 / ViT-B/16 audio-visual pair layouts), its split form,
//! orthonormalize, the statistics plan of one ResNet-18 AV step, the controller's full
//! CUDA step, and the fused optimizer (AdamW plain, with the RedReg correction folded in,
//! and unfused). Throughput is the minimal bytes each op moves (see `benches/project.rs` for
//! the per-op formulas) against a device-to-device copy measured in the same run.
//!
//! Without a usable GPU it prints `SKIP gpu: <reason>` and exits successfully
//! (`REDREG_REQUIRE_GPU=1` makes that a failure). `REDREG_BENCH_OUT=<dir>` also writes the
//! table to `<dir>/gpu-bench.md`.
//!
//! `REDREG_BENCH_SMOKE=1`: every case once, on small layouts, without criterion — a check
//! that the bench runs end to end (used on the emulated driver, `scripts/emu-check.sh`);
//! its table is marked as meaningless timing.

use criterion::{criterion_group, criterion_main, Criterion};

#[cfg(feature = "cuda")]
mod imp {
    use criterion::Criterion;
    use cudarc::driver::{sys::CUevent_flags, CudaSlice, CudaView};
    use redreg::controller::{
        step, Config, Controller, DeviceEncoder, JointBasis, Redundancy, StepInputs,
    };
    use redreg::cuda::CudaBackend;
    use redreg::stats::{CudaStats, StatHandle, Stats, StatsPlan};
    use redreg::testing::{elements, layouts};
    use redreg::{bf16, f16, DType, ProjectOptions, Segments};
    use redreg::{Backend, Element, Output, Projection};
    use std::fmt::Write as _;
    use std::time::Duration;

    /// One row of the report.
    struct Row {
        name: String,
        ms: f64,
        bytes: f64,
    }

    /// Mean milliseconds of one call of `f`, over `iters` calls between two events.
    fn time_ms(b: &CudaBackend, iters: usize, f: &mut dyn FnMut()) -> f64 {
        let ctx = b.context();
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT); // timing enabled
        let start = ctx.new_event(flags).expect("event");
        let end = ctx.new_event(flags).expect("event");
        start.record(b.stream()).expect("record");
        for _ in 0..iters {
            f();
        }
        end.record(b.stream()).expect("record");
        end.synchronize().expect("sync");
        start.elapsed_ms(&end).expect("elapsed") as f64 / iters as f64
    }

    /// `REDREG_BENCH_SMOKE=1`: run every case once on small layouts (see the module doc).
    fn smoke() -> bool {
        std::env::var("REDREG_BENCH_SMOKE").is_ok_and(|v| v == "1")
    }

    /// Warm-up, then the best of 5 timed batches (ms per call); one call in smoke mode.
    fn best_ms(b: &CudaBackend, f: &mut dyn FnMut()) -> f64 {
        if smoke() {
            return time_ms(b, 1, f);
        }
        time_ms(b, 3, f);
        (0..5)
            .map(|_| time_ms(b, 10, f))
            .fold(f64::INFINITY, f64::min)
    }

    fn rand_dev<T: Element>(b: &CudaBackend, n: usize, seed: u64, scale: f64) -> CudaSlice<T> {
        let host: Vec<T> = elements(n, seed, scale);
        b.stream().clone_htod(&host).expect("upload")
    }

    struct Bench<'a> {
        b: &'a CudaBackend,
        c: &'a mut Criterion,
        rows: Vec<Row>,
    }

    impl Bench<'_> {
        /// Times `f` (criterion report + one row of ours).
        fn case(&mut self, name: &str, bytes: f64, f: &mut dyn FnMut()) {
            let b = self.b;
            let ms = best_ms(b, f);
            if smoke() {
                self.rows.push(Row {
                    name: name.to_string(),
                    ms,
                    bytes,
                });
                return;
            }
            self.c.bench_function(name, |bch| {
                bch.iter_custom(|iters| {
                    Duration::from_secs_f64(time_ms(b, iters as usize, f) * iters as f64 / 1e3)
                })
            });
            self.rows.push(Row {
                name: name.to_string(),
                ms,
                bytes,
            });
        }
    }

    /// `project_out` in place (`grad += beta·(v - P v)`): `(2k + 4)·n·s` bytes.
    fn project<T: Element>(bn: &mut Bench<'_>, label: &str, segs: &Segments, k: usize) {
        let b = bn.b;
        let n = segs.total();
        let v = rand_dev::<T>(b, n, 1, 1e-3);
        let basis: Vec<CudaSlice<T>> = (0..k)
            .map(|i| rand_dev::<T>(b, n, 10 + i as u64, 1e-2))
            .collect();
        let mut grad = rand_dev::<T>(b, n, 2, 1e-2);
        let opts = ProjectOptions::default();
        let s = std::mem::size_of::<T>() as f64;
        let name = format!("project_out/{label}/{}/k{k}", T::DTYPE);
        bn.case(&name, (2 * k + 4) as f64 * n as f64 * s, &mut || {
            let views: Vec<_> = basis.iter().map(|x| x.slice(..)).collect();
            b.project_out(
                segs,
                Projection::new(v.slice(..), views, Output::Accumulate(grad.slice_mut(..)))
                    .beta(1.5)
                    .opts(opts),
            )
            .expect("project_out");
        });
    }

    fn split<T: Element>(bn: &mut Bench<'_>, label: &str, segs: &Segments) {
        let b = bn.b;
        let n = segs.total();
        let v = rand_dev::<T>(b, n, 1, 1e-3);
        let g = rand_dev::<T>(b, n, 3, 1e-2);
        let mut grad = rand_dev::<T>(b, n, 2, 1e-2);
        let s = std::mem::size_of::<T>() as f64;
        let opts = ProjectOptions::default();
        // pass 1 + copy of the partials to the host (the all-reduce point): 2·n·s bytes.
        // Pass 1 reads v and g only; the destination of the projection is a scratch buffer.
        let mut scratch = b.stream().alloc_zeros::<T>(n).expect("alloc");
        let mut pass1 = || {
            let out = Output::Write {
                base: None,
                out: scratch.slice_mut(..),
            };
            b.partials(segs, &Projection::new(v.slice(..), [g.slice(..)], out))
                .expect("partials")
        };
        bn.case(
            &format!("partials/{label}/{}/k1", T::DTYPE),
            2.0 * n as f64 * s,
            &mut || {
                pass1();
            },
        );
        let p = pass1();
        bn.case(
            &format!("apply/{label}/{}/k1", T::DTYPE),
            4.0 * n as f64 * s,
            &mut || {
                b.apply(
                    segs,
                    &p,
                    Projection::new(
                        v.slice(..),
                        [g.slice(..)],
                        Output::Accumulate(grad.slice_mut(..)),
                    )
                    .beta(1.5)
                    .opts(opts),
                )
                .expect("apply");
            },
        );
    }

    fn orth<T: Element>(bn: &mut Bench<'_>, label: &str, segs: &Segments, k: usize) {
        let b = bn.b;
        let n = segs.total();
        let mut basis: Vec<CudaSlice<T>> = (0..k)
            .map(|i| rand_dev::<T>(b, n, 20 + i as u64, 1.0))
            .collect();
        let s = std::mem::size_of::<T>() as f64;
        // Gram of B, Gram of B·M1 (both read k vectors), one in-place write pass: 4k·n·s.
        bn.case(
            &format!("orthonormalize/{label}/{}/k{k}", T::DTYPE),
            4.0 * k as f64 * n as f64 * s,
            &mut || {
                let mut views: Vec<_> = basis.iter_mut().map(|x| x.slice_mut(..)).collect();
                b.orthonormalize(segs, &mut views, 1e-7)
                    .expect("orthonormalize");
            },
        );
    }

    /// The statistics plan of one ResNet-18 AV step (batch 64): features of two noisy
    /// copies, noisy inputs, unimodal logits, pooled features, both encoders' gradients
    /// (sums with the Fisher accumulator). Bytes: every input once, the accumulator twice.
    /// Also the last, smaller batch of an epoch (40 of the declared 64 rows; the gradient
    /// statistics unchanged): the same plan, launch and copies.
    fn stats(bn: &mut Bench<'_>) {
        let b = bn.b;
        let (audio, visual) = av_pair();
        let (sa, sv) = (
            Segments::from_shapes(&audio).unwrap(),
            Segments::from_shapes(&visual).unwrap(),
        );
        let bsz = if smoke() { 2 } else { 64 };
        let classes = 31;
        // Elements per sample.
        let (za, zv) = (512 * 9 * 6, 512 * 7 * 7);
        let (xa, xv) = if smoke() {
            (257 * 8, 3 * 16 * 16)
        } else {
            (257 * 188, 3 * 224 * 224)
        };
        let mut plan = StatsPlan::new();
        let h_za = plan.sq_diff_mean("z_a", DType::F32, bsz, za).unwrap();
        let h_zv = plan.sq_diff_mean("z_v", DType::F32, bsz, zv).unwrap();
        let h_xa = plan.sq_diff_mean("x_a", DType::F32, bsz, xa).unwrap();
        let h_xv = plan.sq_diff_mean("x_v", DType::F32, bsz, xv).unwrap();
        let h_pa = plan
            .true_prob_mean("p_a", DType::F32, bsz, classes)
            .unwrap();
        let h_pv = plan
            .true_prob_mean("p_v", DType::F32, bsz, classes)
            .unwrap();
        let h_sim = plan.row_cos_mean("pos_sim", DType::F32, bsz, 512).unwrap();
        let h_ga = plan.seg_sums("grad_a", DType::F32, &sa, true).unwrap();
        let h_gv = plan.seg_sums("grad_v", DType::F32, &sv, true).unwrap();
        let mut exec = CudaStats::new(b, &plan).expect("stats plan");
        let d = |n, seed| rand_dev::<f32>(b, n, seed, 1.0);
        let (za1, za2, zv1, zv2) = (
            d(bsz * za, 1),
            d(bsz * za, 2),
            d(bsz * zv, 3),
            d(bsz * zv, 4),
        );
        let (xa1, xa2, xv1, xv2) = (
            d(bsz * xa, 5),
            d(bsz * xa, 6),
            d(bsz * xv, 7),
            d(bsz * xv, 8),
        );
        let (la, lv, fa, fv) = (
            d(bsz * classes, 9),
            d(bsz * classes, 10),
            d(bsz * 512, 11),
            d(bsz * 512, 12),
        );
        let labels: CudaSlice<i64> = b
            .stream()
            .clone_htod(
                &(0..bsz as i64)
                    .map(|i| i % classes as i64)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let (ga, gv) = (d(sa.total(), 13), d(sv.total(), 14));
        let mut acc_a = b.stream().alloc_zeros::<f32>(sa.total()).unwrap();
        let mut acc_v = b.stream().alloc_zeros::<f32>(sv.total()).unwrap();
        let short = if smoke() { 1 } else { 40 };
        for (name, n) in [
            ("resnet18_av_step", bsz),
            ("resnet18_av_step_last_40_of_64", short),
        ] {
            let elems = 2 * n * (za + zv + xa + xv)
                + 2 * n * classes
                + 2 * n * 512
                + 3 * (sa.total() + sv.total());
            bn.case(
                &format!("stats_plan/{name}/f32"),
                4.0 * elems as f64 + 8.0 * n as f64,
                &mut || {
                    exec.run(&mut [
                        h_za.bind((za1.slice(..n * za), za2.slice(..n * za))),
                        h_zv.bind((zv1.slice(..n * zv), zv2.slice(..n * zv))),
                        h_xa.bind((xa1.slice(..n * xa), xa2.slice(..n * xa))),
                        h_xv.bind((xv1.slice(..n * xv), xv2.slice(..n * xv))),
                        h_pa.bind((la.slice(..n * classes), labels.slice(..n))),
                        h_pv.bind((lv.slice(..n * classes), labels.slice(..n))),
                        h_sim.bind((fa.slice(..n * 512), fv.slice(..n * 512))),
                        h_ga.bind_acc(&ga, acc_a.slice_mut(..)),
                        h_gv.bind_acc(&gv, acc_v.slice_mut(..)),
                    ])
                    .expect("stats run");
                },
            );
        }
    }

    /// The controller's full CUDA step on the ResNet-18 AV pair (decision on the host from
    /// given statistics, drift, gradient copy, projection into the visual gradient).
    /// Bytes: drift (3n), copy (2n), project_out k = 1 (6n) of the visual encoder.
    fn full_step(bn: &mut Bench<'_>) {
        let b = bn.b;
        let (audio, visual) = av_pair();
        let segs = [
            Segments::from_shapes(&audio).unwrap(),
            Segments::from_shapes(&visual).unwrap(),
        ];
        let bufs: Vec<_> = segs
            .iter()
            .enumerate()
            .map(|(m, s)| {
                (
                    rand_dev::<f32>(b, s.total(), 1 + m as u64, 1.0),
                    rand_dev::<f32>(b, s.total(), 3 + m as u64, 1.0),
                    rand_dev::<f32>(b, s.total(), 5 + m as u64, 1e-2),
                )
            })
            .collect();
        let mut grads: Vec<CudaSlice<f32>> = bufs.iter().map(|x| x.2.clone()).collect();
        let mut ctl = Controller::new(Config::new(10), 2).unwrap();
        ctl.begin_epoch(0).unwrap();
        let inputs = StepInputs::pair(
            0.3,
            0.7,
            Redundancy::ratio(0.5),
            Redundancy::ratio(0.5),
            0.9,
        );
        let n = segs[1].total() as f64;
        // The fused step: pass 1 reads theta, theta0, g; pass 2 reads them and writes g.
        bn.case(
            "controller_step/resnet18_av/f32",
            7.0 * n * 4.0,
            &mut || {
                let (a, v) = grads.split_at_mut(1);
                let mut encs = [
                    DeviceEncoder {
                        segs: &segs[0],
                        theta: bufs[0].0.slice(..),
                        theta0: bufs[0].1.slice(..),
                        grad: a[0].slice_mut(..),
                        basis: JointBasis::Gradient,
                    },
                    DeviceEncoder {
                        segs: &segs[1],
                        theta: bufs[1].0.slice(..),
                        theta0: bufs[1].1.slice(..),
                        grad: v[0].slice_mut(..),
                        basis: JointBasis::Gradient,
                    },
                ];
                let d = ctl.observe(&inputs).expect("observe");
                step(b, &d, &mut encs, &ProjectOptions::default()).expect("step");
            },
        );
    }

    /// The RedReg step over the visual encoder's tensors as a tensor list (each tensor its
    /// own allocation, as candle, tch-rs and burn hold them): `project_list` with
    /// `Projection::drift`, the same pointers every call (no table upload). Bytes as the
    /// flat step: 7·n·s.
    fn drift_list(bn: &mut Bench<'_>) {
        use redreg::TensorList;
        let b = bn.b;
        let (_, visual) = av_pair();
        let segs = Segments::from_shapes(&visual).unwrap();
        let per_tensor = |seed: u64, scale: f64| -> Vec<CudaSlice<f32>> {
            segs.iter()
                .enumerate()
                .map(|(i, r)| rand_dev::<f32>(b, r.len(), seed * 1000 + i as u64, scale))
                .collect()
        };
        let (theta, theta0) = (per_tensor(1, 1.0), per_tensor(2, 1.0));
        let mut grads = per_tensor(3, 1e-2);
        let n = segs.total() as f64;
        bn.case("drift_list/resnet18_visual/f32", 7.0 * n * 4.0, &mut || {
            fn views(x: &[CudaSlice<f32>]) -> TensorList<CudaView<'_, f32>> {
                x.iter().map(|t| t.slice(..)).collect()
            }
            let p = Projection::drift(
                views(&theta),
                views(&theta0),
                [],
                grads.iter_mut().map(|t| t.slice_mut(..)).collect(),
            );
            b.project_list(&segs, p.beta(0.5)).expect("project_list");
        });
    }

    /// The fused optimizer (`Optimizer<CudaBackend>`, kernels/optim.cu) over the whole
    /// ResNet-18 AV pair, every tensor its own allocation, f32 parameters and state, AdamW
    /// (PyTorch's defaults):
    /// - `adamw`: the plain step, one launch. Bytes: θ read and written, g read, m and v
    ///   read and written: 7·N·4.
    /// - `adamw_redreg`: the audio encoder (n_a elements) suppressed, its correction folded
    ///   in: pass 1 of the projection (θ, θ₀, g: 3·n_a) and the update, which also reads θ₀
    ///   (n_a): (4·n_a + 7·N)·4.
    /// - `drift_then_adamw`: the same without the fold, `project_list` of the drift
    ///   (7·n_a) then the plain step: (7·n_a + 7·N)·4.
    ///
    /// The PyTorch rows to compare with: `benches/anchors/redreg_torch.py --optim`
    /// (`torch.optim.AdamW(fused=True)` and `foreach=True` on the same layout).
    fn optim_step(bn: &mut Bench<'_>) {
        use redreg::optim::{AdamW, Correction, Optimizer, Rule};
        use redreg::TensorList;
        let b = bn.b;
        let (audio, visual) = av_pair();
        let shapes: Vec<Vec<usize>> = audio.iter().cloned().chain(visual).collect();
        let segs = Segments::from_shapes(&shapes).unwrap();
        let segs_a = Segments::from_shapes(&audio).unwrap();
        let lens: Vec<usize> = segs.iter().map(|r| r.len()).collect();
        let na = audio.len();
        let per_tensor = |seed: u64, scale: f64| -> Vec<CudaSlice<f32>> {
            lens.iter()
                .enumerate()
                .map(|(i, &n)| rand_dev::<f32>(b, n, seed * 1000 + i as u64, scale))
                .collect()
        };
        let mut theta = per_tensor(1, 1.0);
        let theta0 = per_tensor(2, 1.0);
        let mut grads = per_tensor(3, 1e-2);
        let rule = Rule::AdamW(AdamW::default());
        let mut opt = Optimizer::on(b, rule, &lens).expect("optimizer");
        let (n, n_a) = (segs.total() as f64, segs_a.total() as f64);
        bn.case("adamw/resnet18_av/f32", 7.0 * n * 4.0, &mut || {
            let mut pv: Vec<_> = theta.iter_mut().map(|t| t.slice_mut(..)).collect();
            let gv: Vec<_> = grads.iter().map(|t| t.slice(..)).collect();
            opt.step(b, &mut pv, &gv).expect("adamw");
        });
        bn.case(
            "adamw_redreg/resnet18_av/f32",
            (4.0 * n_a + 7.0 * n) * 4.0,
            &mut || {
                let c = Correction::new(0, theta0[..na].iter().map(|t| t.slice(..)).collect(), 0.5);
                let mut pv: Vec<_> = theta.iter_mut().map(|t| t.slice_mut(..)).collect();
                let gv: Vec<_> = grads.iter().map(|t| t.slice(..)).collect();
                opt.step_corrected(b, &mut pv, &gv, &c)
                    .expect("adamw_redreg");
            },
        );
        bn.case(
            "drift_then_adamw/resnet18_av/f32",
            (7.0 * n_a + 7.0 * n) * 4.0,
            &mut || {
                let p = Projection::drift(
                    theta[..na]
                        .iter()
                        .map(|t| t.slice(..))
                        .collect::<TensorList<_>>(),
                    theta0[..na]
                        .iter()
                        .map(|t| t.slice(..))
                        .collect::<TensorList<_>>(),
                    [],
                    grads[..na].iter_mut().map(|t| t.slice_mut(..)).collect(),
                );
                b.project_list(&segs_a, p.beta(0.5)).expect("drift");
                let mut pv: Vec<_> = theta.iter_mut().map(|t| t.slice_mut(..)).collect();
                let gv: Vec<_> = grads.iter().map(|t| t.slice(..)).collect();
                opt.step(b, &mut pv, &gv).expect("adamw");
            },
        );
    }

    /// The ResNet-18 audio-visual pair's tensor shapes (its first 8 tensors in smoke mode).
    fn av_pair() -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
        let (a, v) = layouts::resnet18_av_pair();
        if smoke() {
            (
                a.into_iter().take(8).collect(),
                v.into_iter().take(8).collect(),
            )
        } else {
            (a, v)
        }
    }

    fn copy_gbs(b: &CudaBackend) -> f64 {
        let n = if smoke() { 1 << 20 } else { 256 << 20 }; // 1 GiB of f32
        let src = b.stream().alloc_zeros::<f32>(n).unwrap();
        let mut dst = b.stream().alloc_zeros::<f32>(n).unwrap();
        let ms = best_ms(b, &mut || {
            b.stream().memcpy_dtod(&src, &mut dst).expect("copy")
        });
        2.0 * 4.0 * n as f64 / (ms / 1e3) / 1e9
    }

    pub fn run(c: &mut Criterion) {
        let backend = match redreg::cuda::cuda_available()
            .and_then(|_| CudaBackend::new(0).map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(reason) => {
                if std::env::var("REDREG_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("REDREG_REQUIRE_GPU=1 but no GPU: {reason}");
                }
                println!("SKIP gpu: {reason}");
                return;
            }
        };
        let b = &backend;
        let copy = copy_gbs(b);
        let mut bn = Bench {
            b,
            c,
            rows: Vec::new(),
        };
        // 64M elements: f32 k = 1 moves 3 × 256 MB buffers, ≥ 4 × the 50–60 MB L2.
        let (big_n, l2_n, big_label, l2_label) = if smoke() {
            (1 << 16, 1 << 14, "64K", "16K")
        } else {
            (64 << 20, 1 << 20, "64M", "1M_in_L2")
        };
        let big = Segments::from_lengths(&[big_n]).unwrap();
        let l2 = Segments::from_lengths(&[l2_n]).unwrap();
        let (ra, rv) = av_pair();
        let resnet = Segments::from_shapes(&ra.into_iter().chain(rv).collect::<Vec<_>>()).unwrap();
        let (va, vv) = layouts::vit_b16_av_pair();
        let take = if smoke() { 8 } else { usize::MAX };
        let vit = Segments::from_shapes(
            &va.into_iter()
                .take(take)
                .chain(vv.into_iter().take(take))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for k in [1, 2, 4, 8] {
            project::<f32>(&mut bn, big_label, &big, k);
        }
        project::<bf16>(&mut bn, big_label, &big, 1);
        project::<f16>(&mut bn, big_label, &big, 1);
        project::<f32>(&mut bn, l2_label, &l2, 1);
        project::<f32>(&mut bn, "resnet18_av", &resnet, 1);
        project::<bf16>(&mut bn, "resnet18_av", &resnet, 1);
        project::<f32>(&mut bn, "vit_b16_av", &vit, 1);
        split::<f32>(&mut bn, big_label, &big);
        orth::<f32>(&mut bn, big_label, &big, 4);
        stats(&mut bn);
        full_step(&mut bn);
        drift_list(&mut bn);
        optim_step(&mut bn);

        let mut md = String::new();
        if smoke() {
            md.push_str(
                "SMOKE RUN (REDREG_BENCH_SMOKE=1): small layouts, one call each; these timings \
                 mean nothing (on the emulated driver, nothing at all)\n\n",
            );
        }
        let _ = write!(
            md,
            "device-to-device copy (same run): {copy:.0} GB/s\n\n| op | ms | GB/s | ratio to copy |\n|---|---|---|---|\n"
        );
        for r in &bn.rows {
            let gbs = r.bytes / (r.ms / 1e3) / 1e9;
            let _ = writeln!(
                md,
                "| {} | {:.4} | {:.0} | {:.2} |",
                r.name,
                r.ms,
                gbs,
                gbs / copy
            );
        }
        println!("\n{md}");
        if let Ok(dir) = std::env::var("REDREG_BENCH_OUT") {
            let _ = std::fs::write(std::path::Path::new(&dir).join("gpu-bench.md"), &md);
        }
    }
}

fn gpu(c: &mut Criterion) {
    #[cfg(feature = "cuda")]
    imp::run(c);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = c;
        println!("SKIP gpu: built without the `cuda` feature");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(200))
        .measurement_time(std::time::Duration::from_millis(600));
    targets = gpu
}
criterion_main!(benches);
