//! The model: two MLP encoders, a fused linear head, one linear head per modality; SGD.

use super::data::{Dataset, Res, Rng};
use super::dev;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var, D};

/// Width of each encoder's output (the pooled features).
pub const FEAT: usize = 32;
pub const MOMENTUM: f64 = 0.9;
pub const WEIGHT_DECAY: f64 = 1e-4;

pub struct Linear {
    w: Var,
    b: Var,
}

impl Linear {
    fn new(rng: &mut Rng, fan_in: usize, fan_out: usize) -> Res<Self> {
        let bound = (1.0 / fan_in as f64).sqrt();
        let mut draw = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                .collect()
        };
        let (w, b) = (draw(fan_in * fan_out), draw(fan_out));
        Ok(Self {
            w: Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), dev())?)?,
            b: Var::from_tensor(&Tensor::from_vec(b, fan_out, dev())?)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Res<Tensor> {
        Ok(x.matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.b.as_tensor())?)
    }
    fn vars(&self) -> [Var; 2] {
        [self.w.clone(), self.b.clone()]
    }
}

pub struct Encoder {
    l1: Linear,
    l2: Linear,
}

impl Encoder {
    fn new(rng: &mut Rng, d_in: usize, hidden: usize) -> Res<Self> {
        Ok(Self {
            l1: Linear::new(rng, d_in, hidden)?,
            l2: Linear::new(rng, hidden, FEAT)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Res<Tensor> {
        Ok(self.l2.forward(&self.l1.forward(x)?.relu()?)?.relu()?)
    }
    pub fn vars(&self) -> Vec<Var> {
        let mut v = self.l1.vars().to_vec();
        v.extend(self.l2.vars());
        v
    }
    /// The weight matrices (no biases): what OGM-GE modulates, as the original modulates
    /// only the encoders' 4-D (convolution) weights.
    pub fn weights(&self) -> [Var; 2] {
        [self.l1.w.clone(), self.l2.w.clone()]
    }
}

/// One forward pass: fused logits, unimodal logits `[A, B]`, pooled features `[A, B]`.
pub struct Forward {
    pub out: Tensor,
    pub uni: [Tensor; 2],
    pub feat: [Tensor; 2],
}

pub struct Model {
    pub enc: [Encoder; 2],
    head: Linear,
    uni: [Linear; 2],
}

impl Model {
    /// Encoders `dims[m] → hidden[m] → FEAT` (ReLU), heads to the dataset's classes. Every
    /// part is drawn from its own stream, so B's encoder and head start the same whatever A
    /// is (a view trained alone in the screen is the same run as "B alone" for that view).
    pub fn new(seed: u64, ds: &Dataset) -> Res<Self> {
        let rng = |part: u64| Rng(seed ^ 0x5EED ^ (part << 40));
        let (dims, hid, classes) = (ds.dims(), ds.hidden, ds.classes);
        Ok(Self {
            enc: [
                Encoder::new(&mut rng(1), dims[0], hid[0])?,
                Encoder::new(&mut rng(2), dims[1], hid[1])?,
            ],
            head: Linear::new(&mut rng(3), 2 * FEAT, classes)?,
            uni: [
                Linear::new(&mut rng(4), FEAT, classes)?,
                Linear::new(&mut rng(5), FEAT, classes)?,
            ],
        })
    }
    /// B's encoder and unimodal head only (the "B alone" run: A is not computed).
    pub fn forward_b(&self, xb: &Tensor) -> Res<Tensor> {
        self.uni[1].forward(&self.enc[1].forward(xb)?)
    }
    /// OGM-GE's per-modality logits: each modality's half of the fused head,
    /// `z_m · W[:, half_m]ᵀ + b/2` (the original's `out_a`, `out_v` for concat fusion).
    pub fn fused_halves(&self, feat: &[Tensor; 2]) -> Res<[Tensor; 2]> {
        let w = self.head.w.as_tensor();
        let half_b = (self.head.b.as_tensor() * 0.5)?;
        let part = |m: usize| -> Res<Tensor> {
            // contiguous: candle's CUDA matmul (cuBLAS) rejects the strided half
            // `[FEAT, classes]` with row stride 2·FEAT that the CPU matmul accepts.
            let wm = w.narrow(D::Minus1, m * FEAT, FEAT)?.contiguous()?;
            Ok(feat[m].matmul(&wm.t()?)?.broadcast_add(&half_b)?)
        };
        Ok([part(0)?, part(1)?])
    }
    /// `probe`: the unimodal heads read detached features (linear probes).
    pub fn forward(&self, xa: &Tensor, xb: &Tensor, probe: bool) -> Res<Forward> {
        let za = self.enc[0].forward(xa)?;
        let zb = self.enc[1].forward(xb)?;
        let out = self.head.forward(&Tensor::cat(&[&za, &zb], 1)?)?;
        let (ua, ub) = if probe {
            (za.detach(), zb.detach())
        } else {
            (za.clone(), zb.clone())
        };
        Ok(Forward {
            out,
            uni: [self.uni[0].forward(&ua)?, self.uni[1].forward(&ub)?],
            feat: [za, zb],
        })
    }
    pub fn all_vars(&self) -> Vec<Var> {
        let mut v = self.enc[0].vars();
        v.extend(self.enc[1].vars());
        v.extend(self.head.vars());
        v.extend(self.uni[0].vars());
        v.extend(self.uni[1].vars());
        v
    }
}

/// SGD with momentum and (coupled) weight decay, as `torch.optim.SGD`.
pub fn sgd_step(vars: &[Var], grads: &GradStore, mom: &mut [Option<Tensor>], lr: f64) -> Res<()> {
    for (v, buf) in vars.iter().zip(mom.iter_mut()) {
        let Some(g) = grads.get(v.as_tensor()) else {
            continue;
        };
        let g = (g + (v.as_tensor() * WEIGHT_DECAY)?)?;
        let b = match buf.take() {
            Some(b) => ((b * MOMENTUM)? + g)?,
            None => g,
        };
        v.set(&(v.as_tensor() - (&b * lr)?)?)?;
        *buf = Some(b);
    }
    Ok(())
}
