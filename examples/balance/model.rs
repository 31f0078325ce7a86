//! The model: two MLP encoders, a fused linear head, one linear head per modality; SGD.

use super::data::{Res, Rng, CLASSES, DIM_A, DIM_B};
use super::dev;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub const HID_A: usize = 32;
pub const HID_B: usize = 128;
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
    pub fn new(seed: u64) -> Res<Self> {
        let mut rng = Rng(seed ^ 0x5EED);
        Ok(Self {
            enc: [
                Encoder::new(&mut rng, DIM_A, HID_A)?,
                Encoder::new(&mut rng, DIM_B, HID_B)?,
            ],
            head: Linear::new(&mut rng, 2 * FEAT, CLASSES)?,
            uni: [
                Linear::new(&mut rng, FEAT, CLASSES)?,
                Linear::new(&mut rng, FEAT, CLASSES)?,
            ],
        })
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
