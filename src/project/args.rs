//! The arguments of every backend's projection ([`crate::Backend`]): [`Projection`] (the
//! one arguments struct, with the one validation all backends run before touching data),
//! [`Output`], [`Beta`], [`ProjectOptions`], the split form's [`Partials`], and the buffer
//! traits that let host slices and device views share them.

use crate::abi::{MODE_B0_OUT, MODE_BASE, MODE_INPLACE, MODE_NONE};
use crate::error::{check_count, check_len, invalid, Error, Result};
use crate::project::solve::{partial_stride, rhs_index, tri_index, MAX_K};
use crate::segments::Segments;

/// Numerical options of `project_out` and `orthonormalize`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProjectOptions {
    /// Rank threshold: a basis vector whose residual norm (after removing the span of the
    /// earlier kept vectors) is ≤ `tol` × its own norm is dropped. `0 <= tol < 1`.
    /// Default `1e-7` (`src/project/solve.rs` and `docs/numerics.md` say why it should not be smaller).
    pub tol: f64,
    /// Added to the diagonal of the Gram matrix before the solve. Default `1e-12`: the
    /// authors' script divides by `g·g + 1e-12`, and k = 1 reproduces it exactly. Use
    /// [`ProjectOptions::exact`] (ridge 0) for the exact orthogonal projector.
    pub ridge: f64,
}

impl Default for ProjectOptions {
    fn default() -> Self {
        Self {
            tol: 1e-7,
            ridge: 1e-12,
        }
    }
}

impl ProjectOptions {
    /// The exact orthogonal projector: default `tol`, `ridge = 0`.
    pub fn exact() -> Self {
        Self {
            ridge: 0.0,
            ..Self::default()
        }
    }

    /// `Err` unless `0 <= tol < 1` and `ridge` is finite and `>= 0`.
    pub fn validate(&self) -> Result<()> {
        check_tol(self.tol)?;
        if !(self.ridge.is_finite() && self.ridge >= 0.0) {
            return Err(invalid(
                "ridge",
                format!("must be finite and >= 0, got {}", self.ridge),
            ));
        }
        Ok(())
    }
}

/// The factor β of the projected term: one value for all segments or one per segment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Beta<'a> {
    /// The same β for every segment.
    Scalar(f64),
    /// β per segment; its length must equal the number of segments.
    PerSegment(&'a [f64]),
}

impl<'a> Beta<'a> {
    /// β of segment `s` (after [`Beta::validate`], so `s` is in range).
    #[inline]
    pub(crate) fn at(&self, s: usize) -> f64 {
        match self {
            Beta::Scalar(b) => *b,
            Beta::PerSegment(b) => b[s],
        }
    }

    /// `Err` on a wrong length or a non-finite value.
    pub fn validate(&self, segments: usize) -> Result<()> {
        match self {
            Beta::Scalar(b) => check_finite("beta", *b),
            Beta::PerSegment(b) => {
                check_count("beta (per segment)", segments, b.len())?;
                if let Some(i) = b.iter().position(|x| !x.is_finite()) {
                    return Err(invalid(
                        "beta",
                        format!("beta[{i}] = {} is not finite", b[i]),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl From<f64> for Beta<'_> {
    fn from(b: f64) -> Self {
        Beta::Scalar(b)
    }
}

impl<'a> From<&'a [f64]> for Beta<'a> {
    fn from(b: &'a [f64]) -> Self {
        Beta::PerSegment(b)
    }
}

/// `Err` unless `x` is finite.
pub(crate) fn check_finite(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(invalid(name, format!("must be finite, got {x}")))
    }
}

/// A buffer an operation reads or writes: host slices, or device views with feature `cuda`,
/// or a [`TensorList`] of either.
pub trait Buffer {
    /// Number of elements.
    fn len(&self) -> usize;
    /// True for a buffer without elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `Err` unless the buffer named `name` covers `segs` exactly: a flat buffer holds
    /// `segs.total()` elements; a [`TensorList`] holds one buffer per segment, each of the
    /// segment's length.
    fn check_layout(&self, name: &'static str, segs: &Segments) -> Result<()> {
        segs.check_buffer(name, self.len())
    }
}

impl<T> Buffer for &[T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
}

impl<T> Buffer for &mut [T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
}

/// A tensor list: one buffer per segment, each its own allocation — a model's parameter
/// tensors as candle, tch-rs or burn hold them. In a [`Projection`] given to
/// [`crate::Backend::project_list`] it stands where a flat buffer stands in
/// [`crate::Backend::project_out`]; the results are bit for bit those of packing the
/// tensors into one flat buffer first (the same chunks, the same summation order), and on
/// CUDA the call is the same fixed number of launches whatever the number of tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorList<B>(pub Vec<B>);

/// The empty list (no bound on `B`: device views have no default).
impl<B> Default for TensorList<B> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<B> TensorList<B> {
    /// The buffers, one per segment.
    pub fn new(buffers: Vec<B>) -> Self {
        Self(buffers)
    }

    /// Number of tensors (segments).
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The buffers.
    pub fn as_slice(&self) -> &[B] {
        &self.0
    }
}

impl<B> From<Vec<B>> for TensorList<B> {
    fn from(buffers: Vec<B>) -> Self {
        Self(buffers)
    }
}

impl<B> FromIterator<B> for TensorList<B> {
    fn from_iter<I: IntoIterator<Item = B>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<B: Buffer> Buffer for TensorList<B> {
    /// Total number of elements over all tensors.
    fn len(&self) -> usize {
        self.0.iter().map(Buffer::len).sum()
    }

    fn check_layout(&self, name: &'static str, segs: &Segments) -> Result<()> {
        check_count(name, segs.len(), self.0.len())?;
        for (i, b) in self.0.iter().enumerate() {
            if b.len() != segs.seg_len(i) {
                return Err(invalid(
                    name,
                    format!(
                        "tensor {i} has {} elements, segment {i} has {}",
                        b.len(),
                        segs.seg_len(i)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Where a projection writes `alpha·base + beta·(v - P v)`. `S` is a read-only buffer,
/// `D` the destination: `&[T]` / `&mut [T]` on the host, `CudaView` / `CudaViewMut` on
/// CUDA, or a [`TensorList`] of either.
#[derive(Debug)]
pub enum Output<S, D> {
    /// `out = alpha·base + beta·(v - P v)`; with `base = None`, `out = beta·(v - P v)`.
    Write {
        /// Optional base term.
        base: Option<S>,
        /// Destination, same length as `v`; must not overlap any input.
        out: D,
    },
    /// In place: `out = alpha·out + beta·(v - P v)` — the script's
    /// `grad += beta * d_perp` with `alpha = 1`.
    Accumulate(D),
}

impl<S, D> Output<S, D> {
    /// The destination.
    pub fn out(&self) -> &D {
        match self {
            Output::Write { out, .. } | Output::Accumulate(out) => out,
        }
    }

    /// The base buffer, if the output has one.
    pub fn base(&self) -> Option<&S> {
        match self {
            Output::Write { base, .. } => base.as_ref(),
            Output::Accumulate(_) => None,
        }
    }

    /// The destination and the base, apart.
    pub(crate) fn into_parts(self) -> (D, Option<S>) {
        match self {
            Output::Write { base, out } => (out, base),
            Output::Accumulate(out) => (out, None),
        }
    }

    /// The base-term bits of the kernels' apply mode (ABI `MODE_NONE`, `MODE_BASE`,
    /// `MODE_INPLACE`).
    fn mode(&self) -> i32 {
        match self {
            Output::Write { base: None, .. } => MODE_NONE,
            Output::Write { base: Some(_), .. } => MODE_BASE,
            Output::Accumulate(_) => MODE_INPLACE,
        }
    }
}

/// A basis vector that a projection takes from one of its own operands instead of from
/// [`Projection::basis`]. It is basis vector 0 (before `basis`). One variant per kind, so a
/// new kind is a variant here, its flag in the ABI table, and its line in each kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implicit {
    /// The destination's values before the call (needs [`Output::Accumulate`]): the
    /// script's "project the drift off the gradient, add it to the gradient" with no copy
    /// of the gradient. Each element's basis value is read before that element is written.
    Out,
}

impl Implicit {
    /// Its flag in the kernels' apply mode (ABI table).
    fn mode_flag(self) -> i32 {
        match self {
            Implicit::Out => MODE_B0_OUT,
        }
    }
}

/// Where one basis vector of a projection is read from: a buffer of its own, or (an
/// [`Implicit`] vector) the destination.
#[derive(Debug)]
pub(crate) enum BasisRef<'p, S, D> {
    /// A read-only buffer.
    Src(&'p S),
    /// The destination, read before it is written.
    Out(&'p D),
}

/// The arguments of one projection (`project_out`, `project_list`, the split form's
/// `partials` and `apply`) on any backend: per segment
///
/// ```text
/// out = alpha·base + beta·(x - P x),   x = v        (or v - v0, formed in f64)
/// ```
///
/// with `P` the projector onto the span of the segment's basis vectors — the
/// [`Implicit`] one first (when set), then `basis`. Made with [`Projection::new`] and the
/// builder methods; the defaults are the script's (`alpha = 1`, `beta = 1`,
/// [`ProjectOptions::default`]). Every backend takes it whole; [`Projection::map`] turns
/// its buffers into another kind (flat ↔ tensor list, host ↔ device views) in one place.
#[derive(Debug)]
pub struct Projection<'a, S, D> {
    /// The vector to project.
    pub v: S,
    /// When set, the vector is `v - v0`, formed in f64 inside both passes (the RedReg
    /// drift `theta - theta0` with no drift buffer and no rounding of the difference).
    pub v0: Option<S>,
    /// A basis vector taken from the projection's own operands (basis vector 0).
    pub implicit: Option<Implicit>,
    /// Basis vectors (after the implicit one).
    pub basis: Vec<S>,
    /// Where the result goes.
    pub out: Output<S, D>,
    /// Factor of the base term.
    pub alpha: f64,
    /// Factor of the projected term (one value or one per segment).
    pub beta: Beta<'a>,
    /// Rank threshold and ridge.
    pub opts: ProjectOptions,
}

impl<'a, S, D> Projection<'a, S, D> {
    /// `out = 1·base + 1·(v - P v)` with the default options; change them with the builder
    /// methods. `basis`: any list of buffers (`[a, b]`, a `Vec`, `[]`).
    pub fn new(v: S, basis: impl IntoIterator<Item = S>, out: Output<S, D>) -> Self {
        Self {
            v,
            v0: None,
            implicit: None,
            basis: basis.into_iter().collect(),
            out,
            alpha: 1.0,
            beta: Beta::Scalar(1.0),
            opts: ProjectOptions::default(),
        }
    }

    /// The RedReg update of one encoder: `grad += beta · (d - P d)` with
    /// `d = theta - theta0` (formed in f64) and `P` the projector onto
    /// `span{grad, extra…}` — 3 element reads in pass 1, 3 reads and 1 write in pass 2, no
    /// scratch buffer.
    pub fn drift(theta: S, theta0: S, extra: impl IntoIterator<Item = S>, grad: D) -> Self {
        Self::new(theta, extra, Output::Accumulate(grad))
            .minus(theta0)
            .implicit(Implicit::Out)
    }

    /// Projects `v - v0` instead of `v`.
    pub fn minus(mut self, v0: S) -> Self {
        self.v0 = Some(v0);
        self
    }

    /// Takes basis vector 0 from the projection's own operands ([`Implicit`]).
    pub fn implicit(mut self, implicit: Implicit) -> Self {
        self.implicit = Some(implicit);
        self
    }

    /// Sets `alpha`.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets `beta` (an `f64`, or `&[f64]` with one value per segment).
    pub fn beta(mut self, beta: impl Into<Beta<'a>>) -> Self {
        self.beta = beta.into();
        self
    }

    /// Sets the options.
    pub fn opts(mut self, opts: ProjectOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Number of basis vectors: `basis.len()`, plus one with an implicit vector.
    pub fn k(&self) -> usize {
        self.basis.len() + usize::from(self.implicit.is_some())
    }

    /// The same projection over other buffers: `src` maps every read-only buffer (`v`,
    /// `v0`, each basis vector, `base`), `dst` the destination. The one place where a
    /// projection changes its kind of buffer (cut per segment, packed, device views of
    /// tensors): every field travels, none is copied by hand.
    pub fn map<S2, D2>(
        self,
        mut src: impl FnMut(S) -> S2,
        dst: impl FnOnce(D) -> D2,
    ) -> Projection<'a, S2, D2> {
        let out = match self.out {
            Output::Write { base, out } => Output::Write {
                base: base.map(&mut src),
                out: dst(out),
            },
            Output::Accumulate(out) => Output::Accumulate(dst(out)),
        };
        Projection {
            v: src(self.v),
            v0: self.v0.map(&mut src),
            implicit: self.implicit,
            basis: self.basis.into_iter().map(&mut src).collect(),
            out,
            alpha: self.alpha,
            beta: self.beta,
            opts: self.opts,
        }
    }

    /// [`Projection::map`] with conversions that can fail (the first `Err` is returned).
    pub fn try_map<S2, D2>(
        self,
        mut src: impl FnMut(S) -> Result<S2>,
        dst: impl FnOnce(D) -> Result<D2>,
    ) -> Result<Projection<'a, S2, D2>> {
        let out = match self.out {
            Output::Write { base, out } => Output::Write {
                base: base.map(&mut src).transpose()?,
                out: dst(out)?,
            },
            Output::Accumulate(out) => Output::Accumulate(dst(out)?),
        };
        Ok(Projection {
            v: src(self.v)?,
            v0: self.v0.map(&mut src).transpose()?,
            implicit: self.implicit,
            basis: self
                .basis
                .into_iter()
                .map(&mut src)
                .collect::<Result<_>>()?,
            out,
            alpha: self.alpha,
            beta: self.beta,
            opts: self.opts,
        })
    }

    /// The projection borrowed (its buffers as references), to map without giving it up.
    pub fn as_ref(&self) -> Projection<'a, &S, &D> {
        let out = match &self.out {
            Output::Write { base, out } => Output::Write {
                base: base.as_ref(),
                out,
            },
            Output::Accumulate(out) => Output::Accumulate(out),
        };
        Projection {
            v: &self.v,
            v0: self.v0.as_ref(),
            implicit: self.implicit,
            basis: self.basis.iter().collect(),
            out,
            alpha: self.alpha,
            beta: self.beta,
            opts: self.opts,
        }
    }

    /// The projection with its sources borrowed and its destination lent, to map without
    /// giving it up (for example to run it on buffers derived from its own).
    pub fn as_mut(&mut self) -> Projection<'a, &S, &mut D> {
        let out = match &mut self.out {
            Output::Write { base, out } => Output::Write {
                base: base.as_ref(),
                out,
            },
            Output::Accumulate(out) => Output::Accumulate(out),
        };
        Projection {
            v: &self.v,
            v0: self.v0.as_ref(),
            implicit: self.implicit,
            basis: self.basis.iter().collect(),
            out,
            alpha: self.alpha,
            beta: self.beta,
            opts: self.opts,
        }
    }

    /// The basis vectors in order, the implicit one first, each with where it is read.
    pub(crate) fn basis_refs(&self) -> impl Iterator<Item = BasisRef<'_, S, D>> + '_ {
        let implicit = self.implicit.map(|i| match i {
            Implicit::Out => BasisRef::Out(self.out.out()),
        });
        implicit
            .into_iter()
            .chain(self.basis.iter().map(BasisRef::Src))
    }

    /// The kernels' apply mode (ABI `MODE_*`): the base term's mode and the implicit
    /// vector's flag. The CUDA and the CPU kernels both read it.
    pub(crate) fn mode(&self) -> i32 {
        self.out.mode() | self.implicit.map_or(0, Implicit::mode_flag)
    }
}

impl<'a, T> Projection<'a, &'a [T], &'a mut [T]> {
    /// [`Projection::new`] with the host buffer types spelled out, so that `&vec` and
    /// `&mut vec` coerce to slices at the call site (a generic `new` infers `&Vec<T>`).
    pub fn host(v: &'a [T], basis: &[&'a [T]], out: Output<&'a [T], &'a mut [T]>) -> Self {
        Self::new(v, basis.iter().copied(), out)
    }
}

impl<S: Buffer, D: Buffer> Projection<'_, S, D> {
    /// Checks everything against the layout before any data is touched (the one
    /// validation of every backend; the backends add their own, e.g. device contexts and
    /// aliasing on CUDA: [`crate::Backend::check`]): `k <= 8`, every buffer covers `segs`,
    /// `alpha`, `beta` and the options are valid, [`Implicit::Out`] only with
    /// [`Output::Accumulate`]. Returns k.
    pub fn validate(&self, segs: &Segments) -> Result<usize> {
        self.validate_inputs(segs)?;
        self.out.out().check_layout("out", segs)?;
        if let Some(b) = self.out.base() {
            b.check_layout("base", segs)?;
        }
        check_finite("alpha", self.alpha)?;
        self.beta.validate(segs.len())?;
        self.opts.validate()?;
        Ok(self.k())
    }

    /// The checks of what pass 1 reads ([`crate::Backend::partials`]): `k <= 8`; `v`,
    /// `v0` and every basis vector (the destination too when it is one) cover `segs`.
    pub fn validate_inputs(&self, segs: &Segments) -> Result<usize> {
        check_k(self.k())?;
        self.v.check_layout("v", segs)?;
        if let Some(v0) = &self.v0 {
            v0.check_layout("v0", segs)?;
        }
        for b in self.basis_refs() {
            match b {
                BasisRef::Src(b) => b.check_layout("basis", segs)?,
                BasisRef::Out(o) => o.check_layout("out", segs)?,
            }
        }
        if self.implicit == Some(Implicit::Out) && !matches!(self.out, Output::Accumulate(_)) {
            return Err(invalid(
                "implicit",
                "the destination can be a basis vector (Implicit::Out) only with \
                 Output::Accumulate",
            ));
        }
        Ok(self.k())
    }
}

/// The checks of `orthonormalize` on every backend: `0 <= tol < 1`, `k <= 8`, every basis
/// vector covers `segs`. Returns k.
pub(crate) fn check_orthonormalize<B: Buffer>(
    segs: &Segments,
    basis: &[B],
    tol: f64,
) -> Result<usize> {
    check_tol(tol)?;
    check_k(basis.len())?;
    for b in basis {
        b.check_layout("basis", segs)?;
    }
    Ok(basis.len())
}

/// `Err` unless `0 <= tol < 1`: the rank threshold of `orthonormalize` (and of
/// [`ProjectOptions`]).
pub(crate) fn check_tol(tol: f64) -> Result<()> {
    if (0.0..1.0).contains(&tol) {
        return Ok(());
    }
    Err(invalid("tol", format!("must be in [0, 1), got {tol}")))
}

/// Per-segment partial sums of the split form: for each segment the packed upper triangle
/// of the Gram matrix `BᵀB` followed by `Bᵀv` (`k(k+1)/2 + k` values,
/// f64). Partials of shards of the same segments add up ([`Partials::add`], or an
/// all-reduce sum over [`Partials::as_mut_slice`]) to the partials of the whole.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Partials {
    k: usize,
    segments: usize,
    data: Vec<f64>,
}

impl Partials {
    /// Zeroed partials for `segments` segments and `k` basis vectors (`k <= MAX_K`).
    pub fn zeros(k: usize, segments: usize) -> Result<Self> {
        check_k(k)?;
        let n = partial_stride(k)
            .checked_mul(segments)
            .ok_or_else(|| invalid("segments", "partials size overflows usize"))?;
        Ok(Self {
            k,
            segments,
            data: vec![0.0; n],
        })
    }

    /// Wraps values of the right length (crate-internal: the backends' pass 1).
    pub(crate) fn from_parts(k: usize, segments: usize, data: Vec<f64>) -> Self {
        debug_assert_eq!(data.len(), partial_stride(k) * segments);
        Self { k, segments, data }
    }

    /// Wraps raw values (for example received from an all-reduce).
    pub fn from_vec(k: usize, segments: usize, data: Vec<f64>) -> Result<Self> {
        check_k(k)?;
        check_len("partials", partial_stride(k) * segments, data.len())?;
        Ok(Self { k, segments, data })
    }

    /// Number of basis vectors.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of segments.
    pub fn num_segments(&self) -> usize {
        self.segments
    }

    /// Values per segment.
    pub fn stride(&self) -> usize {
        partial_stride(self.k)
    }

    /// All values, segment after segment.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// All values, mutable (to all-reduce them in place).
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// The values of segment `s`; `Err` for `s >= num_segments()`.
    pub fn segment(&self, s: usize) -> Result<&[f64]> {
        self.check_index("segment", s, self.segments)?;
        Ok(self.seg(s))
    }

    /// The values of segment `s < num_segments()` (checked by the callers).
    pub(crate) fn seg(&self, s: usize) -> &[f64] {
        let st = self.stride();
        &self.data[s * st..(s + 1) * st]
    }

    /// `Gram[i][j]` of segment `s`; `Err` for an index out of range.
    pub fn gram(&self, s: usize, i: usize, j: usize) -> Result<f64> {
        self.check_index("basis index i", i, self.k)?;
        self.check_index("basis index j", j, self.k)?;
        let (a, b) = if i <= j { (i, j) } else { (j, i) };
        Ok(self.segment(s)?[tri_index(self.k, a, b)])
    }

    /// `b_i · v` of segment `s`; `Err` for an index out of range.
    pub fn rhs(&self, s: usize, i: usize) -> Result<f64> {
        self.check_index("basis index i", i, self.k)?;
        Ok(self.segment(s)?[rhs_index(self.k, i)])
    }

    fn check_index(&self, name: &'static str, i: usize, n: usize) -> Result<()> {
        if i < n {
            return Ok(());
        }
        Err(invalid(name, format!("{i} is out of range (< {n})")))
    }

    /// Adds the partials of another shard of the same segments.
    pub fn add(&mut self, other: &Partials) -> Result<()> {
        check_count("partials k", self.k, other.k)?;
        check_count("partials segments", self.segments, other.segments)?;
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// `Err` unless these partials fit `segs` and `k`.
    pub fn check_shape(&self, segs: &Segments, k: usize) -> Result<()> {
        check_count("partials k", k, self.k)?;
        check_count("partials segments", segs.len(), self.segments)
    }
}

/// `Err` unless `k <= MAX_K`.
pub(crate) fn check_k(k: usize) -> Result<()> {
    if k > MAX_K {
        return Err(Error::CountMismatch {
            name: "basis vectors (k must be <= MAX_K = 8)",
            expected: MAX_K,
            got: k,
        });
    }
    Ok(())
}
