//! Declarations, handles, bound inputs and results of a statistics plan (shared by every
//! backend).

use crate::backend::{Host, Memory};
use crate::dtype::{DType, Element};
use crate::error::{check_count, invalid, Error, Result};
use crate::project::Buffer;
use crate::segments::Segments;
use half::{bf16, f16};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Elements per unit of parallel work (a chunk of a buffer, of a segment or of a long row;
/// short rows are grouped into units of about this many elements). The reduction order —
/// and therefore every result, bit for bit — depends only on the plan and this constant,
/// never on the number of threads. 16384: the encoder-sized statistics of a step (a few
/// million elements) make a few hundred tasks, one block each on the GPU — enough for the
/// 132 SMs of an H100/H200 (65536 gave a 2M-element statistic 32 blocks); on the CPU a task
/// of 16K elements still outweighs rayon's per-task cost.
pub const STATS_CHUNK: usize = 1 << 14;

/// The `eps` of the authors' redundancy ratio `mean((z1-z2)^2) / (mean((x1-x2)^2) + eps)`.
pub const REDUNDANCY_EPS: f64 = 1e-12;

/// The redundancy ratio `num / (den + eps)` (section 2 of the algorithm notes), from two
/// squared-difference means: `num = mean((z1 - z2)^2)` over features, `den =
/// mean((x1 - x2)^2)` over the noisy inputs.
pub fn redundancy_ratio(num: f64, den: f64, eps: f64) -> f64 {
    num / (den + eps)
}

/// A buffer of one of the crate's element types in memory `M`, as the plan's inputs take
/// them: host slices ([`Host`], the default) or, with feature `cuda`, cudarc views
/// (`cuda::Device`). Made with `From` (`&[f32]`, `&Vec<f16>`, `&[bf16; N]`, or a
/// `CudaView` / `&CudaSlice` of those) by every handle's `bind`, or with [`Buf::of`].
pub enum Buf<'a, M: Memory = Host> {
    /// f32 elements.
    F32(M::Src<'a, f32>),
    /// f16 elements.
    F16(M::Src<'a, f16>),
    /// bf16 elements.
    BF16(M::Src<'a, bf16>),
}

impl<'a, M: Memory> Buf<'a, M> {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Buf::F32(_) => DType::F32,
            Buf::F16(_) => DType::F16,
            Buf::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buf::F32(s) => s.len(),
            Buf::F16(s) => s.len(),
            Buf::BF16(s) => s.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Another handle to the same elements, borrowed from this one (to bind one buffer to
    /// several statistics: [`Memory::share`]).
    pub fn share(&self) -> Buf<'_, M> {
        match self {
            Buf::F32(s) => Buf::F32(M::share(s)),
            Buf::F16(s) => Buf::F16(M::share(s)),
            Buf::BF16(s) => Buf::BF16(M::share(s)),
        }
    }
}

impl<'a> Buf<'a, Host> {
    /// A host buffer of any [`Element`] (for generic code). `Err` only for an `Element`
    /// implementation whose size or alignment does not match its `DTYPE`.
    pub fn of<T: Element>(s: &'a [T]) -> Result<Self> {
        let bytes: &'a [u8] = bytemuck::cast_slice(s);
        Ok(match T::DTYPE {
            DType::F32 => Buf::F32(crate::dtype::cast_bytes("buffer", bytes)?),
            DType::F16 => Buf::F16(crate::dtype::cast_bytes("buffer", bytes)?),
            DType::BF16 => Buf::BF16(crate::dtype::cast_bytes("buffer", bytes)?),
        })
    }
}

impl Clone for Buf<'_, Host> {
    fn clone(&self) -> Self {
        *self
    }
}

impl Copy for Buf<'_, Host> {}

impl<M: Memory> std::fmt::Debug for Buf<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buf")
            .field("dtype", &self.dtype())
            .field("len", &self.len())
            .finish()
    }
}

macro_rules! buf_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a [$t]> for Buf<'a, Host> {
            fn from(s: &'a [$t]) -> Self {
                Buf::$v(s)
            }
        }
        impl<'a> From<&'a Vec<$t>> for Buf<'a, Host> {
            fn from(s: &'a Vec<$t>) -> Self {
                Buf::$v(s.as_slice())
            }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for Buf<'a, Host> {
            fn from(s: &'a [$t; N]) -> Self {
                Buf::$v(s.as_slice())
            }
        }
    };
}
buf_from!(f32, F32);
buf_from!(f16, F16);
buf_from!(bf16, BF16);

/// The kind of a declared statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatKind {
    /// `mean((x - y)^2)`.
    SqDiffMean,
    /// `mean_i cos(a_i, b_i)`.
    RowCosMean,
    /// `mean_i softmax(logits_i)[label_i]`.
    TrueProbMean,
    /// Per-segment Σx, Σx², Σ|x| (optionally `acc += x^2`).
    SegSums,
    /// Per-segment ⟨x, y⟩.
    SegDots,
}

impl StatKind {
    fn describe(self) -> &'static str {
        match self {
            StatKind::SqDiffMean => "squared-difference mean",
            StatKind::RowCosMean => "row cosine mean",
            StatKind::TrueProbMean => "true-label probability mean",
            StatKind::SegSums => "per-segment sums",
            StatKind::SegDots => "per-segment dot products",
        }
    }
}

/// Shape of one declared statistic.
#[derive(Clone, Debug)]
pub(crate) enum Decl {
    SqDiff { rows: usize, row_len: usize },
    RowCos { rows: usize, dim: usize },
    TrueProb { rows: usize, classes: usize },
    SegSums { segs: Arc<Segments>, acc: bool },
    SegDots { segs: Arc<Segments> },
}

/// One declared statistic.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub name: String,
    pub dtype: DType,
    pub decl: Decl,
    /// Offset of its values in [`StatsResults`].
    pub out: usize,
}

impl Decl {
    /// A row statistic's declared (maximum) rows and elements per row; `None` for the
    /// per-segment statistics (fixed layout).
    pub(crate) fn rows_and_width(&self) -> Option<(usize, usize)> {
        match *self {
            Decl::SqDiff { rows, row_len } => Some((rows, row_len)),
            Decl::RowCos { rows, dim } => Some((rows, dim)),
            Decl::TrueProb { rows, classes } => Some((rows, classes)),
            Decl::SegSums { .. } | Decl::SegDots { .. } => None,
        }
    }

    /// What one run's mean divides by, for `rows` rows: elements for a squared-difference
    /// mean, rows for the row means (0 for the per-segment statistics).
    pub(crate) fn count(&self, rows: usize) -> usize {
        match *self {
            Decl::SqDiff { row_len, .. } => rows * row_len,
            Decl::RowCos { .. } | Decl::TrueProb { .. } => rows,
            Decl::SegSums { .. } | Decl::SegDots { .. } => 0,
        }
    }
}

impl Entry {
    pub(crate) fn kind(&self) -> StatKind {
        match self.decl {
            Decl::SqDiff { .. } => StatKind::SqDiffMean,
            Decl::RowCos { .. } => StatKind::RowCosMean,
            Decl::TrueProb { .. } => StatKind::TrueProbMean,
            Decl::SegSums { .. } => StatKind::SegSums,
            Decl::SegDots { .. } => StatKind::SegDots,
        }
    }

    /// Number of f64 result values: 1 for a mean, 3 for a probability mean (mean, first
    /// offending row, its label), 3·L for segment sums, L for segment dots.
    pub(crate) fn n_values(&self) -> usize {
        match &self.decl {
            Decl::SqDiff { .. } | Decl::RowCos { .. } => 1,
            Decl::TrueProb { .. } => 3,
            Decl::SegSums { segs, .. } => 3 * segs.len(),
            Decl::SegDots { segs } => segs.len(),
        }
    }

    fn header(&self, idx: usize) -> String {
        let shape = match &self.decl {
            Decl::SqDiff { rows, row_len } => format!("up to {rows} rows of {row_len} elements"),
            Decl::RowCos { rows, dim } => format!("up to {rows}x{dim}"),
            Decl::TrueProb { rows, classes } => format!("up to {rows}x{classes}"),
            Decl::SegSums { segs, acc } => format!(
                "{} segments, {} elements{}",
                segs.len(),
                segs.total(),
                if *acc { ", with accumulator" } else { "" }
            ),
            Decl::SegDots { segs } => {
                format!("{} segments, {} elements", segs.len(), segs.total())
            }
        };
        format!(
            "statistic {idx} `{}` ({}, {}, {shape})",
            self.name,
            self.kind().describe(),
            self.dtype
        )
    }
}

/// A set of reductions declared once and executed every step (see the module docs).
///
/// Declaring returns a typed handle; bind the step's buffers through the handle
/// (`handle.bind(..)`: host slices or device views, [`Buf`]) and execute all bindings at
/// once with the executor of that memory ([`crate::stats::CpuStats`], `CudaStats`; both
/// [`crate::stats::Stats`]); read the results by handle from [`StatsResults`].
#[derive(Clone, Debug)]
pub struct StatsPlan {
    pub(crate) id: u64,
    pub(crate) entries: Vec<Entry>,
    pub(crate) values_len: usize,
}

impl Default for StatsPlan {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_PLAN_ID: AtomicU64 = AtomicU64::new(1);

fn mul(name: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| invalid(name, format!("{a} x {b} overflows usize")))
}

/// The rows of one run of a row statistic declared with at most `max` rows of `width`
/// elements, from a buffer `name` of `n` elements: `Ok(None)` when `width = 0` and the
/// buffer is empty (any number of empty rows); else `Err` (the message) unless `n` is a
/// whole number of rows, from 1 to `max` (0 only when `max = 0`).
fn rows_in(
    name: &str,
    n: usize,
    width: usize,
    max: usize,
) -> std::result::Result<Option<usize>, String> {
    if width == 0 {
        return if n == 0 {
            Ok(None)
        } else {
            Err(format!(
                "`{name}` has {n} elements, expected 0 (rows of 0 elements)"
            ))
        };
    }
    if n % width != 0 {
        return Err(format!(
            "`{name}` has {n} elements, not a whole number of rows of {width}"
        ));
    }
    let rows = n / width;
    if rows > max {
        return Err(format!(
            "`{name}` has {n} elements = {rows} rows of {width}, more than the {max} rows declared"
        ));
    }
    if rows == 0 && max > 0 {
        return Err(format!(
            "`{name}` is empty: a run needs 1 to {max} rows of {width} elements"
        ));
    }
    Ok(Some(rows))
}

impl StatsPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self {
            id: NEXT_PLAN_ID.fetch_add(1, Ordering::Relaxed),
            entries: Vec::new(),
            values_len: 0,
        }
    }

    /// Number of declared statistics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push(&mut self, name: &str, dtype: DType, decl: Decl) -> Result<u32> {
        let idx = u32::try_from(self.entries.len())
            .map_err(|_| invalid("plan", "more than u32::MAX statistics"))?;
        let mut e = Entry {
            name: name.to_string(),
            dtype,
            decl,
            out: self.values_len,
        };
        e.out = self.values_len;
        self.values_len = self
            .values_len
            .checked_add(e.n_values())
            .ok_or_else(|| invalid("plan", "result size overflows usize"))?;
        self.entries.push(e);
        Ok(idx)
    }

    /// Declares `mean((x - y)^2)` over two buffers of `rows` rows of `row_len` elements
    /// each (a batch of `rows` samples of `row_len` elements: `z1`, `z2` of B×… features).
    ///
    /// `rows` is the maximum: it sizes everything the executors allocate, and a run accepts
    /// any whole number of rows from 1 to `rows` (the last, smaller batch of an epoch); the
    /// mean is then over the `n·row_len` elements given. `Err` at run time for more rows than
    /// declared, no rows, a length that is not a whole number of rows, or `x` and `y` of
    /// different lengths (with `row_len = 0` only empty buffers are accepted; the mean over
    /// zero elements is NaN). `Err` here if `rows × row_len` overflows.
    pub fn sq_diff_mean(
        &mut self,
        name: &str,
        dtype: DType,
        rows: usize,
        row_len: usize,
    ) -> Result<SqDiffMean> {
        mul("rows x row_len", rows, row_len)?;
        let idx = self.push(name, dtype, Decl::SqDiff { rows, row_len })?;
        Ok(SqDiffMean(HandleId { plan: self.id, idx }))
    }

    /// Declares `mean_i cos(a_i, b_i)` over two row-major matrices of up to `rows` rows of
    /// `dim` elements.
    ///
    /// `rows` is the maximum (the batch size; it sizes every buffer once): a run accepts any
    /// whole number of rows `n` from 1 to `rows` and gives the mean over those `n` rows.
    /// `Err` at run time for more rows than declared, no rows, a length that is not a whole
    /// number of rows, or `a` and `b` of different lengths. `Err` here if `rows × dim`
    /// overflows.
    pub fn row_cos_mean(
        &mut self,
        name: &str,
        dtype: DType,
        rows: usize,
        dim: usize,
    ) -> Result<RowCosMean> {
        mul("rows x dim", rows, dim)?;
        let idx = self.push(name, dtype, Decl::RowCos { rows, dim })?;
        Ok(RowCosMean(HandleId { plan: self.id, idx }))
    }

    /// Declares `mean_i softmax(logits_i)[label_i]` over row-major logits of up to `rows`
    /// rows of `classes` and one `i64` label per row.
    ///
    /// `rows` is the maximum (the batch size): a run accepts any whole number of rows `n`
    /// from 1 to `rows` (`n·classes` logits, `n` labels) and gives the mean over those `n`
    /// rows. `Err` at run time for more rows than declared, no rows, logits that are not a
    /// whole number of rows, or a label count other than the logits' rows. `Err` here if
    /// `rows × classes` overflows.
    pub fn true_prob_mean(
        &mut self,
        name: &str,
        dtype: DType,
        rows: usize,
        classes: usize,
    ) -> Result<TrueProbMean> {
        mul("rows x classes", rows, classes)?;
        let idx = self.push(name, dtype, Decl::TrueProb { rows, classes })?;
        Ok(TrueProbMean(HandleId { plan: self.id, idx }))
    }

    /// Declares per-segment Σx, Σx², Σ|x| over a buffer laid out by `segs`. With
    /// `accumulate`, every execution also performs `acc[e] += x[e]^2` on an f32 buffer of
    /// the same length, in the same pass (bind with [`SegSums::bind_acc`]).
    pub fn seg_sums(
        &mut self,
        name: &str,
        dtype: DType,
        segs: &Segments,
        accumulate: bool,
    ) -> Result<SegSums> {
        let decl = Decl::SegSums {
            segs: Arc::new(segs.clone()),
            acc: accumulate,
        };
        let idx = self.push(name, dtype, decl)?;
        Ok(SegSums(HandleId { plan: self.id, idx }))
    }

    /// Declares per-segment dot products ⟨x, y⟩ over two buffers laid out by `segs`.
    pub fn seg_dots(&mut self, name: &str, dtype: DType, segs: &Segments) -> Result<SegDots> {
        let decl = Decl::SegDots {
            segs: Arc::new(segs.clone()),
        };
        let idx = self.push(name, dtype, decl)?;
        Ok(SegDots(HandleId { plan: self.id, idx }))
    }

    /// Fresh result storage laid out for this plan (all values NaN until a run).
    pub fn new_results(&self) -> StatsResults {
        StatsResults {
            plan: self.id,
            values: vec![f64::NAN; self.values_len],
            rows: self
                .entries
                .iter()
                .map(|e| e.decl.rows_and_width().map_or(0, |(r, _)| r))
                .collect(),
            slots: self
                .entries
                .iter()
                .map(|e| Slot {
                    kind: e.kind(),
                    off: e.out,
                    n: e.n_values(),
                })
                .collect(),
        }
    }

    /// Validates `inputs` against the declarations and writes, for every statistic, the
    /// position of its input into `order` and the rows of this run into `rows` (0 for the
    /// per-segment statistics; both of length `self.len()`). Checks: the number of inputs,
    /// that every input belongs to this plan, that every statistic is bound exactly once,
    /// dtypes, lengths (whole rows, at most the declared number) and the presence of the
    /// accumulator.
    pub(crate) fn resolve<M: Memory>(
        &self,
        inputs: &[Input<'_, M>],
        order: &mut [usize],
        rows: &mut [usize],
    ) -> Result<()> {
        check_count(
            "stats inputs (one per declared statistic)",
            self.len(),
            inputs.len(),
        )?;
        order.iter_mut().for_each(|o| *o = usize::MAX);
        for (pos, input) in inputs.iter().enumerate() {
            let id = input.id;
            if id.plan != self.id {
                return Err(invalid(
                    "stats inputs",
                    format!("input {pos} was bound through a handle of another plan"),
                ));
            }
            let idx = id.idx as usize;
            let Some(e) = self.entries.get(idx) else {
                return Err(invalid(
                    "stats inputs",
                    format!(
                        "input {pos} refers to statistic {idx}, but the executor knows {} \
                         (declared after the executor was built?)",
                        self.len()
                    ),
                ));
            };
            if order[idx] != usize::MAX {
                return Err(invalid(
                    "stats inputs",
                    format!(
                        "{} is bound twice (inputs {} and {pos})",
                        e.header(idx),
                        order[idx]
                    ),
                ));
            }
            order[idx] = pos;
            rows[idx] = Self::check_input(idx, e, &input.data.shape())?;
        }
        Ok(())
    }

    /// Checks one binding against its declaration; the rows of this run (0 for the
    /// per-segment statistics).
    fn check_input(idx: usize, e: &Entry, shape: &Shape) -> Result<usize> {
        let bad = |what: String| invalid("stats inputs", format!("{}: {what}", e.header(idx)));
        let check_dtype = |name: &str, dt: DType| -> Result<()> {
            if dt != e.dtype {
                return Err(bad(format!("`{name}` is {dt}, declared {}", e.dtype)));
            }
            Ok(())
        };
        let check_buf = |name: &str, (dt, n): (DType, usize), len: usize| -> Result<()> {
            check_dtype(name, dt)?;
            if n != len {
                return Err(bad(format!("`{name}` has {n} elements, expected {len}")));
            }
            Ok(())
        };
        // Two buffers of equal length and dtype, in whole rows of `width`, at most `max`.
        let pair = |(x, y): (&str, &str), a: (DType, usize), b: (DType, usize), max, width| {
            check_dtype(x, a.0)?;
            check_buf(y, b, a.1)?;
            Ok(rows_in(x, a.1, width, max).map_err(bad)?.unwrap_or(max))
        };
        match (&e.decl, *shape) {
            (Decl::SqDiff { rows, row_len }, Shape::Pair(x, y)) => {
                pair(("x", "y"), x, y, *rows, *row_len)
            }
            (Decl::RowCos { rows, dim }, Shape::Pair(a, b)) => pair(("a", "b"), a, b, *rows, *dim),
            (Decl::TrueProb { rows, classes }, Shape::Prob(l, labels)) => {
                check_dtype("logits", l.0)?;
                // Zero classes: only the labels say how many rows there are.
                let n = match rows_in("logits", l.1, *classes, *rows).map_err(bad)? {
                    Some(n) => n,
                    None => rows_in("labels", labels, 1, *rows)
                        .map_err(bad)?
                        .unwrap_or(0),
                };
                if labels != n {
                    return Err(bad(format!(
                        "`labels` has {labels} elements, expected {n} (one per row of `logits`)"
                    )));
                }
                Ok(n)
            }
            (Decl::SegSums { segs, acc }, Shape::Sums(x, a)) => {
                check_buf("x", x, segs.total())?;
                match (acc, a) {
                    (true, None) => Err(bad(
                        "declared with an accumulator, bound without one (use bind_acc)".into(),
                    )),
                    (false, Some(_)) => Err(bad(
                        "declared without an accumulator, bound with one (use bind)".into(),
                    )),
                    (true, Some(a)) if a != segs.total() => Err(bad(format!(
                        "`acc` has {a} elements, expected {}",
                        segs.total()
                    ))),
                    _ => Ok(0),
                }
            }
            (Decl::SegDots { segs }, Shape::Pair(x, y)) => {
                check_buf("x", x, segs.total())?;
                check_buf("y", y, segs.total())?;
                Ok(0)
            }
            _ => Err(bad("input of the wrong kind".into())),
        }
    }

    /// After a run: the first statistic (in declaration order) that saw a label out of
    /// range, as `Err(LabelOutOfRange)`.
    pub(crate) fn label_error(&self, r: &StatsResults) -> Result<()> {
        for e in &self.entries {
            if let Decl::TrueProb { classes, .. } = e.decl {
                let row = r.values[e.out + 1].to_bits();
                if row != u64::MAX {
                    return Err(Error::LabelOutOfRange {
                        name: e.name.clone(),
                        row: row as usize,
                        label: r.values[e.out + 2].to_bits() as i64,
                        classes,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Plan and position of a declared statistic (inside every handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HandleId {
    pub plan: u64,
    pub idx: u32,
}

/// Handle of a squared-difference mean; its result is an `f64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SqDiffMean(pub(crate) HandleId);
/// Handle of a row cosine mean; its result is an `f64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowCosMean(pub(crate) HandleId);
/// Handle of a true-label probability mean; its result is an `f64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrueProbMean(pub(crate) HandleId);
/// Handle of per-segment sums; its result is a [`SegSumsRef`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegSums(pub(crate) HandleId);
/// Handle of per-segment dot products; its result is a `&[f64]` (one per segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegDots(pub(crate) HandleId);

/// Dtypes and lengths of one binding (what validation looks at).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    Pair((DType, usize), (DType, usize)),
    Prob((DType, usize), usize),
    Sums((DType, usize), Option<usize>),
}

impl<M: Memory> Bound<'_, M> {
    fn shape(&self) -> Shape {
        let d = |b: &Buf<'_, M>| (b.dtype(), b.len());
        match self {
            Bound::Pair(x, y) => Shape::Pair(d(x), d(y)),
            Bound::Prob(l, labels) => Shape::Prob(d(l), labels.len()),
            Bound::Sums(x, a) => Shape::Sums(d(x), a.as_ref().map(|a| a.len())),
        }
    }
}

/// The buffers bound to one statistic.
pub(crate) enum Bound<'a, M: Memory> {
    Pair(Buf<'a, M>, Buf<'a, M>),
    Prob(Buf<'a, M>, M::Src<'a, i64>),
    Sums(Buf<'a, M>, Option<M::Dst<'a, f32>>),
}

/// One statistic's buffers in memory `M` for one execution, made by [`StatHandle::bind`]
/// (or [`SegSums::bind_acc`], which holds the accumulator mutably borrowed until the input
/// is dropped). Run by the executor of that memory: [`crate::stats::CpuStats`] for [`Host`],
/// `CudaStats` for `cuda::Device` ([`crate::stats::Stats`]).
pub struct Input<'a, M: Memory = Host> {
    pub(crate) id: HandleId,
    pub(crate) data: Bound<'a, M>,
}

impl<M: Memory> std::fmt::Debug for Input<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("id", &self.id)
            .field("shape", &self.data.shape())
            .finish()
    }
}

/// Class labels as a [`TrueProbMean`] takes them: `i64` class indices in memory `M` (host
/// slices by default; with feature `cuda`, cudarc views). Made with `From` (`&[i64]`,
/// `&Vec<i64>`, `&[i64; N]`, or a `CudaView<i64>` / `&CudaSlice<i64>`), or from the
/// memory's own buffer type (`Labels(view)`, for generic code).
pub struct Labels<'a, M: Memory = Host>(pub M::Src<'a, i64>);

impl<M: Memory> std::fmt::Debug for Labels<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labels")
            .field("len", &self.0.len())
            .finish()
    }
}

impl<'a> From<&'a [i64]> for Labels<'a, Host> {
    fn from(s: &'a [i64]) -> Self {
        Labels(s)
    }
}

impl<'a> From<&'a Vec<i64>> for Labels<'a, Host> {
    fn from(s: &'a Vec<i64>) -> Self {
        Labels(s.as_slice())
    }
}

impl<'a, const N: usize> From<&'a [i64; N]> for Labels<'a, Host> {
    fn from(s: &'a [i64; N]) -> Self {
        Labels(s.as_slice())
    }
}

/// The operands a handle of type `H` binds, as one value ([`StatHandle::bind`]):
///
/// | handle | operands | host example |
/// |---|---|---|
/// | [`SqDiffMean`] | `(x, y)` | `(&z1, &z2)` |
/// | [`RowCosMean`] | `(a, b)`, row-major | `(&pooled_a, &pooled_b)` |
/// | [`TrueProbMean`] | `(logits, labels)` | `(&logits, &labels)` |
/// | [`SegSums`] | `x` | `&grad` |
/// | [`SegDots`] | `(x, y)` | `(&drift, &grad)` |
///
/// Each buffer is anything that converts into a [`Buf`] of memory `M` (host slices,
/// `&Vec`, arrays; cudarc views and `&CudaSlice`), labels anything that converts into
/// [`Labels`]. The accumulator form of [`SegSums`] is [`SegSums::bind_acc`].
pub trait Operands<'a, M: Memory, H> {
    /// The input of statistic `h`.
    #[doc(hidden)]
    fn input(self, h: H) -> Input<'a, M>;
}

macro_rules! pair_operands {
    ($($h:ty),*) => {$(
        impl<'a, M: Memory, X: Into<Buf<'a, M>>, Y: Into<Buf<'a, M>>> Operands<'a, M, $h>
            for (X, Y)
        {
            fn input(self, h: $h) -> Input<'a, M> {
                Input {
                    id: h.0,
                    data: Bound::Pair(self.0.into(), self.1.into()),
                }
            }
        }
    )*};
}
pair_operands!(SqDiffMean, RowCosMean, SegDots);

impl<'a, M: Memory, X: Into<Buf<'a, M>>, L: Into<Labels<'a, M>>> Operands<'a, M, TrueProbMean>
    for (X, L)
{
    fn input(self, h: TrueProbMean) -> Input<'a, M> {
        Input {
            id: h.0,
            data: Bound::Prob(self.0.into(), self.1.into().0),
        }
    }
}

impl<'a, M: Memory, X: Into<Buf<'a, M>>> Operands<'a, M, SegSums> for X {
    fn input(self, h: SegSums) -> Input<'a, M> {
        Input {
            id: h.0,
            data: Bound::Sums(self.into(), None),
        }
    }
}

impl SegSums {
    /// Binds the buffer and the f32 accumulator that receives `acc += x^2` (for a
    /// statistic declared with `accumulate = true`; without one, [`StatHandle::bind`]):
    /// `&mut [f32]` on the host, `CudaViewMut<f32>` on a device. The accumulator stays
    /// mutably borrowed until the input is dropped.
    pub fn bind_acc<'a, M: Memory>(
        self,
        x: impl Into<Buf<'a, M>>,
        acc: M::Dst<'a, f32>,
    ) -> Input<'a, M> {
        Input {
            id: self.0,
            data: Bound::Sums(x.into(), Some(acc)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub kind: StatKind,
    pub off: usize,
    pub n: usize,
}

/// The values of one execution of a plan, read by handle. Preallocated once per executor
/// and overwritten by every run.
#[derive(Clone, Debug)]
pub struct StatsResults {
    pub(crate) plan: u64,
    pub(crate) values: Vec<f64>,
    /// Per statistic, the rows of the run that wrote `values` (the declared maximum before
    /// the first run; 0 for the per-segment statistics).
    pub(crate) rows: Vec<usize>,
    pub(crate) slots: Vec<Slot>,
}

/// Per-segment sums of one [`SegSums`] statistic (one value per segment each).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegSumsRef<'r> {
    /// Σx per segment.
    pub sum: &'r [f64],
    /// Σx² per segment.
    pub sum_sq: &'r [f64],
    /// Σ|x| per segment.
    pub sum_abs: &'r [f64],
}

mod sealed {
    pub trait Sealed {}
}

/// The handle of a declared statistic: [`StatHandle::bind`] binds the step's buffers to it,
/// [`StatsResults::get`] reads its result. Sealed.
pub trait StatHandle: Copy + sealed::Sealed {
    /// What reading gives.
    type Output<'r>;
    #[doc(hidden)]
    fn read(self, r: &StatsResults) -> Result<Self::Output<'_>>;

    /// This statistic's input for one run: its operands as one value (see [`Operands`]:
    /// `(x, y)`, `(logits, labels)`, or `x` alone), in any memory `M` — host slices for
    /// [`crate::stats::CpuStats`], cudarc views for `CudaStats`. Shapes and dtypes are
    /// checked by the executor's `run` (rows: up to the declared number).
    fn bind<'a, M: Memory, O: Operands<'a, M, Self>>(self, operands: O) -> Input<'a, M> {
        operands.input(self)
    }
}

impl StatsResults {
    fn slot(&self, id: HandleId, kind: StatKind) -> Result<Slot> {
        if id.plan != self.plan {
            return Err(invalid("handle", "the handle belongs to another plan"));
        }
        match self.slots.get(id.idx as usize) {
            Some(s) if s.kind == kind => Ok(*s),
            _ => Err(invalid(
                "handle",
                format!(
                    "statistic {} is not part of these results ({} statistics)",
                    id.idx,
                    self.slots.len()
                ),
            )),
        }
    }

    /// The result of `h`: an `f64` for the means, [`SegSumsRef`] for [`SegSums`], one
    /// `f64` per segment for [`SegDots`]. `Err` for a handle of another plan.
    pub fn get<H: StatHandle>(&self, h: H) -> Result<H::Output<'_>> {
        h.read(self)
    }

    /// `mean((z1-z2)^2) / (mean((x1-x2)^2) + eps)` from two squared-difference results
    /// (use [`REDUNDANCY_EPS`] for the authors' `eps`).
    pub fn redundancy(&self, num: SqDiffMean, den: SqDiffMean, eps: f64) -> Result<f64> {
        Ok(redundancy_ratio(self.get(num)?, self.get(den)?, eps))
    }

    /// All values in the plan's layout (for logging or an all-reduce).
    pub fn as_slice(&self) -> &[f64] {
        &self.values
    }
}

macro_rules! scalar_handle {
    ($h:ty, $k:expr) => {
        impl sealed::Sealed for $h {}
        impl StatHandle for $h {
            type Output<'r> = f64;
            fn read(self, r: &StatsResults) -> Result<f64> {
                Ok(r.values[r.slot(self.0, $k)?.off])
            }
        }
    };
}
scalar_handle!(SqDiffMean, StatKind::SqDiffMean);
scalar_handle!(RowCosMean, StatKind::RowCosMean);
scalar_handle!(TrueProbMean, StatKind::TrueProbMean);

impl sealed::Sealed for SegSums {}
impl StatHandle for SegSums {
    type Output<'r> = SegSumsRef<'r>;
    fn read(self, r: &StatsResults) -> Result<SegSumsRef<'_>> {
        let s = r.slot(self.0, StatKind::SegSums)?;
        let l = s.n / 3;
        let v = &r.values[s.off..s.off + s.n];
        Ok(SegSumsRef {
            sum: &v[..l],
            sum_sq: &v[l..2 * l],
            sum_abs: &v[2 * l..],
        })
    }
}

impl sealed::Sealed for SegDots {}
impl StatHandle for SegDots {
    type Output<'r> = &'r [f64];
    fn read(self, r: &StatsResults) -> Result<&[f64]> {
        let s = r.slot(self.0, StatKind::SegDots)?;
        Ok(&r.values[s.off..s.off + s.n])
    }
}

/// Marks "no label fault" in a probability statistic's fault slots (all bits set).
pub(crate) fn no_fault() -> f64 {
    f64::from_bits(u64::MAX)
}

/// Writes a probability statistic's three values: mean, then first faulting row and its
/// label (bit patterns), or [`no_fault`] twice.
pub(crate) fn write_prob(v: &mut [f64], mean: f64, fault: Option<(usize, i64)>) {
    match fault {
        None => {
            v[0] = mean;
            v[1] = no_fault();
            v[2] = no_fault();
        }
        Some((row, label)) => {
            v[0] = f64::NAN;
            v[1] = f64::from_bits(row as u64);
            v[2] = f64::from_bits(label as u64);
        }
    }
}

/// True when `label` indexes one of `classes` classes.
#[inline(always)]
pub(crate) fn label_ok(label: i64, classes: usize) -> bool {
    label >= 0 && (label as u64) < classes as u64
}
