//! candle CPU tensors as inputs of the fused statistics plan ([`crate::stats`]): RedReg's
//! per-step statistics (`p_m`, the redundancy ratios, `pos_sim`) computed by the crate's
//! [`CpuStats`] executor straight from a trainer's tensors, read in place.
//!
//! ```ignore
//! let shapes = [modality_shapes(&a)?, modality_shapes(&b)?];   // from a first batch
//! let mut plan = StatsPlan::new();
//! let handles = RedRegStats::declare(&mut plan, &shapes)?;
//! let mut exec = CpuStats::new(&plan)?;
//! // every step:
//! let inputs = step_inputs(&mut exec, &handles, &labels, &[a, b])?;   // → Controller::observe
//! ```
//!
//! CUDA tensors are refused (`Err`): copy them to the CPU first, or use
//! [`crate::stats::CudaStats`] on device buffers.

use super::{candle_err, cpu_view, dtype_of, CpuView};
use crate::controller::{ModalityShapes, RedRegStats, StepInputs};
use crate::error::{invalid, Result};
use crate::stats::{Buf, CpuStats};
use candle_core::{DType as CDType, Tensor};

/// One modality's tensors of one RedReg step.
#[derive(Clone, Copy, Debug)]
pub struct ModalityTensors<'a> {
    /// The unimodal head's logits, B×C.
    pub logits: &'a Tensor,
    /// Encoder features of the two noisy copies (any shape, equal element counts).
    pub z1: &'a Tensor,
    /// See `z1`.
    pub z2: &'a Tensor,
    /// The two noisy inputs (any shape, equal element counts).
    pub x1: &'a Tensor,
    /// See `x1`.
    pub x2: &'a Tensor,
    /// Pooled features for the agreement `pos_sim`, B×D.
    pub pooled: &'a Tensor,
}

fn dims2(what: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    match t.dims() {
        &[b, d] => Ok((b, d)),
        other => Err(invalid(
            what,
            format!("must be a B×D matrix, got shape {other:?}"),
        )),
    }
}

/// The [`ModalityShapes`] of one modality's tensors (for [`RedRegStats::declare`]). `Err`
/// unless the logits and pooled features are matrices with the same batch size, and every
/// tensor has one dtype of f32, f16, bf16.
pub fn modality_shapes(m: &ModalityTensors<'_>) -> Result<ModalityShapes> {
    let (batch, classes) = dims2("logits", m.logits)?;
    let (pb, pooled) = dims2("pooled features", m.pooled)?;
    if pb != batch {
        return Err(invalid(
            "pooled features",
            format!("batch {pb} differs from the logits' batch {batch}"),
        ));
    }
    let dtype = dtype_of(m.logits.dtype())?;
    for (what, t) in [
        ("z1", m.z1),
        ("z2", m.z2),
        ("x1", m.x1),
        ("x2", m.x2),
        ("pooled features", m.pooled),
    ] {
        if dtype_of(t.dtype())? != dtype {
            return Err(invalid(
                what,
                format!(
                    "dtype {:?} differs from the logits' {:?}",
                    t.dtype(),
                    m.logits.dtype()
                ),
            ));
        }
    }
    Ok(ModalityShapes {
        dtype,
        batch,
        classes,
        features: m.z1.elem_count(),
        inputs: m.x1.elem_count(),
        pooled,
    })
}

/// The plan's buffer for a CPU view (the view's dtype decides the variant).
pub fn stats_buf<'a>(v: &'a CpuView<'_>) -> Result<Buf<'a>> {
    Ok(match v.dtype() {
        crate::DType::F32 => Buf::F32(v.as_slice()?),
        crate::DType::F16 => Buf::F16(v.as_slice()?),
        crate::DType::BF16 => Buf::BF16(v.as_slice()?),
    })
}

/// Class labels as the plan takes them (`i64`): a rank-1 CPU tensor of u8, u32 or i64.
/// One small copy (B values).
pub fn labels_i64(labels: &Tensor) -> Result<Vec<i64>> {
    if labels.rank() != 1 {
        return Err(invalid(
            "labels",
            format!(
                "must be a vector of B class indices, got shape {:?}",
                labels.dims()
            ),
        ));
    }
    if !labels.device().is_cpu() {
        return Err(invalid("labels", "not a CPU tensor"));
    }
    match labels.dtype() {
        CDType::U8 | CDType::U32 | CDType::I64 => labels
            .to_dtype(CDType::I64)
            .and_then(|t| t.to_vec1::<i64>())
            .map_err(candle_err("labels")),
        other => Err(invalid(
            "labels",
            format!("dtype {other:?} is not a class index type (u8, u32, i64)"),
        )),
    }
}

/// Runs the plan of `handles` (declared by [`RedRegStats::declare`] in `exec`'s plan) on
/// one step's CPU tensors, in one pass, and returns the controller's inputs. `labels` are
/// the batch's class indices (see [`labels_i64`]); `mods` one entry per modality, in the
/// order of the declaration.
///
/// `Err` (before anything is computed) for a CUDA or non-contiguous tensor, an unsupported
/// dtype, a modality count or element count that differs from the declaration; `Err` after
/// the run for a label outside `0..C`.
pub fn step_inputs(
    exec: &mut CpuStats,
    handles: &RedRegStats,
    labels: &Tensor,
    mods: &[ModalityTensors<'_>],
) -> Result<StepInputs> {
    let m = handles.score.len();
    if mods.len() != m || handles.agreement.len() != m * m.saturating_sub(1) / 2 {
        return Err(invalid(
            "modalities",
            format!("{} tensor sets for a plan of {m} modalities", mods.len()),
        ));
    }
    let labels = labels_i64(labels)?;
    let views = mods
        .iter()
        .map(|t| {
            Ok([
                cpu_view(t.logits)?,
                cpu_view(t.z1)?,
                cpu_view(t.z2)?,
                cpu_view(t.x1)?,
                cpu_view(t.x2)?,
                cpu_view(t.pooled)?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let bufs = views
        .iter()
        .map(|v| {
            Ok([
                stats_buf(&v[0])?,
                stats_buf(&v[1])?,
                stats_buf(&v[2])?,
                stats_buf(&v[3])?,
                stats_buf(&v[4])?,
                stats_buf(&v[5])?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = Vec::with_capacity(3 * m + handles.agreement.len());
    for (i, b) in bufs.iter().enumerate() {
        inputs.push(handles.score[i].bind(b[0], &labels));
        inputs.push(handles.feature_diff[i].bind(b[1], b[2]));
        inputs.push(handles.input_diff[i].bind(b[3], b[4]));
    }
    let mut k = 0;
    for i in 0..m {
        for j in i + 1..m {
            inputs.push(handles.agreement[k].bind(bufs[i][5], bufs[j][5]));
            k += 1;
        }
    }
    let r = exec.run(&mut inputs)?;
    handles.inputs(r)
}
