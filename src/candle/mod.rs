//! Adapters for [candle](https://github.com/huggingface/candle) tensors (feature `candle`;
//! CUDA tensors with feature `candle-cuda`).
//!
//! **Start here:** [`RedReg`] — RedReg for a candle trainer in three calls (`new` from one
//! `VarMap` per encoder and the largest batch, `begin_epoch`, `step` per batch); the
//! complete trainer is `examples/minimal.rs`. The items below are the lower layers it is
//! built on, public for trainers that need another arrangement.
//!
//! - [`segments`]: one segment per parameter tensor (in the order given).
//! - [`view`]: the elements of a contiguous f32/f16/bf16 tensor on the CPU or (feature
//!   `candle-cuda`) CUDA, read in place (no flattening, no copy): `storage_and_layout()` →
//!   `Storage::Cpu` / `Storage::Cuda` → the slice from `layout.start_offset()`.
//! - [`TensorMemory`]: what differs between CPU and CUDA tensors (reading them in place,
//!   making results), for the one generic path of the projection and of the statistics.
//! - [`project_out_tensors`]: `out_i = alpha·base_i + beta_i·(v_i - P_i v_i)` for a list of
//!   tensors, `P_i` the projector onto the span of the basis tensors of tensor `i`.
//! - [`project_drift_into_grads`]: the RedReg update of one encoder, `grad_i += beta ·
//!   (d_i - P_i d_i)` with `d_i = theta_i - theta0_i` and the basis `span{grad_i, extra…}`,
//!   written back into a [`GradStore`].
//! - [`stats`]: RedReg's per-step statistics (`p_m`, redundancy, `pos_sim`) from CPU or
//!   CUDA tensors through the fused statistics plan, on an `OnDevice<Executors>`.
//!
//! What they run on is one mechanism for both roles ([`OnTensors`]): the projection
//! functions take a reference to a backend — [`CpuBackend`](crate::CpuBackend) for CPU
//! tensors, (feature `candle-cuda`) a [`crate::cuda::CudaBackend`] made by
//! `cuda_backend(&device)`, which runs on candle's own stream, or an [`OnDevice<Backends>`]
//! from [`OnDevice::<Backends>::for_device`], which picks one of them for a
//! `candle_core::Device` at run time; the statistics take `&mut` its executor the same way.
//!
//! # Launches and copies
//! One call is one tensor-list projection ([`crate::Backend::project_list`]) over all its
//! tensors: on CUDA 2 launches whatever the number of tensors (1 for k = 0), the
//! per-tensor pointer table uploaded with one host-to-device copy when the tensors moved
//! since the last call, and one device-to-host copy of the ranks (the only
//! synchronisation); on the CPU the same chunked loops as a flat buffer.
//!
//! Inputs are read in place. candle tensors are immutable values whose storage every clone
//! shares (the `GradStore` entry, the caller's own handles), so writing a result into an
//! input's storage would change tensors the caller never passed: every *result* is a new
//! tensor — on the CPU one host allocation per output tensor, on CUDA one device
//! allocation per output tensor written by the kernels and wrapped as candle storage (no
//! copy). [`project_drift_into_grads`] replaces the gradients in the `GradStore` by these
//! new tensors (the old ones are dropped when nothing else holds them); the drift
//! `theta - theta0` is formed in f64 inside the kernels, as in every backend's step
//! ([`crate::Projection::drift`]): no drift tensor, no rounding of the difference.
//!
//! # Storage and dtypes
//! Tensors must be on the backend's device (CPU storage for `CpuBackend`; CUDA storage on
//! the backend's stream for `CudaBackend`), contiguous (any start offset) and f32, f16 or
//! bf16; all tensors of one call must share the dtype and device of the first, and every
//! tensor must have the shape of the tensor it goes with. Any violation is an [`Error`],
//! never a panic, and nothing is written (the `GradStore` is only changed once every
//! tensor has been computed).

use crate::dtype::Element;
use crate::error::{check_count, invalid, Error, Result};
use crate::project::{Beta, Output, ProjectOptions, Projection, TensorList};
use crate::segments::Segments;

use candle_core::backprop::GradStore;
use candle_core::{DType as CDType, Storage, StorageRef, Tensor, Var, WithDType};

#[cfg(feature = "candle-cuda")]
mod cuda;
mod device;
mod memory;
mod optim;
mod project;
mod redreg;
pub mod stats;
pub use self::redreg::{RedReg, NOISE_SIGMA};
#[cfg(feature = "candle-cuda")]
pub use cuda::cuda_backend;
use device::Token;
pub use device::{Backends, Executors, OnDevice, OnTensors, Optimizers, Role};
pub use memory::{stats_buf, TensorMemory};
pub use optim::FusedOptimizer;
pub use project::TensorProjection;

/// Something that is, or holds, a candle [`Tensor`] (`Tensor`, `&Tensor`, [`Var`], `&Var`).
pub trait AsTensor {
    /// The tensor.
    fn tensor(&self) -> &Tensor;
}

impl AsTensor for Tensor {
    fn tensor(&self) -> &Tensor {
        self
    }
}

impl AsTensor for Var {
    fn tensor(&self) -> &Tensor {
        self.as_tensor()
    }
}

impl<T: AsTensor + ?Sized> AsTensor for &T {
    fn tensor(&self) -> &Tensor {
        (**self).tensor()
    }
}

/// The element types shared by redreg and candle: `f32`, `f16`, `bf16`.
#[cfg(not(feature = "candle-cuda"))]
pub trait CandleElement: Element + WithDType {
    /// The elements of a CPU storage of this dtype, writable.
    #[doc(hidden)]
    fn host_storage_mut(s: &mut candle_core::CpuStorage) -> Option<&mut Vec<Self>>;
}
/// The element types shared by redreg's kernels and candle's storage (with feature
/// `candle-cuda`, candle's CUDA storage too).
#[cfg(feature = "candle-cuda")]
pub trait CandleElement: Element + WithDType + candle_core::cuda::CudaDType {
    /// The elements of a CPU storage of this dtype, writable.
    #[doc(hidden)]
    fn host_storage_mut(s: &mut candle_core::CpuStorage) -> Option<&mut Vec<Self>>;
}
macro_rules! candle_element {
    ($t:ty, $v:ident) => {
        impl CandleElement for $t {
            fn host_storage_mut(s: &mut candle_core::CpuStorage) -> Option<&mut Vec<Self>> {
                match s {
                    candle_core::CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
candle_element!(f32, F32);
candle_element!(half::f16, F16);
candle_element!(half::bf16, BF16);

/// redreg's dtype of a candle dtype; `Err` for anything but f32, f16 and bf16.
pub fn dtype_of(dt: CDType) -> Result<crate::DType> {
    match dt {
        CDType::F32 => Ok(crate::DType::F32),
        CDType::F16 => Ok(crate::DType::F16),
        CDType::BF16 => Ok(crate::DType::BF16),
        other => Err(invalid(
            "tensor dtype",
            format!("{other:?} is not supported (f32, f16 and bf16 are)"),
        )),
    }
}

/// One segment per tensor, of its element count, in the order given.
pub fn segments<T: AsTensor>(tensors: &[T]) -> Result<Segments> {
    let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.tensor().dims()).collect();
    Segments::from_shapes(&shapes)
}

/// Deep copies of the tensors (new storage): the epoch-start snapshot `theta_0`. A plain
/// `clone()` or `detach()` would share the storage that the optimizer overwrites in place.
pub fn snapshot<T: AsTensor>(params: &[T]) -> Result<Vec<Tensor>> {
    params
        .iter()
        .map(|p| p.tensor().copy().map_err(candle_err("snapshot")))
        .collect()
}

fn candle_err(what: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |source| Error::Candle {
        context: what,
        source,
    }
}

/// A read lock on a contiguous tensor's storage (CPU or CUDA) with its element range: see
/// [`view`].
pub struct TensorView<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
    dtype: crate::DType,
}

impl std::fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl TensorView<'_> {
    /// The tensor's dtype.
    pub fn dtype(&self) -> crate::DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `Err` unless `T` is the tensor's dtype.
    fn check_dtype<T: Element>(&self) -> Result<()> {
        if T::DTYPE == self.dtype {
            return Ok(());
        }
        Err(invalid(
            "tensor dtype",
            format!("tensor is {:?}, requested {:?}", self.dtype, T::DTYPE),
        ))
    }

    /// `Err` unless the view's range lies in a storage of `storage_len` elements.
    fn range(&self, storage_len: usize) -> Result<std::ops::Range<usize>> {
        let end = self.start + self.len;
        if end <= storage_len {
            return Ok(self.start..end);
        }
        Err(invalid(
            "tensor layout",
            format!(
                "elements {}..{end} outside a storage of {storage_len}",
                self.start
            ),
        ))
    }

    /// The elements of a CPU tensor, in place. `Err` if `T` is not the tensor's dtype or
    /// the storage is not on the CPU.
    pub fn as_slice<T: CandleElement>(&self) -> Result<&[T]> {
        self.check_dtype::<T>()?;
        let all = self
            .cpu_storage()?
            .as_slice::<T>()
            .map_err(candle_err("tensor storage"))?;
        Ok(&all[self.range(all.len())?])
    }

    /// The storage of a CPU tensor (`Err`, saying what to use instead, for another one).
    fn cpu_storage(&self) -> Result<&candle_core::CpuStorage> {
        match &*self.guard {
            Storage::Cpu(cs) => Ok(cs),
            _ => Err(invalid(
                "tensor storage",
                format!("a tensor not on the CPU was given to the CPU backend; {CUDA_HINT}"),
            )),
        }
    }
}

/// What to do with a CUDA tensor that reached the CPU side.
const CUDA_HINT: &str = if cfg!(feature = "candle-cuda") {
    "use the CUDA backend (redreg::candle::cuda_backend(&device))"
} else {
    "CUDA tensors need redreg's feature `candle-cuda` (or pass their device memory to the \
     CUDA backend's raw-pointer path)"
};

/// Read access to the elements of `t` without a copy, on the device they are on: CPU
/// storage, and with feature `candle-cuda` CUDA storage. `Err` for storage of another
/// device (or CUDA storage without `candle-cuda`), a tensor that is not contiguous, or a
/// dtype other than f32, f16 and bf16. The typed elements: [`TensorView::as_slice`] (CPU)
/// or, with `candle-cuda`, `TensorView::view` (CUDA). Holds candle's read lock on the
/// storage while the view lives: do not update the same variable (`Var::set`, an optimizer
/// step) before dropping it.
pub fn view(t: &Tensor) -> Result<TensorView<'_>> {
    let dtype = dtype_of(t.dtype())?;
    let (guard, layout) = t.storage_and_layout();
    match &*guard {
        Storage::Cpu(_) => {}
        #[cfg(feature = "candle-cuda")]
        Storage::Cuda(_) => {}
        #[allow(unreachable_patterns)]
        _ => {
            return Err(invalid(
                "tensor storage",
                format!(
                    "unsupported device {:?} (CPU{} storage is supported; {CUDA_HINT})",
                    t.device().location(),
                    if cfg!(feature = "candle-cuda") {
                        " and CUDA"
                    } else {
                        ""
                    },
                ),
            ))
        }
    }
    check_contiguous(layout)?;
    Ok(TensorView {
        start: layout.start_offset(),
        len: layout.shape().elem_count(),
        dtype,
        guard,
    })
}

/// `Err` unless the layout is contiguous (any start offset).
fn check_contiguous(layout: &candle_core::Layout) -> Result<()> {
    if layout.is_contiguous() {
        return Ok(());
    }
    Err(invalid(
        "tensor layout",
        format!(
            "tensor of shape {:?} with strides {:?} is not contiguous (call .contiguous())",
            layout.dims(),
            layout.stride()
        ),
    ))
}

/// `Err` unless `t` has the device, dtype and shape of `first`.
fn check_same(name: &'static str, i: usize, first: &Tensor, t: &Tensor) -> Result<()> {
    check_kind(name, i, first, t)?;
    if t.dims() != first.dims() {
        return Err(invalid(
            name,
            format!(
                "tensor {i} has shape {:?}, expected {:?}",
                t.dims(),
                first.dims()
            ),
        ));
    }
    Ok(())
}

/// `Err` unless `t` has the device and dtype of `first` (the tensors of one call are one
/// tensor list: one dtype, one device).
fn check_kind(name: &'static str, i: usize, first: &Tensor, t: &Tensor) -> Result<()> {
    if !t.device().same_device(first.device()) {
        return Err(invalid(
            name,
            format!(
                "tensor {i} is on {:?}, expected {:?}",
                t.device().location(),
                first.device().location()
            ),
        ));
    }
    if t.dtype() != first.dtype() {
        return Err(invalid(
            name,
            format!(
                "tensor {i} is {:?}, expected {:?}",
                t.dtype(),
                first.dtype()
            ),
        ));
    }
    Ok(())
}

/// One list of the tensors' handles (cheap clones: candle tensors share their storage).
fn list<T: AsTensor>(ts: &[T]) -> TensorList<Tensor> {
    TensorList(ts.iter().map(|t| t.tensor().clone()).collect())
}

/// `out_i = alpha·base_i + beta_i·(v_i - P_i v_i)` for every tensor `i` of `v`, with `P_i`
/// the projector onto `span{basis[0][i], basis[1][i], …}` (`k = basis.len() <= 8` lists,
/// each with one tensor per tensor of `v`) and `beta_i = beta.get(i)` (per tensor or one
/// scalar). `base = None` drops the base term. Returns the new tensors (same shape, dtype
/// and device as `v_i`) and the rank of each tensor's basis.
///
/// Each tensor is one segment of one tensor list, read in place from candle's storage:
/// [`crate::Backend::project_list`] into one new host buffer per tensor, or (feature
/// `candle-cuda`) one new device buffer per tensor on the backend's stream — 2 launches for
/// any number of tensors, a single device-to-host copy of the ranks at the end. All tensors
/// must share the dtype and the backend's device (`Err` otherwise).
#[allow(clippy::too_many_arguments)]
pub fn project_out_tensors<Bk: OnTensors<Backends>, V: AsTensor, B: AsTensor>(
    backend: Bk,
    v: &[V],
    basis: &[&[B]],
    base: Option<&[B]>,
    alpha: f64,
    beta: Beta<'_>,
    opts: &ProjectOptions,
) -> Result<(Vec<Tensor>, Vec<u32>)> {
    crate::project::check_k(basis.len())?;
    crate::project::check_finite("alpha", alpha)?;
    beta.validate(v.len())?;
    opts.validate()?;
    for b in basis {
        check_count("basis tensors (one per tensor of v)", v.len(), b.len())?;
    }
    if let Some(b) = base {
        check_count("base tensors (one per tensor of v)", v.len(), b.len())?;
    }
    for (i, vi) in v.iter().enumerate() {
        let vi = vi.tensor();
        dtype_of(vi.dtype())?;
        check_kind("v", i, v[0].tensor(), vi)?;
        for b in basis {
            check_same("basis", i, vi, b[i].tensor())?;
        }
        if let Some(b) = base {
            check_same("base", i, vi, b[i].tensor())?;
        }
    }
    let p = Projection::new(
        list(v),
        basis.iter().map(|b| list(b)),
        Output::Write {
            base: base.map(list),
            out: (),
        },
    )
    .alpha(alpha)
    .beta(beta)
    .opts(*opts);
    backend.on_tensors(&p, Token)
}

/// The RedReg update of one encoder from candle: for every parameter tensor `i`,
/// `grad_i ← grad_i + beta·(d_i - P_i d_i)` with `d_i = params_i - theta0_i` (formed in f64
/// inside the kernels, not rounded to the dtype) and `P_i` the projector onto
/// `span{grad_i, extra[0][i], extra[1][i], …}` (k = 1 + `extra.len()`; k = 1 is the
/// authors' script with `opts.ridge = 1e-12`). A parameter without a gradient in `grads`
/// is treated as having a zero gradient, so it receives `beta·d_i` (the script's
/// "`g` absent: `d_perp = d`").
///
/// The new gradients are new tensors (one buffer each on the parameters' device; candle
/// tensors are immutable) that replace the old ones in `grads`, inserted only after all of
/// them were computed, so an `Err` leaves `grads` unchanged. Returns each tensor's rank.
pub fn project_drift_into_grads<Bk: OnTensors<Backends>, P: AsTensor, Q: AsTensor>(
    backend: Bk,
    params: &[P],
    theta0: &[Q],
    grads: &mut GradStore,
    extra: &[&[Tensor]],
    beta: f64,
    opts: &ProjectOptions,
) -> Result<Vec<u32>> {
    check_count(
        "theta0 tensors (one per parameter)",
        params.len(),
        theta0.len(),
    )?;
    crate::project::check_k(1 + extra.len())?;
    crate::project::check_finite("beta", beta)?;
    opts.validate()?;
    for e in extra {
        check_count(
            "extra basis tensors (one per parameter)",
            params.len(),
            e.len(),
        )?;
    }
    let mut grad = Vec::with_capacity(params.len());
    for (i, (p, p0)) in params.iter().zip(theta0).enumerate() {
        let (p, p0) = (p.tensor(), p0.tensor());
        dtype_of(p.dtype())?;
        check_kind("params", i, params[0].tensor(), p)?;
        check_same("theta0", i, p, p0)?;
        let g = match grads.get(p) {
            Some(g) => g.clone(),
            None => p.zeros_like().map_err(candle_err("zero gradient"))?,
        };
        check_same("gradient", i, p, &g)?;
        for e in extra {
            check_same("extra basis", i, p, &e[i])?;
        }
        grad.push(g);
    }
    let grad = TensorList(grad);
    // grad + beta·(d - P d): the gradient is basis vector 0 and the base term.
    let mut p = Projection::new(
        list(params),
        std::iter::once(grad.clone()).chain(extra.iter().map(|e| list(e))),
        Output::Write {
            base: Some(grad),
            out: (),
        },
    )
    .beta(beta)
    .opts(*opts);
    p.v0 = Some(list(theta0));
    let (new, ranks) = backend.on_tensors(&p, Token)?;
    for (p, g) in params.iter().zip(new) {
        grads.insert(p.tensor(), g);
    }
    Ok(ranks)
}
