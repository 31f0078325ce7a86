//! The statistics plan feeding the controller: `RedRegStats` declares RedReg's per-step
//! statistics once; one run of the plan gives the controller's inputs. Expected values are
//! computed by hand below.

use redreg::controller::{Config, Controller, ModalityBufs, ModalityShapes, RedRegStats};
use redreg::stats::{CpuStats, StatHandle, Stats, StatsPlan};
use redreg::DType;

#[test]
fn plan_results_drive_the_decision() {
    let sh = ModalityShapes {
        dtype: DType::F32,
        batch: 2,
        classes: 2,
        features: 4,
        inputs: 2,
        pooled: 2,
    };
    let mut plan = StatsPlan::new();
    let h = RedRegStats::declare(&mut plan, &[sh, sh]).unwrap();
    let mut exec = CpuStats::new(&plan).unwrap();

    // Audio: logits equal -> p_a = 0.5. Visual: logit gap ln(3) for the true class ->
    // softmax = 3/4 for both rows -> p_v = 0.75.
    let la = [0f32, 0.0, 0.0, 0.0];
    let g = 3f32.ln();
    let lv = [g, 0.0, 0.0, g];
    let labels = [0i64, 1];
    // Redundancy numerators: mean((z1 - z2)^2) = (1 + 0 + 0 + 1)/4 = 0.5 (audio),
    // (4 + 0 + 0 + 0)/4 = 1 (visual); denominators mean((x1-x2)^2) = (0.25 + 0.25)/2 = 0.25.
    let (za1, za2) = ([1f32, 0.0, 0.0, 1.0], [0f32; 4]);
    let (zv1, zv2) = ([2f32, 0.0, 0.0, 0.0], [0f32; 4]);
    let (x1, x2) = ([0.5f32, 0.5], [0f32, 1.0]);
    // Pooled features: row 0 identical (cos 1), row 1 orthogonal (cos 0) -> pos_sim 0.5.
    let (fa, fv) = ([1f32, 0.0, 0.0, 1.0], [1f32, 0.0, 1.0, 0.0]);

    let r = exec
        .run(&mut [
            h.score[0].bind((&la[..], &labels)),
            h.score[1].bind((&lv[..], &labels)),
            h.feature_diff[0].bind((&za1[..], &za2[..])),
            h.feature_diff[1].bind((&zv1[..], &zv2[..])),
            h.input_diff[0].bind((&x1[..], &x2[..])),
            h.input_diff[1].bind((&x1[..], &x2[..])),
            h.agreement[0].bind((&fa[..], &fv[..])),
        ])
        .unwrap();
    let inputs = h.inputs(r).unwrap();
    // The same step through the generic binding (`RedRegStats::run`, any memory).
    let mods = [
        ModalityBufs {
            logits: (&la).into(),
            z1: (&za1).into(),
            z2: (&za2).into(),
            x1: (&x1).into(),
            x2: (&x2).into(),
            pooled: (&fa).into(),
        },
        ModalityBufs {
            logits: (&lv).into(),
            z1: (&zv1).into(),
            z2: (&zv2).into(),
            x1: (&x1).into(),
            x2: (&x2).into(),
            pooled: (&fv).into(),
        },
    ];
    assert_eq!(h.run(&mut exec, &&labels[..], &mods).unwrap(), inputs);
    assert!(h.run(&mut exec, &&labels[..], &mods[..1]).is_err());
    assert!((inputs.scores[0] - 0.5).abs() < 1e-7);
    assert!((inputs.scores[1] - 0.75).abs() < 1e-7);
    assert!((inputs.redundancy[0].value(1e-12).unwrap() - 0.5 / (0.25 + 1e-12)).abs() < 1e-12);
    assert!((inputs.redundancy[1].value(1e-12).unwrap() - 1.0 / (0.25 + 1e-12)).abs() < 1e-12);
    assert_eq!(inputs.agreement, vec![0.5]);

    // The last, smaller batch (1 of the 2 declared samples): the means over that sample.
    let (la1, lv1, fa1, fv1) = (&la[..2], &lv[..2], &fa[..2], &fv[..2]);
    let one = [
        ModalityBufs {
            logits: la1.into(),
            z1: (&za1[..2]).into(),
            z2: (&za2[..2]).into(),
            x1: (&x1[..1]).into(),
            x2: (&x2[..1]).into(),
            pooled: fa1.into(),
        },
        ModalityBufs {
            logits: lv1.into(),
            z1: (&zv1[..2]).into(),
            z2: (&zv2[..2]).into(),
            x1: (&x1[..1]).into(),
            x2: (&x2[..1]).into(),
            pooled: fv1.into(),
        },
    ];
    let s1 = h.run(&mut exec, &&labels[..1], &one).unwrap();
    assert!((s1.scores[0] - 0.5).abs() < 1e-7 && (s1.scores[1] - 0.75).abs() < 1e-7);
    // (1 + 0)/2 over (0.5 - 0)^2; (4 + 0)/2 over the same.
    assert!((s1.redundancy[0].value(1e-12).unwrap() - 0.5 / (0.25 + 1e-12)).abs() < 1e-12);
    assert!((s1.redundancy[1].value(1e-12).unwrap() - 2.0 / (0.25 + 1e-12)).abs() < 1e-12);
    assert_eq!(s1.agreement, vec![1.0]);

    // First step of epoch 0: red_norm = 10 (EMA quirk) > R, p_a < p_v -> visual
    // suppressed with beta = exp(0.9 tanh(0.25)); gate: 0.5 > 0.2.
    let mut ctl = Controller::new(Config::new(5), 2).unwrap();
    ctl.begin_epoch(0).unwrap();
    let d = ctl.observe(&inputs).unwrap();
    assert_eq!(d.suppressed, Some(1));
    let want = (0.9 * (0.75f64 - 0.5).tanh()).exp();
    assert!((d.beta - want).abs() < 1e-6, "beta {} vs {}", d.beta, want);
}

#[test]
fn declare_rejects_bad_shapes() {
    let a = ModalityShapes {
        dtype: DType::F32,
        batch: 2,
        classes: 3,
        features: 8,
        inputs: 4,
        pooled: 5,
    };
    let mut plan = StatsPlan::new();
    assert!(RedRegStats::declare(&mut plan, &[a]).is_err());
    let b = ModalityShapes { pooled: 6, ..a };
    let e = RedRegStats::declare(&mut StatsPlan::new(), &[a, b])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 5") && e.contains("got 6"), "{e}");
    let c = ModalityShapes {
        dtype: DType::BF16,
        ..a
    };
    assert!(RedRegStats::declare(&mut StatsPlan::new(), &[a, c]).is_err());
    let m3 = RedRegStats::declare(&mut StatsPlan::new(), &[a, a, a]).unwrap();
    assert_eq!(m3.agreement.len(), 3);
    // Features and inputs are whole samples of the batch (a step may have fewer samples).
    let d = ModalityShapes { features: 9, ..a };
    let e = RedRegStats::declare(&mut StatsPlan::new(), &[a, d])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("features has 9 elements") && e.contains("batch of 2"),
        "{e}"
    );
    let z = ModalityShapes { batch: 0, ..a };
    assert!(RedRegStats::declare(&mut StatsPlan::new(), &[z, z]).is_err());
}
