//! The candle adapter on CUDA tensors (feature `candle-cuda`) against the f64 reference,
//! and the CPU-vs-CUDA agreement of the RedReg gradient update. SKIP convention of
//! tests/common/gpu.rs: without a GPU each test prints `SKIP: …` and passes;
//! `REDREG_REQUIRE_GPU=1` turns a skip into a failure.
#![cfg(feature = "candle-cuda")]

mod common;

use common::candle as helpers;
use common::gpu;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use helpers::{assert_close, flat};
use redreg::candle::{cuda_backend, project_drift_into_grads, project_out_tensors, snapshot};
use redreg::cuda::CudaBackend;
use redreg::{Beta, CpuBackend, ProjectOptions};
use std::sync::OnceLock;

/// candle's CUDA device 0 and a redreg backend on its stream, or `None` after a SKIP.
fn device(test: &str) -> Option<&'static (Device, CudaBackend)> {
    static D: OnceLock<Result<(Device, CudaBackend), String>> = OnceLock::new();
    let d = D.get_or_init(|| {
        redreg::cuda::cuda_available()?;
        let dev = Device::new_cuda(0).map_err(|e| format!("candle Device::new_cuda(0): {e}"))?;
        let be = cuda_backend(&dev).map_err(|e| e.to_string())?;
        Ok((dev, be))
    });
    match d {
        Ok(d) => Some(d),
        Err(reason) => {
            gpu::skip(test, "REDREG_REQUIRE_GPU", reason);
            None
        }
    }
}

fn t(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    helpers::tensor(seed, shape, dev)
}

fn check_project_dtype(dt: DType, atol: f64, rtol: f64) {
    let Some((dev, be)) = device(&format!("project_out_tensors_{dt:?}")) else {
        return;
    };
    helpers::check_project_dtype(be, dev, dt, atol, rtol);
}

#[test]
fn project_out_tensors_matches_reference_f32() {
    check_project_dtype(DType::F32, 1e-6, 1e-5);
}

#[test]
fn project_out_tensors_matches_reference_f16() {
    // One rounding of the f32/f64 result to f16 (2^-11 relative), plus inputs' rounding.
    check_project_dtype(DType::F16, 1e-3, 2e-3);
}

#[test]
fn project_out_tensors_matches_reference_bf16() {
    check_project_dtype(DType::BF16, 1e-2, 1.6e-2);
}

/// A tiny "encoder": y = sum(tanh(x W^T + b)), so backward fills a GradStore.
fn grads_of(w: &Var, b: &Var, dev: &Device) -> GradStore {
    let x = t(99, &[5, 6], dev);
    x.matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap()
        .tanh()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// The RedReg update on CUDA parameters equals the script's formula in f64 and the CPU
/// backend's result on the same values.
#[test]
fn drift_into_grads_matches_script_and_cpu() {
    let Some((dev, be)) = device("drift_into_grads_matches_script_and_cpu") else {
        return;
    };
    // (gradients before, drifts, gradients after), each per parameter tensor.
    type PerTensor = Vec<Vec<f32>>;
    let run = |dev: &Device, on_gpu: bool| -> (PerTensor, PerTensor, PerTensor) {
        let w = Var::from_tensor(&t(50, &[4, 6], dev)).unwrap();
        let b = Var::from_tensor(&t(51, &[4], dev)).unwrap();
        let params = [w.clone(), b.clone()];
        let theta0 = snapshot(&params).unwrap();
        w.set(&(w.as_tensor() + t(52, &[4, 6], dev)).unwrap())
            .unwrap();
        b.set(&(b.as_tensor() + t(53, &[4], dev)).unwrap()).unwrap();
        let mut grads = grads_of(&w, &b, dev);
        let g0: Vec<Vec<f32>> = params
            .iter()
            .map(|p| flat(grads.get(p.as_tensor()).unwrap()))
            .collect();
        let d: Vec<Vec<f32>> = params
            .iter()
            .zip(&theta0)
            .map(|(p, p0)| {
                flat::<f32>(p.as_tensor())
                    .iter()
                    .zip(flat::<f32>(p0))
                    .map(|(a, b)| a - b)
                    .collect()
            })
            .collect();
        let opts = ProjectOptions::default();
        let ranks = if on_gpu {
            project_drift_into_grads(be, &params, &theta0, &mut grads, &[], 1.4, &opts)
        } else {
            let cpu = CpuBackend::new();
            project_drift_into_grads(&cpu, &params, &theta0, &mut grads, &[], 1.4, &opts)
        }
        .unwrap();
        assert_eq!(ranks, vec![1, 1]);
        let new = params
            .iter()
            .map(|p| {
                let g = grads.get(p.as_tensor()).unwrap();
                assert!(g.device().same_device(dev));
                flat(g)
            })
            .collect();
        (g0, d, new)
    };
    let (g0, d, gpu) = run(dev, true);
    let (_, _, cpu) = run(&Device::Cpu, false);
    for i in 0..2 {
        let g: Vec<f64> = g0[i].iter().map(|&x| x as f64).collect();
        let dd: Vec<f64> = d[i].iter().map(|&x| x as f64).collect();
        let want = helpers::script_update(&dd, &g, 1.4);
        assert_close(&format!("gpu tensor {i}"), &gpu[i], &want, 1e-6, 1e-5);
        // Same inputs on both devices up to the matmul's rounding in backward.
        assert_close(
            &format!("gpu vs cpu tensor {i}"),
            &gpu[i],
            &cpu[i],
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn wrong_device_or_stream_is_an_error() {
    let Some((dev, be)) = device("wrong_device_or_stream_is_an_error") else {
        return;
    };
    let gpu_t = [t(1, &[8], dev)];
    let cpu_t = [t(1, &[8], &Device::Cpu)];
    let o = ProjectOptions::default();
    let s = Beta::Scalar(1.0);
    // CPU tensors to the CUDA backend, CUDA tensors to the CPU backend.
    assert!(project_out_tensors(be, &cpu_t, &[&cpu_t[..]], None, 1.0, s, &o).is_err());
    let cpu = CpuBackend::new();
    assert!(project_out_tensors(&cpu, &gpu_t, &[&gpu_t[..]], None, 1.0, s, &o).is_err());
    // Mixed devices inside one call.
    assert!(project_out_tensors(be, &gpu_t, &[&cpu_t[..]], None, 1.0, s, &o).is_err());
    // A backend on another stream of the same device.
    let other = CudaBackend::from_stream(be.context().new_stream().unwrap()).unwrap();
    let err = project_out_tensors(&other, &gpu_t, &[&gpu_t[..]], None, 1.0, s, &o).unwrap_err();
    assert!(err.to_string().contains("stream"), "{err}");
    // Strided and integer CUDA tensors.
    let m = t(2, &[4, 6], dev).t().unwrap();
    assert!(redreg::candle::view(&m).is_err());
    assert!(redreg::candle::view(&gpu_t[0].to_dtype(DType::U32).unwrap()).is_err());
    // Empty tensors next to a non-empty one: rank 0, empty output, no launch for it.
    match Tensor::zeros((0, 3), DType::F32, dev) {
        Ok(e) => {
            let v = [e.clone(), gpu_t[0].clone()];
            let b = [e, (&gpu_t[0] * 3.0).unwrap()];
            let (outs, ranks) = project_out_tensors(be, &v, &[&b[..]], None, 1.0, s, &o).unwrap();
            assert_eq!(ranks, vec![0, 1]);
            assert_eq!(outs[0].dims(), &[0, 3]);
            // v is parallel to its basis: the projection removes all of it.
            let rest = flat::<f32>(&outs[1]);
            assert!(rest.iter().all(|x| x.abs() < 1e-6), "{rest:?}");
        }
        Err(e) => {
            eprintln!("note: candle cannot make an empty CUDA tensor here ({e}); case not run")
        }
    }
}

/// The device-chosen path on CUDA: `OnDevice<Backends>` is the CUDA backend on candle's stream
/// (bitwise the explicit one), and `OnDevice<Executors>` computes the step's statistics from CUDA
/// tensors in place, equal to the CPU plan on the same values up to f64 summation order.
#[test]
fn device_backend_and_stats_on_cuda() {
    use redreg::candle::stats::{modality_shapes, step_inputs, ModalityTensors};
    use redreg::candle::{Backends, Executors, OnDevice};
    use redreg::controller::RedRegStats;
    use redreg::stats::{CpuStats, StatsPlan};
    let Some((dev, be)) = device("device_backend_and_stats_on_cuda") else {
        return;
    };
    let dbe = OnDevice::<Backends>::for_device(dev).unwrap();
    assert!(matches!(dbe, OnDevice::Cuda(_)));
    let o = ProjectOptions::default();
    let v = [t(1, &[5, 4], dev)];
    let b = [t(2, &[5, 4], dev)];
    let s = Beta::Scalar(0.5);
    let (got, gr) = project_out_tensors(&dbe, &v, &[&b[..]], None, 1.0, s, &o).unwrap();
    let (want, wr) = project_out_tensors(be, &v, &[&b[..]], None, 1.0, s, &o).unwrap();
    assert_eq!(gr, wr);
    assert_eq!(flat::<f32>(&got[0]), flat::<f32>(&want[0]));

    const B: usize = 6;
    let m = |s: u64, d: &Device| {
        [
            (t(s, &[B, 4], d) * 3.0).unwrap(),
            t(s + 1, &[B, 7], d),
            t(s + 2, &[B, 7], d),
            t(s + 3, &[B, 5], d),
            t(s + 4, &[B, 5], d),
            t(s + 5, &[B, 3], d),
        ]
    };
    fn tensors(m: &[[Tensor; 6]; 2]) -> Vec<ModalityTensors<'_>> {
        m.iter()
            .map(|m| ModalityTensors {
                logits: &m[0],
                z1: &m[1],
                z2: &m[2],
                x1: &m[3],
                x2: &m[4],
                pooled: &m[5],
            })
            .collect()
    }
    let (host, gpu) = (
        [m(20, &Device::Cpu), m(30, &Device::Cpu)],
        [m(20, dev), m(30, dev)],
    );
    let (th, tg) = (tensors(&host), tensors(&gpu));
    let shapes: Vec<_> = th.iter().map(|m| modality_shapes(m).unwrap()).collect();
    let mut plan = StatsPlan::new();
    let h = RedRegStats::declare(&mut plan, &shapes).unwrap();
    let mut cpu = CpuStats::new(&plan).unwrap();
    let mut on_dev = OnDevice::<Executors>::for_device(dev, &plan).unwrap();
    assert!(on_dev.is_cuda());
    let y = [0u32, 3, 1, 2, 2, 0];
    let yh = Tensor::new(&y, &Device::Cpu).unwrap();
    let yg = Tensor::new(&y, dev).unwrap();
    let want = step_inputs(&mut cpu, &h, &yh, &th).unwrap();
    let got = step_inputs(&mut on_dev, &h, &yg, &tg).unwrap();
    let close = |a: f64, b: f64| assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    for i in 0..2 {
        close(got.scores[i], want.scores[i]);
        close(
            got.redundancy[i].value(1e-12).unwrap(),
            want.redundancy[i].value(1e-12).unwrap(),
        );
    }
    close(got.agreement[0], want.agreement[0]);
    // CPU tensors (or CPU labels) to the CUDA executor are errors, as is a label out of range.
    assert!(step_inputs(&mut on_dev, &h, &yh, &tg).is_err());
    assert!(step_inputs(&mut on_dev, &h, &yg, &th).is_err());
    let bad = Tensor::new(&[0u32, 3, 1, 2, 9, 0], dev).unwrap();
    assert!(step_inputs(&mut on_dev, &h, &bad, &tg).is_err());
}
