//! The RedReg controller against values worked out by hand from the formulas of
//! `shared/redreg-algorithm.md` (the arithmetic is in the comments; nothing here is read
//! back from the implementation), and its step on every backend (`backend_tests!`:
//! `reference::…`, `cpu::…`, `cuda::…` on a real GPU or the emulated driver, SKIP convention
//! of tests/common/gpu.rs): against the script's closed form, a rank-2 basis, bad buffers
//! (`Err`, state and buffers unchanged), and the ResNet-18 pair against the same step on
//! the f64 oracle. `cuda_only`: CUDA's device checks (aliasing, another device) run before
//! the state changes.

mod common;

use common::backends::TestBackend;
use redreg::controller::{
    step, Config, Controller, ControllerState, Decision, DropoutSchedule, Dropped, Encoder,
    EncoderOf, GateRule, JointBasis, Redundancy, StepInputs,
};
use redreg::testing::{assert_close, elements};
use redreg::{bf16, Backend, Element, Error, ProjectOptions, Reference, Segments};

#[track_caller]
fn close(got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "got {got}, want {want} (tol {tol})"
    );
}

fn pair(p_a: f64, p_v: f64, red_a: f64, red_v: f64, pos_sim: f64) -> StepInputs {
    StepInputs::pair(
        p_a,
        p_v,
        Redundancy::ratio(red_a),
        Redundancy::ratio(red_v),
        pos_sim,
    )
}

fn controller(config: Config, m: usize, epoch: usize) -> Controller {
    let mut c = Controller::new(config, m).unwrap();
    c.begin_epoch(epoch).unwrap();
    c
}

/// `exp(0.9 · tanh(x))`, the script's β for a score margin x.
fn script_beta(x: f64) -> f64 {
    (0.9 * x.tanh()).exp()
}

// ---------------------------------------------------------------------------------------
// Configuration and schedules

#[test]
fn defaults_are_the_script_constants() {
    let c = Config::new(50);
    assert_eq!(c.window, 10);
    assert_eq!(c.gamma, 0.6);
    assert_eq!(c.r_threshold, 0.15);
    assert_eq!(c.beta_scale, 0.9);
    assert_eq!(c.ema_momentum, 0.9);
    assert_eq!(c.eps, 1e-12);
    assert_eq!(c.agree_start, 0.2);
    assert_eq!(c.agree_rise, 0.3);
    assert!(!c.bias_corrected_ema);
    assert_eq!(c.gate_rule, GateRule::Min);
    assert_eq!(c.project, ProjectOptions::default());
    assert_eq!(c.project.ridge, 1e-12);
    c.validate().unwrap();
}

#[test]
fn agreement_threshold_rises_linearly() {
    // 0.2 + 0.3·e/(5-1): e=0 → 0.2, e=2 → 0.2 + 0.15 = 0.35, e=4 → 0.5.
    let c = Config::new(5);
    close(c.agreement_threshold(0).unwrap(), 0.2, 1e-15);
    close(c.agreement_threshold(2).unwrap(), 0.35, 1e-15);
    close(c.agreement_threshold(4).unwrap(), 0.5, 1e-15);
    assert!(c.agreement_threshold(5).is_err());
    // epochs == 1: the script would divide by zero; the single epoch gets 0.2.
    assert_eq!(Config::new(1).agreement_threshold(0).unwrap(), 0.2);
}

#[test]
fn dropout_ramp_is_the_scripts_integer_ramp() {
    // The script: ramp = max(1, int(0.3 * epochs)); p = 0.6 - 0.5 * min(epoch, ramp) / ramp.
    // 16 epochs: int(4.8) = 4 (a real-valued ramp of 4.8 would give 0.496, 0.392, …).
    let c = Config::new(16);
    assert_eq!(c.dropout.ramp_epochs(16).unwrap(), 4);
    let want = [0.6, 0.475, 0.35, 0.225, 0.1, 0.1];
    for (e, w) in want.iter().enumerate() {
        close(c.dropout_probability(e).unwrap(), *w, 1e-15);
    }
    close(c.dropout_probability(15).unwrap(), 0.1, 1e-15);
    // 7 epochs: int(2.1) = 2 → 0.6, 0.35, 0.1.
    let c = Config::new(7);
    close(c.dropout_probability(1).unwrap(), 0.35, 1e-15);
    close(c.dropout_probability(2).unwrap(), 0.1, 1e-15);
    // 1..=3 epochs: int(0.3·n) = 0, so ramp = 1: 0.6 at epoch 0, 0.1 after.
    for n in 1..=3 {
        let c = Config::new(n);
        assert_eq!(c.dropout.ramp_epochs(n).unwrap(), 1, "{n} epochs");
        close(c.dropout_probability(0).unwrap(), 0.6, 1e-15);
        for e in 1..n {
            close(c.dropout_probability(e).unwrap(), 0.1, 1e-15);
        }
    }
    // A ramp over all epochs (fraction 1): 4 epochs → 0.6, 0.475, 0.35, 0.225.
    let mut c = Config::new(4);
    c.dropout.ramp_fraction = 1.0;
    close(c.dropout_probability(3).unwrap(), 0.225, 1e-15);
    assert!(c.dropout.ramp_epochs(0).is_err());
    c.dropout.ramp_fraction = 0.0;
    assert!(c.dropout.ramp_epochs(4).is_err());
}

#[test]
fn dropout_schedule() {
    // 10 epochs: ramp over 0.3·10 = 3 epochs; p = 0.6 - 0.5·min(e/3, 1).
    let c = Config::new(10);
    close(c.dropout_probability(0).unwrap(), 0.6, 1e-15);
    close(c.dropout_probability(1).unwrap(), 0.6 - 0.5 / 3.0, 1e-15); // 0.4333…
    close(c.dropout_probability(2).unwrap(), 0.6 - 1.0 / 3.0, 1e-15); // 0.2666…
    close(c.dropout_probability(3).unwrap(), 0.1, 1e-15);
    close(c.dropout_probability(9).unwrap(), 0.1, 1e-15);
    assert!(c.dropout_probability(10).is_err());
    // p = 0.6: u < 0.3 → first, 0.3 <= u < 0.6 → second, else none.
    assert_eq!(DropoutSchedule::decide(0.6, 0.0), Dropped::First);
    assert_eq!(DropoutSchedule::decide(0.6, 0.29), Dropped::First);
    assert_eq!(DropoutSchedule::decide(0.6, 0.3), Dropped::Second);
    assert_eq!(DropoutSchedule::decide(0.6, 0.59), Dropped::Second);
    assert_eq!(DropoutSchedule::decide(0.6, 0.6), Dropped::None);
    assert_eq!(DropoutSchedule::decide(0.6, f64::NAN), Dropped::None);
    assert_eq!(DropoutSchedule::decide(f64::NAN, 0.1), Dropped::None);
}

#[test]
fn config_validation_errors() {
    fn bad(f: impl FnOnce(&mut Config), field: &str) {
        let mut c = Config::new(10);
        f(&mut c);
        match c.validate() {
            Err(Error::Config { name, reason }) => {
                assert_eq!(name, field, "{reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{field}: expected Error::Config, got {other:?}"),
        }
        // And the controller refuses it too.
        assert!(Controller::new(c, 2).is_err());
    }
    bad(|c| c.window = 0, "window");
    bad(|c| c.epochs = 0, "epochs");
    bad(|c| c.r_threshold = -0.01, "r_threshold");
    bad(|c| c.ema_momentum = 1.0, "ema_momentum");
    bad(|c| c.ema_momentum = -0.1, "ema_momentum");
    bad(|c| c.ema_momentum = f64::NAN, "ema_momentum");
    bad(|c| c.gamma = f64::NAN, "gamma");
    bad(|c| c.beta_scale = f64::INFINITY, "beta_scale");
    bad(|c| c.eps = f64::NAN, "eps");
    bad(|c| c.eps = -1e-12, "eps");
    bad(|c| c.r_threshold = f64::NAN, "r_threshold");
    bad(|c| c.agree_start = f64::NAN, "agree_start");
    bad(|c| c.agree_rise = f64::NEG_INFINITY, "agree_rise");
    bad(|c| c.project.tol = 1.5, "project");
    bad(|c| c.dropout.p_start = 1.5, "dropout.p_start");
    bad(|c| c.dropout.ramp_fraction = 0.0, "dropout.ramp_fraction");
    bad(
        |c| c.dropout.ramp_fraction = f64::NAN,
        "dropout.ramp_fraction",
    );
    // Momentum 0 is allowed (EMA = the last value).
    let mut c = Config::new(10);
    c.ema_momentum = 0.0;
    c.validate().unwrap();
}

#[test]
fn bad_use_is_an_error_and_leaves_state_unchanged() {
    assert!(Controller::new(Config::new(3), 1).is_err());
    let mut c = Controller::new(Config::new(3), 2).unwrap();
    // observe before begin_epoch
    assert!(c.observe(&pair(0.1, 0.2, 1.0, 1.0, 0.5)).is_err());
    assert!(c.begin_epoch(3).is_err());
    c.begin_epoch(0).unwrap();
    c.observe(&pair(0.1, 0.2, 1.0, 1.0, 0.5)).unwrap();
    let before = c.state().clone();
    let bad_inputs = [
        pair(f64::NAN, 0.2, 1.0, 1.0, 0.5),
        pair(0.1, f64::INFINITY, 1.0, 1.0, 0.5),
        pair(0.1, 0.2, f64::NAN, 1.0, 0.5),
        pair(0.1, 0.2, -1.0, 1.0, 0.5),
        pair(0.1, 0.2, 1.0, 1.0, f64::NAN),
        StepInputs::pair(
            0.1,
            0.2,
            Redundancy::from_parts(1.0, -1.0),
            Redundancy::ratio(1.0),
            0.5,
        ),
        StepInputs::pair(
            0.1,
            0.2,
            Redundancy::from_parts(f64::NAN, 1.0),
            Redundancy::ratio(1.0),
            0.5,
        ),
        // wrong shapes
        StepInputs {
            scores: vec![0.1, 0.2, 0.3],
            redundancy: vec![Redundancy::ratio(1.0); 3],
            agreement: vec![0.5; 3],
        },
        StepInputs {
            scores: vec![0.1, 0.2],
            redundancy: vec![Redundancy::ratio(1.0); 2],
            agreement: vec![],
        },
    ];
    for x in &bad_inputs {
        assert!(c.observe(x).is_err(), "{x:?}");
        assert_eq!(c.state(), &before, "{x:?}");
    }
    // eps = 0 with a zero denominator: 1/0 = inf → Err, not a panic.
    let mut cfg = Config::new(3);
    cfg.eps = 0.0;
    let mut c = controller(cfg, 2, 0);
    let x = StepInputs::pair(
        0.1,
        0.2,
        Redundancy::from_parts(1.0, 0.0),
        Redundancy::ratio(1.0),
        0.5,
    );
    assert!(c.observe(&x).is_err());
}

// ---------------------------------------------------------------------------------------
// Monitor: growth rate and redundancy EMA

#[test]
fn warm_up_growth_is_one_for_up_to_w_scores() {
    // W = 10: len(h) = 1..=10 → s = 1.0 exactly, whatever the scores.
    let mut c = controller(Config::new(5), 2, 0);
    for i in 0..10 {
        let p = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05][i];
        let d = c.observe(&pair(p, 1.0 - p, 1.0, 1.0, 0.5)).unwrap();
        assert_eq!(d.step, i as u64);
        assert_eq!(d.modalities[0].growth, 1.0, "step {i}");
        assert_eq!(d.modalities[1].growth, 1.0, "step {i}");
    }
    // 11th score: h = [0.9, …, 0.05, 1.0]
    // mean(h[-11:-1]) = (0.9+0.1+0.5+0.3+0.7+0.2+0.8+0.4+0.6+0.05)/10 = 4.55/10 = 0.455
    // mean(h[-10:])   = (4.55 - 0.9 + 1.0)/10 = 0.465
    // s = 0.01 / 0.455 = 0.021978…
    let d = c.observe(&pair(1.0, 0.0, 1.0, 1.0, 0.5)).unwrap();
    close(d.modalities[0].growth, 0.01 / 0.455, 1e-12);
}

#[test]
fn growth_rate_rising_default_window() {
    // W = 10, scores 0.1, 0.2, …, 1.1 (11 values):
    // prev = mean(0.1..=1.0) = 0.55, cur = mean(0.2..=1.1) = 0.65, s = 0.1/0.55 = 2/11.
    let mut c = controller(Config::new(5), 2, 0);
    let mut last = None;
    for i in 1..=11 {
        let p = i as f64 / 10.0;
        last = Some(c.observe(&pair(p, 0.5, 1.0, 1.0, 0.5)).unwrap());
    }
    let d = last.unwrap();
    close(d.modalities[0].growth, 2.0 / 11.0, 1e-12);
    // The flat modality: cur = prev = 0.5 → s = 0.
    assert_eq!(d.modalities[1].growth, 0.0);
}

#[test]
fn growth_rates_rising_flat_falling_small_window() {
    let mut cfg = Config::new(5);
    cfg.window = 2;
    let mut c = Controller::new(cfg, 3).unwrap();
    c.begin_epoch(0).unwrap();
    // modality 0 rising 1, 2, 3, 4; modality 1 flat 0.5; modality 2 falling 4, 3, 2, 1.
    let rows = [
        [1.0, 0.5, 4.0],
        [2.0, 0.5, 3.0],
        [3.0, 0.5, 2.0],
        [4.0, 0.5, 1.0],
    ];
    let mut ds = Vec::new();
    for r in rows {
        ds.push(
            c.observe(&StepInputs {
                scores: r.to_vec(),
                redundancy: vec![Redundancy::ratio(2.0); 3],
                agreement: vec![0.9; 3],
            })
            .unwrap(),
        );
    }
    // len(h) = 1, 2 <= W = 2: s = 1.
    for d in &ds[..2] {
        assert!(d.modalities.iter().all(|m| m.growth == 1.0));
    }
    // Step 3: rising: cur = mean(2,3) = 2.5, prev = mean(1,2) = 1.5 → s = 1/1.5 = 2/3.
    //         flat: 0.  falling: cur = 2.5, prev = 3.5 → s = -1/3.5 = -2/7.
    close(ds[2].modalities[0].growth, 2.0 / 3.0, 1e-12);
    assert_eq!(ds[2].modalities[1].growth, 0.0);
    close(ds[2].modalities[2].growth, -2.0 / 7.0, 1e-12);
    // Step 4: rising: cur = 3.5, prev = 2.5 → 0.4; falling: cur = 1.5, prev = 2.5 → -0.4.
    close(ds[3].modalities[0].growth, 0.4, 1e-12);
    close(ds[3].modalities[2].growth, -0.4, 1e-12);

    // red = 2 every step, momentum 0.9, ema from 0:
    //   ema1 = 0.2, ema2 = 0.18 + 0.2 = 0.38, ema3 = 0.342 + 0.2 = 0.542
    //   red_norm1 = 2/0.2 = 10, red_norm2 = 2/0.38 = 100/19, red_norm3 = 2/0.542 = 1000/271
    for (d, want) in ds.iter().zip([10.0, 100.0 / 19.0, 1000.0 / 271.0]) {
        for m in &d.modalities {
            assert_eq!(m.red, 2.0);
            close(m.red_norm, want, 1e-10);
        }
    }
    close(ds[2].modalities[0].ema, 0.542, 1e-12);
    // r = red_norm - 0.6·max(s, 0):
    //   step 1 (warm-up, s = 1): 10 - 0.6 = 9.4
    //   step 3 rising: 1000/271 - 0.6·2/3 = 1000/271 - 0.4; flat: 1000/271; falling: 1000/271
    close(ds[0].modalities[0].r, 9.4, 1e-10);
    close(ds[2].modalities[0].r, 1000.0 / 271.0 - 0.4, 1e-10);
    close(ds[2].modalities[1].r, 1000.0 / 271.0, 1e-10);
    close(ds[2].modalities[2].r, 1000.0 / 271.0, 1e-10);
}

#[test]
fn ema_resets_at_epoch_start_red_norm_is_ten() {
    let mut c = controller(Config::new(3), 2, 0);
    // First step of epoch 0: ema = 0.1·2 = 0.2, red_norm = 2/(0.2 + 1e-12) ≈ 10.
    let d = c.observe(&pair(0.4, 0.6, 2.0, 2.0, 0.5)).unwrap();
    close(d.modalities[0].red_norm, 10.0, 1e-10);
    for _ in 0..15 {
        c.observe(&pair(0.4, 0.6, 2.0, 3.0, 0.5)).unwrap();
    }
    // Epoch 1: everything restarts: red_norm = 5/(0.1·5) = 10 again, s = 1.0 again.
    c.begin_epoch(1).unwrap();
    assert_eq!(c.state().step, 0);
    let d = c.observe(&pair(0.4, 0.6, 5.0, 0.7, 0.5)).unwrap();
    assert_eq!((d.epoch, d.step), (1, 0));
    close(d.modalities[0].red_norm, 10.0, 1e-10);
    close(d.modalities[1].red_norm, 10.0, 1e-10);
    close(d.modalities[0].ema, 0.5, 1e-15);
    assert_eq!(d.modalities[0].growth, 1.0);
    // Redundancy given as parts: 0.03 / (0.01 + 1e-12) ≈ 3 → red_norm ≈ 10 as well.
    c.begin_epoch(2).unwrap();
    let x = StepInputs::pair(
        0.4,
        0.6,
        Redundancy::from_parts(0.03, 0.01),
        Redundancy::ratio(1.0),
        0.5,
    );
    let d = c.observe(&x).unwrap();
    close(d.modalities[0].red, 3.0, 1e-9);
    close(d.modalities[0].red_norm, 10.0, 1e-9);
}

#[test]
fn bias_corrected_ema_is_opt_in() {
    let mut cfg = Config::new(3);
    cfg.bias_corrected_ema = true;
    let mut c = controller(cfg, 2, 0);
    // Step 1: ema = 0.2, corrected 0.2/(1 - 0.9) = 2 → red_norm = 2/2 = 1.
    let d = c.observe(&pair(0.4, 0.6, 2.0, 2.0, 0.5)).unwrap();
    close(d.modalities[0].red_norm, 1.0, 1e-10);
    // Step 2, red = 4: ema = 0.18 + 0.4 = 0.58, corrected 0.58/(1 - 0.81) = 0.58/0.19
    // → red_norm = 4·0.19/0.58 = 0.76/0.58 = 38/29.
    let d = c.observe(&pair(0.4, 0.6, 4.0, 4.0, 0.5)).unwrap();
    close(d.modalities[0].ema, 0.58, 1e-14);
    close(d.modalities[0].red_norm, 38.0 / 29.0, 1e-10);
    // The script's (default) value of the same step: 4/0.58 = 200/29.
    let mut c = controller(Config::new(3), 2, 0);
    c.observe(&pair(0.4, 0.6, 2.0, 2.0, 0.5)).unwrap();
    let d = c.observe(&pair(0.4, 0.6, 4.0, 4.0, 0.5)).unwrap();
    close(d.modalities[0].red_norm, 200.0 / 29.0, 1e-10);
}

// ---------------------------------------------------------------------------------------
// Decisions

#[test]
fn visual_dominates_gate_open() {
    // Epoch 0 of 3: thr = 0.2. First step: r = 10 - 0.6·1 = 9.4 > 0.15 for both.
    // p_a = 0.3 < p_v = 0.7 → v dominates, Δ = 0.4, β = exp(0.9·tanh(0.4))
    //   tanh(0.4) = 0.379949, 0.9·0.379949 = 0.341954, exp(0.341954) = 1.407696.
    // pos_sim = 0.4 > 0.2 → gate 1.
    let mut c = controller(Config::new(3), 2, 0);
    let d = c.observe(&pair(0.3, 0.7, 1.0, 1.0, 0.4)).unwrap();
    assert_eq!(d.threshold, 0.2);
    assert_eq!(d.leader, 1);
    close(d.delta, 0.4, 1e-15);
    assert_eq!(d.dominant, Some(1));
    assert_eq!(d.gate, 1.0);
    assert_eq!(d.suppressed, Some(1));
    close(d.beta, 1.407696, 1e-6);
    close(d.beta, script_beta(0.4), 1e-15);
    assert_eq!(d.beta_raw, d.beta);
    assert_eq!(d.beta_of(0), 0.0);
    assert_eq!(d.beta_of(1), d.beta);
    assert_eq!(d.pos_sim, 0.4);
    assert!(d.beta > 1.0 && d.beta < 0.9f64.exp());
    // Symmetric: audio dominates.
    let d = c.observe(&pair(0.8, 0.7, 1.0, 1.0, 0.4)).unwrap();
    assert_eq!(d.suppressed, Some(0));
    close(d.beta, script_beta(0.1), 1e-12); // exp(0.9·tanh(0.1)) = 1.093847
    close(d.beta, 1.093847, 1e-6);
}

#[test]
fn gate_closed_suppresses_nothing() {
    // pos_sim = thr exactly: not > thr → gate 0, β = β_raw·0 = 0.
    let mut c = controller(Config::new(3), 2, 0);
    let d = c.observe(&pair(0.3, 0.7, 1.0, 1.0, 0.2)).unwrap();
    assert_eq!(d.dominant, Some(1));
    assert_eq!(d.gate, 0.0);
    assert_eq!(d.suppressed, None);
    assert_eq!(d.beta, 0.0);
    close(d.beta_raw, script_beta(0.4), 1e-15);
    // Last epoch of 5: thr = 0.5; pos_sim 0.45 closed, 0.55 open. Epoch 2: thr = 0.35.
    let mut c = controller(Config::new(5), 2, 4);
    assert_eq!(
        c.observe(&pair(0.3, 0.7, 1.0, 1.0, 0.45)).unwrap().gate,
        0.0
    );
    assert_eq!(
        c.observe(&pair(0.3, 0.7, 1.0, 1.0, 0.55)).unwrap().gate,
        1.0
    );
    c.begin_epoch(2).unwrap();
    let d = c.observe(&pair(0.3, 0.7, 1.0, 1.0, 0.4)).unwrap();
    close(d.threshold, 0.35, 1e-15);
    assert_eq!(d.suppressed, Some(1));
}

#[test]
fn tied_scores_suppress_nothing() {
    let mut c = controller(Config::new(3), 2, 0);
    let d = c.observe(&pair(0.5, 0.5, 1.0, 1.0, 0.9)).unwrap();
    assert_eq!(d.leader, 0);
    assert_eq!(d.delta, 0.0);
    assert_eq!(d.dominant, None);
    assert_eq!(d.suppressed, None);
    assert_eq!((d.beta, d.beta_raw), (0.0, 0.0));
    assert_eq!(d.gate, 1.0); // the gate is still reported: 0.9 > 0.2
}

#[test]
fn low_redundancy_suppresses_nothing() {
    // W = 2; visual scores 0.1, 0.1, 0.9 (audio flat 0.05, so v leads):
    //   step 3: s_v = (mean(0.1, 0.9) - mean(0.1, 0.1)) / 0.1 = 0.4/0.1 = 4
    // red_v = 1, 1, 0.1: ema = 0.1, 0.19, 0.171 + 0.01 = 0.181 → red_norm = 0.1/0.181
    // r_v = 0.1/0.181 - 0.6·4 = 0.552486 - 2.4 = -1.847514 < 0.15 → no dominant.
    let mut cfg = Config::new(3);
    cfg.window = 2;
    let mut c = controller(cfg, 2, 0);
    c.observe(&pair(0.05, 0.1, 1.0, 1.0, 0.9)).unwrap();
    c.observe(&pair(0.05, 0.1, 1.0, 1.0, 0.9)).unwrap();
    let d = c.observe(&pair(0.05, 0.9, 1.0, 0.1, 0.9)).unwrap();
    close(d.modalities[1].growth, 4.0, 1e-10);
    close(d.modalities[1].red_norm, 0.1 / 0.181, 1e-10);
    close(d.modalities[1].r, 0.1 / 0.181 - 2.4, 1e-10);
    assert_eq!(d.leader, 1);
    assert_eq!(d.dominant, None);
    assert_eq!(d.suppressed, None);
    assert_eq!(d.beta, 0.0);
    // Without the growth penalty (gamma = 0) and with R = 0, r_v = 0.5525 > 0 passes;
    // Δ = 0.9 - 0.05 = 0.85.
    let mut cfg = Config::new(3);
    cfg.window = 2;
    cfg.r_threshold = 0.0;
    cfg.gamma = 0.0; // r_v = red_norm = 0.5525 > 0
    let mut c = controller(cfg, 2, 0);
    c.observe(&pair(0.05, 0.1, 1.0, 1.0, 0.9)).unwrap();
    c.observe(&pair(0.05, 0.1, 1.0, 1.0, 0.9)).unwrap();
    let d = c.observe(&pair(0.05, 0.9, 1.0, 0.1, 0.9)).unwrap();
    assert_eq!(d.suppressed, Some(1));
    close(d.beta, script_beta(0.85), 1e-12);
}

#[test]
fn three_modalities() {
    // Scores [0.2, 0.6, 0.5]: leader 1, Δ = 0.6 - 0.5 = 0.1 (against the strongest
    // other), β = exp(0.9·tanh(0.1)) = 1.093847.
    // Pairs (0,1) = 0.5, (0,2) = 0.1, (1,2) = 0.3: the leader's agreements are 0.5 (with
    // 0) and 0.3 (with 2): min 0.3, mean 0.4, max 0.5.
    // Epoch 1 of 3: thr = 0.2 + 0.3·1/2 = 0.35 → min closed, mean and max open.
    let x = StepInputs {
        scores: vec![0.2, 0.6, 0.5],
        redundancy: vec![Redundancy::ratio(1.0); 3],
        agreement: vec![0.5, 0.1, 0.3],
    };
    assert_eq!(x.agreement_of(1, 2), Some(0.3));
    assert_eq!(x.agreement_of(2, 0), Some(0.1));
    assert_eq!(x.agreement_of(1, 1), None);
    for (rule, pos, gate) in [
        (GateRule::Min, 0.3, 0.0),
        (GateRule::Mean, 0.4, 1.0),
        (GateRule::Max, 0.5, 1.0),
    ] {
        let mut cfg = Config::new(3);
        cfg.gate_rule = rule;
        let mut c = controller(cfg, 3, 1);
        let d = c.observe(&x).unwrap();
        close(d.threshold, 0.35, 1e-15);
        assert_eq!(d.leader, 1);
        close(d.delta, 0.1, 1e-15);
        assert_eq!(d.dominant, Some(1), "{rule:?}");
        close(d.beta_raw, 1.093847, 1e-6);
        close(d.pos_sim, pos, 1e-15);
        assert_eq!(d.gate, gate, "{rule:?}");
        assert_eq!(d.suppressed, (gate == 1.0).then_some(1), "{rule:?}");
        assert_eq!(d.beta, if gate == 1.0 { d.beta_raw } else { 0.0 });
    }
    // Tie at the top → none, even though a third modality is far behind.
    let mut c = controller(Config::new(3), 3, 0);
    let d = c
        .observe(&StepInputs {
            scores: vec![0.6, 0.1, 0.6],
            redundancy: vec![Redundancy::ratio(1.0); 3],
            agreement: vec![0.9; 3],
        })
        .unwrap();
    assert_eq!((d.leader, d.delta, d.dominant), (0, 0.0, None));
    assert_eq!(d.suppressed, None);
}

// ---------------------------------------------------------------------------------------
// Resume

fn inputs_at(i: usize) -> StepInputs {
    // Arbitrary full-precision values (17 significant digits), so that a lossy decimal
    // round trip would show.
    let t = i as f64;
    StepInputs::pair(
        0.3 + 0.1 * (t * 0.7).sin(),
        0.5 + 0.2 * (t * 0.3).cos() + 0.01 * t,
        Redundancy::ratio(1.0 + 0.3 * (t * 1.3).sin()),
        Redundancy::from_parts(0.02 + 0.001 * t, 0.01 + 0.0003 * (t * 0.9).cos()),
        0.25 + 0.2 * (t * 0.5).sin(),
    )
}

#[test]
fn resume_mid_epoch_gives_identical_decisions() {
    let mut cfg = Config::new(3);
    cfg.window = 4;
    let steps_per_epoch = 9;
    let run = |split: Option<(usize, usize)>| -> Vec<Decision> {
        let mut c = Controller::new(cfg.clone(), 2).unwrap();
        let mut out = Vec::new();
        for e in 0..3 {
            c.begin_epoch(e).unwrap();
            for s in 0..steps_per_epoch {
                if split == Some((e, s)) {
                    let json = serde_json::to_string(c.state()).unwrap();
                    let cfg_json = serde_json::to_string(c.config()).unwrap();
                    drop(c);
                    let state: ControllerState = serde_json::from_str(&json).unwrap();
                    let config: Config = serde_json::from_str(&cfg_json).unwrap();
                    c = Controller::resume(config, state).unwrap();
                }
                out.push(c.observe(&inputs_at(e * steps_per_epoch + s)).unwrap());
            }
        }
        out
    };
    let straight = run(None);
    assert!(straight.iter().any(|d| d.suppressed == Some(1)));
    assert!(straight.iter().any(|d| d.suppressed.is_none()));
    // Split in warm-up, right after the window fills, and late in an epoch.
    for split in [(0, 2), (1, 5), (2, 8)] {
        let resumed = run(Some(split));
        assert_eq!(straight, resumed, "split at {split:?}");
    }
    // Decisions serialise too (for logs).
    let j = serde_json::to_string(&straight[5]).unwrap();
    let back: Decision = serde_json::from_str(&j).unwrap();
    assert_eq!(back.suppressed, straight[5].suppressed);
}

#[test]
fn resume_rejects_mismatched_state() {
    let mut c = controller(Config::new(3), 2, 1);
    for i in 0..5 {
        c.observe(&inputs_at(i)).unwrap();
    }
    let state = c.state().clone();
    let mut other = Config::new(3);
    other.window = 5;
    assert!(Controller::resume(other, state.clone()).is_err());
    // An epoch past the config's epochs.
    assert!(Controller::resume(Config::new(1), state.clone()).is_err());
    // A tampered history (more scores than W + 1) fails to deserialise.
    let json = serde_json::to_string(&state).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["monitors"][0]["history"]["count"] = serde_json::json!(1);
    assert!(serde_json::from_value::<ControllerState>(v).is_err());
    // An absurd window is an Err, not a panic or a huge allocation.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["monitors"][0]["history"] = serde_json::json!({"window": u64::MAX, "count": 0, "last": []});
    assert!(serde_json::from_value::<ControllerState>(v).is_err());
    // The untouched state resumes.
    let back: ControllerState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    Controller::resume(Config::new(3), back).unwrap();
}

// ---------------------------------------------------------------------------------------
// End-to-end step

/// The script's per-tensor closed form in f64: `grad + beta·(d - (d·g/(g·g + 1e-12)) g)`,
/// `d = theta - theta0`, `g` = the gradient before the update.
fn closed_form(
    segs: &Segments,
    theta: &[f32],
    theta0: &[f32],
    grad: &[f32],
    beta: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; grad.len()];
    for r in segs.iter() {
        let d: Vec<f64> = r
            .clone()
            .map(|e| theta[e] as f64 - theta0[e] as f64)
            .collect();
        let g: Vec<f64> = r.clone().map(|e| grad[e] as f64).collect();
        let dg: f64 = d.iter().zip(&g).map(|(a, b)| a * b).sum();
        let gg: f64 = g.iter().map(|a| a * a).sum();
        let c = dg / (gg + 1e-12);
        for (i, e) in r.enumerate() {
            out[e] = g[i] + beta * (d[i] - c * g[i]);
        }
    }
    out
}

struct Model {
    segs: Segments,
    theta: [Vec<f32>; 2],
    theta0: [Vec<f32>; 2],
    grad: [Vec<f32>; 2],
}

fn model() -> Model {
    // Three tensors: lengths 3, 2 (zero gradient: d_perp = d) and 4. Values are binary
    // fractions so that d = theta - theta0 is exact in f32.
    let segs = Segments::from_lengths(&[3, 2, 4]).unwrap();
    let start_v = vec![0.5f32, -1.25, 2.0, 0.75, 0.125, 1.5, -0.5, 0.25, 3.0];
    let theta_v = vec![0.75f32, -1.0, 1.5, 1.0, 0.0, 1.25, -0.25, 0.5, 2.5];
    let grad_v = vec![0.5f32, 0.25, -1.0, 0.0, 0.0, 1.0, 2.0, -0.5, 0.125];
    let start_a = vec![1.0f32; 9];
    let theta_a = vec![1.5f32; 9];
    let grad_a = vec![0.25f32; 9];
    let mut theta0 = [vec![0.0f32; 9], vec![0.0f32; 9]];
    Reference.copy(&start_a, &mut theta0[0]).unwrap();
    Reference.copy(&start_v, &mut theta0[1]).unwrap();
    Model {
        segs,
        theta: [theta_a, theta_v],
        theta0,
        grad: [grad_a, grad_v],
    }
}

/// The kind of an encoder's [`JointBasis`] (the extras are the encoder's own).
#[derive(Clone, Copy)]
enum Kind {
    Gradient,
    GradientAnd,
    Explicit,
}
const GRADIENT: [Kind; 2] = [Kind::Gradient; 2];

/// Two encoders' buffers in a backend's memory: θ, θ₀, the gradient, extra basis vectors.
/// Each buffer is viewed whole (`len`: its length), so that a wrong length reaches the step.
struct Bufs<B: TestBackend, T: Element> {
    theta: Vec<(B::Buf<T>, usize)>,
    theta0: Vec<(B::Buf<T>, usize)>,
    grad: Vec<(B::Buf<T>, usize)>,
    extra: Vec<Vec<(B::Buf<T>, usize)>>,
}

impl<B: TestBackend, T: Element> Bufs<B, T> {
    fn new(
        b: &B,
        theta: &[Vec<T>],
        theta0: &[Vec<T>],
        grad: &[Vec<T>],
        extra: &[Vec<Vec<T>>],
    ) -> Self {
        let up = |x: &[Vec<T>]| x.iter().map(|v| (b.upload(v), v.len())).collect::<Vec<_>>();
        Bufs {
            theta: up(theta),
            theta0: up(theta0),
            grad: up(grad),
            extra: extra.iter().map(|e| up(e)).collect(),
        }
    }

    /// One controller step over the encoders, encoder m's basis of kind `basis[m]` over
    /// its extras.
    fn step(
        &mut self,
        b: &B,
        c: &mut Controller,
        segs: &[&Segments],
        inputs: &StepInputs,
        basis: [Kind; 2],
    ) -> redreg::Result<(Decision, Option<Vec<u32>>)> {
        // The bases borrow these views for as long as the views borrow the buffers. `Src` of
        // a generic backend is an associated type the drop checker cannot see into, so the
        // Vec is never dropped (ManuallyDrop): a few bytes leaked per call, in a test.
        let extras: std::mem::ManuallyDrop<Vec<Vec<_>>> = std::mem::ManuallyDrop::new(
            (self.extra.iter())
                .map(|e| e.iter().map(|(x, n)| B::view(x, 0..*n)).collect())
                .collect(),
        );
        let mut enc: Vec<EncoderOf<'_, B, T>> = (self.grad.iter_mut().enumerate())
            .map(|(m, (g, n))| {
                let (theta, theta0) = (&self.theta[m], &self.theta0[m]);
                Encoder {
                    segs: segs[m],
                    theta: B::view(&theta.0, 0..theta.1),
                    theta0: B::view(&theta0.0, 0..theta0.1),
                    grad: B::view_mut(g, 0..*n),
                    basis: match basis[m] {
                        Kind::Gradient => JointBasis::Gradient,
                        Kind::GradientAnd => JointBasis::GradientAnd(&extras[m]),
                        Kind::Explicit => JointBasis::Explicit(&extras[m]),
                    },
                }
            })
            .collect();
        let (d, r) = c.step(inputs, b, &mut enc)?;
        Ok((d, r.map(|r| B::host_ranks(&r))))
    }

    fn grads(&self, b: &B) -> Vec<Vec<T>> {
        self.grad.iter().map(|g| b.download(&g.0)).collect()
    }
}

backend_tests!(
    end_to_end_step_matches_closed_form,
    rank_k_basis,
    step_checks_buffers_before_touching_anything,
    step_matches_oracle_f32,
    step_matches_oracle_bf16,
);

fn end_to_end_step_matches_closed_form<B: TestBackend>(b: &B) {
    let m = model();
    let want = closed_form(
        &m.segs,
        &m.theta[1],
        &m.theta0[1],
        &m.grad[1],
        script_beta(0.4),
    );
    let mut c = controller(Config::new(3), 2, 0);
    let mut bufs = Bufs::<B, f32>::new(b, &m.theta, &m.theta0, &m.grad, &[vec![], vec![]]);
    let segs = [&m.segs, &m.segs];
    // v dominates with β = exp(0.9·tanh(0.4)) (see visual_dominates_gate_open).
    let x = pair(0.3, 0.7, 1.0, 1.0, 0.4);
    let (d, ranks) = bufs.step(b, &mut c, &segs, &x, GRADIENT).unwrap();
    assert_eq!(d.suppressed, Some(1));
    close(d.beta, script_beta(0.4), 1e-15);
    assert_eq!(ranks, Some(vec![1, 0, 1]));
    let got = bufs.grads(b);
    for (e, (&g, &w)) in got[1].iter().zip(&want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "element {e}: got {g}, want {w}"
        );
    }
    // The zero-gradient tensor gets grad + β·d exactly as the script's `d_perp = d`:
    // d = (1.0 - 0.75, 0.0 - 0.125) = (0.25, -0.125).
    close(got[1][3] as f64, script_beta(0.4) * 0.25, 1e-6);
    close(got[1][4] as f64, script_beta(0.4) * -0.125, 1e-6);
    // The other encoder is untouched, bit for bit.
    assert_eq!(got[0], m.grad[0]);

    // Gate closed: nothing changes anywhere.
    let x = pair(0.3, 0.7, 1.0, 1.0, 0.1);
    let (d, ranks) = bufs.step(b, &mut c, &segs, &x, GRADIENT).unwrap();
    assert_eq!((d.suppressed, ranks), (None, None));
    assert_eq!(bufs.grads(b), got);
}

fn rank_k_basis<B: TestBackend>(b: &B) {
    // One tensor of 4: g = (1, 0, 0, 0), extra = (0, 2, 0, 0), d = (1, 1, 1, 1).
    // span{g, extra} = first two axes; with ridge 1e-12 on the diagonal of the (diagonal)
    // Gram matrix: coefficients 1/(1 + 1e-12) and 2/(4 + 1e-12) → d_perp ≈ (0, 0, 1, 1).
    // grad + β·d_perp with β = exp(0.9·tanh(0.4)).
    let segs = Segments::from_lengths(&[4]).unwrap();
    let theta = [vec![0.0f32; 4], vec![2.0f32; 4]];
    let theta0 = [vec![0.0f32; 4], vec![1.0f32; 4]];
    let grad = [vec![0.0f32; 4], vec![1.0f32, 0.0, 0.0, 0.0]];
    let extra = vec![0.0f32, 2.0, 0.0, 0.0];
    let beta = script_beta(0.4);
    for explicit in [false, true] {
        // Explicit: the basis is a copy of the gradient and the extra.
        let extras = if explicit {
            [vec![], vec![grad[1].clone(), extra.clone()]]
        } else {
            [vec![], vec![extra.clone()]]
        };
        let mut bufs = Bufs::<B, f32>::new(b, &theta, &theta0, &grad, &extras);
        let mut c = controller(Config::new(3), 2, 0);
        let segs = [&segs, &segs];
        let kind = if explicit {
            Kind::Explicit
        } else {
            Kind::GradientAnd
        };
        let basis = [Kind::Gradient, kind];
        let x = pair(0.3, 0.7, 1.0, 1.0, 0.4);
        let (_, ranks) = bufs.step(b, &mut c, &segs, &x, basis).unwrap();
        assert_eq!(ranks, Some(vec![2]), "explicit: {explicit}");
        let got = bufs.grads(b);
        for (g, w) in got[1].iter().zip([1.0, 0.0, beta, beta]) {
            close(*g as f64, w, 1e-6);
        }
        assert_eq!(got[0], vec![0.0; 4]);
    }
}

fn step_checks_buffers_before_touching_anything<B: TestBackend>(b: &B) {
    let m = model();
    let mut c = controller(Config::new(3), 2, 0);
    let before = c.state().clone();
    // Encoder 1's θ₀ one element short.
    let mut theta0 = m.theta0.clone();
    theta0[1].pop();
    let mut bufs = Bufs::<B, f32>::new(b, &m.theta, &theta0, &m.grad, &[vec![], vec![]]);
    let segs = [&m.segs, &m.segs];
    let x = pair(0.3, 0.7, 1.0, 1.0, 0.4);
    let e = bufs.step(b, &mut c, &segs, &x, GRADIENT).unwrap_err();
    assert!(
        e.to_string().contains("expected 9") && e.to_string().contains("got 8"),
        "{e}"
    );
    assert_eq!(c.state(), &before);
    assert_eq!(bufs.grads(b), m.grad, "an Err wrote");
    // One encoder for two modalities.
    let mut one = Bufs::<B, f32>::new(b, &m.theta[..1], &m.theta0[..1], &m.grad[..1], &[vec![]]);
    let mut enc: Vec<EncoderOf<'_, B, f32>> = vec![Encoder {
        segs: &m.segs,
        theta: B::view(&one.theta[0].0, 0..9),
        theta0: B::view(&one.theta0[0].0, 0..9),
        grad: B::view_mut(&mut one.grad[0].0, 0..9),
        basis: JointBasis::Gradient,
    }];
    assert!(c.step(&x, b, &mut enc).is_err());
    assert_eq!(c.state(), &before);
    // A hand-made decision naming a modality that does not exist: Err, not a panic.
    let mut d = c.observe(&x).unwrap();
    d.suppressed = Some(7);
    d.modalities.truncate(1);
    assert!(step(b, &d, &mut enc, &ProjectOptions::default()).is_err());
}

/// The step on the backend against the same generic step on the f64 oracle, on the
/// ResNet-18 audio-visual pair (in quick mode its first 30 tensors each): same decision,
/// same ranks, the same gradient update within `rtol` (both form the drift in f64 and round
/// once; they differ by the summation order, and on CUDA FMA, of the coefficients), the
/// other encoder untouched. `explicit`: the basis is exactly the extras, else the gradient
/// and the extras.
fn step_matches_oracle<B: TestBackend, T: Element>(
    b: &B,
    k_extra: usize,
    explicit: bool,
    rtol: f64,
) {
    let (audio, visual) = redreg::testing::layouts::resnet18_av_pair();
    let take = if B::quick() { 30 } else { usize::MAX };
    let segs = [audio, visual].map(|l| Segments::from_shapes(&l[..take.min(l.len())]).unwrap());
    let mk = |n: usize, seed: u64, sc: f64| -> Vec<T> { elements(n, seed, sc) };
    let (mut theta, mut theta0, mut grad, mut extra) = (vec![], vec![], vec![], vec![]);
    for (m, s) in segs.iter().enumerate() {
        let n = s.total();
        theta.push(mk(n, 10 + m as u64, 1.0));
        theta0.push(mk(n, 20 + m as u64, 1.0));
        grad.push(mk(n, 30 + m as u64, 1e-2));
        extra.push(
            (0..k_extra)
                .map(|j| mk(n, 40 + j as u64, 1e-2))
                .collect::<Vec<_>>(),
        );
    }
    // Visual dominates (0.3 < 0.7, r_v = 10 > R at the epoch's first step), gate open.
    let x = StepInputs::pair(
        0.3,
        0.7,
        Redundancy::ratio(0.5),
        Redundancy::ratio(0.5),
        0.9,
    );
    let mut ctl_oracle = controller(Config::new(3), 2, 0);
    let mut ctl = ctl_oracle.clone();
    let segs = [&segs[0], &segs[1]];
    let jb = [if explicit {
        Kind::Explicit
    } else {
        Kind::GradientAnd
    }; 2];
    let mut want = Bufs::<Reference, T>::new(&Reference, &theta, &theta0, &grad, &extra);
    let (dw, ranks_want) = want
        .step(&Reference, &mut ctl_oracle, &segs, &x, jb)
        .unwrap();
    assert_eq!(dw.suppressed, Some(1));
    let mut got = Bufs::<B, T>::new(b, &theta, &theta0, &grad, &extra);
    let (dg, ranks_got) = got.step(b, &mut ctl, &segs, &x, jb).unwrap();
    assert_eq!(
        ranks_got.expect("a projection ran"),
        ranks_want.expect("the oracle projected")
    );
    assert_eq!(dg.suppressed, dw.suppressed);
    assert_eq!(dg.beta.to_bits(), dw.beta.to_bits());
    let (got, want) = (got.grads(b), want.grads(&Reference));
    for m in 0..2 {
        let what = format!("encoder {m}");
        assert_close(
            &what,
            &common::to_f64(&got[m]),
            &common::to_f64(&want[m]),
            1e-7,
            rtol,
        );
    }
    assert!(got[0] == grad[0], "the audio encoder must be untouched");
}

fn step_matches_oracle_f32<B: TestBackend>(b: &B) {
    let r = 2.0 * f32::EPSILON as f64;
    step_matches_oracle::<B, f32>(b, 0, false, r);
    step_matches_oracle::<B, f32>(b, 2, false, r);
    step_matches_oracle::<B, f32>(b, 2, true, r);
}

fn step_matches_oracle_bf16<B: TestBackend>(b: &B) {
    // At most one bf16 rounding apart.
    step_matches_oracle::<B, bf16>(b, 1, false, 7.8125e-3);
}

/// Several chunks per tensor of the end-to-end model (chunks of 2 elements).
#[test]
fn end_to_end_step_small_cpu_chunks() {
    let be = redreg::CpuBackend::with_threads(2)
        .unwrap()
        .with_chunk(2)
        .unwrap();
    end_to_end_step_matches_closed_form(&be);
    end_to_end_step_matches_closed_form(&redreg::CpuBackend::new());
}

#[test]
fn snapshot_copies_in_place_and_checks_lengths() {
    let mut theta0 = vec![0.0f32; 3];
    let ptr = theta0.as_ptr();
    Reference.copy(&[1.0f32, 2.0, 3.0], &mut theta0).unwrap();
    redreg::CpuBackend::new()
        .copy(&[4.0f32, 5.0, 6.0], &mut theta0)
        .unwrap();
    assert_eq!(theta0, vec![4.0, 5.0, 6.0]);
    assert_eq!(theta0.as_ptr(), ptr);
    assert!(Reference.copy(&[1.0f32, 2.0], &mut theta0).is_err());
    assert_eq!(theta0, vec![4.0, 5.0, 6.0]);
}

// ---------------------------------------------------------------------------------------
// Properties

/// The script's growth rate from the full history, with Python's slicing.
fn naive_growth(h: &[f64], w: usize, eps: f64) -> f64 {
    if h.len() <= w {
        return 1.0;
    }
    let n = h.len();
    let cur = h[n - w..].iter().sum::<f64>() / w as f64;
    let prev = h[n - w - 1..n - 1].iter().sum::<f64>() / w as f64;
    (cur - prev) / (prev.abs() + eps)
}

proptest::proptest! {
    #[test]
    fn ring_buffer_growth_equals_full_history(
        w in 1usize..6,
        scores in proptest::collection::vec(0.0f64..1.0, 0..40),
    ) {
        let mut cfg = Config::new(1);
        cfg.window = w;
        let mut c = controller(cfg, 2, 0);
        let mut h = Vec::new();
        for &p in &scores {
            h.push(p);
            let d = c.observe(&pair(p, 0.5, 1.0, 1.0, 0.5)).unwrap();
            // Same summation order → bit for bit.
            proptest::prop_assert_eq!(d.modalities[0].growth, naive_growth(&h, w, 1e-12));
        }
    }

    #[test]
    fn any_finite_inputs_decide_without_panicking(
        xs in proptest::collection::vec(
            (proptest::num::f64::ANY, proptest::num::f64::ANY, proptest::num::f64::ANY,
             proptest::num::f64::ANY, proptest::num::f64::ANY),
            1..20,
        ),
    ) {
        let mut cfg = Config::new(2);
        cfg.window = 2;
        let mut c = controller(cfg, 2, 1);
        for (a, v, ra, rv, pos) in xs {
            let ok = [a, v, ra, rv, pos].iter().all(|x| x.is_finite()) && ra >= 0.0 && rv >= 0.0;
            match c.observe(&pair(a, v, ra, rv, pos)) {
                Ok(d) => {
                    proptest::prop_assert!(ok);
                    proptest::prop_assert!(d.beta.is_finite() && d.beta >= 0.0);
                    proptest::prop_assert!(d.gate == 0.0 || d.gate == 1.0);
                    proptest::prop_assert_eq!(d.suppressed.is_some(), d.beta > 0.0);
                }
                Err(_) => proptest::prop_assert!(!ok),
            }
        }
    }
}

/// CUDA's own checks: device contexts and aliasing.
#[cfg(feature = "cuda")]
mod cuda_only {
    use super::common::gpu;
    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
    use redreg::controller::{
        Config, Controller, DeviceEncoder, JointBasis, Redundancy, StepInputs,
    };
    use redreg::cuda::CudaBackend;
    use redreg::{Element, Segments};

    fn up<T: Element>(b: &CudaBackend, x: &[T]) -> CudaSlice<T> {
        b.stream().clone_htod(x).unwrap()
    }

    fn down<T: Element>(b: &CudaBackend, x: &CudaSlice<T>) -> Vec<T> {
        b.stream().clone_dtoh(x).unwrap()
    }

    /// An encoder of these views with the rank-1 basis (its own gradient).
    fn enc<'a>(
        segs: &'a Segments,
        theta: CudaView<'a, f32>,
        theta0: CudaView<'a, f32>,
        grad: CudaViewMut<'a, f32>,
    ) -> DeviceEncoder<'a, f32> {
        let basis = JointBasis::Gradient;
        DeviceEncoder {
            segs,
            theta,
            theta0,
            grad,
            basis,
        }
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
                enc(&segs, t_alias.view(), theta0.slice(..), g_alias.view_mut()),
                enc(&segs, theta.slice(..), theta0.slice(..), g1.slice_mut(..)),
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
                enc(
                    &segs,
                    theta.slice(..),
                    theta0_other.slice(..),
                    g0.slice_mut(..),
                ),
                enc(&segs, theta.slice(..), theta0.slice(..), g1.slice_mut(..)),
            ];
            ctl.step(&inputs, b, &mut encs).unwrap_err()
        };
        check_unchanged(&ctl, &before, e, "context");
        assert_eq!(down(b, &g0), vec![0.25f32; 8]);
        assert_eq!(down(b, &g1), vec![0.5f32; 8]);
        // The same step with valid buffers runs and changes the state.
        let mut encs = [
            enc(&segs, theta.slice(..), theta0.slice(..), g0.slice_mut(..)),
            enc(&segs, theta.slice(..), theta0.slice(..), g1.slice_mut(..)),
        ];
        let (d, _) = ctl.step(&inputs, b, &mut encs).unwrap();
        assert_eq!(d.suppressed, Some(1));
        assert_ne!(format!("{:?}", ctl.state()), before);
        drop(mem);
    }
}
