//! The statistics oracle: plain, single-threaded, sequential f64 arithmetic, written to be
//! obviously correct. Backends are tested against these functions ([`run`] executes a
//! whole plan this way, accumulator included).

use super::plan::{label_ok, write_prob, Bound, Decl, Input, StatsPlan, StatsResults};
use super::{with_buf, with_pair};
use crate::backend::Host;
use crate::dtype::Element;
use crate::error::{check_len, Error, Result};
use crate::segments::Segments;

/// Cosine of one row from its dot product and squared norms: 0 when either row is zero
/// (all elements ±0), NaN when any of the three sums is not finite (a NaN or Inf in either
/// row), else `dot / (|a| |b|)`.
#[inline]
pub fn cos_from_sums(dot: f64, na: f64, nb: f64) -> f64 {
    if !(dot + na + nb).is_finite() {
        f64::NAN
    } else if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Maximum that propagates NaN (unlike `f64::max`).
#[inline(always)]
pub(crate) fn max_nan(m: f64, x: f64) -> f64 {
    if x > m || x.is_nan() {
        x
    } else {
        m
    }
}

/// `mean((x - y)^2)`; NaN for empty buffers.
pub fn sq_diff_mean<T: Element>(x: &[T], y: &[T]) -> Result<f64> {
    check_len("y", x.len(), y.len())?;
    let mut s = 0.0;
    for (a, b) in x.iter().zip(y) {
        let d = a.to_f64() - b.to_f64();
        s += d * d;
    }
    Ok(s / x.len() as f64)
}

/// `mean_i cos(a_i, b_i)` over row-major `rows x dim` matrices; a zero row gives 0 (see
/// [`cos_from_sums`]); NaN for `rows = 0`.
pub fn row_cos_mean<T: Element>(a: &[T], b: &[T], rows: usize, dim: usize) -> Result<f64> {
    let n = rows
        .checked_mul(dim)
        .ok_or_else(|| crate::error::invalid("rows x dim", "overflows usize"))?;
    check_len("a", n, a.len())?;
    check_len("b", n, b.len())?;
    let mut s = 0.0;
    for i in 0..rows {
        let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
        for j in i * dim..(i + 1) * dim {
            let (x, y) = (a[j].to_f64(), b[j].to_f64());
            dot += x * y;
            na += x * x;
            nb += y * y;
        }
        s += cos_from_sums(dot, na, nb);
    }
    Ok(s / rows as f64)
}

/// Softmax probability of `label` in one row (max-subtracted, f64).
pub(crate) fn row_prob<T: Element>(row: &[T], label: usize) -> f64 {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, x| max_nan(m, x.to_f64()));
    let s: f64 = if m == f64::NEG_INFINITY {
        0.0
    } else {
        row.iter().map(|x| (x.to_f64() - m).exp()).sum()
    };
    (row[label].to_f64() - m).exp() / s
}

/// Mean and first label fault of a probability statistic.
fn prob_core<T: Element>(
    logits: &[T],
    labels: &[i64],
    rows: usize,
    classes: usize,
) -> (f64, Option<(usize, i64)>) {
    let mut s = 0.0;
    for (i, &l) in labels.iter().enumerate().take(rows) {
        if !label_ok(l, classes) {
            return (f64::NAN, Some((i, l)));
        }
        s += row_prob(&logits[i * classes..(i + 1) * classes], l as usize);
    }
    (s / rows as f64, None)
}

/// `mean_i softmax(logits_i)[labels_i]` over row-major `rows x classes` logits; NaN for
/// `rows = 0`; `Err(LabelOutOfRange)` for the first label outside `0..classes`.
pub fn true_prob_mean<T: Element>(
    logits: &[T],
    labels: &[i64],
    rows: usize,
    classes: usize,
) -> Result<f64> {
    let n = rows
        .checked_mul(classes)
        .ok_or_else(|| crate::error::invalid("rows x classes", "overflows usize"))?;
    check_len("logits", n, logits.len())?;
    check_len("labels", rows, labels.len())?;
    match prob_core(logits, labels, rows, classes) {
        (m, None) => Ok(m),
        (_, Some((row, label))) => Err(Error::LabelOutOfRange {
            name: "true_prob_mean".into(),
            row,
            label,
            classes,
        }),
    }
}

/// Per-segment Σx, Σx², Σ|x| (owned).
#[derive(Clone, Debug, PartialEq)]
pub struct SegSumsOwned {
    /// Σx per segment.
    pub sum: Vec<f64>,
    /// Σx² per segment.
    pub sum_sq: Vec<f64>,
    /// Σ|x| per segment.
    pub sum_abs: Vec<f64>,
}

/// The f32 accumulator update `acc + x^2`, computed in f64 and rounded once to f32 — the
/// definition every backend implements bit for bit.
#[inline(always)]
pub fn acc_update(acc: f32, x: f64) -> f32 {
    (acc as f64 + x * x) as f32
}

/// Per-segment Σx, Σx², Σ|x|; with `acc`, also `acc[e] = acc_update(acc[e], x[e])`.
pub fn seg_sums<T: Element>(
    segs: &Segments,
    x: &[T],
    acc: Option<&mut [f32]>,
) -> Result<SegSumsOwned> {
    segs.check_buffer("x", x.len())?;
    if let Some(a) = &acc {
        segs.check_buffer("acc", a.len())?;
    }
    let l = segs.len();
    let mut out = SegSumsOwned {
        sum: vec![0.0; l],
        sum_sq: vec![0.0; l],
        sum_abs: vec![0.0; l],
    };
    for (s, r) in segs.iter().enumerate() {
        for e in r {
            let v = x[e].to_f64();
            out.sum[s] += v;
            out.sum_sq[s] += v * v;
            out.sum_abs[s] += v.abs();
        }
    }
    if let Some(a) = acc {
        for (a, v) in a.iter_mut().zip(x) {
            *a = acc_update(*a, v.to_f64());
        }
    }
    Ok(out)
}

/// Per-segment ⟨x, y⟩.
pub fn seg_dots<T: Element>(segs: &Segments, x: &[T], y: &[T]) -> Result<Vec<f64>> {
    segs.check_buffer("x", x.len())?;
    segs.check_buffer("y", y.len())?;
    Ok(segs
        .iter()
        .map(|r| r.map(|e| x[e].to_f64() * y[e].to_f64()).sum())
        .collect())
}

/// Executes a whole plan with the oracle into `out` (from [`StatsPlan::new_results`]),
/// with the same semantics as the backends (a row statistic over the rows given, up to
/// the declared number): validation first (nothing touched on `Err`),
/// then every statistic and accumulator, then `Err(LabelOutOfRange)` if a label was out of
/// range (the other results and the accumulators are written regardless).
pub fn run(plan: &StatsPlan, inputs: &mut [Input<'_, Host>], out: &mut StatsResults) -> Result<()> {
    if out.plan != plan.id || out.values.len() != plan.values_len {
        return Err(crate::error::invalid(
            "results",
            "result storage of another plan",
        ));
    }
    let (mut order, mut rows) = (vec![0; plan.len()], vec![0; plan.len()]);
    plan.resolve(inputs, &mut order, &mut rows)?;
    for ((e, &pos), &rows) in plan.entries.iter().zip(&order).zip(&rows) {
        let v = &mut out.values[e.out..e.out + e.n_values()];
        match (&e.decl, &mut inputs[pos].data) {
            (Decl::SqDiff { .. }, Bound::Pair(x, y)) => {
                v[0] = with_pair!(x, y, |x, y| sq_diff_mean(x, y))?;
            }
            (Decl::RowCos { dim, .. }, Bound::Pair(a, b)) => {
                v[0] = with_pair!(a, b, |a, b| row_cos_mean(a, b, rows, *dim))?;
            }
            (Decl::TrueProb { classes, .. }, Bound::Prob(l, labels)) => {
                let (m, fault) = with_buf!(l, |l| prob_core(l, labels, rows, *classes));
                write_prob(v, m, fault);
            }
            (Decl::SegSums { segs, .. }, Bound::Sums(x, acc)) => {
                let acc = acc.as_deref_mut();
                let r = with_buf!(x, |x| seg_sums(segs, x, acc))?;
                let l = segs.len();
                v[..l].copy_from_slice(&r.sum);
                v[l..2 * l].copy_from_slice(&r.sum_sq);
                v[2 * l..].copy_from_slice(&r.sum_abs);
            }
            (Decl::SegDots { segs }, Bound::Pair(x, y)) => {
                v.copy_from_slice(&with_pair!(x, y, |x, y| seg_dots(segs, x, y))?);
            }
            _ => unreachable!("input kinds are validated before execution"),
        }
    }
    out.rows.copy_from_slice(&rows);
    plan.label_error(out)
}
