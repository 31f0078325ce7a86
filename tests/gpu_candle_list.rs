//! The candle adapter's CUDA path (feature `candle-cuda`) over a model's worth of tensors,
//! each its own candle allocation: one call over 120 tensors is one tensor-list projection
//! — 2 launches, the pointer table uploaded once (not again for the same tensors), one
//! device-to-host copy (the ranks) — whatever the tensor count, and every result equals
//! the f64 reference of that tensor alone. The counts are read from the emulated driver
//! (tests/common/emu.rs); on a real GPU the values are checked and the counts SKIP
//! (`REDREG_REQUIRE_EMU=1` fails instead).
//!
//! Only candle operations that launch no candle kernel are used (tensors from host
//! vectors, views, zeros, reads back to the host), so the test runs on the emulated
//! driver, which runs redreg's kernels only (its cuBLAS and cuRAND emulate handles, which
//! candle makes when it opens a device). One `#[test]`: the counters are process-wide.
#![cfg(feature = "candle-cuda")]

mod common;

use common::candle::{data, flat, reference_one, script_update};
use common::emu::{Counters, Counts};
use common::gpu;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, WithDType};
use redreg::candle::{cuda_backend, project_drift_into_grads, project_out_tensors};
use redreg::cuda::CudaBackend;
use redreg::testing::assert_close;
use redreg::{bf16, f16, Beta, Element, ProjectOptions};

const N: usize = 120;

/// 120 shapes: empty ones, small odd ones, one of several chunks (RR_CHUNK = 16384).
fn shapes() -> Vec<Vec<usize>> {
    (0..N)
        .map(|i| match i {
            _ if i % 31 == 5 => vec![0, 3],
            77 => vec![300, 170],
            _ => vec![1 + i % 7, 1 + (i * 13) % 11],
        })
        .collect()
}

/// A tensor of `shape` on `dev` with elements of type `T` (from [`data`], rounded once).
/// Tensor 3 of every list is a row of a bigger tensor: contiguous, start offset > 0.
fn tensor<T: Element + WithDType>(seed: u64, i: usize, shape: &[usize], dev: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let of = |n: usize| -> Vec<T> {
        data(seed * 1000 + i as u64, n)
            .iter()
            .map(|&x| <T as Element>::from_f64(x as f64))
            .collect()
    };
    if i == 3 {
        let big = Tensor::from_vec(of(3 * n), (3, n), dev).unwrap();
        return big.get(1).unwrap().reshape(shape).unwrap();
    }
    Tensor::from_vec(of(n), shape, dev).unwrap()
}

fn list<T: Element + WithDType>(seed: u64, dev: &Device) -> Vec<Tensor> {
    shapes()
        .iter()
        .enumerate()
        .map(|(i, s)| tensor::<T>(seed, i, s, dev))
        .collect()
}

/// Per unit roundoff of `T`: (atol, rtol) for one rounding of the result plus the
/// reference's own rounding.
fn tol<T: Element>() -> (f64, f64) {
    match <T as Element>::DTYPE {
        redreg::DType::F32 => (1e-6, 1e-5),
        redreg::DType::F16 => (1e-3, 2e-3),
        redreg::DType::BF16 => (1e-2, 1.6e-2),
    }
}

/// `project_out_tensors` (k = 2, a base, per-tensor β) over the 120 tensors, twice. Each
/// call is 2 launches, 1 device-to-host copy (the ranks) and 1 upload of the pointer table
/// (the results are new candle tensors, so their addresses are new on every call); the
/// first call also uploads the β values and, the first time this layout is seen, the
/// workspace's chunk-task table and segment index.
fn project<T: Element + WithDType>(
    c: Option<&Counters>,
    be: &CudaBackend,
    dev: &Device,
    new_layout: bool,
) {
    let what = <T as Element>::DTYPE.name();
    let (v, b0, b1, base) = (
        list::<T>(1, dev),
        list::<T>(2, dev),
        list::<T>(3, dev),
        list::<T>(4, dev),
    );
    let betas: Vec<f64> = (0..N).map(|i| 0.25 + i as f64 / 64.0).collect();
    let o = ProjectOptions::default();
    let basis = [&b0[..], &b1[..]];
    let count = |c: Option<&Counters>, f: &mut dyn FnMut()| -> Option<Counts> {
        let before = c.map(Counters::now);
        f();
        be.synchronize().unwrap();
        c.zip(before).map(|(c, b)| c.now() - b)
    };
    let mut first = None;
    let n1 = count(c, &mut || {
        let b = Beta::PerSegment(&betas);
        first = Some(project_out_tensors(be, &v, &basis, Some(&base[..]), 0.5, b, &o).unwrap());
    });
    let mut second = None;
    let n2 = count(c, &mut || {
        let b = Beta::Scalar(0.75);
        second = Some(project_out_tensors(be, &v, &basis, Some(&base[..]), 0.5, b, &o).unwrap());
    });
    if let (Some(n1), Some(n2)) = (n1, n2) {
        let want = |htod| Counts {
            launches: 2,
            htod,
            dtoh: 1,
            dtod: 0,
        };
        assert_eq!(
            n1,
            want(2 + if new_layout { 2 } else { 0 }),
            "{what}: first call (pointer table + per-tensor β uploaded, the workspace if new)"
        );
        assert_eq!(n2, want(1), "{what}: the same inputs again, one β");
    }
    let (atol, rtol) = tol::<T>();
    for ((outs, ranks), beta) in [
        (first.unwrap(), Beta::PerSegment(&betas)),
        (second.unwrap(), Beta::Scalar(0.75)),
    ] {
        assert_eq!((outs.len(), ranks.len()), (N, N));
        for i in 0..N {
            let n = v[i].elem_count();
            assert_eq!(outs[i].dims(), v[i].dims(), "{what} tensor {i}: shape");
            assert!(
                outs[i].device().same_device(dev),
                "{what} tensor {i}: device"
            );
            assert_eq!(ranks[i] as usize, n.min(2), "{what} tensor {i}: rank");
            let bi = match beta {
                Beta::PerSegment(b) => b[i],
                Beta::Scalar(b) => b,
            };
            let want = reference_one::<T>(
                &flat(&v[i]),
                &[flat(&b0[i]), flat(&b1[i])],
                Some(&flat::<T>(&base[i])),
                0.5,
                bi,
            );
            assert_close(
                &format!("{what} tensor {i}"),
                &flat::<T>(&outs[i]),
                &want,
                atol,
                rtol,
            );
        }
    }
}

/// `project_drift_into_grads` (the RedReg update, k = 1) over 120 f32 parameters, some
/// without a gradient (a zero gradient: the update is β·d): 2 launches, 1 table upload (the
/// new gradients' addresses), 1 device-to-host copy; every new gradient equals the
/// script's formula in f64.
fn drift(c: Option<&Counters>, be: &CudaBackend, dev: &Device) {
    let (params, theta0, g) = (
        list::<f32>(5, dev),
        list::<f32>(6, dev),
        list::<f32>(7, dev),
    );
    let mut grads = GradStore::default();
    let absent = |i: usize| i % 17 == 2;
    for (i, (p, g)) in params.iter().zip(&g).enumerate() {
        if !absent(i) {
            grads.insert(p, g.clone());
        }
    }
    let before = c.map(Counters::now);
    let o = ProjectOptions::default();
    let ranks = project_drift_into_grads(be, &params, &theta0, &mut grads, &[], 1.4, &o).unwrap();
    be.synchronize().unwrap();
    if let (Some(c), Some(b)) = (c, before) {
        // (The zero gradients are candle allocations set by a memset, not copies.)
        let n = c.now() - b;
        assert_eq!(
            n,
            Counts {
                launches: 2,
                htod: 1,
                dtoh: 1,
                dtod: 0
            },
            "drift: launches and copies"
        );
    }
    for i in 0..N {
        let n = params[i].elem_count();
        let d: Vec<f64> = flat::<f32>(&params[i])
            .iter()
            .zip(flat::<f32>(&theta0[i]))
            .map(|(a, b)| *a as f64 - b as f64)
            .collect();
        let g0: Vec<f64> = if absent(i) {
            vec![0.0; n]
        } else {
            flat::<f32>(&g[i]).iter().map(|&x| x as f64).collect()
        };
        let want = script_update(&d, &g0, 1.4);
        let got = grads
            .get(&params[i])
            .expect("a gradient for every parameter");
        assert_eq!(got.dims(), params[i].dims(), "drift tensor {i}: shape");
        let rank = usize::from(n > 0 && !absent(i));
        assert_eq!(ranks[i] as usize, rank, "drift tensor {i}: rank");
        assert_close(
            &format!("drift tensor {i}"),
            &flat::<f32>(got),
            &want,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn candle_cuda_call_over_120_tensors() {
    let test = "candle_cuda_call_over_120_tensors";
    if let Err(reason) = redreg::cuda::cuda_available() {
        gpu::skip(test, "REDREG_REQUIRE_GPU", &reason);
        return;
    }
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            gpu::skip(
                test,
                "REDREG_REQUIRE_GPU",
                &format!("Device::new_cuda(0): {e}"),
            );
            return;
        }
    };
    let be = cuda_backend(&dev).unwrap();
    let counters = match Counters::open() {
        Ok(c) => Some(c),
        Err(reason) => {
            gpu::skip(&format!("{test} (counts)"), "REDREG_REQUIRE_EMU", &reason);
            None
        }
    };
    let c = counters.as_ref();
    project::<f32>(c, &be, &dev, true);
    project::<f16>(c, &be, &dev, false);
    project::<bf16>(c, &be, &dev, false);
    drift(c, &be, &dev);
    fused_optimizer(c, &dev);
}

/// `FusedOptimizer` over 120 CUDA `Var`s against the same optimizer over the same values
/// on the CPU: the plain AdamW step bit for bit (both backends equal the f64 oracle bit for
/// bit, tests/optim), state included, in 1 launch; then the RedReg step on the first 60
/// variables (pass 1 + the update: 2 launches, the ranks the one device-to-host copy): the
/// same ranks, θ within f32 rounding (pass 1 sums over CUDA's chunk table,
/// docs/numerics.md).
fn fused_optimizer(c: Option<&Counters>, dev: &Device) {
    use candle_core::Var;
    use redreg::candle::FusedOptimizer;
    use redreg::optim::{AdamW, Rule};
    let shapes = shapes();
    let host = |seed: u64| -> Vec<Vec<f32>> {
        (shapes.iter().enumerate())
            .map(|(i, s)| data(seed * 1000 + i as u64, s.iter().product()))
            .collect()
    };
    let (theta, g, theta0) = (host(11), host(12), host(13));
    let on = |d: &Device| {
        let vars: Vec<Var> = (theta.iter().zip(&shapes))
            .map(|(x, s)| Var::from_vec(x.clone(), &s[..], d).unwrap())
            .collect();
        let mut store = GradStore::default();
        for ((v, x), s) in vars.iter().zip(&g).zip(&shapes) {
            store.insert(
                v.as_tensor(),
                Tensor::from_vec(x.clone(), &s[..], d).unwrap(),
            );
        }
        let t0: Vec<Tensor> = (theta0.iter().zip(&shapes))
            .take(60)
            .map(|(x, s)| Tensor::from_vec(x.clone(), &s[..], d).unwrap())
            .collect();
        (vars, store, t0)
    };
    let rule = Rule::AdamW(AdamW::default());
    let (cv, cs, ct0) = on(&Device::Cpu);
    let mut cpu = FusedOptimizer::for_vars(cv.clone(), rule).unwrap();
    let (gv, gs, gt0) = on(dev);
    let mut gpu = FusedOptimizer::for_vars(gv.clone(), rule).unwrap();
    cpu.try_step(&cs).unwrap();
    let before = c.map(Counters::now);
    gpu.try_step(&gs).unwrap();
    if let (Some(c), Some(b)) = (c, before) {
        let n = c.now() - b;
        assert_eq!(n.launches, 1, "plain step: one launch ({n:?})");
        assert_eq!(n.dtoh, 0, "plain step: no device-to-host copy ({n:?})");
    }
    for i in 0..N {
        assert_eq!(
            flat::<f32>(gv[i].as_tensor()),
            flat::<f32>(cv[i].as_tensor()),
            "plain step: variable {i}"
        );
        assert_eq!(
            gpu.state(i).unwrap(),
            cpu.state(i).unwrap(),
            "plain step: state {i}"
        );
    }
    let want = cpu.step_redreg(&cs, 0, &ct0, 1.4).unwrap();
    let before = c.map(Counters::now);
    let got = gpu.step_redreg(&gs, 0, &gt0, 1.4).unwrap();
    if let (Some(c), Some(b)) = (c, before) {
        let n = c.now() - b;
        assert_eq!(n.launches, 2, "RedReg step: pass 1 and the update ({n:?})");
        assert_eq!(n.dtoh, 1, "RedReg step: the ranks ({n:?})");
    }
    assert_eq!(got, want, "RedReg step: ranks");
    assert_eq!(gpu.steps(), 2);
    for i in 0..N {
        let what = format!("RedReg step: variable {i}");
        assert_close(
            &what,
            &flat::<f32>(gv[i].as_tensor()),
            &flat::<f32>(cv[i].as_tensor()),
            1e-7,
            1e-6,
        );
    }
}
