//! The fused optimizer step (`redreg::optim`), one test binary for the whole operation (one
//! link instead of four): the oracle against closed forms (`reference`), the CPU pass
//! against the oracle (`cpu`), the RedReg correction folded into the pass (`fused`),
//! PyTorch's per-parameter step counts with skipped tensors on the CPU (`steps`), the
//! candle optimizer (`candle`, feature `candle`), and the CUDA step on a GPU or the
//! emulated driver (`cuda`, feature `cuda`). `lists`: the tensor lists, backends and
//! state checks `cpu` and `steps` share.

mod cpu;
mod fused;
mod lists;
mod reference;
mod steps;

#[cfg(feature = "candle")]
mod candle;
#[cfg(feature = "cuda")]
mod cuda;

use redreg::optim::{AdamW, Rule, Sgd};
use redreg::testing::elements;
use redreg::Element;

/// The rules every backend's pass is checked with: SGD (plain, momentum with dampening,
/// Nesterov with weight decay, the script's) and AdamW (PyTorch's defaults and another
/// setting).
fn rules() -> Vec<Rule> {
    vec![
        Rule::Sgd(Sgd::new(0.05)),
        Rule::Sgd(Sgd {
            momentum: 0.9,
            dampening: 0.1,
            ..Sgd::new(0.05)
        }),
        Rule::Sgd(Sgd {
            momentum: 0.8,
            nesterov: true,
            weight_decay: 1e-2,
            ..Sgd::new(0.05)
        }),
        Rule::Sgd(Sgd::script(0.01)),
        Rule::AdamW(AdamW::default()),
        Rule::AdamW(AdamW {
            lr: 0.02,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-6,
            weight_decay: 0.1,
        }),
    ]
}

/// Whether tensor `i` has no gradient at step call `t` (1 for the first call): the pattern
/// the per-tensor step tests share. Tensors `i ≡ 0 (mod 4)` take their first step at call
/// 3, `1` every step, `2` every other step, `3` skip calls 1 and 4. So call 1 steps tensors
/// of one count (1) beside skipped ones; call 2 has counts 1 and 2 (SGD: a first step beside
/// later ones); calls 3 and 5 step every tensor with three different counts; call 4 again
/// skips half of them.
fn skipped(i: usize, t: u64) -> bool {
    match i % 4 {
        0 => t <= 2,
        1 => false,
        2 => t % 2 == 0,
        _ => t == 1 || t == 4,
    }
}

/// An encoder's correction data for the tensors `first..first + n` of `theta`: θ₀ near θ
/// (a drift of a few percent, as in training) and `extras` extra basis lists.
#[allow(clippy::type_complexity)]
fn encoder<T: Element>(
    theta: &[Vec<T>],
    first: usize,
    n: usize,
    extras: usize,
) -> (Vec<Vec<T>>, Vec<Vec<Vec<T>>>) {
    let len = |s: usize| theta[first + s].len();
    let theta0 = (0..n)
        .map(|s| {
            let d: Vec<f64> = redreg::testing::signed_vec(len(s), 50 + s as u64, 0.05);
            theta[first + s]
                .iter()
                .zip(d)
                .map(|(x, d)| T::from_f64(x.to_f64() + d))
                .collect()
        })
        .collect();
    let extra = (0..extras)
        .map(|j| {
            (0..n)
                .map(|s| elements(len(s), 70 + 10 * j as u64 + s as u64, 0.3))
                .collect()
        })
        .collect();
    (theta0, extra)
}

/// A two-modality controller at epoch 0 of 3.
fn controller() -> redreg::controller::Controller {
    let mut c = redreg::controller::Controller::new(redreg::controller::Config::new(3), 2).unwrap();
    c.begin_epoch(0).unwrap();
    c
}

/// Inputs under which the controller suppresses the visual encoder (modality 1):
/// p_a = 0.3 < p_v = 0.7, both redundancies high, pos_sim = 0.4 above epoch 0's
/// threshold 0.2; β = exp(0.9·tanh 0.4) (tests/controller.rs `visual_dominates_gate_open`).
fn suppress_visual() -> redreg::controller::StepInputs {
    use redreg::controller::{Redundancy, StepInputs};
    StepInputs::pair(
        0.3,
        0.7,
        Redundancy::ratio(1.0),
        Redundancy::ratio(1.0),
        0.4,
    )
}
