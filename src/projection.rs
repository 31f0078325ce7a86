//! Arguments shared by every implementation of the projection (reference, CPU backend,
//! CUDA backend): options, the β argument, the output mode, the split form's partial sums,
//! and the validation all of them run before touching data.

use crate::dtype::Element;
use crate::error::{check_count, check_len, invalid, Error, Result};
use crate::segments::Segments;
use crate::solve::{partial_stride, rhs_index, tri_index, MAX_K};

/// Numerical options of `project_out` and `orthonormalize`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProjectOptions {
    /// Rank threshold: a basis vector whose residual norm (after removing the span of the
    /// earlier kept vectors) is ≤ `tol` × its own norm is dropped. `0 <= tol < 1`.
    /// Default `1e-7` (see [`crate::solve`] for why it should not be smaller).
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
        if !(0.0..1.0).contains(&self.tol) {
            return Err(invalid(
                "tol",
                format!("must be in [0, 1), got {}", self.tol),
            ));
        }
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

impl Beta<'_> {
    /// β of segment `s` (after [`Beta::validate`]).
    #[inline]
    pub fn get(&self, s: usize) -> f64 {
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

pub(crate) fn check_finite(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(invalid(name, format!("must be finite, got {x}")))
    }
}

/// Where `project_out` writes `alpha·base + beta·(v - P v)`.
#[derive(Debug)]
pub enum Output<'a, T> {
    /// `out = alpha·base + beta·(v - P v)`; with `base = None`, `out = beta·(v - P v)`.
    Write {
        /// Optional base term.
        base: Option<&'a [T]>,
        /// Destination, same length as `v`.
        out: &'a mut [T],
    },
    /// In place: `out = alpha·out + beta·(v - P v)` — the script's
    /// `grad += beta * d_perp` with `alpha = 1`.
    Accumulate(&'a mut [T]),
}

/// What the apply pass adds to `beta·(v - P v)`: nothing, `alpha·base`, or `alpha·out`.
#[derive(Clone, Copy, Debug)]
pub enum BaseMode<'a, T> {
    /// `out = beta·(v - P v)`.
    None,
    /// `out = alpha·base + beta·(v - P v)`.
    Slice(&'a [T]),
    /// `out = alpha·out + beta·(v - P v)`.
    InPlace,
}

impl<'a, T> Output<'a, T> {
    /// Splits into the base mode and the destination.
    pub fn split(self) -> (BaseMode<'a, T>, &'a mut [T]) {
        match self {
            Output::Write { base: None, out } => (BaseMode::None, out),
            Output::Write { base: Some(b), out } => (BaseMode::Slice(b), out),
            Output::Accumulate(out) => (BaseMode::InPlace, out),
        }
    }
}

impl<T> Output<'_, T> {
    /// Length of the destination buffer.
    pub fn len(&self) -> usize {
        match self {
            Output::Write { out, .. } => out.len(),
            Output::Accumulate(out) => out.len(),
        }
    }

    /// True when the destination is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-segment partial sums of the split form: for each segment the packed upper triangle
/// of the Gram matrix `BᵀB` followed by `Bᵀv` ([`crate::solve::partial_stride`] values,
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

    /// The values of segment `s`.
    pub fn segment(&self, s: usize) -> &[f64] {
        let st = self.stride();
        &self.data[s * st..(s + 1) * st]
    }

    /// `Gram[i][j]` of segment `s`.
    pub fn gram(&self, s: usize, i: usize, j: usize) -> f64 {
        let (a, b) = if i <= j { (i, j) } else { (j, i) };
        self.segment(s)[tri_index(self.k, a, b)]
    }

    /// `b_i · v` of segment `s`.
    pub fn rhs(&self, s: usize, i: usize) -> f64 {
        self.segment(s)[rhs_index(self.k, i)]
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
pub fn check_k(k: usize) -> Result<()> {
    if k > MAX_K {
        return Err(Error::CountMismatch {
            name: "basis vectors (k must be <= MAX_K = 8)",
            expected: MAX_K,
            got: k,
        });
    }
    Ok(())
}

/// Validates `v` and the basis against the layout: every buffer covers the segments.
pub fn check_inputs<T>(segs: &Segments, v: &[T], basis: &[&[T]]) -> Result<()> {
    check_k(basis.len())?;
    segs.check_buffer("v", v.len())?;
    for b in basis {
        segs.check_buffer("basis", b.len())?;
    }
    Ok(())
}

/// Validates everything `project_out` / `apply` receive.
pub fn check_project<T: Element>(
    segs: &Segments,
    v: &[T],
    basis: &[&[T]],
    out: &Output<'_, T>,
    alpha: f64,
    beta: &Beta<'_>,
    opts: &ProjectOptions,
) -> Result<()> {
    check_inputs(segs, v, basis)?;
    segs.check_buffer("out", out.len())?;
    if let Output::Write {
        base: Some(base), ..
    } = out
    {
        segs.check_buffer("base", base.len())?;
    }
    check_finite("alpha", alpha)?;
    beta.validate(segs.len())?;
    opts.validate()
}
