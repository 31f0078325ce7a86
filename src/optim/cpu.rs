//! The CPU pass of an optimizer step: every tensor of the list cut into chunks of the
//! backend's chunk size, each chunk one task on the backend's pool (calls of at most
//! `INLINE_ELEMENTS` elements on the calling thread). The update is elementwise, so the
//! results do not depend on the chunking or the threads, bit for bit; they equal
//! [`super::reference`]'s (the same f64 operations in the same order, no fused
//! multiply-adds).

use super::{AdamW, Rule, Sgd};
use crate::{CpuBackend, Element, Error, Result};

/// An optimizer over a fixed list of tensors: the rule, the step count and the state
/// (f32; one or two buffers per tensor, allocated once by [`Optimizer::new`]).
#[derive(Clone, Debug)]
pub struct Optimizer {
    rule: Rule,
    t: u64,
    lens: Vec<usize>,
    s0: Vec<Vec<f32>>,
    s1: Vec<Vec<f32>>,
}

impl Optimizer {
    /// An optimizer for tensors of the given lengths (the layout every step must match).
    pub fn new(rule: Rule, lens: &[usize]) -> Result<Self> {
        rule.check()?;
        let bufs = |on: bool| -> Vec<Vec<f32>> {
            lens.iter()
                .map(|&n| if on { vec![0.0; n] } else { Vec::new() })
                .collect()
        };
        let (a, b) = match &rule {
            Rule::Sgd(p) => (p.momentum != 0.0, false),
            Rule::AdamW(_) => (true, true),
        };
        Ok(Optimizer {
            rule,
            t: 0,
            lens: lens.to_vec(),
            s0: bufs(a),
            s1: bufs(b),
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The state of tensor `i`: SGD's momentum buffer (empty without momentum) or AdamW's
    /// first moment, and AdamW's second moment (empty for SGD).
    pub fn state(&self, i: usize) -> Option<(&[f32], &[f32])> {
        Some((self.s0.get(i)?.as_slice(), self.s1.get(i)?.as_slice()))
    }

    /// One step: `params[i] ← update(params[i], grads[i])` for every tensor, on `be`'s
    /// pool. `Err` (nothing written, the step count unchanged) when the list does not match
    /// the layout.
    pub fn step_cpu<T: Element>(
        &mut self,
        be: &CpuBackend,
        params: &mut [&mut [T]],
        grads: &[&[T]],
    ) -> Result<()> {
        if params.len() != self.lens.len() || grads.len() != self.lens.len() {
            return Err(Error::CountMismatch {
                name: "params/grads",
                expected: self.lens.len(),
                got: params.len().min(grads.len()),
            });
        }
        for (i, &n) in self.lens.iter().enumerate() {
            for (name, got) in [("params", params[i].len()), ("grads", grads[i].len())] {
                if got != n {
                    return Err(Error::LengthMismatch {
                        name,
                        expected: n,
                        got,
                    });
                }
            }
        }
        let t = self.t + 1;
        let chunk = be.chunk();
        type Piece<'a, T> = (&'a mut [T], &'a [T], &'a mut [f32], &'a mut [f32]);
        let mut pieces: Vec<Piece<'_, T>> = Vec::new();
        for (((p, g), s0), s1) in params
            .iter_mut()
            .zip(grads)
            .zip(self.s0.iter_mut())
            .zip(self.s1.iter_mut())
        {
            let mut p: &mut [T] = p;
            let mut g: &[T] = g;
            let mut s0: &mut [f32] = s0;
            let mut s1: &mut [f32] = s1;
            while !p.is_empty() {
                let c = chunk.min(p.len());
                let (ph, pt) = p.split_at_mut(c);
                let (gh, gt) = g.split_at(c);
                let (ah, at) = s0.split_at_mut(c.min(s0.len()));
                let (bh, bt) = s1.split_at_mut(c.min(s1.len()));
                pieces.push((ph, gh, ah, bh));
                (p, g, s0, s1) = (pt, gt, at, bt);
            }
        }
        let elements = self.lens.iter().sum();
        let idx: Vec<usize> = (0..pieces.len()).collect();
        match self.rule {
            Rule::Sgd(p) => be.zip_tasks(elements, &idx, pieces, |_, (th, g, b, _)| {
                sgd_chunk(&p, t, th, g, b)
            }),
            Rule::AdamW(p) => {
                let bc1 = 1.0 - p.beta1.powf(t as f64);
                let bc2 = 1.0 - p.beta2.powf(t as f64);
                be.zip_tasks(elements, &idx, pieces, |_, (th, g, m, v)| {
                    adamw_chunk(&p, bc1, bc2, th, g, m, v)
                })
            }
        }
        self.t = t;
        Ok(())
    }
}

fn sgd_chunk<T: Element>(p: &Sgd, t: u64, th: &mut [T], g: &[T], b: &mut [f32]) {
    let mom = p.momentum != 0.0;
    for i in 0..th.len() {
        let x = th[i].to_f64();
        let mut gi = g[i].to_f64();
        if p.weight_decay != 0.0 {
            gi += p.weight_decay * x;
        }
        if mom {
            let bi = if t == 1 {
                gi
            } else {
                p.momentum * b[i] as f64 + (1.0 - p.dampening) * gi
            };
            b[i] = bi as f32;
            gi = if p.nesterov { gi + p.momentum * bi } else { bi };
        }
        th[i] = T::from_f64(x - p.lr * gi);
    }
}

fn adamw_chunk<T: Element>(
    p: &AdamW,
    bc1: f64,
    bc2: f64,
    th: &mut [T],
    g: &[T],
    m: &mut [f32],
    v: &mut [f32],
) {
    for i in 0..th.len() {
        let gi = g[i].to_f64();
        let x = th[i].to_f64() * (1.0 - p.lr * p.weight_decay);
        let mi = p.beta1 * m[i] as f64 + (1.0 - p.beta1) * gi;
        let vi = p.beta2 * v[i] as f64 + (1.0 - p.beta2) * gi * gi;
        m[i] = mi as f32;
        v[i] = vi as f32;
        th[i] = T::from_f64(x - p.lr * (mi / bc1) / ((vi / bc2).sqrt() + p.eps));
    }
}
