//! The CPU pass of an optimizer step: every tensor of the list that has a gradient cut into
//! chunks of the backend's chunk size, each chunk one task on the backend's pool (calls of
//! at most `INLINE_ELEMENTS` elements on the calling thread); a skipped tensor (no gradient)
//! has no task, and each task carries its tensor's own step constants (its step count's
//! bias correction, SGD's first-step flag). The update is elementwise, so the
//! results do not depend on the chunking or the threads, bit for bit; they equal
//! [`super::reference`]'s (the same f64 operations in the same order, no fused
//! multiply-adds).

use super::{AdamW, Correction, OptimBackend, Rule, Sgd};
use crate::cpu::two_pass::TwoPass;
use crate::dtype::level::{level, Level};
use crate::project::solve::MAX_K;
use crate::project::{chunk_partial, local, solve_chunks, step_groups, ChunkPartial};
use crate::segments::chunk_tasks;
use crate::{CpuBackend, Element, Error, Result, Segments};

/// The CPU's optimizer state: f32, one or two buffers per tensor (none without momentum),
/// allocated once.
#[derive(Clone, Debug)]
pub struct HostState {
    lens: Vec<usize>,
    s0: Vec<Vec<f32>>,
    s1: Vec<Vec<f32>>,
}

impl OptimBackend for CpuBackend {
    type State = HostState;

    fn new_state(&self, rule: &Rule, lens: &[usize]) -> Result<HostState> {
        Ok(HostState::new(rule, lens))
    }

    fn optim_step<T: Element>(
        &self,
        st: &mut HostState,
        rule: &Rule,
        steps: &[u64],
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
    ) -> Result<()> {
        st.check_lists(params, grads)?;
        let all = 0..st.lens.len();
        let step = Steps { rule, t: steps };
        st.pass(self, &step, params, grads, &[all]);
        Ok(())
    }

    fn optim_check_corrected<T: Element>(
        &self,
        st: &HostState,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
        c: &Correction<'_, &[T]>,
    ) -> Result<()> {
        st.check_corrected(params, grads, c).map(|_| ())
    }

    fn optim_step_corrected<T: Element>(
        &self,
        st: &mut HostState,
        rule: &Rule,
        steps: &[u64],
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
        c: &Correction<'_, &[T]>,
    ) -> Result<Vec<u32>> {
        // The whole correction checked before anything is written.
        let (r, segs) = st.check_corrected(params, grads, c)?;
        let n = st.lens.len();
        // The tensors outside the encoder: the plain update.
        let step = Steps { rule, t: steps };
        st.pass(self, &step, params, grads, &[0..r.start, r.end..n]);
        // The encoder as one parallel region, as the projection's step (`TwoPass`): pass 1
        // of a chunk (θ, θ₀, g and the extra vectors), the tensor's solve once its last
        // chunk is done, then the chunk's update (pass 2) while what pass 1 read is still
        // cached, pass 1 at most one cache group (`CpuBackend::with_cache_bytes`) ahead.
        // Per tensor the same pass 1, solve and update, so the same bits as one pass 1
        // over the encoder and one update pass.
        let k = 1 + c.extra.len();
        let tasks = chunk_tasks(&segs, self.chunk())?;
        let per_element = (3 + c.extra.len()) * std::mem::size_of::<T>() + 4 * st.buffers();
        let groups = step_groups(&segs, self.cache_elements(per_element));
        let (pieces, elements) = st.pieces(self.chunk(), &step, params, grads, &[r]);
        // The encoder's tensors all have a gradient (checked), so its pieces are its chunk
        // table's tasks, in order: each task's item, its θ read by its pass 1, then updated.
        let extra = |s: usize, rr: &std::ops::Range<usize>| {
            let mut bs: [&[T]; MAX_K] = [&[]; MAX_K];
            for (j, e) in c.extra.iter().enumerate() {
                bs[j + 1] = &e[s][rr.clone()];
            }
            bs
        };
        let pass1 = |i: usize, pc: &Piece<'_, T>| {
            let (s, rr) = (tasks[i].seg, local(&segs, &tasks[i]));
            let mut bs = extra(s, &rr);
            bs[0] = pc.g;
            chunk_partial(Some(&*pc.th), Some(&c.theta0[s][rr]), &bs[..k])
        };
        let solve =
            |s: usize, parts: &[&ChunkPartial]| solve_chunks(k, segs.seg_len(s), &c.opts, parts);
        let plan = TwoPass::new(&tasks, segs.len(), &groups);
        let ranks = plan.run(self, elements, pieces, pass1, solve, |i, mut pc, (w, _)| {
            let (s, rr) = (tasks[i].seg, local(&segs, &tasks[i]));
            pc.corr = Some(Corr {
                k,
                theta0: &c.theta0[s][rr.clone()],
                bs: extra(s, &rr),
                w: *w,
                beta: c.beta.at(s),
            });
            run_piece(pc);
        });
        Ok(ranks.into_iter().map(|(_, rank)| rank).collect())
    }
}

impl HostState {
    /// The checks of a corrected step: the encoder's range in the list (each of its
    /// tensors with a gradient) and its segments.
    fn check_corrected<T>(
        &self,
        params: &[&mut [T]],
        grads: &[Option<&[T]>],
        c: &Correction<'_, &[T]>,
    ) -> Result<(std::ops::Range<usize>, Segments)> {
        self.check_lists(params, grads)?;
        let r = c.encoder(grads)?;
        let segs = Segments::from_lengths(&self.lens[r.clone()])?;
        let theta: Vec<&[T]> = params[r.clone()].iter().map(|p| &**p).collect();
        c.projection(theta, present(&grads[r.clone()]))
            .validate(&segs)?;
        Ok((r, segs))
    }

    /// Zeroed state for tensors of lengths `lens` under `rule`.
    pub(super) fn new(rule: &Rule, lens: &[usize]) -> Self {
        let bufs = |on: bool| -> Vec<Vec<f32>> {
            lens.iter()
                .map(|&n| if on { vec![0.0; n] } else { Vec::new() })
                .collect()
        };
        let (a, b) = match rule {
            Rule::Sgd(p) => (p.momentum != 0.0, false),
            Rule::AdamW(_) => (true, true),
        };
        HostState {
            lens: lens.to_vec(),
            s0: bufs(a),
            s1: bufs(b),
        }
    }

    /// The number of state buffers per tensor (0, 1 or 2).
    fn buffers(&self) -> usize {
        let on = |b: &[Vec<f32>]| usize::from(b.iter().any(|x| !x.is_empty()));
        on(&self.s0) + on(&self.s1)
    }

    /// The state buffers of tensor `i`.
    pub(super) fn get(&self, i: usize) -> Option<(&[f32], &[f32])> {
        Some((self.s0.get(i)?.as_slice(), self.s1.get(i)?.as_slice()))
    }

    /// `Err` unless the lists match the layout (a missing gradient has no length).
    fn check_lists<T>(&self, params: &[&mut [T]], grads: &[Option<&[T]>]) -> Result<()> {
        if params.len() != self.lens.len() || grads.len() != self.lens.len() {
            return Err(Error::CountMismatch {
                name: "params/grads",
                expected: self.lens.len(),
                got: if params.len() != self.lens.len() {
                    params.len()
                } else {
                    grads.len()
                },
            });
        }
        for (i, &n) in self.lens.iter().enumerate() {
            let g = grads[i].map_or(n, |g| g.len());
            for (name, got) in [("params", params[i].len()), ("grads", g)] {
                if got != n {
                    return Err(Error::LengthMismatch {
                        name,
                        expected: n,
                        got,
                    });
                }
            }
        }
        Ok(())
    }

    /// The one pass over checked lists, over the tensors in `which` that have a gradient:
    /// every such tensor cut into chunks of the backend's chunk size, each chunk a task with
    /// its tensor's step constants; `fused` adds the correction to its tensors' chunks.
    fn pass<T: Element>(
        &mut self,
        be: &CpuBackend,
        steps: &Steps<'_>,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
        which: &[std::ops::Range<usize>],
    ) {
        let (pieces, elements) = self.pieces(be.chunk(), steps, params, grads, which);
        let idx: Vec<usize> = (0..pieces.len()).collect();
        be.zip_tasks(elements, &idx, pieces, |_, piece| run_piece(piece));
    }

    /// The tasks of [`Self::pass`] (without a correction) and their element count.
    fn pieces<'a, T: Element>(
        &'a mut self,
        chunk: usize,
        steps: &Steps<'_>,
        params: &'a mut [&mut [T]],
        grads: &[Option<&'a [T]>],
        which: &[std::ops::Range<usize>],
    ) -> (Vec<Piece<'a, T>>, usize) {
        let visits = |i: usize| grads[i].is_some() && which.iter().any(|r| r.contains(&i));
        let mut pieces: Vec<Piece<'_, T>> = Vec::new();
        for (i, (((p, g), s0), s1)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.s0.iter_mut())
            .zip(self.s1.iter_mut())
            .enumerate()
            .filter(|(i, _)| visits(*i))
        {
            let Some(g) = g else { continue };
            let step = steps.of(i);
            let mut p: &mut [T] = p;
            let mut s0: &mut [f32] = s0;
            let mut s1: &mut [f32] = s1;
            let mut start = 0;
            while !p.is_empty() {
                let c = chunk.min(p.len());
                let (ph, pt) = p.split_at_mut(c);
                let (ah, at) = s0.split_at_mut(c.min(s0.len()));
                let (bh, bt) = s1.split_at_mut(c.min(s1.len()));
                pieces.push(Piece {
                    step,
                    th: ph,
                    g: &g[start..start + c],
                    s0: ah,
                    s1: bh,
                    corr: None,
                });
                (p, s0, s1) = (pt, at, bt);
                start += c;
            }
        }
        let elements = (self.lens.iter().enumerate())
            .filter(|(i, _)| visits(*i))
            .map(|(_, n)| n)
            .sum();
        (pieces, elements)
    }
}

/// One tensor's (or chunk's) correction: θ₀, the basis vectors after the gradient (slot 0
/// unused: the gradient is basis vector 0), the coefficients and β.
struct Corr<'a, T> {
    k: usize,
    theta0: &'a [T],
    bs: [&'a [T]; MAX_K],
    w: [f64; MAX_K],
    beta: f64,
}

impl<'a, T> Corr<'a, T> {
    /// The monomorphised form for `K = k`.
    #[inline(always)]
    fn drift<const K: usize>(&self) -> Drift<'a, T, K> {
        Drift {
            theta0: self.theta0,
            bs: std::array::from_fn(|j| self.bs[j]),
            w: std::array::from_fn(|j| self.w[j]),
            beta: self.beta,
        }
    }
}

/// One task: a chunk of one tensor, its step constants and its state (and correction).
struct Piece<'a, T> {
    step: Step,
    th: &'a mut [T],
    g: &'a [T],
    s0: &'a mut [f32],
    s1: &'a mut [f32],
    corr: Option<Corr<'a, T>>,
}

/// The rule and the step counts of one step (one per tensor, read where it has a gradient).
struct Steps<'a> {
    rule: &'a Rule,
    t: &'a [u64],
}

impl Steps<'_> {
    /// Tensor `i`'s rule with its constants.
    fn of(&self, i: usize) -> Step {
        Step::new(self.rule, self.t[i])
    }
}

/// The rule of one tensor's step with its constants (its own step count's).
#[derive(Clone, Copy)]
enum Step {
    Sgd(Sgd, u64),
    AdamW {
        p: AdamW,
        step_size: f64,
        inv_root_bc2: f64,
    },
}

impl Step {
    /// Step `t` of `rule` (a tensor's count, 1 for its first step).
    fn new(rule: &Rule, t: u64) -> Self {
        match *rule {
            Rule::Sgd(p) => Step::Sgd(p, t),
            Rule::AdamW(p) => {
                let (step_size, inv_root_bc2) = p.step_scalars(t);
                Step::AdamW {
                    p,
                    step_size,
                    inv_root_bc2,
                }
            }
        }
    }
}

/// The gradient an update uses at element `i`, from the parameter `x` and the stored
/// gradient `g` (both widened): `g` itself, or the corrected one.
trait Grad: Copy {
    /// The same with every slice cut to `n` elements (the chunk's length, so that the
    /// loop's index needs no bounds check and vectorises).
    fn fit(self, n: usize) -> Self;
    fn at(&self, i: usize, x: f64, g: f64) -> f64;
}

#[derive(Clone, Copy)]
struct Plain;

impl Grad for Plain {
    #[inline(always)]
    fn fit(self, _: usize) -> Self {
        self
    }

    #[inline(always)]
    fn at(&self, _: usize, _: f64, g: f64) -> f64 {
        g
    }
}

/// `g + β·(d − Σ_j w_j b_j)`, `d = x − θ₀`, `b_0 = g`: the operations and order of the
/// projection's pass 2 (`alpha = 1`, so its `alpha·g` is `g` exactly), monomorphised over k.
#[derive(Clone, Copy)]
struct Drift<'a, T, const K: usize> {
    theta0: &'a [T],
    bs: [&'a [T]; K],
    w: [f64; K],
    beta: f64,
}

impl<T: Element, const K: usize> Grad for Drift<'_, T, K> {
    #[inline(always)]
    fn fit(self, n: usize) -> Self {
        Drift {
            theta0: &self.theta0[..n],
            bs: std::array::from_fn(|j| if j == 0 { self.bs[0] } else { &self.bs[j][..n] }),
            ..self
        }
    }

    #[inline(always)]
    fn at(&self, i: usize, x: f64, g: f64) -> f64 {
        let mut y = x - self.theta0[i].to_f64();
        y -= self.w[0] * g;
        for j in 1..K {
            y -= self.w[j] * self.bs[j][i].to_f64();
        }
        g + self.beta * y
    }
}

/// One task, compiled for the CPU's instruction-set level ([`level`]: AVX-512 or AVX2 where
/// present, capped by `REDREG_CPU_LEVEL` as for the projection's kernels): the same IEEE
/// operations in the same order (Rust never contracts to FMA; `vdivpd`, `vsqrtpd` and the
/// conversions round as the scalar instructions do), so the same bits, with 4 or 8 f64
/// lanes instead of SSE2's 2 — the pass's two divisions and square root per element made
/// it compute-bound at 2 threads.
fn run_piece<T: Element>(pc: Piece<'_, T>) {
    run_piece_at(level(), pc)
}

/// [`run_piece`] at a given level.
fn run_piece_at<T: Element>(lv: Level, pc: Piece<'_, T>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,avx")]
        unsafe fn avx2<T: Element>(pc: Piece<'_, T>) {
            run_piece_any(pc)
        }
        #[cfg(redreg_avx512)]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx")]
        unsafe fn avx512<T: Element>(pc: Piece<'_, T>) {
            run_piece_any(pc)
        }
        match lv {
            // SAFETY: the level's token proves the CPU has AVX2 and AVX.
            Level::Avx2(_) => return unsafe { avx2(pc) },
            // SAFETY: the level's token proves the CPU has AVX-512 F/BW/VL, AVX2 and AVX.
            // (The optimizer's pass has no block conversions: the BF16 level adds nothing.)
            #[cfg(redreg_avx512)]
            Level::Avx512(_) | Level::Avx512Bf16(_) => return unsafe { avx512(pc) },
            Level::Base => {}
        }
    }
    let _ = lv;
    run_piece_any(pc)
}

#[inline(always)]
fn run_piece_any<T: Element>(mut pc: Piece<'_, T>) {
    let step = pc.step;
    let step = &step;
    let Some(c) = pc.corr.take() else {
        return run_rule(step, pc, &Plain);
    };
    match c.k {
        1 => run_rule(step, pc, &c.drift::<1>()),
        2 => run_rule(step, pc, &c.drift::<2>()),
        3 => run_rule(step, pc, &c.drift::<3>()),
        4 => run_rule(step, pc, &c.drift::<4>()),
        5 => run_rule(step, pc, &c.drift::<5>()),
        6 => run_rule(step, pc, &c.drift::<6>()),
        7 => run_rule(step, pc, &c.drift::<7>()),
        _ => run_rule(step, pc, &c.drift::<8>()),
    }
}

#[inline(always)]
fn run_rule<T: Element, G: Grad>(step: &Step, pc: Piece<'_, T>, grad: &G) {
    match step {
        Step::Sgd(p, t) => sgd_chunk(p, *t, pc.th, pc.g, pc.s0, grad),
        Step::AdamW {
            p,
            step_size,
            inv_root_bc2,
        } => adamw_chunk(
            p,
            *step_size,
            *inv_root_bc2,
            pc.th,
            pc.g,
            pc.s0,
            pc.s1,
            grad,
        ),
    }
}

#[inline(always)]
fn sgd_chunk<T: Element, G: Grad>(p: &Sgd, t: u64, th: &mut [T], g: &[T], b: &mut [f32], grad: &G) {
    let mom = p.momentum != 0.0;
    let n = th.len();
    let (g, grad) = (&g[..n], grad.fit(n));
    let b = if mom { &mut b[..n] } else { b };
    for i in 0..n {
        let x = th[i].to_f64();
        let mut gi = grad.at(i, x, g[i].to_f64());
        if p.weight_decay != 0.0 {
            gi += p.weight_decay * x;
        }
        if mom {
            let bi = if t == 1 {
                gi
            } else {
                p.momentum * b[i] as f64 + (1.0 - p.dampening) * gi
            };
            b[i] = bi as f32;
            gi = if p.nesterov { gi + p.momentum * bi } else { bi };
        }
        th[i] = T::from_f64(x - p.lr * gi);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn adamw_chunk<T: Element, G: Grad>(
    p: &AdamW,
    step_size: f64,
    inv_root_bc2: f64,
    th: &mut [T],
    g: &[T],
    m: &mut [f32],
    v: &mut [f32],
    grad: &G,
) {
    let n = th.len();
    let (g, m, v, grad) = (&g[..n], &mut m[..n], &mut v[..n], grad.fit(n));
    for i in 0..n {
        let x0 = th[i].to_f64();
        let gi = grad.at(i, x0, g[i].to_f64());
        let x = x0 * (1.0 - p.lr * p.weight_decay);
        let mi = p.beta1 * m[i] as f64 + (1.0 - p.beta1) * gi;
        let vi = p.beta2 * v[i] as f64 + (1.0 - p.beta2) * gi * gi;
        m[i] = mi as f32;
        v[i] = vi as f32;
        th[i] = T::from_f64(x - step_size * mi / (vi.sqrt() * inv_root_bc2 + p.eps));
    }
}

/// The gradients of tensors checked to have one.
fn present<'g, T>(grads: &[Option<&'g [T]>]) -> Vec<&'g [T]> {
    grads.iter().flatten().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::level::levels;
    use crate::testing::Rng;
    use half::{bf16, f16};

    /// Every level this machine has gives the baseline's bits for both rules, plain and
    /// corrected (k = 1 and k = 3), over whole blocks and a tail, parameters, state and all.
    fn same_bits<T: Element>() {
        let levels = levels();
        if levels.len() == 1 {
            println!("SKIP {}: only the baseline level on this CPU", T::DTYPE);
        }
        let mut rng = Rng::new(0x0971);
        let n = 8 * 29 + 3;
        let th: Vec<T> = rng.elements(n, 1.0);
        let g: Vec<T> = rng.elements(n, 0.1);
        let th0: Vec<T> = rng.elements(n, 1.0);
        let b1: Vec<T> = rng.elements(n, 0.1);
        let b2: Vec<T> = rng.elements(n, 0.1);
        let s: Vec<f32> = (0..n).map(|_| rng.signed(0.01) as f32).collect();
        let v: Vec<f32> = (0..n).map(|_| (rng.signed(1e-4) as f32).abs()).collect();
        let rules = [
            Rule::Sgd(Sgd {
                momentum: 0.9,
                ..Sgd::new(0.1)
            }),
            Rule::AdamW(AdamW::default()),
        ];
        for rule in &rules {
            for k in [0, 1, 3] {
                let run = |lv: Level| {
                    let (mut th, mut s0, mut s1) = (th.clone(), s.clone(), v.clone());
                    let mut bs: [&[T]; MAX_K] = [&[]; MAX_K];
                    bs[1] = &b1;
                    bs[2] = &b2;
                    let corr = (k > 0).then(|| Corr {
                        k,
                        theta0: &th0,
                        bs,
                        w: [0.3, -0.7, 1.1, 0.0, 0.0, 0.0, 0.0, 0.0],
                        beta: 0.25,
                    });
                    run_piece_at(
                        lv,
                        Piece {
                            step: Step::new(rule, 3),
                            th: &mut th,
                            g: &g,
                            s0: &mut s0,
                            s1: &mut s1,
                            corr,
                        },
                    );
                    let bits: Vec<u64> = th.iter().map(|x| x.to_f64().to_bits()).collect();
                    let state: Vec<u32> = s0.iter().chain(&s1).map(|x| x.to_bits()).collect();
                    (bits, state)
                };
                let want = run(Level::Base);
                for &lv in &levels[1..] {
                    assert!(run(lv) == want, "{} k={k} {rule:?} at {lv:?}", T::DTYPE);
                }
            }
        }
    }

    #[test]
    fn levels_give_the_same_bits() {
        same_bits::<f32>();
        same_bits::<f16>();
        same_bits::<bf16>();
    }
}
