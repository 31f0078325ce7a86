//! mfeat: which view is strong and which weak, measured, not guessed. Every view is trained
//! alone (its encoder and head, `L_b` only, the same seeds, splits and schedule as the main
//! runs) and every candidate pair's single-view accuracies are printed; with `--screen` the
//! fused baseline is trained on every candidate pair too, and the weak view's probe in it is
//! compared with the weak view alone: the imbalance RedReg addresses, per pair.

use super::args::Args;
use super::data::{mfeat_data, Res};
use super::mfeat::View;
use super::report::mean_std;
use super::train::{train, Mode, RunLog};
use super::Progress;

/// Candidates: the `CANDIDATES` views with the best single-view accuracy are the strong
/// ones, the `CANDIDATES` with the worst the weak ones.
const CANDIDATES: usize = 3;

pub fn find<'a>(views: &'a [View], name: &str) -> Res<&'a View> {
    views.iter().find(|v| v.name == name).ok_or_else(|| {
        let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        format!(
            "--views: unknown view {name:?} (views: {})",
            names.join(", ")
        )
        .into()
    })
}

/// The epochs `run` trains (for the progress bar).
pub fn epochs(a: &Args, views: &[View]) -> usize {
    let single = views.len() * a.seeds * a.epochs;
    let pairs = CANDIDATES * CANDIDATES * a.losses.len() * a.seeds * a.epochs;
    single + if a.screen { pairs } else { 0 }
}

/// What the screen leaves for the main runs.
pub enum Screen {
    /// `--screen`: the pair screen was the job; stop.
    Stop,
    /// The runs of the weak view (`--views`' second) alone: the main runs' "B alone" (the same
    /// seeds, split, initialisation, data order and dropout draws, so the same run).
    Continue { weak_alone: Vec<RunLog> },
}

fn last_b(runs: &[RunLog]) -> Vec<f64> {
    runs.iter()
        .map(|r| r.epochs.last().map_or(f64::NAN, |l| l.acc[1]))
        .collect()
}

/// The single-view table (always) and, with `--screen`, the pair screen.
pub fn run(a: &Args, views: &[View], progress: &Progress) -> Res<Screen> {
    let seeds: Vec<u64> = (0..a.seeds as u64).map(|i| a.seed + i).collect();
    // Each view as B (A is not computed in a "B alone" run).
    let mut single: Vec<(&View, Vec<f64>)> = Vec::new();
    let mut weak_alone = Vec::new();
    for v in views {
        let mut runs = Vec::new();
        for &seed in &seeds {
            let data = mfeat_data([v, v], seed);
            let what = format!("seed {seed}: view {} alone", v.name);
            runs.push(progress.run(&what, |bar| {
                train(Mode::BAlone, a.losses[0], a, seed, &data, bar)
            })?);
        }
        single.push((v, last_b(&runs)));
        if v.name == a.views[1] {
            weak_alone = runs;
        }
    }
    single.sort_by(|x, y| mean_std(&y.1).0.total_cmp(&mean_std(&x.1).0));
    println!(
        "\nmfeat views, each trained alone (its MLP encoder and head, L_b only), final-epoch test \
         accuracy, mean ± std over seeds {}..{}:",
        a.seed,
        a.seed + a.seeds as u64 - 1
    );
    println!("view | features | encoder        | accuracy");
    for (v, acc) in &single {
        let (m, s) = mean_std(acc);
        println!(
            "{:<4} | {:>8} | {:>3}→{:>3}→{:<4} | {m:.3} ± {s:.3}",
            v.name,
            v.dim,
            v.dim,
            super::data::mfeat_hidden(v.dim),
            super::model::FEAT
        );
    }
    let n = single.len();
    let strong = &single[..CANDIDATES.min(n)];
    let weak = &single[n.saturating_sub(CANDIDATES)..];
    println!(
        "\ncandidate pairs (the {CANDIDATES} best views as A, the {CANDIDATES} worst as B), single-view accuracies:"
    );
    println!("pair (A strong, B weak) | A alone | B alone | gap");
    for (s, sa) in strong {
        for (w, wa) in weak {
            let (ms, mw) = (mean_std(sa).0, mean_std(wa).0);
            let used = if [s.name.as_str(), w.name.as_str()]
                == [a.views[0].as_str(), a.views[1].as_str()]
            {
                "  <- used (--views)"
            } else {
                ""
            };
            println!(
                "{:<23} | {ms:>7.3} | {mw:>7.3} | {:.3}{used}",
                format!("{} + {}", s.name, w.name),
                ms - mw
            );
        }
    }
    if !a.screen {
        return Ok(Screen::Continue { weak_alone });
    }

    // The pair screen: the fused baseline on every candidate pair.
    println!(
        "\npair screen: the fused baseline's B probe minus B trained alone (paired by seed, final \
         epoch; negative = the weak view learns less inside the fused model):"
    );
    let heads: Vec<String> = a
        .losses
        .iter()
        .map(|l| {
            format!(
                "{:>34}",
                format!("{} loss: fused | B probe − B alone", l.name())
            )
        })
        .collect();
    println!("pair        | {}", heads.join(" | "));
    // The pair (and loss) where the weak view falls furthest below itself alone.
    let mut best: Option<(f64, String, &str)> = None;
    for (s, _) in strong {
        for (w, wa) in weak {
            let mut cols = Vec::new();
            for &loss in &a.losses {
                let mut runs = Vec::new();
                for &seed in &seeds {
                    let data = mfeat_data([s, w], seed);
                    let what = format!(
                        "seed {seed}: {}+{} baseline ({})",
                        s.name,
                        w.name,
                        loss.name()
                    );
                    runs.push(progress.run(&what, |bar| {
                        train(Mode::Baseline, loss, a, seed, &data, bar)
                    })?);
                }
                let fused: Vec<f64> = runs
                    .iter()
                    .map(|r| r.epochs.last().map_or(f64::NAN, |l| l.fused))
                    .collect();
                let deficit: Vec<f64> = last_b(&runs).iter().zip(wa).map(|(b, w)| b - w).collect();
                let (df, _) = mean_std(&fused);
                let (dm, ds) = mean_std(&deficit);
                cols.push(format!("{:>34}", format!("{df:.3} | {dm:+.3} ± {ds:.3}")));
                if best.as_ref().map_or(true, |(b, _, _)| dm < *b) {
                    best = Some((dm, format!("{},{}", s.name, w.name), loss.name()));
                }
            }
            println!(
                "{:<11} | {}",
                format!("{} + {}", s.name, w.name),
                cols.join(" | ")
            );
        }
    }
    if let Some((d, pair, loss)) = best {
        println!(
            "\nthe largest deficit: --views {pair} under the {loss} loss ({d:+.3}); the defaults are --views {} \
             and the {} loss first",
            Args::defaults(a.dataset).views.join(","),
            Args::defaults(a.dataset).losses[0].name()
        );
    }
    Ok(Screen::Stop)
}
