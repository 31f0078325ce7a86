//! The candle adapter (`redreg::candle`) against the f64 reference on the same data, per
//! dtype, with offsets, a missing gradient, and every rejected input (dtype, shape,
//! contiguity, counts).
#![cfg(feature = "candle")]

mod common;

use common::candle as helpers;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use helpers::{flat, reference_one};
use redreg::candle::{project_drift_into_grads, project_out_tensors, segments, snapshot, view};
use redreg::{Beta, CpuBackend, Element, ProjectOptions};

fn t(seed: u64, shape: &[usize]) -> Tensor {
    helpers::tensor(seed, shape, &Device::Cpu)
}

/// `|got - want| <= tol·(1 + |want|)`.
fn assert_close<T: Element>(got: &[T], want: &[T], tol: f64) {
    helpers::assert_close("tensor", got, want, tol, tol);
}

#[test]
fn segments_follow_tensor_shapes() {
    let ts = [t(1, &[3, 4]), t(2, &[5]), t(3, &[2, 1, 3])];
    let s = segments(&ts).unwrap();
    assert_eq!(s.offsets(), &[0, 12, 17, 23]);
    let vars: Vec<Var> = ts.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
    assert_eq!(segments(&vars).unwrap().offsets(), &[0, 12, 17, 23]);
}

#[test]
fn view_reads_in_place_with_offset() {
    let x = t(4, &[6, 5]);
    let row = x.narrow(0, 2, 3).unwrap(); // contiguous, start offset 10
    let v = view(&row).unwrap();
    assert_eq!(v.len(), 15);
    assert_eq!(v.as_slice::<f32>().unwrap(), &flat::<f32>(&x)[10..25]);
    assert!(v.as_slice::<half::f16>().is_err(), "wrong element type");
}

#[test]
fn view_rejects_strided_and_integer_tensors() {
    let x = t(5, &[4, 3]);
    let tr = x.t().unwrap();
    assert!(view(&tr).is_err());
    assert!(view(&tr.contiguous().unwrap()).is_ok());
    let u = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
    assert!(view(&u).is_err());
}

fn check_project_dtype(dt: DType, tol: f64) {
    helpers::check_project_dtype(&CpuBackend::new(), &Device::Cpu, dt, tol, tol);
}

#[test]
fn project_out_tensors_matches_reference_f32() {
    check_project_dtype(DType::F32, 1e-5);
}

#[test]
fn project_out_tensors_matches_reference_f16() {
    check_project_dtype(DType::F16, 2e-3);
}

#[test]
fn project_out_tensors_matches_reference_bf16() {
    check_project_dtype(DType::BF16, 1.6e-2);
}

#[test]
fn project_out_tensors_rejects_mismatches() {
    let be = CpuBackend::new();
    let o = ProjectOptions::default();
    let v = [t(1, &[4, 3])];
    let ok = [t(2, &[4, 3])];
    let bad_shape = [t(2, &[3, 4])];
    let bad_dtype = [t(2, &[4, 3]).to_dtype(DType::F16).unwrap()];
    let strided = [t(2, &[3, 4]).t().unwrap()];
    let b = Beta::Scalar(1.0);
    assert!(project_out_tensors(&be, &v, &[&ok[..]], None, 1.0, b, &o).is_ok());
    assert!(project_out_tensors(&be, &v, &[&bad_shape[..]], None, 1.0, b, &o).is_err());
    assert!(project_out_tensors(&be, &v, &[&bad_dtype[..]], None, 1.0, b, &o).is_err());
    assert!(project_out_tensors(&be, &v, &[&strided[..]], None, 1.0, b, &o).is_err());
    assert!(project_out_tensors(&be, &v, &[&ok[..]], Some(&bad_shape[..]), 1.0, b, &o).is_err());
    let two = [t(3, &[4, 3]), t(4, &[4, 3])];
    assert!(project_out_tensors(&be, &v, &[&two[..]], None, 1.0, b, &o).is_err());
    assert!(project_out_tensors(
        &be,
        &v,
        &[&ok[..]],
        None,
        1.0,
        Beta::PerSegment(&[1.0, 2.0]),
        &o
    )
    .is_err());
    let nine: Vec<&[Tensor]> = vec![&ok[..]; 9];
    assert!(project_out_tensors(&be, &v, &nine, None, 1.0, b, &o).is_err());
}

/// A tiny "encoder": y = sum(tanh(x W^T + b)), so backward fills a GradStore.
fn grads_of(w: &Var, b: &Var) -> GradStore {
    let x = t(99, &[5, 6]);
    let y = x
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap()
        .tanh()
        .unwrap()
        .sum_all()
        .unwrap();
    y.backward().unwrap()
}

#[test]
fn drift_into_grads_matches_script_formula() {
    let w = Var::from_tensor(&t(50, &[4, 6])).unwrap();
    let b = Var::from_tensor(&t(51, &[4])).unwrap();
    let params = [w.clone(), b.clone()];
    let theta0 = snapshot(&params).unwrap();
    // Move the parameters as an optimizer would (in place): the snapshot must not move.
    w.set(&(w.as_tensor() + t(52, &[4, 6])).unwrap()).unwrap();
    b.set(&(b.as_tensor() + t(53, &[4])).unwrap()).unwrap();
    assert_ne!(flat::<f32>(&theta0[0]), flat::<f32>(w.as_tensor()));
    let mut grads = grads_of(&w, &b);
    let g_before: Vec<Vec<f32>> = params
        .iter()
        .map(|p| flat(grads.get(p.as_tensor()).unwrap()))
        .collect();
    let beta = 1.4;
    let ranks = project_drift_into_grads(
        &CpuBackend::new(),
        &params,
        &theta0,
        &mut grads,
        &[],
        beta,
        &ProjectOptions::default(),
    )
    .unwrap();
    assert_eq!(ranks, vec![1, 1]);
    for (i, p) in params.iter().enumerate() {
        // The script: d_perp = d - (d·g / (g·g + 1e-12)) g; grad += beta * d_perp.
        let d: Vec<f64> = flat::<f32>(p.as_tensor())
            .iter()
            .zip(flat::<f32>(&theta0[i]))
            .map(|(a, b)| (a - b) as f64)
            .collect();
        let g: Vec<f64> = g_before[i].iter().map(|&x| x as f64).collect();
        let gg: f64 = g.iter().map(|x| x * x).sum();
        let want = helpers::script_update(&d, &g, beta);
        let got = flat::<f32>(grads.get(p.as_tensor()).unwrap());
        assert_close(&got, &want, 1e-5);
        // d_perp ⟂ g.
        let dot: f64 = got.iter().zip(&g).map(|(n, g)| (*n as f64 - g) * g).sum();
        assert!(dot.abs() < 1e-4 * (1.0 + gg), "dot {dot}");
    }
}

#[test]
fn drift_into_grads_rank2_and_missing_gradient() {
    let w = Var::from_tensor(&t(60, &[4, 6])).unwrap();
    let b = Var::from_tensor(&t(61, &[4])).unwrap();
    let unused = Var::from_tensor(&t(62, &[3])).unwrap(); // gets no gradient
    let params = [w.clone(), b.clone(), unused.clone()];
    let theta0 = snapshot(&params).unwrap();
    for (p, s) in params.iter().zip([63u64, 64, 65]) {
        p.set(&(p.as_tensor() + t(s, p.dims())).unwrap()).unwrap();
    }
    let mut grads = grads_of(&w, &b);
    assert!(grads.get(unused.as_tensor()).is_none());
    let extra = [t(70, &[4, 6]), t(71, &[4]), t(72, &[3])];
    let g_before: Vec<Vec<f32>> = params
        .iter()
        .map(|p| {
            grads
                .get(p.as_tensor())
                .map(flat)
                .unwrap_or_else(|| vec![0.0; p.elem_count()])
        })
        .collect();
    let ranks = project_drift_into_grads(
        &CpuBackend::new(),
        &params,
        &theta0,
        &mut grads,
        &[&extra[..]],
        0.8,
        &ProjectOptions::default(),
    )
    .unwrap();
    // The unused parameter's zero gradient is dropped from its basis: rank 1 (extra only).
    assert_eq!(ranks, vec![2, 2, 1]);
    for (i, p) in params.iter().enumerate() {
        let d: Vec<f32> = flat::<f32>(p.as_tensor())
            .iter()
            .zip(flat::<f32>(&theta0[i]))
            .map(|(a, b)| a - b)
            .collect();
        let want = reference_one::<f32>(
            &d,
            &[g_before[i].clone(), flat(&extra[i])],
            Some(&g_before[i]),
            1.0,
            0.8,
        );
        assert_close(&flat::<f32>(grads.get(p.as_tensor()).unwrap()), &want, 1e-5);
    }
}

#[test]
fn drift_into_grads_error_leaves_store_unchanged() {
    let w = Var::from_tensor(&t(80, &[4, 6])).unwrap();
    let b = Var::from_tensor(&t(81, &[4])).unwrap();
    let params = [w.clone(), b.clone()];
    let mut grads = grads_of(&w, &b);
    let before: Vec<Vec<f32>> = params
        .iter()
        .map(|p| flat(grads.get(p.as_tensor()).unwrap()))
        .collect();
    let be = CpuBackend::new();
    let o = ProjectOptions::default();
    // Second theta0 of the wrong shape: the first tensor must not have been replaced.
    let bad = [t(82, &[4, 6]), t(83, &[5])];
    assert!(project_drift_into_grads(&be, &params, &bad, &mut grads, &[], 1.0, &o).is_err());
    // Wrong dtype, wrong count, wrong extra count.
    let f16 = [
        t(82, &[4, 6]).to_dtype(DType::F16).unwrap(),
        t(83, &[4]).to_dtype(DType::F16).unwrap(),
    ];
    assert!(project_drift_into_grads(&be, &params, &f16, &mut grads, &[], 1.0, &o).is_err());
    let one = [t(82, &[4, 6])];
    assert!(project_drift_into_grads(&be, &params, &one, &mut grads, &[], 1.0, &o).is_err());
    let ok = snapshot(&params).unwrap();
    assert!(project_drift_into_grads(&be, &params, &ok, &mut grads, &[&one[..]], 1.0, &o).is_err());
    assert!(project_drift_into_grads(&be, &params, &ok, &mut grads, &[], f64::NAN, &o).is_err());
    for (p, want) in params.iter().zip(&before) {
        assert_eq!(&flat::<f32>(grads.get(p.as_tensor()).unwrap()), want);
    }
}

#[test]
fn f16_params_work_end_to_end() {
    let p = Var::from_tensor(&t(90, &[8, 8]).to_dtype(DType::F16).unwrap()).unwrap();
    let theta0 = snapshot(&[&p]).unwrap();
    p.set(&(p.as_tensor() + t(91, &[8, 8]).to_dtype(DType::F16).unwrap()).unwrap())
        .unwrap();
    let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
    let mut grads = loss.backward().unwrap();
    let g0: Vec<half::f16> = flat(grads.get(p.as_tensor()).unwrap());
    let ranks = project_drift_into_grads(
        &CpuBackend::new(),
        &[&p],
        &theta0,
        &mut grads,
        &[],
        1.2,
        &ProjectOptions::default(),
    )
    .unwrap();
    assert_eq!(ranks, vec![1]);
    let d: Vec<half::f16> = flat::<half::f16>(p.as_tensor())
        .iter()
        .zip(flat::<half::f16>(&theta0[0]))
        .map(|(a, b)| half::f16::from_f32(a.to_f32() - b.to_f32()))
        .collect();
    let want = reference_one::<half::f16>(&d, std::slice::from_ref(&g0), Some(&g0), 1.0, 1.2);
    let got: Vec<half::f16> = flat(grads.get(p.as_tensor()).unwrap());
    assert_close(&got, &want, 2e-3);
}

/// 120 tensors of mixed shapes (some empty, one of several CPU chunks), k = 2, per-tensor
/// β, one `project_list` call underneath: every tensor equals the f64 reference of that
/// tensor alone; ranks per tensor.
#[test]
fn project_out_tensors_120_tensors() {
    let be = CpuBackend::new();
    let shapes: Vec<Vec<usize>> = (0..120)
        .map(|i| match i {
            _ if i % 31 == 5 => vec![0, 3],
            _ if i == 77 => vec![300, 250],
            _ => vec![1 + i % 7, 1 + (i * 13) % 11],
        })
        .collect();
    let v: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| t(1000 + i as u64, s))
        .collect();
    let b0: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| t(2000 + i as u64, s))
        .collect();
    let b1: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| t(3000 + i as u64, s))
        .collect();
    let base: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| t(4000 + i as u64, s))
        .collect();
    let betas: Vec<f64> = (0..120).map(|i| 0.25 + i as f64 / 64.0).collect();
    let o = ProjectOptions::default();
    let (outs, ranks) = project_out_tensors(
        &be,
        &v,
        &[&b0[..], &b1[..]],
        Some(&base[..]),
        0.5,
        Beta::PerSegment(&betas),
        &o,
    )
    .unwrap();
    assert_eq!((outs.len(), ranks.len()), (120, 120));
    for i in 0..120 {
        let n: usize = shapes[i].iter().product();
        assert_eq!(outs[i].dims(), &shapes[i][..], "tensor {i}: shape");
        assert_eq!(ranks[i] as usize, n.min(2), "tensor {i}: rank");
        let want = reference_one(
            &flat::<f32>(&v[i]),
            &[flat::<f32>(&b0[i]), flat::<f32>(&b1[i])],
            Some(&flat::<f32>(&base[i])),
            0.5,
            betas[i],
        );
        assert_close(&flat::<f32>(&outs[i]), &want, 1e-6);
    }
}

/// The tensors of one call are one list: one dtype (and one device) for all of them.
#[test]
fn mixed_dtypes_in_one_call_are_an_error() {
    let be = CpuBackend::new();
    let o = ProjectOptions::default();
    let v = [t(1, &[4]), t(2, &[3]).to_dtype(DType::F16).unwrap()];
    let b = [t(3, &[4]), t(4, &[3]).to_dtype(DType::F16).unwrap()];
    let e = project_out_tensors(&be, &v, &[&b[..]], None, 1.0, Beta::Scalar(1.0), &o).unwrap_err();
    assert!(
        e.to_string().contains("F16") || e.to_string().contains("F32"),
        "{e}"
    );
}
