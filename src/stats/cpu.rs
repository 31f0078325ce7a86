//! CPU executor of a statistics plan: rayon over a fixed task table, f64 accumulation,
//! deterministic for any thread count.
//!
//! # Method
//! [`CpuStats::new`] splits every declared statistic into tasks of about
//! [`STATS_CHUNK`] elements (chunks of a buffer or of a segment; groups of whole rows, or
//! pieces of one row when a row is longer than a chunk). A run computes every task's partial
//! sums in parallel (on the calling thread for plans of at most [`INLINE_ELEMENTS`]
//! elements) into its own preallocated slot (4 f64), then a sequential finishing pass
//! combines the slots of each statistic in task order. Each task sums its elements in a
//! fixed order (four interleaved lanes, combined as `(l0 + l1) + (l2 + l3)`, then the tail),
//! so results depend only on the plan, never on scheduling.
//!
//! # Allocation
//! The task table, partial slots, binding table and [`StatsResults`] are allocated once in
//! `new`; `run` allocates nothing in this crate (rayon's scheduler aside).

use super::plan::{label_ok, write_prob, Bound, Decl, Input, StatsPlan, StatsResults, STATS_CHUNK};
use super::reference::{acc_update, cos_from_sums, max_nan, row_prob};
use super::{with_buf, with_pair};
use crate::backend::Host;
use crate::dtype::Element;
use crate::error::{invalid, Result};
use crate::segments::chunk_tasks;
use rayon::prelude::*;
use std::ops::Range;
use std::ptr::NonNull;

/// f64 values per task slot.
const P: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `start..end` are element offsets (`a` = segment for segmented statistics).
    Elems,
    /// `start..end` are whole rows.
    Rows,
    /// Row `a`, elements `start..end` (absolute offsets) of it.
    RowPiece,
}

/// One unit of work (shared with the CUDA executor, which runs one block per task).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Task {
    pub entry: usize,
    pub mode: Mode,
    pub a: usize,
    pub start: usize,
    pub end: usize,
}

impl Task {
    /// This task in a run of a row statistic over `rows` rows (the task table is built for
    /// the declared maximum): `None` when it lies wholly beyond them, else cut at the last
    /// row. The per-segment statistics run as declared. A statistic's tasks are in row
    /// order, so the ones that remain are a prefix of its tasks, and they are exactly the
    /// task table of a plan declared with `rows` rows (chunk boundaries do not depend on the
    /// total): a short run gives the bits of that plan. `kernels/stats.cu` (`st_clip`)
    /// does the same.
    pub(crate) fn clip(&self, decl: &Decl, rows: usize) -> Option<Task> {
        let limit = match (decl, self.mode) {
            (Decl::SqDiff { row_len, .. }, _) => rows * row_len,
            (Decl::RowCos { .. } | Decl::TrueProb { .. }, Mode::RowPiece) => {
                return (self.a < rows).then_some(*self)
            }
            (Decl::RowCos { .. } | Decl::TrueProb { .. }, _) => rows,
            (Decl::SegSums { .. } | Decl::SegDots { .. }, _) => return Some(*self),
        };
        (self.start < limit).then(|| Task {
            end: self.end.min(limit),
            ..*self
        })
    }
}

/// The f32 accumulator of one statistic during one run, written by disjoint ranges from
/// several threads. Made in `run` from the `&mut [f32]` its input holds (the
/// inputs are borrowed mutably for the whole run) and never used after the run.
#[derive(Clone, Copy, Debug)]
struct AccPtr {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: an `AccPtr` stands for an exclusive borrow of its slice held by the running
// `CpuStats::run`; it is only dereferenced through `range_mut`, whose callers guarantee
// disjoint ranges.
unsafe impl Send for AccPtr {}
// SAFETY: as above — shared access only hands out disjoint ranges (caller's contract).
unsafe impl Sync for AccPtr {}

impl AccPtr {
    fn new(s: &mut [f32]) -> Self {
        Self {
            len: s.len(),
            ptr: NonNull::from(s).cast(),
        }
    }

    /// The elements `r` of the accumulator.
    ///
    /// # Safety
    /// The slice it was made from must still be exclusively borrowed for this run, `r`
    /// must lie within `0..len`, and no two live results of this function (on any thread)
    /// may overlap.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range_mut(&self, r: Range<usize>) -> &mut [f32] {
        debug_assert!(r.start <= r.end && r.end <= self.len);
        // SAFETY: in bounds of the original slice (caller), exclusive (caller: disjoint).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(r.start), r.len()) }
    }
}

/// Deterministic CPU executor of one [`StatsPlan`] (see the module docs).
#[derive(Debug)]
pub struct CpuStats {
    plan: StatsPlan,
    tasks: Vec<Task>,
    entry_tasks: Vec<Range<usize>>,
    partials: Vec<f64>,
    order: Vec<usize>,
    /// Per statistic, the rows of the current run (0 for the per-segment statistics).
    rows: Vec<usize>,
    /// Per statistic, its accumulator during a run (`None` otherwise).
    accs: Vec<Option<AccPtr>>,
    results: StatsResults,
    /// Run the tasks on the calling thread: the plan is so small that handing it to
    /// rayon's pool costs more than the work (see [`INLINE_ELEMENTS`]).
    inline: bool,
}

/// Plans that read at most this many elements in all (every input buffer counted once per
/// element) run on the calling thread, the rule of the CPU backend's projection too
/// ([`crate::CpuBackend::with_inline_elements`]).
pub use crate::cpu::INLINE_ELEMENTS;

/// Elements one run of `plan` reads (every input buffer counted once per element).
fn plan_elements(plan: &StatsPlan) -> usize {
    plan.entries
        .iter()
        .map(|e| match &e.decl {
            Decl::SqDiff { rows, row_len } => 2 * rows.saturating_mul(*row_len),
            Decl::RowCos { rows, dim } => 2 * rows.saturating_mul(*dim),
            Decl::TrueProb { rows, classes } => rows.saturating_mul(*classes),
            Decl::SegSums { segs, .. } => segs.total(),
            Decl::SegDots { segs } => 2 * segs.total(),
        })
        .fold(0usize, usize::saturating_add)
}

fn row_tasks(entry: usize, rows: usize, dim: usize, tasks: &mut Vec<Task>) {
    if dim <= STATS_CHUNK {
        let per = (STATS_CHUNK / dim.max(1)).max(1);
        let mut r = 0;
        while r < rows {
            let e = (r + per).min(rows);
            tasks.push(Task {
                entry,
                mode: Mode::Rows,
                a: 0,
                start: r,
                end: e,
            });
            r = e;
        }
    } else {
        for row in 0..rows {
            let mut s = row * dim;
            let end = s + dim;
            while s < end {
                let e = (s + STATS_CHUNK).min(end);
                tasks.push(Task {
                    entry,
                    mode: Mode::RowPiece,
                    a: row,
                    start: s,
                    end: e,
                });
                s = e;
            }
        }
    }
}

/// The task table of a plan and the task range of each statistic (depends only on the
/// plan and [`STATS_CHUNK`]).
pub(crate) fn build_tasks(plan: &StatsPlan) -> Result<(Vec<Task>, Vec<Range<usize>>)> {
    let mut tasks = Vec::new();
    let mut entry_tasks = Vec::with_capacity(plan.len());
    for (i, e) in plan.entries.iter().enumerate() {
        let first = tasks.len();
        match &e.decl {
            Decl::SqDiff { rows, row_len } => {
                let len = rows * row_len; // checked when declared
                let mut s = 0;
                while s < len {
                    let end = (s + STATS_CHUNK).min(len);
                    tasks.push(Task {
                        entry: i,
                        mode: Mode::Elems,
                        a: 0,
                        start: s,
                        end,
                    });
                    s = end;
                }
            }
            Decl::RowCos { rows, dim } => row_tasks(i, *rows, *dim, &mut tasks),
            Decl::TrueProb { rows, classes } => row_tasks(i, *rows, *classes, &mut tasks),
            Decl::SegSums { segs, .. } | Decl::SegDots { segs } => {
                tasks.extend(chunk_tasks(segs, STATS_CHUNK)?.into_iter().map(|c| Task {
                    entry: i,
                    mode: Mode::Elems,
                    a: c.seg,
                    start: c.start,
                    end: c.end,
                }));
            }
        }
        entry_tasks.push(first..tasks.len());
    }
    Ok((tasks, entry_tasks))
}

impl CpuStats {
    /// Builds the task table and preallocates all storage for `plan` (a copy of the plan
    /// is kept: statistics declared on `plan` afterwards are not part of this executor).
    pub fn new(plan: &StatsPlan) -> Result<Self> {
        let (tasks, entry_tasks) = build_tasks(plan)?;
        let n = tasks
            .len()
            .checked_mul(P)
            .ok_or_else(|| invalid("plan", "too many tasks"))?;
        Ok(Self {
            plan: plan.clone(),
            partials: vec![0.0; n],
            order: vec![usize::MAX; plan.len()],
            rows: vec![0; plan.len()],
            accs: vec![None; plan.len()],
            results: plan.new_results(),
            inline: plan_elements(plan) <= INLINE_ELEMENTS,
            tasks,
            entry_tasks,
        })
    }
}

impl super::Stats for CpuStats {
    type Memory = Host;

    fn plan(&self) -> &StatsPlan {
        &self.plan
    }

    fn results(&self) -> &StatsResults {
        &self.results
    }

    /// See [`super::Stats::run`]. Runs on the calling thread for plans of at most
    /// [`INLINE_ELEMENTS`] elements, else on rayon's pool; the results are the same bits.
    fn run(&mut self, inputs: &mut [Input<'_, Host>]) -> Result<&StatsResults> {
        self.plan.resolve(inputs, &mut self.order, &mut self.rows)?;
        self.accs.iter_mut().for_each(|a| *a = None);
        for inp in inputs.iter_mut() {
            if let Bound::Sums(_, Some(acc)) = &mut inp.data {
                self.accs[inp.id.idx as usize] = Some(AccPtr::new(acc));
            }
        }
        let inputs = &*inputs;
        let (plan, order, rows, accs) = (&self.plan, &self.order, &self.rows, &self.accs);
        let one = |(t, slot): (&Task, &mut [f64])| {
            let e = &plan.entries[t.entry];
            match t.clip(&e.decl, rows[t.entry]) {
                Some(t) => run_task(
                    &t,
                    &e.decl,
                    &inputs[order[t.entry]].data,
                    accs[t.entry].as_ref(),
                    slot,
                ),
                None => slot.iter_mut().for_each(|v| *v = 0.0), // beyond this run's rows
            }
        };
        if self.inline {
            self.tasks
                .iter()
                .zip(self.partials.chunks_mut(P))
                .for_each(one);
        } else {
            self.tasks
                .par_iter()
                .zip(self.partials.par_chunks_mut(P))
                .for_each(one);
        }
        for (i, e) in self.plan.entries.iter().enumerate() {
            let r = self.entry_tasks[i].clone();
            // The tasks of this run: a prefix of the statistic's (Task::clip).
            let n = self.tasks[r.clone()]
                .iter()
                .take_while(|t| t.clip(&e.decl, self.rows[i]).is_some())
                .count();
            let v = &mut self.results.values[e.out..e.out + e.n_values()];
            finish(
                &e.decl,
                e.decl.count(self.rows[i]),
                &inputs[self.order[i]].data,
                &self.tasks[r.start..r.start + n],
                &self.partials[r.start * P..(r.start + n) * P],
                v,
            );
        }
        self.results.rows.copy_from_slice(&self.rows);
        self.accs.iter_mut().for_each(|a| *a = None);
        self.plan.label_error(&self.results)?;
        Ok(&self.results)
    }
}

#[inline(always)]
fn lanes(l: [f64; 4]) -> f64 {
    (l[0] + l[1]) + (l[2] + l[3])
}

fn sum_sq_diff<T: Element>(x: &[T], y: &[T]) -> f64 {
    let mut l = [0.0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for k in 0..4 {
            let d = a[k].to_f64() - b[k].to_f64();
            l[k] += d * d;
        }
    }
    let mut s = lanes(l);
    for (a, b) in xr.iter().zip(yr) {
        let d = a.to_f64() - b.to_f64();
        s += d * d;
    }
    s
}

fn dot3<T: Element>(x: &[T], y: &[T]) -> [f64; 3] {
    let (mut d, mut na, mut nb) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for k in 0..4 {
            let (u, v) = (a[k].to_f64(), b[k].to_f64());
            d[k] += u * v;
            na[k] += u * u;
            nb[k] += v * v;
        }
    }
    let mut s = [lanes(d), lanes(na), lanes(nb)];
    for (a, b) in xr.iter().zip(yr) {
        let (u, v) = (a.to_f64(), b.to_f64());
        s[0] += u * v;
        s[1] += u * u;
        s[2] += v * v;
    }
    s
}

fn dot<T: Element>(x: &[T], y: &[T]) -> f64 {
    let mut l = [0.0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for k in 0..4 {
            l[k] += a[k].to_f64() * b[k].to_f64();
        }
    }
    let mut s = lanes(l);
    for (a, b) in xr.iter().zip(yr) {
        s += a.to_f64() * b.to_f64();
    }
    s
}

fn sums3<T: Element>(x: &[T], acc: Option<&mut [f32]>) -> [f64; 3] {
    let (mut s, mut q, mut a) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    let xc = x.chunks_exact(4);
    let xr = xc.remainder();
    for c in xc {
        for k in 0..4 {
            let v = c[k].to_f64();
            s[k] += v;
            q[k] += v * v;
            a[k] += v.abs();
        }
    }
    let mut out = [lanes(s), lanes(q), lanes(a)];
    for v in xr {
        let v = v.to_f64();
        out[0] += v;
        out[1] += v * v;
        out[2] += v.abs();
    }
    if let Some(acc) = acc {
        for (a, v) in acc.iter_mut().zip(x) {
            *a = acc_update(*a, v.to_f64());
        }
    }
    out
}

/// Max (NaN-propagating) and `Σ exp(x - max)` of a piece of a row; the sum is 0 when every
/// element is -Inf.
fn piece_softmax<T: Element>(x: &[T]) -> [f64; 2] {
    let m = x
        .iter()
        .fold(f64::NEG_INFINITY, |m, v| max_nan(m, v.to_f64()));
    let s = if m == f64::NEG_INFINITY {
        0.0
    } else {
        x.iter().map(|v| (v.to_f64() - m).exp()).sum()
    };
    [m, s]
}

fn run_task(t: &Task, decl: &Decl, data: &Bound<'_, Host>, acc: Option<&AccPtr>, slot: &mut [f64]) {
    slot.iter_mut().for_each(|v| *v = 0.0);
    let r = t.start..t.end;
    match (decl, data, t.mode) {
        (Decl::SqDiff { .. }, Bound::Pair(x, y), _) => {
            slot[0] = with_pair!(x, y, |x, y| sum_sq_diff(&x[r.clone()], &y[r]));
        }
        (Decl::SegDots { .. }, Bound::Pair(x, y), _) => {
            slot[0] = with_pair!(x, y, |x, y| dot(&x[r.clone()], &y[r]));
        }
        (Decl::SegSums { .. }, Bound::Sums(x, _), _) => {
            // SAFETY: task ranges of one statistic are disjoint and within the buffer
            // (chunk table over the validated layout); the accumulator is exclusively
            // borrowed by its input and `run` holds the inputs mutably.
            let acc = acc.map(|a| unsafe { a.range_mut(r.clone()) });
            let s = with_buf!(x, |x| sums3(&x[r], acc));
            slot[..3].copy_from_slice(&s);
        }
        (Decl::RowCos { dim, .. }, Bound::Pair(a, b), Mode::Rows) => {
            let dim = *dim;
            slot[0] = with_pair!(a, b, |a, b| {
                let mut s = 0.0;
                for row in r {
                    let e = row * dim..(row + 1) * dim;
                    let [d, na, nb] = dot3(&a[e.clone()], &b[e]);
                    s += cos_from_sums(d, na, nb);
                }
                s
            });
        }
        (Decl::RowCos { .. }, Bound::Pair(a, b), _) => {
            let s = with_pair!(a, b, |a, b| dot3(&a[r.clone()], &b[r]));
            slot[..3].copy_from_slice(&s);
        }
        (Decl::TrueProb { classes, .. }, Bound::Prob(l, labels), Mode::Rows) => {
            let c = *classes;
            let mut first_bad = -1.0;
            let mut s = 0.0;
            with_buf!(l, |l| {
                for row in r {
                    let lab = labels[row];
                    if !label_ok(lab, c) {
                        if first_bad < 0.0 {
                            first_bad = row as f64;
                        }
                        continue;
                    }
                    s += row_prob(&l[row * c..(row + 1) * c], lab as usize);
                }
            });
            slot[0] = s;
            slot[1] = first_bad;
        }
        (Decl::TrueProb { .. }, Bound::Prob(l, _), _) => {
            let s = with_buf!(l, |l| piece_softmax(&l[r]));
            slot[..2].copy_from_slice(&s);
        }
        _ => unreachable!("input kinds are validated before execution"),
    }
}

/// Combines the partials of one statistic's `tasks` (this run's) in task order into its
/// values `v`; the means divide by `count` ([`Decl::count`] of this run's rows).
fn finish(
    decl: &Decl,
    count: usize,
    data: &Bound<'_, Host>,
    tasks: &[Task],
    parts: &[f64],
    v: &mut [f64],
) {
    let slots = || tasks.iter().zip(parts.chunks_exact(P));
    match decl {
        Decl::SqDiff { .. } => {
            let s: f64 = slots().map(|(_, p)| p[0]).fold(0.0, |a, b| a + b);
            v[0] = s / count as f64;
        }
        Decl::SegDots { .. } => {
            v.iter_mut().for_each(|x| *x = 0.0);
            for (t, p) in slots() {
                v[t.a] += p[0];
            }
        }
        Decl::SegSums { segs, .. } => {
            let l = segs.len();
            v.iter_mut().for_each(|x| *x = 0.0);
            for (t, p) in slots() {
                v[t.a] += p[0];
                v[l + t.a] += p[1];
                v[2 * l + t.a] += p[2];
            }
        }
        Decl::RowCos { .. } => {
            let mut s = 0.0;
            let mut cur: Option<(usize, [f64; 3])> = None;
            for (t, p) in slots() {
                match t.mode {
                    Mode::RowPiece => match &mut cur {
                        Some((row, acc)) if *row == t.a => {
                            acc.iter_mut().zip(p).for_each(|(a, b)| *a += b);
                        }
                        _ => {
                            if let Some((_, [d, na, nb])) = cur {
                                s += cos_from_sums(d, na, nb);
                            }
                            cur = Some((t.a, [p[0], p[1], p[2]]));
                        }
                    },
                    _ => s += p[0],
                }
            }
            if let Some((_, [d, na, nb])) = cur {
                s += cos_from_sums(d, na, nb);
            }
            v[0] = s / count as f64;
        }
        Decl::TrueProb { classes, .. } => {
            let Bound::Prob(logits, labels) = data else {
                unreachable!("input kinds are validated before execution")
            };
            let mut s = 0.0;
            let mut fault = None;
            let mut cur: Option<(usize, f64, f64)> = None; // row, max, sum
            let close = |cur: Option<(usize, f64, f64)>, s: &mut f64, fault: &mut Option<_>| {
                if let Some((row, m, sum)) = cur {
                    let lab = labels[row];
                    if !label_ok(lab, *classes) {
                        fault.get_or_insert((row, lab));
                    } else {
                        let x = with_buf!(logits, |l| l[row * classes + lab as usize].to_f64());
                        *s += (x - m).exp() / sum;
                    }
                }
            };
            for (t, p) in slots() {
                match t.mode {
                    Mode::RowPiece => match &mut cur {
                        Some((row, m, sum)) if *row == t.a => {
                            let nm = max_nan(*m, p[0]);
                            let rescale = |mm: f64, ss: f64| {
                                if mm == f64::NEG_INFINITY {
                                    0.0
                                } else {
                                    ss * (mm - nm).exp()
                                }
                            };
                            *sum = rescale(*m, *sum) + rescale(p[0], p[1]);
                            *m = nm;
                        }
                        _ => {
                            close(cur, &mut s, &mut fault);
                            cur = Some((t.a, p[0], p[1]));
                        }
                    },
                    _ => {
                        s += p[0];
                        if p[1] >= 0.0 && fault.is_none() {
                            let row = p[1] as usize;
                            fault = Some((row, labels[row]));
                        }
                    }
                }
            }
            close(cur, &mut s, &mut fault);
            write_prob(v, s / count as f64, fault);
        }
    }
}
