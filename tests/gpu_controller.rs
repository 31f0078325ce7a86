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

/// The device checks (another context, aliasing) run on every encoder before the state
/// changes: `Controller::step` returns `Err` with the state and every buffer unchanged.
#[test]
fn cuda_step_device_errors_leave_state_unchanged() {
    use cudarc::driver::DevicePtr;
    use redreg::cuda::ForeignSlice;
    let Some(b) = gpu::backend("cuda_step_device_errors_leave_state_unchanged") else {
        return;
    };
    let segs = Segments::from_lengths(&[4, 4]).unwrap();
    let s = b.stream();
    let theta = up(b, &[1f32, 2., 3., 4., 5., 6., 7., 8.]);
    let theta0 = up(b, &[0f32; 8]);
    let mut ctl = Controller::new(Config::new(2), 2).unwrap();
    ctl.begin_epoch(0).unwrap();
    // Visual dominates and the gate is open: the decision would suppress encoder 1, while
    // the bad buffer is encoder 0's (never written by the step).
    let inputs = StepInputs::pair(
        0.3,
        0.7,
        Redundancy::ratio(0.5),
        Redundancy::ratio(0.5),
        0.9,
    );
    let check_unchanged = |ctl: &Controller, before: &str, e: redreg::Error, what: &str| {
        assert!(e.to_string().contains(what), "{e}");
        assert_eq!(
            format!("{:?}", ctl.state()),
            before,
            "state must be unchanged"
        );
    };

    // 1. A gradient that aliases theta (raw pointers of one allocation).
    let mem: CudaSlice<f32> = up(b, &[1f32, 2., 3., 4., 5., 6., 7., 8.]);
    let addr = mem.device_ptr(s).0;
    // SAFETY: both views cover `mem` (8 f32), which outlives them.
    let (t_alias, mut g_alias) = unsafe {
        (
            ForeignSlice::<f32>::new(b, addr, 8).unwrap(),
            ForeignSlice::<f32>::new(b, addr, 8).unwrap(),
        )
    };
    let mut g1 = up(b, &[0.5f32; 8]);
    let before = format!("{:?}", ctl.state());
    let e = {
        let mut encs = [
            DeviceEncoder {
                segs: &segs,
                theta: t_alias.view(),
                theta0: theta0.slice(..),
                grad: g_alias.view_mut(),
                basis: JointBasis::Gradient,
            },
            DeviceEncoder {
                segs: &segs,
                theta: theta.slice(..),
                theta0: theta0.slice(..),
                grad: g1.slice_mut(..),
                basis: JointBasis::Gradient,
            },
        ];
        ctl.step(&inputs, b, &mut encs).unwrap_err()
    };
    check_unchanged(&ctl, &before, e, "overlaps");
    assert_eq!(down(b, &g1), vec![0.5f32; 8], "no gradient may be written");

    // 2. A buffer on another device (the emulated driver's EMU_DEVICES=2, or 2 GPUs).
    let devices = cudarc::driver::CudaContext::device_count().unwrap_or(1);
    if devices < 2 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: cuda_step_device_errors_leave_state_unchanged (another device): needs 2 devices, found {devices}"
        );
        return;
    }
    let other = CudaBackend::new(1).unwrap();
    let theta0_other: CudaSlice<f32> = other.stream().clone_htod(&[0f32; 8]).unwrap();
    let mut g0 = up(b, &[0.25f32; 8]);
    let e = {
        let mut encs = [
            DeviceEncoder {
                segs: &segs,
                theta: theta.slice(..),
                theta0: theta0_other.slice(..),
                grad: g0.slice_mut(..),
                basis: JointBasis::Gradient,
            },
            DeviceEncoder {
                segs: &segs,
                theta: theta.slice(..),
                theta0: theta0.slice(..),
                grad: g1.slice_mut(..),
                basis: JointBasis::Gradient,
            },
        ];
        ctl.step(&inputs, b, &mut encs).unwrap_err()
    };
    check_unchanged(&ctl, &before, e, "context");
    assert_eq!(down(b, &g0), vec![0.25f32; 8]);
    assert_eq!(down(b, &g1), vec![0.5f32; 8]);
    // The same step with valid buffers runs and changes the state.
    let mut encs = [
        DeviceEncoder {
            segs: &segs,
            theta: theta.slice(..),
            theta0: theta0.slice(..),
            grad: g0.slice_mut(..),
            basis: JointBasis::Gradient,
        },
        DeviceEncoder {
            segs: &segs,
            theta: theta.slice(..),
            theta0: theta0.slice(..),
            grad: g1.slice_mut(..),
            basis: JointBasis::Gradient,
        },
    ];
    let (d, _) = ctl.step(&inputs, b, &mut encs).unwrap();
    assert_eq!(d.suppressed, Some(1));
    assert_ne!(format!("{:?}", ctl.state()), before);
    drop(mem);
}
