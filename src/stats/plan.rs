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
    SqDiff { len: usize },
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
            Decl::SqDiff { len } => format!("{len} elements"),
            Decl::RowCos { rows, dim } => format!("{rows}x{dim}"),
            Decl::TrueProb { rows, classes } => format!("{rows}x{classes}"),
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

    /// Declares `mean((x - y)^2)` over two buffers of `len` elements of `dtype`.
    pub fn sq_diff_mean(&mut self, name: &str, dtype: DType, len: usize) -> Result<SqDiffMean> {
        let idx = self.push(name, dtype, Decl::SqDiff { len })?;
        Ok(SqDiffMean(HandleId { plan: self.id, idx }))
    }

    /// Declares `mean_i cos(a_i, b_i)` over two row-major `rows x dim` matrices.
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

    /// Declares `mean_i softmax(logits_i)[label_i]` over row-major `rows x classes` logits
    /// and `rows` labels (`i64`).
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
    /// position of its input into `order` (`order.len() == self.len()`). Checks: the
    /// number of inputs, that every input belongs to this plan, that every statistic is
    /// bound exactly once, dtypes, lengths and the presence of the accumulator.
    pub(crate) fn resolve<M: Memory>(
        &self,
        inputs: &[Input<'_, M>],
        order: &mut [usize],
    ) -> Result<()> {
        self.resolve_shapes(
            inputs.len(),
            |i| (inputs[i].id, inputs[i].data.shape()),
            order,
        )
    }

    /// [`StatsPlan::resolve`] on shapes only.
    fn resolve_shapes(
        &self,
        n_inputs: usize,
        input: impl Fn(usize) -> (HandleId, Shape),
        order: &mut [usize],
    ) -> Result<()> {
        check_count(
            "stats inputs (one per declared statistic)",
            self.len(),
            n_inputs,
        )?;
        order.iter_mut().for_each(|o| *o = usize::MAX);
        for pos in 0..n_inputs {
            let (id, shape) = input(pos);
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
            Self::check_input(idx, e, &shape)?;
        }
        Ok(())
    }

    fn check_input(idx: usize, e: &Entry, shape: &Shape) -> Result<()> {
        let bad = |what: String| invalid("stats inputs", format!("{}: {what}", e.header(idx)));
        let check_buf = |name: &str, (dt, n): (DType, usize), len: usize| -> Result<()> {
            if dt != e.dtype {
                return Err(bad(format!("`{name}` is {dt}, declared {}", e.dtype)));
            }
            if n != len {
                return Err(bad(format!("`{name}` has {n} elements, expected {len}")));
            }
            Ok(())
        };
        match (&e.decl, *shape) {
            (Decl::SqDiff { len }, Shape::Pair(x, y)) => {
                check_buf("x", x, *len)?;
                check_buf("y", y, *len)
            }
            (Decl::RowCos { rows, dim }, Shape::Pair(a, b)) => {
                check_buf("a", a, rows * dim)?;
                check_buf("b", b, rows * dim)
            }
            (Decl::TrueProb { rows, classes }, Shape::Prob(l, labels)) => {
                check_buf("logits", l, rows * classes)?;
                if labels != *rows {
                    return Err(bad(format!(
                        "`labels` has {labels} elements, expected {rows}"
                    )));
                }
                Ok(())
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
                    _ => Ok(()),
                }
            }
            (Decl::SegDots { segs }, Shape::Pair(x, y)) => {
                check_buf("x", x, segs.total())?;
                check_buf("y", y, segs.total())
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

/// One statistic's buffers in memory `M` for one execution, made by a handle's `bind` (or
/// [`SegSums::bind_acc`], which holds the accumulator mutably borrowed until the input is
/// dropped). Run by the executor of that memory: [`crate::stats::CpuStats`] for [`Host`],
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

impl SqDiffMean {
    /// Binds `x` and `y`.
    pub fn bind<'a, M: Memory>(
        self,
        x: impl Into<Buf<'a, M>>,
        y: impl Into<Buf<'a, M>>,
    ) -> Input<'a, M> {
        Input {
            id: self.0,
            data: Bound::Pair(x.into(), y.into()),
        }
    }
}

impl RowCosMean {
    /// Binds the two row-major matrices.
    pub fn bind<'a, M: Memory>(
        self,
        a: impl Into<Buf<'a, M>>,
        b: impl Into<Buf<'a, M>>,
    ) -> Input<'a, M> {
        Input {
            id: self.0,
            data: Bound::Pair(a.into(), b.into()),
        }
    }
}

impl TrueProbMean {
    /// Binds the logits and the labels (`&[i64]` on the host, `CudaView<i64>` on a device).
    pub fn bind<'a, M: Memory>(
        self,
        logits: impl Into<Buf<'a, M>>,
        labels: M::Src<'a, i64>,
    ) -> Input<'a, M> {
        Input {
            id: self.0,
            data: Bound::Prob(logits.into(), labels),
        }
    }
}

impl SegSums {
    /// Binds the buffer (for a statistic declared without accumulator).
    pub fn bind<'a, M: Memory>(self, x: impl Into<Buf<'a, M>>) -> Input<'a, M> {
        Input {
            id: self.0,
            data: Bound::Sums(x.into(), None),
        }
    }

    /// Binds the buffer and the f32 accumulator that receives `acc += x^2` (for a
    /// statistic declared with `accumulate = true`): `&mut [f32]` on the host,
    /// `CudaViewMut<f32>` on a device.
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

impl SegDots {
    /// Binds `x` and `y`.
    pub fn bind<'a, M: Memory>(
        self,
        x: impl Into<Buf<'a, M>>,
        y: impl Into<Buf<'a, M>>,
    ) -> Input<'a, M> {
        Input {
            id: self.0,
            data: Bound::Pair(x.into(), y.into()),
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

/// A handle whose result can be read from [`StatsResults`] with [`StatsResults::get`].
pub trait StatHandle: Copy + sealed::Sealed {
    /// What reading gives.
    type Output<'r>;
    #[doc(hidden)]
    fn read(self, r: &StatsResults) -> Result<Self::Output<'_>>;
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
