//! The RedReg correction folded into an optimizer step: the arguments ([`Correction`]) and
//! the one place they become the projection they stand for.

use crate::project::{Beta, ProjectOptions, Projection, TensorList};
use crate::{Error, Result};

/// The RedReg correction of one step, for one encoder: the tensors
/// `first .. first + theta0.len()` of the optimizer's list, each a buffer `B` of the
/// optimizer's memory (`&[T]` for [`crate::optim::Optimizer`] on the CPU, `CudaView<'_, T>`
/// on CUDA). The step uses, per tensor,
///
/// ```text
/// g + β·(d − P d),   d = θ − θ₀ (formed in f64),   P onto span{g, extra…}
/// ```
///
/// instead of `g` — the update [`crate::Projection::drift`] writes into the gradient, here
/// formed in f64 inside the optimizer's pass and never written (nor rounded). Pass 1 and the
/// per-tensor solve are the projection's own (the same partials, coefficients and ranks).
#[derive(Clone, Debug)]
pub struct Correction<'a, B> {
    /// Index of the encoder's first tensor in the optimizer's list.
    pub first: usize,
    /// θ₀ (the parameters at the epoch start), one slice per encoder tensor.
    pub theta0: Vec<B>,
    /// Extra basis vectors after the gradient (each a list over the encoder's tensors):
    /// the controller's `JointBasis::GradientAnd`. Empty for the script's rank 1.
    pub extra: Vec<Vec<B>>,
    /// β: one value, or one per encoder tensor.
    pub beta: Beta<'a>,
    /// The projection's rank threshold and ridge.
    pub opts: ProjectOptions,
}

impl<'a, B> Correction<'a, B> {
    /// The script's correction (`P` onto `span{g}`, default options) with factor `beta`
    /// for the encoder whose tensors start at `first`.
    pub fn new(first: usize, theta0: Vec<B>, beta: impl Into<Beta<'a>>) -> Self {
        Correction {
            first,
            theta0,
            extra: Vec::new(),
            beta: beta.into(),
            opts: ProjectOptions::default(),
        }
    }

    /// Adds extra basis vectors (`span{g, extra…}`, at most 7).
    pub fn extra(mut self, extra: Vec<Vec<B>>) -> Self {
        self.extra = extra;
        self
    }

    /// Sets the options.
    pub fn opts(mut self, opts: ProjectOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The encoder's tensors in a list with these gradients (one per tensor of the
    /// optimizer's list): `Err` when they do not fit or one of them has no gradient (the
    /// projection reads the gradient as basis vector 0: a suppressed encoder's tensors are
    /// all stepped).
    pub(crate) fn encoder<G>(&self, grads: &[Option<G>]) -> Result<std::ops::Range<usize>> {
        let r = self.range(grads.len())?;
        if let Some(i) = r.clone().find(|&i| grads[i].is_none()) {
            return Err(Error::InvalidArgument {
                name: "grads",
                reason: format!(
                    "tensor {i} is in the corrected encoder (tensors {}..{}) and has no \
                     gradient",
                    r.start, r.end
                ),
            });
        }
        Ok(r)
    }

    /// The encoder's tensors in a list of `count` tensors; `Err` when they do not fit.
    pub(crate) fn range(&self, count: usize) -> Result<std::ops::Range<usize>> {
        let end = self.first.checked_add(self.theta0.len());
        match end {
            Some(end) if end <= count => Ok(self.first..end),
            _ => Err(Error::InvalidArgument {
                name: "correction",
                reason: format!(
                    "tensors {}..{}+{} are not in the optimizer's list of {count}",
                    self.first,
                    self.first,
                    self.theta0.len()
                ),
            }),
        }
    }
}

impl<'a, T> Correction<'a, &[T]> {
    /// The projection this correction stands for, over the encoder's parameters `theta`
    /// and gradients `grad` (read only: pass 1 reads the gradient as basis vector 0).
    pub(crate) fn projection<'b>(
        &'b self,
        theta: Vec<&'b [T]>,
        grad: Vec<&'b [T]>,
    ) -> Projection<'a, TensorList<&'b [T]>, TensorList<&'b [T]>> {
        let extra = self.extra.iter().map(|e| TensorList(e.clone()));
        let theta0 = TensorList(self.theta0.clone());
        Projection::drift(TensorList(theta), theta0, extra, TensorList(grad))
            .beta(self.beta)
            .opts(self.opts)
    }
}
