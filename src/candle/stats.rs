//! candle tensors as inputs of the fused statistics plan ([`crate::stats`]): RedReg's
//! per-step statistics (`p_m`, the redundancy ratios, `pos_sim`) computed straight from a
//! trainer's tensors, read in place, on the device the tensors are on: [`CpuStats`](crate::stats::CpuStats) for CPU
//! tensors, (feature `candle-cuda`) `CudaStats` for CUDA tensors (as cudarc views of
//! candle's storage, on candle's stream), or an [`OnDevice<Executors>`](super::OnDevice), chosen from a
//! `candle_core::Device`. One generic path serves them all: the tensors are read as the
//! buffers of the executor's memory family ([`TensorMemory`]) and bound by
//! [`RedRegStats::run`]. Any batch of 1 to the declared B samples runs (the last, smaller
//! batch of an epoch).
//!
//! The plan is declared once for the largest batch (here from a first batch's tensors);
//! [`crate::candle::RedReg`] does all of this, and the controller's step, for you:
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use redreg::candle::stats::{modality_shapes, step_inputs, ModalityTensors};
//! use redreg::candle::{Executors, OnDevice};
//! use redreg::controller::RedRegStats;
//! use redreg::stats::StatsPlan;
//! # fn main() -> redreg::Result<()> {
//! let dev = Device::Cpu;
//! let (b, c, d) = (8, 3, 5); // batch (the largest), classes, pooled width (equal for all)
//! let mk = |cols: usize| Tensor::randn(0f32, 1.0, (b, cols), &dev);
//! let [la, pa, xa1, xa2, za1, za2] = [mk(c)?, mk(d)?, mk(6)?, mk(6)?, mk(d)?, mk(d)?];
//! let [lb, pb, xb1, xb2, zb1, zb2] = [mk(c)?, mk(d)?, mk(4)?, mk(4)?, mk(d)?, mk(d)?];
//! let a = ModalityTensors { logits: &la, pooled: &pa, x1: &xa1, x2: &xa2, z1: &za1, z2: &za2 };
//! let m_b = ModalityTensors { logits: &lb, pooled: &pb, x1: &xb1, x2: &xb2, z1: &zb1, z2: &zb2 };
//! let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &dev)?;
//!
//! let shapes = [modality_shapes(&a)?, modality_shapes(&m_b)?]; // from a full batch
//! let mut plan = StatsPlan::new();
//! let handles = RedRegStats::declare(&mut plan, &shapes)?;
//! let mut exec = OnDevice::<Executors>::for_device(&dev, &plan)?; // CPU or CUDA
//! // every step (any batch of 1 to 8 samples):
//! let inputs = step_inputs(&mut exec, &handles, &labels, &[a, m_b])?; // → Controller::observe
//! assert_eq!(inputs.scores.len(), 2);
//! # Ok(()) }
//! ```

use super::device::{Executors, OnTensors, Token};
use super::{candle_err, dtype_of, stats_buf, TensorMemory, TensorView};
use crate::controller::{ModalityBufs, ModalityShapes, RedRegStats, StepInputs};
use crate::error::{invalid, Result};
use crate::stats::Stats;
use candle_core::{DType as CDType, Tensor};

/// One modality's tensors of one RedReg step, all with the same B samples (1 up to the
/// declared batch) and one dtype (f32, f16 or bf16).
#[derive(Clone, Copy, Debug)]
pub struct ModalityTensors<'a> {
    /// The unimodal head's logits, B×C.
    pub logits: &'a Tensor,
    /// Encoder features of the two noisy copies `x1`, `x2`, computed without gradient
    /// (`detach()`); unpooled, any shape with the same whole number of elements per sample
    /// in both.
    pub z1: &'a Tensor,
    /// See `z1`.
    pub z2: &'a Tensor,
    /// Two noisy copies of the modality's (undropped) input, `x + n1` and `x + n2`, with
    /// independent Gaussian noise of standard deviation 0.03 (the authors' script;
    /// [`crate::candle::NOISE_SIGMA`]); any shape with the same whole number of elements
    /// per sample in both. The redundancy is `mean((z1 - z2)^2) / (mean((x1 - x2)^2) +
    /// eps)`.
    pub x1: &'a Tensor,
    /// See `x1`.
    pub x2: &'a Tensor,
    /// Pooled features for the agreement `pos_sim`, B×D; **D must be the same for every
    /// modality** (the agreement is the per-sample cosine between two modalities' rows).
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

/// Class labels as the plan reads them: a rank-1 u8, u32 or i64 tensor as a contiguous i64
/// tensor on the same device (the same tensor when it already is one; else one cast of B
/// values on its device).
fn labels_tensor(labels: &Tensor) -> Result<Tensor> {
    if labels.rank() != 1 {
        return Err(invalid(
            "labels",
            format!(
                "must be a vector of B class indices, got shape {:?}",
                labels.dims()
            ),
        ));
    }
    match labels.dtype() {
        CDType::U8 | CDType::U32 | CDType::I64 => labels
            .to_dtype(CDType::I64)
            .and_then(|t| t.contiguous())
            .map_err(candle_err("labels")),
        other => Err(invalid(
            "labels",
            format!("dtype {other:?} is not a class index type (u8, u32, i64)"),
        )),
    }
}

/// Class labels as the plan takes them (`i64`): a rank-1 CPU tensor of u8, u32 or i64.
/// One small copy (B values).
pub fn labels_i64(labels: &Tensor) -> Result<Vec<i64>> {
    let t = labels_tensor(labels)?;
    if !labels.device().is_cpu() {
        return Err(invalid("labels", "not a CPU tensor"));
    }
    t.to_vec1::<i64>().map_err(candle_err("labels"))
}

/// One step of the statistics on `exec` (the one path for every memory family): the
/// tensors read in place as its memory's buffers (each vetted by [`TensorMemory::tensor_view`]),
/// bound and run by [`RedRegStats::run`].
pub(super) fn step_on<'m, S>(
    exec: &mut S,
    handles: &RedRegStats,
    labels: &Tensor,
    mods: &[ModalityTensors<'m>],
) -> Result<StepInputs>
where
    S: Stats,
    S::Memory: TensorMemory<Stats = S>,
{
    type M<S> = <S as Stats>::Memory;
    handles.check_modalities(mods.len())?;
    let stream = M::<S>::stats_stream(exec);
    M::<S>::check(stream, "labels", labels)?;
    let labels = labels_tensor(labels)?;
    let (storage, layout) = labels.storage_and_layout();
    let start = layout.start_offset();
    let labels = M::<S>::labels(&storage, start..start + labels.elem_count())?;
    let view = |what: &'static str, t: &'m Tensor| -> Result<TensorView<'m>> {
        M::<S>::tensor_view(stream, what, t)
    };
    let views = mods
        .iter()
        .map(|t| {
            Ok([
                view("logits", t.logits)?,
                view("z1", t.z1)?,
                view("z2", t.z2)?,
                view("x1", t.x1)?,
                view("x2", t.x2)?,
                view("pooled features", t.pooled)?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let bufs = views
        .iter()
        .map(|v| {
            Ok(ModalityBufs {
                logits: stats_buf::<S::Memory>(&v[0])?,
                z1: stats_buf::<S::Memory>(&v[1])?,
                z2: stats_buf::<S::Memory>(&v[2])?,
                x1: stats_buf::<S::Memory>(&v[3])?,
                x2: stats_buf::<S::Memory>(&v[4])?,
                pooled: stats_buf::<S::Memory>(&v[5])?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    handles.run(exec, &labels, &bufs)
}

/// Runs the plan of `handles` (declared by [`RedRegStats::declare`] in `exec`'s plan) on
/// one step's tensors, in one pass, on the executor's device ([`CpuStats`](crate::stats::CpuStats), `CudaStats`,
/// `OnDevice<Executors>`), and returns the controller's inputs. `labels` are the batch's class
/// indices (a rank-1 u8, u32 or i64 tensor on the same device); `mods` one entry per
/// modality, in the order of the declaration. The batch may be smaller than the declared
/// one (1 to B samples, the same in every tensor): the statistics are then the means over
/// the samples given.
///
/// `Err` (before anything is computed) for a tensor on another device (or, on CUDA,
/// another stream), a non-contiguous tensor, an unsupported dtype, a modality count that
/// differs from the declaration, more samples than declared or tensors that are not a
/// whole number of samples; `Err` after the run for a label outside `0..C`.
pub fn step_inputs<S: OnTensors<Executors>>(
    exec: S,
    handles: &RedRegStats,
    labels: &Tensor,
    mods: &[ModalityTensors<'_>],
) -> Result<StepInputs> {
    exec.on_tensors((handles, labels, mods), Token)
}
