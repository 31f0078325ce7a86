//! Adapters for [candle](https://github.com/huggingface/candle) tensors (feature `candle`).
//!
//! - [`segments`]: one segment per parameter tensor (in the order given).
//! - [`cpu_view`]: the elements of a contiguous f32/f16/bf16 tensor with CPU storage, read
//!   in place (no flattening, no copy): `storage_and_layout()` → `Storage::Cpu` →
//!   `as_slice::<T>()` from `layout.start_offset()`.
//! - [`project_out_tensors`]: `out_i = alpha·base_i + beta_i·(v_i - P_i v_i)` for a list of
//!   tensors, `P_i` the projector onto the span of the basis tensors of tensor `i`.
//! - [`project_drift_into_grads`]: the RedReg update of one encoder, `grad_i += beta ·
//!   (d_i - P_i d_i)` with `d_i = theta_i - theta0_i` and the basis `span{grad_i, extra…}`,
//!   written back into a [`GradStore`].
//!
//! # Copies
//! Inputs are read in place. candle tensors are immutable, so every *result* is a new
//! tensor built from a new host buffer (`Tensor::from_vec`): on the CPU that is one
//! allocation and one write of each output tensor, and [`project_drift_into_grads`]
//! replaces the gradients in the `GradStore` by these new tensors (the old ones are
//! dropped when nothing else holds them). The drift `theta - theta0` is formed in a
//! scratch buffer per tensor.
//!
//! # Storage and dtypes
//! Only CPU storage is accepted. CUDA tensors return `Err` here: they go through the
//! raw-pointer path of the CUDA backend (a `&CudaSlice<T>` from
//! `Storage::Cuda(cs) → cs.as_cuda_slice::<T>()`). Tensors must be contiguous (any start
//! offset) and f32, f16 or bf16; all tensors of one call must share the dtype of the first,
//! and every tensor must have the shape of the tensor it goes with. Any violation is an
//! [`Error`], never a panic, and nothing is written (the `GradStore` is only changed once
//! every tensor has been computed).

use crate::dtype::Element;
use crate::error::{check_count, invalid, Error, Result};
use crate::projection::{Beta, Output, ProjectOptions};
use crate::segments::Segments;
use crate::CpuBackend;
use candle_core::backprop::GradStore;
use candle_core::{DType as CDType, Storage, StorageRef, Tensor, Var, WithDType};

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
pub trait CandleElement: Element + WithDType {}
impl CandleElement for f32 {}
impl CandleElement for half::f16 {}
impl CandleElement for half::bf16 {}

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
    move |e| invalid(what, format!("candle: {e}"))
}

/// A read lock on a contiguous CPU tensor's storage with its element range: see
/// [`cpu_view`].
pub struct CpuView<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
    dtype: crate::DType,
}

impl std::fmt::Debug for CpuView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuView")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl CpuView<'_> {
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

    /// The elements, in place. `Err` if `T` is not the tensor's dtype.
    pub fn as_slice<T: CandleElement>(&self) -> Result<&[T]> {
        if <T as Element>::DTYPE != self.dtype {
            return Err(invalid(
                "tensor dtype",
                format!(
                    "tensor is {:?}, requested {:?}",
                    self.dtype,
                    <T as Element>::DTYPE
                ),
            ));
        }
        let Storage::Cpu(cs) = &*self.guard else {
            return Err(invalid("tensor storage", "not CPU storage"));
        };
        let all = cs.as_slice::<T>().map_err(candle_err("tensor storage"))?;
        all.get(self.start..self.start + self.len).ok_or_else(|| {
            invalid(
                "tensor layout",
                format!(
                    "elements {}..{} outside a storage of {}",
                    self.start,
                    self.start + self.len,
                    all.len()
                ),
            )
        })
    }
}

/// Read access to the elements of `t` without a copy. `Err` unless `t` has CPU storage
/// (CUDA tensors: use the CUDA backend's raw-pointer path), is contiguous and is f32, f16
/// or bf16. Holds candle's read lock on the storage while the view lives: do not update
/// the same variable (`Var::set`, an optimizer step) before dropping it.
pub fn cpu_view(t: &Tensor) -> Result<CpuView<'_>> {
    let dtype = dtype_of(t.dtype())?;
    let (guard, layout) = t.storage_and_layout();
    match &*guard {
        Storage::Cpu(_) => {}
        Storage::Cuda(_) => {
            return Err(invalid(
                "tensor storage",
                "CUDA tensors are not accepted by the candle CPU adapter; pass their device \
                 memory (Storage::Cuda → as_cuda_slice) to the CUDA backend's raw-pointer path",
            ))
        }
        #[allow(unreachable_patterns)]
        _ => {
            return Err(invalid(
                "tensor storage",
                format!("unsupported device {:?} (only CPU storage)", t.device()),
            ))
        }
    }
    if !layout.is_contiguous() {
        return Err(invalid(
            "tensor layout",
            format!(
                "tensor of shape {:?} with strides {:?} is not contiguous (call .contiguous())",
                layout.dims(),
                layout.stride()
            ),
        ));
    }
    Ok(CpuView {
        start: layout.start_offset(),
        len: layout.shape().elem_count(),
        dtype,
        guard,
    })
}

fn check_same(name: &'static str, i: usize, first: &Tensor, t: &Tensor) -> Result<()> {
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

/// `out_i = alpha·base_i + beta_i·(v_i - P_i v_i)` for every tensor `i` of `v`, with `P_i`
/// the projector onto `span{basis[0][i], basis[1][i], …}` (`k = basis.len() <= 8` lists,
/// each with one tensor per tensor of `v`) and `beta_i = beta.get(i)` (per tensor or one
/// scalar). `base = None` drops the base term. Returns the new tensors (same shape, dtype
/// and device as `v_i`) and the rank of each tensor's basis.
///
/// Each tensor is one segment, projected in place from candle's storage by
/// [`CpuBackend::project_out`]; the outputs are new tensors (one host buffer each).
#[allow(clippy::too_many_arguments)]
pub fn project_out_tensors<V: AsTensor, B: AsTensor>(
    backend: &CpuBackend,
    v: &[V],
    basis: &[&[B]],
    base: Option<&[B]>,
    alpha: f64,
    beta: Beta<'_>,
    opts: &ProjectOptions,
) -> Result<(Vec<Tensor>, Vec<u32>)> {
    crate::projection::check_k(basis.len())?;
    beta.validate(v.len())?;
    for b in basis {
        check_count("basis tensors (one per tensor of v)", v.len(), b.len())?;
    }
    if let Some(b) = base {
        check_count("base tensors (one per tensor of v)", v.len(), b.len())?;
    }
    let mut outs = Vec::with_capacity(v.len());
    let mut ranks = Vec::with_capacity(v.len());
    for (i, vi) in v.iter().enumerate() {
        let vi = vi.tensor();
        for b in basis {
            check_same("basis", i, vi, b[i].tensor())?;
        }
        if let Some(b) = base {
            check_same("base", i, vi, b[i].tensor())?;
        }
        let bi: Vec<&Tensor> = basis.iter().map(|b| b[i].tensor()).collect();
        let base_i = base.map(|b| b[i].tensor());
        let (t, r) = match dtype_of(vi.dtype())? {
            crate::DType::F32 => one::<f32>(backend, vi, &bi, base_i, alpha, beta.get(i), opts)?,
            crate::DType::F16 => {
                one::<half::f16>(backend, vi, &bi, base_i, alpha, beta.get(i), opts)?
            }
            crate::DType::BF16 => {
                one::<half::bf16>(backend, vi, &bi, base_i, alpha, beta.get(i), opts)?
            }
        };
        outs.push(t);
        ranks.push(r);
    }
    Ok((outs, ranks))
}

fn one<T: CandleElement>(
    backend: &CpuBackend,
    v: &Tensor,
    basis: &[&Tensor],
    base: Option<&Tensor>,
    alpha: f64,
    beta: f64,
    opts: &ProjectOptions,
) -> Result<(Tensor, u32)> {
    let vv = cpu_view(v)?;
    let bv: Vec<CpuView<'_>> = basis.iter().map(|b| cpu_view(b)).collect::<Result<_>>()?;
    let basev = base.map(cpu_view).transpose()?;
    let vs = vv.as_slice::<T>()?;
    let bs: Vec<&[T]> = bv
        .iter()
        .map(|b| b.as_slice::<T>())
        .collect::<Result<_>>()?;
    let base_s = basev.as_ref().map(|b| b.as_slice::<T>()).transpose()?;
    let mut out = vec![T::default(); vs.len()];
    let segs = Segments::from_lengths(&[vs.len()])?;
    let r = backend.project_out(
        &segs,
        vs,
        &bs,
        Output::Write {
            base: base_s,
            out: &mut out,
        },
        alpha,
        Beta::Scalar(beta),
        opts,
    )?;
    let t = Tensor::from_vec(out, v.dims(), v.device()).map_err(candle_err("output tensor"))?;
    Ok((t, r[0]))
}

/// The RedReg update of one encoder from candle: for every parameter tensor `i`,
/// `grad_i ← grad_i + beta·(d_i - P_i d_i)` with `d_i = params_i - theta0_i` (rounded to
/// the dtype, like candle's own subtraction) and `P_i` the projector onto
/// `span{grad_i, extra[0][i], extra[1][i], …}` (k = 1 + `extra.len()`; k = 1 is the
/// authors' script with `opts.ridge = 1e-12`). A parameter without a gradient in `grads`
/// is treated as having a zero gradient, so it receives `beta·d_i` (the script's
/// "`g` absent: `d_perp = d`").
///
/// The new gradients are new tensors (one host buffer each; candle tensors are
/// immutable) that replace the old ones in `grads`, inserted only after all of them were
/// computed, so an `Err` leaves `grads` unchanged. Returns each tensor's rank.
pub fn project_drift_into_grads<P: AsTensor, Q: AsTensor>(
    backend: &CpuBackend,
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
    crate::projection::check_k(1 + extra.len())?;
    let mut new = Vec::with_capacity(params.len());
    let mut ranks = Vec::with_capacity(params.len());
    for (i, (p, p0)) in params.iter().zip(theta0).enumerate() {
        let (p, p0) = (p.tensor(), p0.tensor());
        check_same("theta0", i, p, p0)?;
        let zero;
        let g = match grads.get(p) {
            Some(g) => g,
            None => {
                zero = p.zeros_like().map_err(candle_err("zero gradient"))?;
                &zero
            }
        };
        check_same("gradient", i, p, g)?;
        let mut basis: Vec<&Tensor> = vec![g];
        for e in extra {
            check_count(
                "extra basis tensors (one per parameter)",
                params.len(),
                e.len(),
            )?;
            check_same("extra basis", i, p, &e[i])?;
            basis.push(&e[i]);
        }
        let (t, r) = match dtype_of(p.dtype())? {
            crate::DType::F32 => drift_one::<f32>(backend, p, p0, &basis, beta, opts)?,
            crate::DType::F16 => drift_one::<half::f16>(backend, p, p0, &basis, beta, opts)?,
            crate::DType::BF16 => drift_one::<half::bf16>(backend, p, p0, &basis, beta, opts)?,
        };
        new.push(t);
        ranks.push(r);
    }
    for (p, g) in params.iter().zip(new) {
        grads.insert(p.tensor(), g);
    }
    Ok(ranks)
}

fn drift_one<T: CandleElement>(
    backend: &CpuBackend,
    p: &Tensor,
    p0: &Tensor,
    basis: &[&Tensor],
    beta: f64,
    opts: &ProjectOptions,
) -> Result<(Tensor, u32)> {
    let drift: Vec<T> = {
        let (pv, p0v) = (cpu_view(p)?, cpu_view(p0)?);
        let (a, b) = (pv.as_slice::<T>()?, p0v.as_slice::<T>()?);
        a.iter()
            .zip(b)
            .map(|(&x, &y)| T::from_f32(x.to_f32() - y.to_f32()))
            .collect()
    };
    let bv: Vec<CpuView<'_>> = basis.iter().map(|b| cpu_view(b)).collect::<Result<_>>()?;
    let bs: Vec<&[T]> = bv
        .iter()
        .map(|b| b.as_slice::<T>())
        .collect::<Result<_>>()?;
    let mut out = vec![T::default(); drift.len()];
    let segs = Segments::from_lengths(&[drift.len()])?;
    let r = backend.project_out(
        &segs,
        &drift,
        &bs,
        Output::Write {
            base: Some(bs[0]),
            out: &mut out,
        },
        1.0,
        Beta::Scalar(beta),
        opts,
    )?;
    let t = Tensor::from_vec(out, p.dims(), p.device()).map_err(candle_err("output tensor"))?;
    Ok((t, r[0]))
}
