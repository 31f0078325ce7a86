//! The device-chosen candle path (`redreg::candle::OnDevice<Backends>`,
//! `OnDevice<Executors>`) on `Device::Cpu` against the explicit CPU path
//! (`CpuBackend`, `CpuStats`): bitwise the same projections, ranks, gradients and
//! statistics.
#![cfg(feature = "candle")]

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use redreg::candle::stats::{modality_shapes, step_inputs, ModalityTensors};
use redreg::candle::{
    project_drift_into_grads, project_out_tensors, Backends, Executors, OnDevice,
};
use redreg::controller::RedRegStats;
use redreg::stats::{CpuStats, Stats, StatsPlan};
use redreg::{Beta, CpuBackend, ProjectOptions};

/// A deterministic f32 tensor with values in [-1, 1) (xorshift).
fn t(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn bits(x: &Tensor) -> Vec<u32> {
    x.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn device_backend_for_cpu_is_the_cpu_backend() {
    let be = OnDevice::<Backends>::for_device(&Device::Cpu).unwrap();
    assert!(matches!(be, OnDevice::Cpu(_)));
    let cpu = CpuBackend::new();
    let o = ProjectOptions::default();
    for dt in [DType::F32, DType::BF16] {
        let c = |x: Tensor| x.to_dtype(dt).unwrap();
        let v = [c(t(1, &[5, 4])), c(t(2, &[7]))];
        let b0 = [c(t(3, &[5, 4])), c(t(4, &[7]))];
        let b1 = [c(t(5, &[5, 4])), c(t(4, &[7]))]; // second tensor: rank 1
        let base = [c(t(6, &[5, 4])), c(t(7, &[7]))];
        let basis: [&[Tensor]; 2] = [&b0, &b1];
        let beta = Beta::PerSegment(&[0.5, 2.0]);
        let (got, gr) = project_out_tensors(&be, &v, &basis, Some(&base), 0.25, beta, &o).unwrap();
        let (want, wr) =
            project_out_tensors(&cpu, &v, &basis, Some(&base), 0.25, beta, &o).unwrap();
        assert_eq!(gr, wr);
        assert_eq!(wr, [2, 1]);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.dtype(), dt);
            assert_eq!(bits(g), bits(w));
        }
    }

    // The RedReg update into a GradStore, one parameter without a gradient.
    let params: Vec<Var> = [t(10, &[6, 3]), t(11, &[4])]
        .iter()
        .map(|x| Var::from_tensor(x).unwrap())
        .collect();
    let theta0 = [t(12, &[6, 3]), t(13, &[4])];
    // A GradStore from backward with a gradient for params[0] only.
    let grads = || -> GradStore {
        let y = (params[0].as_tensor() * t(14, &[6, 3])).unwrap();
        y.sum_all().unwrap().backward().unwrap()
    };
    let (mut g_dev, mut g_cpu) = (grads(), grads());
    let r_dev = project_drift_into_grads(&be, &params, &theta0, &mut g_dev, &[], 0.7, &o).unwrap();
    let r_cpu = project_drift_into_grads(&cpu, &params, &theta0, &mut g_cpu, &[], 0.7, &o).unwrap();
    assert_eq!(r_dev, r_cpu);
    for p in &params {
        let (a, b) = (g_dev.get(p.as_tensor()), g_cpu.get(p.as_tensor()));
        assert_eq!(bits(a.unwrap()), bits(b.unwrap()));
    }
}

#[test]
fn device_stats_for_cpu_equal_cpu_stats() {
    const B: usize = 6;
    let m = |s: u64, f: usize, x: usize| {
        [
            (t(s, &[B, 4]) * 3.0).unwrap(),
            t(s + 1, &[B, f]),
            t(s + 2, &[B, f]),
            t(s + 3, &[B, x]),
            t(s + 4, &[B, x]),
            t(s + 5, &[B, 3]),
        ]
    };
    let mods = [m(20, 7, 5), m(30, 11, 9)];
    let tensors: Vec<ModalityTensors<'_>> = mods
        .iter()
        .map(|m| ModalityTensors {
            logits: &m[0],
            z1: &m[1],
            z2: &m[2],
            x1: &m[3],
            x2: &m[4],
            pooled: &m[5],
        })
        .collect();
    let shapes: Vec<_> = tensors
        .iter()
        .map(|m| modality_shapes(m).unwrap())
        .collect();
    let mut plan = StatsPlan::new();
    let h = RedRegStats::declare(&mut plan, &shapes).unwrap();
    let mut cpu = CpuStats::new(&plan).unwrap();
    let mut dev = OnDevice::<Executors>::for_device(&Device::Cpu, &plan).unwrap();
    assert!(!dev.is_cuda());
    let be = OnDevice::<Backends>::for_device(&Device::Cpu).unwrap();
    let mut shared = OnDevice::<Executors>::new(&be, &plan).unwrap();
    for labels in [
        Tensor::new(&[0u32, 3, 1, 2, 2, 0], &Device::Cpu).unwrap(),
        Tensor::new(&[1i64, 0, 0, 3, 2, 1], &Device::Cpu).unwrap(),
    ] {
        let want = step_inputs(&mut cpu, &h, &labels, &tensors).unwrap();
        assert_eq!(step_inputs(&mut dev, &h, &labels, &tensors).unwrap(), want);
        assert_eq!(
            step_inputs(&mut shared, &h, &labels, &tensors).unwrap(),
            want
        );
        let b = |r: &[f64]| r.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(b(dev.results().as_slice()), b(cpu.results().as_slice()));
        assert_eq!(dev.plan().len(), plan.len());
    }
    // The same rejections: a label outside 0..C, one modality for a plan of two.
    let out = Tensor::new(&[0u32, 3, 1, 2, 9, 0], &Device::Cpu).unwrap();
    assert!(step_inputs(&mut cpu, &h, &out, &tensors).is_err());
    assert!(step_inputs(&mut dev, &h, &out, &tensors).is_err());
    let y = Tensor::new(&[0u32, 3, 1, 2, 2, 0], &Device::Cpu).unwrap();
    assert!(step_inputs(&mut dev, &h, &y, &tensors[..1]).is_err());
}
