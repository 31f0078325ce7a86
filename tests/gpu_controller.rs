//! The controller's step on the CUDA backend against the same generic step on the f64
//! oracle: same decision, same ranks, same gradient update within the element type's
//! tolerance, for every joint basis (the gradient, the gradient and extras, an explicit
//! basis). Both form the drift in f64 inside the projection (`Projection::drift`). Without a
//! usable GPU each test prints `SKIP: <reason>`; `REDREG_REQUIRE_GPU=1` makes that a failure.
#![cfg(feature = "cuda")]

mod common;

use common::gpu;

use cudarc::driver::CudaSlice;
use redreg::controller::{
    step, Config, Controller, DeviceEncoder, HostEncoder, JointBasis, Redundancy, StepInputs,
};
use redreg::cuda::CudaBackend;
use redreg::testing::{elements, layouts};
use redreg::{bf16, Segments};
use redreg::{Element, Reference};

fn up<T: Element>(b: &CudaBackend, x: &[T]) -> CudaSlice<T> {
    b.stream().clone_htod(x).unwrap()
}

fn down<T: Element>(b: &CudaBackend, x: &CudaSlice<T>) -> Vec<T> {
    b.stream().clone_dtoh(x).unwrap()
}

/// `explicit`: the basis is exactly the extras (`JointBasis::Explicit`), else the gradient
/// and the extras.
fn step_matches_host<T: Element>(b: &CudaBackend, k_extra: usize, explicit: bool, rtol: f64) {
    let (audio, visual) = layouts::resnet18_av_pair();
    let segs = [
        Segments::from_shapes(&audio).unwrap(),
        Segments::from_shapes(&visual).unwrap(),
    ];
    let mk = |n: usize, seed: u64, sc: f64| -> Vec<T> { elements(n, seed, sc) };
    let host: Vec<_> = segs
        .iter()
        .enumerate()
        .map(|(m, s)| {
            let n = s.total();
            let theta = mk(n, 10 + m as u64, 1.0);
            let theta0 = mk(n, 20 + m as u64, 1.0);
            let grad = mk(n, 30 + m as u64, 1e-2);
            let extra: Vec<Vec<T>> = (0..k_extra).map(|j| mk(n, 40 + j as u64, 1e-2)).collect();
            (theta, theta0, grad, extra)
        })
        .collect();
    // Visual dominates (0.3 < 0.7, r_v = 10 > R at the epoch's first step), gate open.
    let inputs = StepInputs::pair(
        0.3,
        0.7,
        Redundancy::ratio(0.5),
        Redundancy::ratio(0.5),
        0.9,
    );
    let mut ctl_host = Controller::new(Config::new(3), 2).unwrap();
    let mut ctl_gpu = ctl_host.clone();
    ctl_host.begin_epoch(0).unwrap();
    ctl_gpu.begin_epoch(0).unwrap();

    // Host step on the oracle.
    let mut grads: Vec<Vec<T>> = host.iter().map(|h| h.2.clone()).collect();
    let extras: Vec<Vec<&[T]>> = host
        .iter()
        .map(|h| h.3.iter().map(|x| x.as_slice()).collect())
        .collect();
    let (g0, g1) = grads.split_at_mut(1);
    let jb = |x| {
        if explicit {
            JointBasis::Explicit(x)
        } else {
            JointBasis::GradientAnd(x)
        }
    };
    let mut encs = [
        HostEncoder {
            segs: &segs[0],
            theta: &host[0].0,
            theta0: &host[0].1,
            grad: &mut g0[0],
            basis: jb(&extras[0]),
        },
        HostEncoder {
            segs: &segs[1],
            theta: &host[1].0,
            theta0: &host[1].1,
            grad: &mut g1[0],
            basis: jb(&extras[1]),
        },
    ];
    let (dh, ranks_host) = ctl_host.step(&inputs, &Reference, &mut encs).unwrap();
    assert_eq!(dh.suppressed, Some(1));

    // Device step.
    let dev: Vec<_> = host
        .iter()
        .map(|h| {
            (
                up(b, &h.0),
                up(b, &h.1),
                up(b, &h.2),
                h.3.iter().map(|x| up(b, x)).collect::<Vec<_>>(),
            )
        })
        .collect();
    let mut dgrads: Vec<CudaSlice<T>> = dev.iter().map(|d| d.2.clone()).collect();
    let dextras: Vec<Vec<_>> = dev
        .iter()
        .map(|d| d.3.iter().map(|x| x.slice(..)).collect())
        .collect();
    let (a, v) = dgrads.split_at_mut(1);
    let djb = |x| {
        if explicit {
            JointBasis::Explicit(x)
        } else {
            JointBasis::GradientAnd(x)
        }
    };
    let mut cencs = [
        DeviceEncoder {
            segs: &segs[0],
            theta: dev[0].0.slice(..),
            theta0: dev[0].1.slice(..),
            grad: a[0].slice_mut(..),
            basis: djb(&dextras[0]),
        },
        DeviceEncoder {
            segs: &segs[1],
            theta: dev[1].0.slice(..),
            theta0: dev[1].1.slice(..),
            grad: v[0].slice_mut(..),
            basis: djb(&dextras[1]),
        },
    ];
    let (dg, ranks_dev) = ctl_gpu.step(&inputs, b, &mut cencs).unwrap();
    assert_eq!(
        ranks_dev
            .expect("a projection was queued")
            .to_vec()
            .unwrap(),
        ranks_host.expect("the host projected")
    );
    assert_eq!(dg.suppressed, dh.suppressed);
    assert_eq!(dg.beta.to_bits(), dh.beta.to_bits());
    for m in 0..2 {
        let got = down(b, &dgrads[m]);
        let want = &grads[m];
        let mut bad = 0;
        let mut first = Vec::new();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (g.to_f64(), w.to_f64());
            if (g - w).abs() > 1e-7 + rtol * w.abs() {
                bad += 1;
                if first.len() < 5 {
                    first.push(format!("[{i}] gpu {g:e} host {w:e}"));
                }
            }
        }
        assert_eq!(bad, 0, "encoder {m}: {bad} mismatches, first: {first:?}");
        if m == 0 {
            assert!(got == *want, "the audio encoder must be untouched");
        }
    }
}

#[test]
fn cuda_step_matches_host_step_f32() {
    let Some(b) = gpu::backend("cuda_step_matches_host_step_f32") else {
        return;
    };
    step_matches_host::<f32>(b, 0, false, 2.0 * f32::EPSILON as f64);
    step_matches_host::<f32>(b, 2, false, 2.0 * f32::EPSILON as f64);
    step_matches_host::<f32>(b, 2, true, 2.0 * f32::EPSILON as f64);
}

#[test]
fn cuda_step_matches_host_step_bf16() {
    let Some(b) = gpu::backend("cuda_step_matches_host_step_bf16") else {
        return;
    };
    // Both form the drift in f64 and round once; they differ only by the summation order
    // (and FMA) of the coefficients: at most one bf16 rounding apart.
    step_matches_host::<bf16>(b, 1, false, 7.8125e-3);
}

#[test]
fn cuda_step_rejects_bad_buffers() {
    let Some(b) = gpu::backend("cuda_step_rejects_bad_buffers") else {
        return;
    };
    let segs = Segments::from_lengths(&[4, 4]).unwrap();
    let theta = up(b, &[1f32; 8]);
    let short = up(b, &[1f32; 7]);
    let mut grad = up(b, &[0f32; 8]);
    let mut ctl = Controller::new(Config::new(2), 2).unwrap();
    ctl.begin_epoch(0).unwrap();
    let inputs = StepInputs::pair(
        0.3,
        0.7,
        Redundancy::ratio(0.5),
        Redundancy::ratio(0.5),
        0.9,
    );
    let mut g2 = grad.clone();
    let mut encs = [
        DeviceEncoder {
            segs: &segs,
            theta: theta.slice(..),
            theta0: short.slice(..),
            grad: grad.slice_mut(..),
            basis: JointBasis::Gradient,
        },
        DeviceEncoder {
            segs: &segs,
            theta: theta.slice(..),
            theta0: theta.slice(..),
            grad: g2.slice_mut(..),
            basis: JointBasis::Gradient,
        },
    ];
    let before = format!("{:?}", ctl.state());
    let e = ctl.step(&inputs, b, &mut encs).unwrap_err();
    assert!(
        e.to_string().contains("expected 8") && e.to_string().contains("got 7"),
        "{e}"
    );
    assert_eq!(
        format!("{:?}", ctl.state()),
        before,
        "state must be unchanged"
    );
    // The host step agrees that the decision itself is fine.
    let _ = step::<f32, Reference>;
}
