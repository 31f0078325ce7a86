//! Command-line flags, their per-dataset defaults, and the reproduce line.

use super::data::Res;
use super::ogm;
use super::train::{Loss, Pipeline};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// The UCI Multiple Features digits (real data, `data/mfeat/`).
    Mfeat,
    /// The synthetic controlled case (a shortcut modality and a slow one).
    Synthetic,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mfeat => "mfeat",
            DatasetKind::Synthetic => "synthetic",
        }
    }
}

pub struct Args {
    pub dataset: DatasetKind,
    /// mfeat: `[strong, weak]` view names (modalities A and B).
    pub views: [String; 2],
    /// mfeat: the folder of the CSVs (the repository's `data/mfeat/` by default; a binary
    /// run elsewhere, e.g. from a bundle, is told where they are).
    pub data: std::path::PathBuf,
    pub epochs: usize,
    pub seed: u64,
    pub seeds: usize,
    pub lr: f64,
    pub batch: usize,
    pub k: usize,
    pub out: String,
    pub pipelines: Vec<Pipeline>,
    pub losses: Vec<Loss>,
    pub no_dropout: bool,
    pub ogm: bool,
    pub ogm_alpha: f64,
    /// mfeat: every candidate pair's fused baseline (the measurement behind the default pair).
    pub screen: bool,
    pub cpu: bool,
    /// The optimizer step as candle tensor ops (`model::sgd_step`, the example's step
    /// before redreg's `FusedOptimizer` replaced it) instead of the fused one.
    pub candle_sgd: bool,
}

pub const USAGE: &str = "balance [--dataset mfeat|synthetic (mfeat)] [--views STRONG,WEAK (mfeat: pix,zer)] [--data DIR (mfeat: data/mfeat)] \
    [--epochs N] [--seed S (7)] [--seeds N (5)] [--lr LR] [--batch N] [--k K (1)] \
    [--pipelines LIST (script,clean; also skip-dropped)] [--loss LIST of probe, script (mfeat: probe,script; synthetic: probe)] \
    [--script-loss (= --loss script)] [--ogm-alpha A (0.8)] [--no-ogm] [--no-dropout] [--screen (mfeat)] \
    [--out PATH] [--cpu] [--candle-sgd]";

impl Args {
    /// The defaults of `dataset` (the trainer-side settings differ; RedReg's are the paper's).
    pub fn defaults(dataset: DatasetKind) -> Self {
        let (epochs, lr, batch, losses, out) = match dataset {
            DatasetKind::Mfeat => (
                20,
                0.01,
                32,
                vec![Loss::Probe, Loss::Script],
                "out/balance.svg",
            ),
            DatasetKind::Synthetic => {
                (16, 0.02, 64, vec![Loss::Probe], "out/balance-synthetic.svg")
            }
        };
        Self {
            dataset,
            views: ["pix".into(), "zer".into()],
            data: super::mfeat::default_dir(),
            epochs,
            seed: 7,
            seeds: 5,
            lr,
            batch,
            k: 1,
            out: out.into(),
            pipelines: vec![Pipeline::Script, Pipeline::Clean],
            losses,
            no_dropout: false,
            ogm: true,
            ogm_alpha: ogm::DEFAULT_ALPHA,
            screen: false,
            cpu: false,
            candle_sgd: false,
        }
    }

    pub fn parse() -> Res<Self> {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        // The dataset first: it decides the defaults the other flags override.
        let dataset = match argv.iter().position(|a| a == "--dataset") {
            Some(i) => match argv.get(i + 1).map(String::as_str) {
                Some("mfeat") => DatasetKind::Mfeat,
                Some("synthetic") => DatasetKind::Synthetic,
                other => {
                    let got = other.unwrap_or("nothing");
                    return Err(format!("--dataset {got:?}: mfeat or synthetic ({USAGE})").into());
                }
            },
            None => DatasetKind::Mfeat,
        };
        let mut a = Self::defaults(dataset);
        let mut it = argv.into_iter();
        while let Some(flag) = it.next() {
            let mut val = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--dataset" => {
                    val()?;
                }
                "--views" => {
                    let v: Vec<String> = val()?.split(',').map(str::to_string).collect();
                    let [s, w] = <[String; 2]>::try_from(v)
                        .map_err(|_| format!("--views needs two views, STRONG,WEAK ({USAGE})"))?;
                    a.views = [s, w];
                }
                "--data" => a.data = val()?.into(),
                "--epochs" => a.epochs = val()?.parse()?,
                "--seed" => a.seed = val()?.parse()?,
                "--seeds" => a.seeds = val()?.parse()?,
                "--lr" => a.lr = val()?.parse()?,
                "--batch" => a.batch = val()?.parse()?,
                "--k" => a.k = val()?.parse()?,
                "--out" => a.out = val()?,
                "--pipelines" => {
                    a.pipelines = val()?
                        .split(',')
                        .map(|s| {
                            Pipeline::parse(s).ok_or(format!("unknown pipeline {s:?} ({USAGE})"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "--loss" => {
                    a.losses = val()?
                        .split(',')
                        .map(|s| Loss::parse(s).ok_or(format!("unknown loss {s:?} ({USAGE})")))
                        .collect::<Result<_, _>>()?
                }
                "--script-loss" => a.losses = vec![Loss::Script],
                "--ogm-alpha" => a.ogm_alpha = val()?.parse()?,
                "--no-ogm" => a.ogm = false,
                "--no-dropout" => a.no_dropout = true,
                "--screen" => a.screen = true,
                "--cpu" => a.cpu = true,
                "--candle-sgd" => a.candle_sgd = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown flag {other} ({USAGE})").into()),
            }
        }
        if a.epochs == 0 || a.seeds == 0 || a.k == 0 || a.k > 8 || !(a.lr > 0.0 && a.lr.is_finite())
        {
            return Err(
                "need --epochs >= 1, --seeds >= 1, 0 < --lr < inf and 1 <= --k <= 8".into(),
            );
        }
        if a.batch == 0 {
            return Err("need --batch >= 1".into());
        }
        if !(a.ogm_alpha > 0.0 && a.ogm_alpha.is_finite()) {
            return Err("need 0 < --ogm-alpha < inf".into());
        }
        if a.pipelines.is_empty() || a.losses.is_empty() {
            return Err("--pipelines and --loss need at least one entry each".into());
        }
        if a.views[0] == a.views[1] {
            return Err(format!("--views: two different views ({USAGE})").into());
        }
        if a.screen && a.dataset != DatasetKind::Mfeat {
            return Err("--screen is for --dataset mfeat".into());
        }
        Ok(a)
    }

    /// The plot of loss `l` (one file per loss when several are run).
    pub fn plot_path(&self, l: Loss) -> String {
        if self.losses.len() < 2 {
            return self.out.clone();
        }
        match self.out.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}-{}.{ext}", l.name()),
            None => format!("{}-{}", self.out, l.name()),
        }
    }

    /// The command with the flags that differ from the dataset's defaults.
    pub fn repro(&self) -> String {
        let d = Self::defaults(self.dataset);
        let mut f = Vec::new();
        if self.dataset != DatasetKind::Mfeat {
            f.push(format!("--dataset {}", self.dataset.name()));
        }
        if self.dataset == DatasetKind::Mfeat && self.views != d.views {
            f.push(format!("--views {}", self.views.join(",")));
        }
        if self.dataset == DatasetKind::Mfeat && self.data != d.data {
            f.push(format!("--data {}", self.data.display()));
        }
        for (name, v, dv) in [
            ("--epochs", self.epochs.to_string(), d.epochs.to_string()),
            ("--seed", self.seed.to_string(), d.seed.to_string()),
            ("--seeds", self.seeds.to_string(), d.seeds.to_string()),
            ("--lr", self.lr.to_string(), d.lr.to_string()),
            ("--batch", self.batch.to_string(), d.batch.to_string()),
            ("--k", self.k.to_string(), d.k.to_string()),
            (
                "--ogm-alpha",
                self.ogm_alpha.to_string(),
                d.ogm_alpha.to_string(),
            ),
            ("--out", self.out.clone(), d.out.clone()),
        ] {
            if v != dv {
                f.push(format!("{name} {v}"));
            }
        }
        if self.pipelines != d.pipelines {
            let p: Vec<_> = self.pipelines.iter().map(|p| p.name()).collect();
            f.push(format!("--pipelines {}", p.join(",")));
        }
        if self.losses != d.losses {
            let l: Vec<_> = self.losses.iter().map(|l| l.name()).collect();
            f.push(format!("--loss {}", l.join(",")));
        }
        for (on, flag) in [
            (!self.ogm, "--no-ogm"),
            (self.no_dropout, "--no-dropout"),
            (self.screen, "--screen"),
            (self.candle_sgd, "--candle-sgd"),
            (self.cpu, "--cpu"),
        ] {
            if on {
                f.push(flag.into());
            }
        }
        // The feature this binary was built with: a CUDA run reproduces on the GPU.
        let feature = if cfg!(feature = "candle-cuda") {
            "candle-cuda"
        } else {
            "candle"
        };
        let mut s = format!("cargo run --release --features {feature} --example balance");
        if !f.is_empty() {
            s += " -- ";
            s += &f.join(" ");
        }
        s
    }
}
