//! The f64 oracle of the optimizer steps: `torch.optim.SGD`'s and `torch.optim.AdamW`'s
//! documented update rules, line for line, on one tensor ([`sgd_step`], [`adamw_step`]),
//! and over a list of tensors with PyTorch's per-parameter semantics ([`ListState`]: each
//! tensor its own step count; a tensor without a gradient skipped).
//!
//! The gradient comes in as f64 (`grad`): the plain gradient widened exactly, or the RedReg
//! corrected gradient `g + β·(d − P d)` computed in f64 and never rounded (the fused step's
//! semantics). Each step computes in f64 and rounds each stored value once: the parameter to
//! `T`, the state to f32 (see the module docs of [`crate::optim`]). A step's update uses the
//! unrounded new state; the rounded one is what the next step reads.
//!
//! Nothing is written when an argument is rejected.

use super::{AdamW, Rule, Sgd};
use crate::project::solve::{solve_segment, MAX_K};
use crate::project::TensorList;
use crate::{Beta, Element, Error, Partials, ProjectOptions, Projection, Result, Segments};

/// One SGD step at step count `t` (1 for the first step; PyTorch's `t`) on one tensor.
/// `momentum_buf` holds the momentum buffer `b` (read from step 2 on, written when
/// `momentum ≠ 0`; ignored otherwise, any length then).
///
/// ```text
/// g ← grad + λ·θ                              (λ ≠ 0)
/// b ← g                       (t = 1)         (μ ≠ 0)
/// b ← μ·b + (1 − τ)·g         (t > 1)
/// g ← g + μ·b (Nesterov)  or  g ← b
/// θ ← θ − γ·g
/// ```
pub fn sgd_step<T: Element>(
    p: &Sgd,
    t: u64,
    theta: &mut [T],
    grad: &[f64],
    momentum_buf: &mut [f32],
) -> Result<()> {
    p.check()?;
    check_t(t)?;
    same_len("grad", theta.len(), grad.len())?;
    let mom = p.momentum != 0.0;
    if mom {
        same_len("momentum_buf", theta.len(), momentum_buf.len())?;
    }
    for (i, (th, &g0)) in theta.iter_mut().zip(grad).enumerate() {
        let x = th.to_f64();
        let mut g = g0;
        if p.weight_decay != 0.0 {
            g += p.weight_decay * x;
        }
        if mom {
            let b = if t == 1 {
                g
            } else {
                p.momentum * momentum_buf[i] as f64 + (1.0 - p.dampening) * g
            };
            momentum_buf[i] = b as f32;
            g = if p.nesterov { g + p.momentum * b } else { b };
        }
        *th = T::from_f64(x - p.lr * g);
    }
    Ok(())
}

/// One AdamW step at step count `t` (1 for the first step) on one tensor, with its first
/// and second moments `m`, `v` (zeros before the first step).
///
/// ```text
/// θ ← θ·(1 − γ·λ)
/// m ← β₁·m + (1 − β₁)·g
/// v ← β₂·v + (1 − β₂)·g²
/// θ ← θ − γ·(m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
/// ```
///
/// evaluated in the form of PyTorch's implementation (`_single_tensor_adamw` and the fused
/// kernel): `step_size = γ/(1 − β₁ᵗ)`, `denom = √v·(1/√(1 − β₂ᵗ)) + ε`,
/// `θ ← θ − step_size·m/denom` — one root and one division per element
/// ([`AdamW::step_scalars`]; PyTorch divides by `√(1 − β₂ᵗ)`, here a product with its
/// reciprocal).
pub fn adamw_step<T: Element>(
    p: &AdamW,
    t: u64,
    theta: &mut [T],
    grad: &[f64],
    m: &mut [f32],
    v: &mut [f32],
) -> Result<()> {
    p.check()?;
    check_t(t)?;
    same_len("grad", theta.len(), grad.len())?;
    same_len("m", theta.len(), m.len())?;
    same_len("v", theta.len(), v.len())?;
    let (step_size, inv_root_bc2) = p.step_scalars(t);
    for i in 0..theta.len() {
        let g = grad[i];
        let x = theta[i].to_f64() * (1.0 - p.lr * p.weight_decay);
        let mi = p.beta1 * m[i] as f64 + (1.0 - p.beta1) * g;
        let vi = p.beta2 * v[i] as f64 + (1.0 - p.beta2) * g * g;
        m[i] = mi as f32;
        v[i] = vi as f32;
        let step = step_size * mi / (vi.sqrt() * inv_root_bc2 + p.eps);
        theta[i] = T::from_f64(x - step);
    }
    Ok(())
}

/// The optimizer's state over a list of tensors, as `torch.optim` keeps it per parameter:
/// each tensor's step count (`state["step"]`) and its f32 state (SGD's momentum buffer or
/// AdamW's first moment in `s0`, AdamW's second moment in `s1`; empty where the rule has
/// none).
#[derive(Clone, Debug, PartialEq)]
pub struct ListState {
    /// Each tensor's step count (0 before its first step).
    pub steps: Vec<u64>,
    /// SGD's momentum buffers (empty without momentum) or AdamW's first moments.
    pub s0: Vec<Vec<f32>>,
    /// AdamW's second moments (empty for SGD).
    pub s1: Vec<Vec<f32>>,
}

impl ListState {
    /// The zeroed state of tensors of lengths `lens` under `rule`.
    pub fn new(rule: &Rule, lens: &[usize]) -> Self {
        let (a, b) = buffers(rule);
        let bufs = |on: bool| -> Vec<Vec<f32>> {
            (lens.iter())
                .map(|&n| if on { vec![0.0; n] } else { Vec::new() })
                .collect()
        };
        ListState {
            steps: vec![0; lens.len()],
            s0: bufs(a),
            s1: bufs(b),
        }
    }

    /// One `optimizer.step()` over the list, as `torch.optim.SGD` / `torch.optim.AdamW`
    /// loop over their parameters:
    ///
    /// ```text
    /// for i, p in enumerate(params):
    ///     if p.grad is None: continue          # θ, state and step untouched
    ///     state[i].step += 1
    ///     the rule's step at t = state[i].step  (sgd_step / adamw_step)
    /// ```
    ///
    /// `grads[i]`: tensor `i`'s gradient in f64, or `None`. `Err` (nothing written) when the
    /// rule is rejected or a count or length does not match.
    pub fn step<T: Element, G: AsRef<[f64]>>(
        &mut self,
        rule: &Rule,
        theta: &mut [Vec<T>],
        grads: &[Option<G>],
    ) -> Result<()> {
        rule.check()?;
        let n = self.steps.len();
        let counts = [
            ("theta", theta.len()),
            ("grads", grads.len()),
            ("s0", self.s0.len()),
            ("s1", self.s1.len()),
        ];
        for (name, got) in counts {
            if got != n {
                return Err(Error::CountMismatch {
                    name,
                    expected: n,
                    got,
                });
            }
        }
        let (a, b) = buffers(rule);
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let len = theta[i].len();
            same_len("grad", len, g.as_ref().len())?;
            if a {
                same_len("s0", len, self.s0[i].len())?;
            }
            if b {
                same_len("s1", len, self.s1[i].len())?;
            }
        }
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let t = self.steps[i] + 1;
            match rule {
                Rule::Sgd(p) => sgd_step(p, t, &mut theta[i], g.as_ref(), &mut self.s0[i])?,
                Rule::AdamW(p) => adamw_step(
                    p,
                    t,
                    &mut theta[i],
                    g.as_ref(),
                    &mut self.s0[i],
                    &mut self.s1[i],
                )?,
            }
            self.steps[i] = t;
        }
        Ok(())
    }
}

/// The RedReg-corrected gradients of one encoder's tensors (one segment each), in f64 and
/// never rounded — what the fused step feeds its update: per tensor `s`, the coefficients
/// `w` solved from `partials.seg(s)` (the projection's solve, rank capped at
/// `min(length, k)` as in `project_out`), then per element
///
/// ```text
/// y = (θ − θ₀) − w₀·g − Σ_{j≥1} w_j·extra_{j−1}      (θ − θ₀ in f64)
/// g + β_s·y
/// ```
///
/// in the order of [`crate::reference::apply`] with `alpha = 1` (its rounding to `T` of
/// this value is the projection's output; `tests/optim/fused.rs` checks that bitwise). Returns the gradients and the ranks; `Err` on
/// the projection's bad inputs (lengths, k > 8, β or options).
pub fn corrected_grads<T: Element>(
    partials: &Partials,
    theta: &[&[T]],
    theta0: &[&[T]],
    grad: &[&[T]],
    extra: &[Vec<&[T]>],
    beta: Beta<'_>,
    opts: &ProjectOptions,
) -> Result<(Vec<Vec<f64>>, Vec<u32>)> {
    let lens: Vec<usize> = theta.iter().map(|t| t.len()).collect();
    let segs = Segments::from_lengths(&lens)?;
    let k = Projection::drift(
        TensorList(theta.to_vec()),
        TensorList(theta0.to_vec()),
        extra.iter().map(|e| TensorList(e.clone())),
        TensorList(grad.to_vec()),
    )
    .beta(beta)
    .opts(*opts)
    .validate(&segs)?;
    partials.check_shape(&segs, k)?;
    let mut out = Vec::with_capacity(segs.len());
    let mut ranks = Vec::with_capacity(segs.len());
    let mut w = [0.0f64; MAX_K];
    for s in 0..segs.len() {
        let n = lens[s];
        ranks.push(solve_segment(
            k,
            partials.seg(s),
            n.min(k),
            opts.tol,
            opts.ridge,
            &mut w,
        ));
        let b = beta.at(s);
        let g: Vec<f64> = (0..n)
            .map(|e| {
                let ge = grad[s][e].to_f64();
                let mut y = theta[s][e].to_f64() - theta0[s][e].to_f64();
                y -= w[0] * ge;
                for (j, x) in extra.iter().enumerate() {
                    y -= w[j + 1] * x[s][e].to_f64();
                }
                // The projection's `alpha·g + β·y` with alpha = 1: `1·g` is `g` exactly.
                ge + b * y
            })
            .collect();
        out.push(g);
    }
    Ok((out, ranks))
}

/// Which of the two state buffers `rule` keeps.
fn buffers(rule: &Rule) -> (bool, bool) {
    match rule {
        Rule::Sgd(p) => (p.momentum != 0.0, false),
        Rule::AdamW(_) => (true, true),
    }
}

/// The exact f64 widening of a gradient (the plain step's `grad`).
pub fn widen<T: Element>(g: &[T]) -> Vec<f64> {
    g.iter().map(|x| x.to_f64()).collect()
}

fn check_t(t: u64) -> Result<()> {
    if t == 0 {
        return Err(Error::InvalidArgument {
            name: "t",
            reason: "the step count starts at 1".into(),
        });
    }
    Ok(())
}

fn same_len(name: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::LengthMismatch {
            name,
            expected,
            got,
        });
    }
    Ok(())
}
