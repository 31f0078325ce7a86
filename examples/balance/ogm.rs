//! OGM-GE (Peng, Wei, Deng, Wang, Hu: "Balanced Multimodal Learning via On-the-fly
//! Gradient Modulation", CVPR 2022), the comparator: a few lines of gradient scaling in the
//! trainer, as in the authors' `main.py` (GeWu-Lab/OGM-GE_CVPR2022, `train_epoch`):
//!
//! - per modality, the logits of its half of the fused head, `out_m = z_m·W[:, half_m]ᵀ +
//!   b/2`, and its score `s_m = Σ_batch softmax(out_m)[label]` (a sum, not a mean);
//! - `ρ = s_B / s_A`; if `ρ > 1`, B's coefficient is `1 − tanh(α·ρ)` and A's is 1, else A's
//!   is `1 − tanh(α/ρ)` and B's is 1 (the paper's Eq. 10; `ρ = 1` exactly modulates A, as
//!   the script's `else`);
//! - for epochs `modulation_starts ..= modulation_ends` (the script's defaults 0 and 50 of
//!   100 epochs: here `0 ..= epochs/2`), every encoder weight of **both** modalities becomes
//!   `g·coeff_m + N(0, std(g) + 1e-8)` — the "generalisation enhancement" noise with the
//!   gradient's own (unbiased, `torch.std`) standard deviation, drawn for every weight tensor
//!   of both encoders, the unmodulated one too, as the script does.
//!
//! The script modulates the encoders' 4-D (convolution) gradients only; the analogue in these
//! MLP encoders is their weight matrices (biases untouched).

use super::data::{Res, Rng};
use super::dev;
use super::model::{Forward, Model};
use candle_core::backprop::GradStore;
use candle_core::Tensor;

/// The README of GeWu-Lab/OGM-GE_CVPR2022 recommends α = 0.1 for VGGSound and 0.8 for
/// CREMA-D; CREMA-D is the dataset with the larger gap between its modalities (and the one
/// both the OGM-GE and the RedReg papers report), as between a strong and a weak view here.
pub const DEFAULT_ALPHA: f64 = 0.8;

pub struct Ogm {
    pub alpha: f64,
    noise: Rng,
}

/// One step's modulation: the coefficients `[A, B]` (1 for the unmodulated modality) and
/// whether the step was inside the modulation window.
pub struct OgmStep {
    pub coeff: [f64; 2],
    pub applied: bool,
}

/// `Σ_batch softmax(logits)[label]`.
fn score_sum(logits: &Tensor, y: &Tensor) -> Res<f64> {
    let p = candle_nn::ops::softmax_last_dim(logits)?;
    let t = p.gather(&y.unsqueeze(1)?, 1)?;
    Ok(t.sum_all()?.to_scalar::<f32>()? as f64)
}

impl Ogm {
    pub fn new(alpha: f64, seed: u64) -> Self {
        Self {
            alpha,
            noise: Rng(seed ^ 0x06E6E),
        }
    }

    /// The coefficients from a forward pass (`src`: the main one, or an undropped one on a
    /// batch with a dropped modality), and, inside the window, the modulated gradients.
    pub fn step(
        &mut self,
        model: &Model,
        src: &Forward,
        y: &Tensor,
        grads: &mut GradStore,
        epoch: usize,
        epochs: usize,
    ) -> Res<OgmStep> {
        let out = model.fused_halves(&src.feat)?;
        let (sa, sb) = (score_sum(&out[0], y)?, score_sum(&out[1], y)?);
        let ratio_b = sb / sa;
        let ratio_a = 1.0 / ratio_b;
        let coeff = if ratio_b > 1.0 {
            [1.0, 1.0 - (self.alpha * ratio_b.max(0.0)).tanh()]
        } else {
            [1.0 - (self.alpha * ratio_a.max(0.0)).tanh(), 1.0]
        };
        let applied = epoch <= epochs / 2;
        if applied {
            for (m, enc) in model.enc.iter().enumerate() {
                for w in enc.weights() {
                    let Some(g) = grads.get(w.as_tensor()) else {
                        continue;
                    };
                    let sd = g.flatten_all()?.to_vec1::<f32>()?;
                    let sigma = unbiased_std(&sd) + 1e-8;
                    let noise = Tensor::from_vec(
                        self.noise.normals(g.elem_count(), sigma as f32),
                        g.dims(),
                        dev(),
                    )?;
                    let new = ((g * coeff[m])? + noise)?;
                    grads.insert(w.as_tensor(), new);
                }
            }
        }
        Ok(OgmStep { coeff, applied })
    }
}

/// `torch.std` (Bessel-corrected), accumulated in f64.
fn unbiased_std(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    if v.len() < 2 {
        return 0.0;
    }
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let ss = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>();
    (ss / (n - 1.0)).sqrt()
}
