//! The controller's step fused with the optimizer ([`Controller::step_optimizer`]): the
//! decision, then one optimizer step that folds the suppressed encoder's correction into
//! its own pass ([`crate::optim`]) instead of writing corrected gradients first.

use super::{Controller, Decision, StepInputs};
use crate::backend::{Backend, Dst, Memory, Src};
use crate::error::{check_count, invalid, Result};
use crate::optim::{Correction, OptimBackend, Optimizer};
use crate::project::Beta;
use crate::Element;

impl Controller {
    /// The fused form of [`Controller::step`]: [`Controller::observe`], then one step of
    /// `optimizer` over every tensor of the model (`params`, `grads`: the optimizer's
    /// list) in which the suppressed encoder's tensors use `g + β·(d − P d)`, `d = θ − θ₀`
    /// (f64, never rounded nor written; [`Optimizer::step_corrected`]) and every other
    /// tensor its plain gradient ([`Optimizer::step`] when nothing is suppressed). The
    /// result is the projection of [`Controller::step`] followed by the optimizer's step,
    /// without the rounding of the corrected gradient to the dtype and without the
    /// projection's pass 2: on a suppressed step pass 1 and one update pass.
    ///
    /// `encoders`: one [`Correction`] per modality, in the controller's order — where the
    /// encoder's tensors stand in the optimizer's list (`first`), its snapshot θ₀ and any
    /// extra basis vectors (the gradient is always basis vector 0). Their own β and
    /// options are not read: the step uses the decision's β and the config's projection
    /// options.
    ///
    /// Returns the decision and the suppressed encoder's ranks. Every encoder's corrected
    /// step passes the optimizer's checks ([`Optimizer::check_corrected`]: layout, lengths,
    /// and on CUDA device contexts and aliasing) before anything changes, so an `Err`
    /// leaves the controller's state, the optimizer and the buffers unchanged.
    pub fn step_optimizer<'a, 'e, T: Element, B: OptimBackend>(
        &mut self,
        inputs: &StepInputs,
        backend: &B,
        optimizer: &mut Optimizer<B>,
        params: &mut [Dst<'a, B, T>],
        grads: &[Src<'a, B, T>],
        encoders: &'a [Correction<'_, Src<'e, B, T>>],
    ) -> Result<(Decision, Option<B::Ranks>)>
    where
        'e: 'a,
    {
        check_count(
            "encoders (one per modality)",
            self.modalities(),
            encoders.len(),
        )?;
        let opts = self.config().project;
        for (i, e) in encoders.iter().enumerate() {
            // β = 1 for the check: the decision's β is finite by construction.
            optimizer
                .check_corrected(backend, params, grads, &with_beta::<B, T>(e, 1.0, opts))
                .map_err(|err| invalid("encoders", format!("encoder {i}: {err}")))?;
        }
        let decision = self.observe(inputs)?;
        let ranks = match decision.suppressed {
            Some(m) => {
                let c = with_beta::<B, T>(&encoders[m], decision.beta, opts);
                Some(optimizer.step_corrected(backend, params, grads, &c)?)
            }
            None => {
                optimizer.step(backend, params, grads)?;
                None
            }
        };
        Ok((decision, ranks))
    }
}

/// Encoder `e`'s correction with β and the projection options set (its buffers shared,
/// not copied).
fn with_beta<'a, 'e: 'a, B: OptimBackend, T: Element>(
    e: &'a Correction<'_, Src<'e, B, T>>,
    beta: f64,
    opts: crate::ProjectOptions,
) -> Correction<'static, Src<'a, B, T>> {
    let share = |s: &'a Src<'e, B, T>| <<B as Backend>::Memory as Memory>::share(s);
    Correction {
        first: e.first,
        theta0: e.theta0.iter().map(share).collect(),
        extra: (e.extra.iter())
            .map(|x| x.iter().map(share).collect())
            .collect(),
        beta: Beta::Scalar(beta),
        opts,
    }
}
