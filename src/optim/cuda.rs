//! The optimizer step on CUDA (module `optim`, `kernels/optim.cu`): [`OptimBackend`] for
//! [`CudaBackend`], so that [`super::Optimizer`]`<CudaBackend>` steps device tensors — the
//! same [`Rule`], step count and [`Correction`] (over device views) as on the CPU, the same
//! results bit for bit given the same coefficients, its f32 state on the device
//! ([`CudaState`], allocated once, at construction).
//!
//! One launch for every tensor of the model (the projection's tensor-list machinery: the
//! layout's chunk-task table, built once, and a per-tensor pointer table, uploaded only
//! when the tensors' addresses change). A corrected step is the projection's pass 1 with
//! the per-tensor solve folded in over the encoder's tensors (one launch,
//! `CudaBackend::coefficients_list`), then the same launch reading the coefficients from
//! the device: 2 launches, no host synchronisation.
//!
//! **Per-tensor steps** ([`super::Optimizer::step_some`]): a tensor without a gradient has
//! its pointer-table row's `OPT_SKIP` word set (its blocks return at once), so the skipped
//! set is part of the pointer table and costs an upload only when it changes. When every
//! stepped tensor has the same step constants — the same step count for AdamW, the same
//! "first step or not" for SGD with momentum, always for SGD without — the launch takes them
//! as scalars, as before; otherwise one small per-tensor table (`OPT_TS_WORDS` f64 per
//! tensor: AdamW's step size and `1/√(1 − β₂ᵗ)`, SGD's first-step flag) is uploaded and the
//! same kernel reads it instead (a null-or-not pointer, like `coef`).
//!
//! Host→device bytes per step, beside the launch (no device→host copy, no synchronisation):
//! - 0 for a step whose parameter, gradient (and θ₀, extra) addresses and skipped set are
//!   the last step's and whose stepped tensors share their step constants (a training loop's
//!   plain step: 1 launch, no copy);
//! - `8·OPT_WORDS = 104` bytes per tensor (one copy) when an address or the skipped set
//!   changed;
//! - `8·OPT_TS_WORDS = 16` bytes per tensor (one copy) when the stepped tensors' step
//!   constants differ (AdamW after a tensor was skipped, until the counts meet again);
//! - a corrected step with per-tensor β adds 8 bytes per encoder tensor (one copy).

use super::{Correction, OptimBackend, Rule};
use crate::abi::{OPT_B1, OPT_DECAY, OPT_FIRST, OPT_GRAD, OPT_MOMENTUM, OPT_NESTEROV};
use crate::abi::{OPT_PARAM, OPT_S0, OPT_S1, OPT_SKIP, OPT_THETA0, OPT_WORDS, TASK_WORDS};
use crate::abi::{OPT_TS_FIRST, OPT_TS_INV_ROOT_BC2, OPT_TS_STEP_SIZE, OPT_TS_WORDS};
use crate::cuda::{check_list_alias, drv, ByteRange, CudaBackend, DeviceRanks, CHUNK, THREADS};
use crate::error::{check_len, invalid, Result};
use crate::project::solve::MAX_K;
use crate::project::{Beta, Projection, TensorList};
use crate::segments::{chunk_tasks, Segments};
use crate::{Element, Error};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

const MODULE: &str = "optim";

/// The optimizer's state on CUDA: the f32 state on the device (one flat buffer per state
/// over the layout; none for SGD without momentum), the layout's chunk-task table and the
/// last pointer table, all allocated once on the backend's stream ([`super::Optimizer::on`]).
pub struct CudaState {
    segs: Segments,
    n_tasks: usize,
    /// (tensor, start, end) per chunk task, u64 (the projection's table format).
    tasks: CudaSlice<u64>,
    s0: Option<CudaSlice<f32>>,
    s1: Option<CudaSlice<f32>>,
    /// β per corrected tensor (`Beta::PerSegment`), one slot per tensor.
    beta: CudaSlice<f64>,
    /// The pointer table last uploaded (`OPT_WORDS` per tensor) and its host copy.
    table: Option<(Vec<u64>, CudaSlice<u64>)>,
    /// The per-tensor step table (`OPT_TS_WORDS` f64 per tensor), for a step whose tensors'
    /// step constants differ, and the host buffer it is built in.
    tstep: CudaSlice<f64>,
    tstep_host: Vec<f64>,
}

impl std::fmt::Debug for CudaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaState")
            .field("tensors", &self.segs.len())
            .field("momentum", &self.s0.is_some())
            .field("second_moment", &self.s1.is_some())
            .finish()
    }
}

/// The correction's device arguments for one launch.
struct Corr<'c> {
    first: usize,
    count: usize,
    k: usize,
    coef: &'c CudaSlice<f64>,
    per_tensor_beta: bool,
    beta_scalar: f64,
}

impl OptimBackend for CudaBackend {
    type State = CudaState;

    fn new_state(&self, rule: &Rule, lens: &[usize]) -> Result<CudaState> {
        let be = self;
        let segs = Segments::from_lengths(lens)?;
        let tasks = chunk_tasks(&segs, CHUNK)?;
        let n_tasks = tasks.len();
        grid(n_tasks.max(1))?;
        let mut table = Vec::with_capacity(TASK_WORDS * n_tasks.max(1));
        for c in &tasks {
            table.extend_from_slice(&[c.seg as u64, c.start as u64, c.end as u64]);
        }
        if table.is_empty() {
            table.extend_from_slice(&[0, 0, 0]);
        }
        let s = be.stream();
        let total = segs.total().max(1);
        let (a, b) = match rule {
            Rule::Sgd(p) => (p.momentum != 0.0, false),
            Rule::AdamW(_) => (true, true),
        };
        let state = |on: bool| -> Result<Option<CudaSlice<f32>>> {
            if on {
                Ok(Some(s.alloc_zeros::<f32>(total).map_err(drv)?))
            } else {
                Ok(None)
            }
        };
        Ok(CudaState {
            n_tasks,
            tasks: s.clone_htod(&table).map_err(drv)?,
            s0: state(a)?,
            s1: state(b)?,
            beta: s.alloc_zeros::<f64>(segs.len().max(1)).map_err(drv)?,
            table: None,
            tstep: s
                .alloc_zeros::<f64>(OPT_TS_WORDS * segs.len().max(1))
                .map_err(drv)?,
            tstep_host: vec![0.0; OPT_TS_WORDS * segs.len()],
            segs,
        })
    }

    fn optim_step<'p, 'g, T: Element>(
        &self,
        st: &mut CudaState,
        rule: &Rule,
        steps: &[u64],
        params: &mut [CudaViewMut<'p, T>],
        grads: &[Option<CudaView<'g, T>>],
    ) -> Result<()> {
        st.step(self, rule, steps, params, grads)
    }

    fn optim_step_corrected<'p, 'g, 'c, T: Element>(
        &self,
        st: &mut CudaState,
        rule: &Rule,
        steps: &[u64],
        params: &mut [CudaViewMut<'p, T>],
        grads: &[Option<CudaView<'g, T>>],
        c: &Correction<'_, CudaView<'c, T>>,
    ) -> Result<DeviceRanks> {
        st.step_corrected(self, rule, steps, params, grads, c)
    }

    fn optim_check_corrected<'p, 'g, 'c, T: Element>(
        &self,
        st: &CudaState,
        params: &mut [CudaViewMut<'p, T>],
        grads: &[Option<CudaView<'g, T>>],
        c: &Correction<'_, CudaView<'c, T>>,
    ) -> Result<()> {
        st.check_corrected(self, params, grads, c).map(|_| ())
    }
}

impl CudaState {
    /// The state buffers of tensor `i`, copied to the host (synchronises the stream).
    pub(super) fn get(&self, be: &CudaBackend, i: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let Some(r) = self.segs.get(i) else {
            return Ok(None);
        };
        let get = |b: &Option<CudaSlice<f32>>| -> Result<Vec<f32>> {
            match b {
                Some(b) if !r.is_empty() => {
                    be.stream().clone_dtoh(&b.slice(r.clone())).map_err(drv)
                }
                _ => Ok(Vec::new()),
            }
        };
        Ok(Some((get(&self.s0)?, get(&self.s1)?)))
    }

    /// One step over the tensors with a gradient: one launch, none when no tensor has one
    /// ([`super::Optimizer::step_some`]).
    fn step<T: Element>(
        &mut self,
        be: &CudaBackend,
        rule: &Rule,
        steps: &[u64],
        params: &mut [CudaViewMut<'_, T>],
        grads: &[Option<CudaView<'_, T>>],
    ) -> Result<()> {
        self.check_lists(be, params, grads)?;
        let table = self.table_of(be, params, grads, None)?;
        let Some(consts) = self.step_consts(be, rule, steps, grads)? else {
            return Ok(());
        };
        let ptrs = self.upload_table(be, table)?;
        self.launch::<T>(be, rule, consts, ptrs, None)?;
        mark_written(be, params, grads, None);
        Ok(())
    }

    /// One step with the correction: pass 1 of the projection with the per-tensor solve over
    /// the encoder's tensors (one launch), then the launch of [`CudaState::step`] reading
    /// the coefficients on the device ([`super::Optimizer::step_corrected`]).
    fn step_corrected<T: Element>(
        &mut self,
        be: &CudaBackend,
        rule: &Rule,
        steps: &[u64],
        params: &mut [CudaViewMut<'_, T>],
        grads: &[Option<CudaView<'_, T>>],
        c: &Correction<'_, CudaView<'_, T>>,
    ) -> Result<DeviceRanks> {
        // Validated (and its buffers checked) before anything is launched or uploaded.
        let (table, r, enc) = self.check_corrected(be, params, grads, c)?;
        let k = c.extra.len() + 1;
        let (per_tensor_beta, beta_scalar) = match c.beta {
            Beta::Scalar(b) => (false, b),
            Beta::PerSegment(_) => (true, 0.0),
        };
        // The encoder's tensors have gradients: some tensor is stepped.
        let consts = (self.step_consts(be, rule, steps, grads)?)
            .ok_or_else(|| Error::Cuda("internal: a corrected step without a gradient".into()))?;
        let ranks = {
            let p = encoder_projection(params, grads, c, r.clone())?;
            let ptrs = self.upload_table(be, table)?;
            if let Beta::PerSegment(bs) = c.beta {
                if !bs.is_empty() {
                    be.stream()
                        .memcpy_htod(bs, &mut self.beta.slice_mut(0..bs.len()))
                        .map_err(drv)?;
                }
            }
            let ((), ranks) = be.coefficients_list(&enc, &p, |coef| {
                let corr = Corr {
                    first: r.start,
                    count: r.len(),
                    k,
                    coef,
                    per_tensor_beta,
                    beta_scalar,
                };
                self.launch::<T>(be, rule, consts, ptrs, Some(corr))
            })?;
            ranks
        };
        mark_written(be, params, grads, Some(c));
        Ok(ranks)
    }

    /// The checks of a corrected step, nothing written: the lists, the pointer table (every
    /// buffer's context, no parameter overlapping an input), the encoder's range (each of
    /// its tensors with a gradient) and segments, its projection (β, options, lengths).
    #[allow(clippy::type_complexity)]
    fn check_corrected<T: Element>(
        &self,
        be: &CudaBackend,
        params: &mut [CudaViewMut<'_, T>],
        grads: &[Option<CudaView<'_, T>>],
        c: &Correction<'_, CudaView<'_, T>>,
    ) -> Result<(Vec<u64>, std::ops::Range<usize>, Segments)> {
        self.check_lists(be, params, grads)?;
        let r = c.encoder(grads)?;
        let lens: Vec<usize> = r.clone().map(|i| self.segs.seg_len(i)).collect();
        let enc = Segments::from_lengths(&lens)?;
        let table = self.table_of(be, params, grads, Some(c))?;
        encoder_projection(params, grads, c, r.clone())?.validate(&enc)?;
        Ok((table, r, enc))
    }

    /// The step constants of a step: `None` when no tensor has a gradient (nothing to
    /// launch); the scalars of the stepped tensors' common step count when they share
    /// their constants (no copy); else the per-tensor step table, filled and uploaded (one
    /// copy of `OPT_TS_WORDS` f64 per tensor; a skipped tensor's row is not read).
    fn step_consts<T>(
        &mut self,
        be: &CudaBackend,
        rule: &Rule,
        steps: &[u64],
        grads: &[Option<T>],
    ) -> Result<Option<Consts>> {
        let stepped: Vec<u64> = (grads.iter().zip(steps))
            .filter(|(g, _)| g.is_some())
            .map(|(_, &t)| t)
            .collect();
        let Some(&t0) = stepped.first() else {
            return Ok(None);
        };
        // The constants depend on the step count through AdamW's bias corrections and
        // SGD's first-step flag (read only with momentum).
        let shared = match rule {
            Rule::Sgd(p) if p.momentum == 0.0 => true,
            Rule::Sgd(_) => stepped.iter().all(|&t| (t == 1) == (t0 == 1)),
            Rule::AdamW(_) => stepped.iter().all(|&t| t == t0),
        };
        if shared {
            return Ok(Some(Consts { t: t0, table: 0 }));
        }
        let h = &mut self.tstep_host;
        h.fill(0.0);
        for (i, (g, &t)) in grads.iter().zip(steps).enumerate() {
            if g.is_none() {
                continue;
            }
            let row = &mut h[i * OPT_TS_WORDS..(i + 1) * OPT_TS_WORDS];
            match rule {
                Rule::Sgd(_) => row[OPT_TS_FIRST] = if t == 1 { 1.0 } else { 0.0 },
                Rule::AdamW(p) => {
                    let (step_size, inv_root_bc2) = p.step_scalars(t);
                    row[OPT_TS_STEP_SIZE] = step_size;
                    row[OPT_TS_INV_ROOT_BC2] = inv_root_bc2;
                }
            }
        }
        let (s, len) = (be.stream(), h.len());
        s.memcpy_htod(&self.tstep_host, &mut self.tstep.slice_mut(0..len))
            .map_err(drv)?;
        let table = self.tstep.device_ptr(s).0;
        Ok(Some(Consts { t: t0, table }))
    }

    /// `Err` unless the lists match the layout and the optimizer's buffers are in `be`'s
    /// context.
    fn check_lists<T>(
        &self,
        be: &CudaBackend,
        params: &[CudaViewMut<'_, T>],
        grads: &[Option<CudaView<'_, T>>],
    ) -> Result<()> {
        let n = self.segs.len();
        if params.len() != n || grads.len() != n {
            return Err(Error::CountMismatch {
                name: "params/grads",
                expected: n,
                got: if params.len() != n {
                    params.len()
                } else {
                    grads.len()
                },
            });
        }
        for i in 0..n {
            check_len("params", self.segs.seg_len(i), params[i].len())?;
            if let Some(g) = &grads[i] {
                check_len("grads", self.segs.seg_len(i), g.len())?;
            }
        }
        // The state and tables were allocated on the backend the optimizer was made with.
        be.check_context("optimizer state", &self.tasks)?;
        Ok(())
    }

    /// The pointer table of one step (`OPT_WORDS` per tensor, element operands biased by
    /// the tensor's offset; a tensor without a gradient: `OPT_SKIP` set, `OPT_GRAD` 0),
    /// after checking every buffer's context and that no parameter overlaps another
    /// parameter or any input (gradients, θ₀, extra vectors). The views' addresses are
    /// taken here; [`mark_written`] records their use after the launch.
    fn table_of<T: Element>(
        &self,
        be: &CudaBackend,
        params: &mut [CudaViewMut<'_, T>],
        grads: &[Option<CudaView<'_, T>>],
        c: Option<&Correction<'_, CudaView<'_, T>>>,
    ) -> Result<Vec<u64>> {
        let stream = be.stream();
        let size = std::mem::size_of::<T>() as u64;
        let n = self.segs.len();
        let mut t = vec![0u64; n * OPT_WORDS];
        let mut outs: Vec<ByteRange> = Vec::with_capacity(n);
        let mut inputs: Vec<(&'static str, ByteRange)> = Vec::with_capacity(n);
        let state = |b: &Option<CudaSlice<f32>>| b.as_ref().map_or(0, |b| b.device_ptr(stream).0);
        let (s0, s1) = (state(&self.s0), state(&self.s1));
        let mut input = |name: &'static str, v: &CudaView<'_, T>, i: usize| -> Result<u64> {
            be.check_context(name, v)?;
            let a = v.device_ptr(stream).0;
            inputs.push((name, (a, v.len() as u64 * size)));
            Ok(a.wrapping_sub(self.segs.offsets()[i] as u64 * size))
        };
        for i in 0..n {
            let row = &mut t[i * OPT_WORDS..(i + 1) * OPT_WORDS];
            match &grads[i] {
                Some(g) => row[OPT_GRAD] = input("grads", g, i)?,
                None => row[OPT_SKIP] = 1,
            }
            row[OPT_S0] = s0;
            row[OPT_S1] = s1;
        }
        if let Some(c) = c {
            let r = c.range(n)?;
            check_len("correction theta0", r.len(), c.theta0.len())?;
            if c.extra.len() + 1 > MAX_K {
                return Err(invalid(
                    "correction extra",
                    format!("{} extra vectors, at most {}", c.extra.len(), MAX_K - 1),
                ));
            }
            for (s, i) in r.clone().enumerate() {
                let len = self.segs.seg_len(i);
                check_len("correction theta0", len, c.theta0[s].len())?;
                t[i * OPT_WORDS + OPT_THETA0] = input("correction theta0", &c.theta0[s], i)?;
                for (j, e) in c.extra.iter().enumerate() {
                    check_len("correction extra", r.len(), e.len())?;
                    check_len("correction extra", len, e[s].len())?;
                    t[i * OPT_WORDS + OPT_B1 + j] = input("correction extra", &e[s], i)?;
                }
            }
        }
        for (i, p) in params.iter_mut().enumerate() {
            be.check_context("params", &*p)?;
            let a = p.device_ptr_mut(stream).0;
            outs.push((a, p.len() as u64 * size));
            t[i * OPT_WORDS + OPT_PARAM] = a.wrapping_sub(self.segs.offsets()[i] as u64 * size);
        }
        check_list_alias("params", &outs, &inputs)?;
        Ok(t)
    }

    /// The device pointer table holding `t` (uploaded only when it differs from the last
    /// one); returns its address.
    fn upload_table(&mut self, be: &CudaBackend, t: Vec<u64>) -> Result<u64> {
        let s = be.stream();
        let t = if t.is_empty() {
            vec![0u64; OPT_WORDS]
        } else {
            t
        };
        match &mut self.table {
            Some((host, dev)) if host.len() == t.len() => {
                if *host != t {
                    s.memcpy_htod(&t, dev).map_err(drv)?;
                    *host = t;
                }
            }
            slot => {
                let dev = s.clone_htod(&t).map_err(drv)?;
                *slot = Some((t, dev));
            }
        }
        match &self.table {
            Some((_, dev)) => Ok(dev.device_ptr(s).0),
            None => Err(Error::Cuda("internal: no pointer table".into())),
        }
    }

    /// The one launch of a step: `optim_<rule>_<dt>` over every chunk task.
    fn launch<T: Element>(
        &self,
        be: &CudaBackend,
        rule: &Rule,
        consts: Consts,
        ptrs: u64,
        corr: Option<Corr<'_>>,
    ) -> Result<()> {
        let t = consts.t;
        if self.n_tasks == 0 {
            return Ok(());
        }
        let dt = T::DTYPE.name();
        let null = 0u64;
        let (first, count, k, beta_scalar) = match &corr {
            Some(c) => (c.first as u64, c.count as u64, c.k as i32, c.beta_scalar),
            None => (0, 0, 0, 0.0),
        };
        let f = match *rule {
            Rule::Sgd(_) => be.function(MODULE, &format!("optim_sgd_{dt}"))?,
            Rule::AdamW(_) => be.function(MODULE, &format!("optim_adamw_{dt}"))?,
        };
        let mut b = be.stream().launch_builder(&f);
        b.arg(&self.tasks).arg(&ptrs);
        // Step-wide constants, computed as src/optim/cpu.rs computes them (same bits).
        let (flags, h): (i32, Vec<f64>) = match *rule {
            Rule::Sgd(p) => {
                let flags = if p.momentum != 0.0 { OPT_MOMENTUM } else { 0 }
                    | if p.nesterov { OPT_NESTEROV } else { 0 }
                    | if t == 1 { OPT_FIRST } else { 0 }
                    | if p.weight_decay != 0.0 { OPT_DECAY } else { 0 };
                (
                    flags,
                    vec![p.lr, p.momentum, 1.0 - p.dampening, p.weight_decay],
                )
            }
            Rule::AdamW(p) => {
                let (step_size, inv_root_bc2) = p.step_scalars(t);
                let h = vec![
                    1.0 - p.lr * p.weight_decay,
                    p.beta1,
                    1.0 - p.beta1,
                    p.beta2,
                    1.0 - p.beta2,
                    step_size,
                    inv_root_bc2,
                    p.eps,
                ];
                (0, h)
            }
        };
        if matches!(rule, Rule::Sgd(_)) {
            b.arg(&flags);
        }
        for x in &h {
            b.arg(x);
        }
        match &corr {
            Some(c) => b.arg(c.coef),
            None => b.arg(&null),
        };
        b.arg(&first).arg(&count).arg(&k);
        match &corr {
            Some(c) if c.per_tensor_beta => b.arg(&self.beta),
            _ => b.arg(&null),
        };
        b.arg(&beta_scalar);
        b.arg(&consts.table);
        // SAFETY: signatures optim_sgd_<dt>(tasks, ptrs, flags, lr, momentum, 1 - dampening,
        // weight_decay, coef, corr_first, corr_count, k, beta_seg, beta_scalar, tstep) and
        // optim_adamw_<dt>(tasks, ptrs, 1 - lr*wd, b1, 1 - b1, b2, 1 - b2, step_size,
        // inv_root_bc2, eps, coef, corr_first, corr_count, k, beta_seg, beta_scalar, tstep)
        // in kernels/optim.cu; tasks holds 3*n_tasks u64 with every (start, end) inside the
        // layout; ptrs is this optimizer's table of OPT_WORDS u64 per tensor, made by
        // table_of from views checked to be of this context and of the tensor's length
        // (params, grads, θ₀ and extra vectors of the corrected tensors, biased by the
        // tensor's offset; params overlapping no other param nor any input; a tensor without
        // a gradient has OPT_SKIP set and is not read), and the state buffers (total
        // elements, or 0 when the rule has none: read only under MOMENTUM / by AdamW, which
        // have them); coef is null, or the workspace's coefficients, k f64 per corrected
        // tensor, written by pass 1 queued before on this stream, the workspace held until
        // this launch is queued; beta_seg is null or holds one f64 per corrected tensor;
        // tstep is null or this state's step table of OPT_TS_WORDS f64 per tensor, filled for
        // every stepped tensor and uploaded before on this stream; one block per task of
        // RR_THREADS threads.
        unsafe { b.launch(cfg(grid(self.n_tasks)?)) }.map_err(drv)?;
        Ok(())
    }
}

/// Records the step's use of the caller's views on the stream after the launch (cudarc's
/// read and write events, in its multi-stream mode): a later operation on another stream
/// waits for the step.
fn mark_written<T>(
    be: &CudaBackend,
    params: &mut [CudaViewMut<'_, T>],
    grads: &[Option<CudaView<'_, T>>],
    c: Option<&Correction<'_, CudaView<'_, T>>>,
) {
    let s = be.stream();
    for p in params.iter_mut() {
        drop(p.device_ptr_mut(s));
    }
    for g in grads.iter().flatten() {
        drop(g.device_ptr(s));
    }
    if let Some(c) = c {
        for v in c.theta0.iter().chain(c.extra.iter().flatten()) {
            drop(v.device_ptr(s));
        }
    }
}

/// The projection whose pass 1 and solve a corrected step runs: the drift of the encoder's
/// tensors `r` against their gradients (and the extra basis), as views; `Err` when one of
/// them has no gradient.
#[allow(clippy::type_complexity)]
fn encoder_projection<'v, T>(
    params: &'v [CudaViewMut<'_, T>],
    grads: &'v [Option<CudaView<'_, T>>],
    c: &'v Correction<'_, CudaView<'_, T>>,
    r: std::ops::Range<usize>,
) -> Result<Projection<'v, TensorList<CudaView<'v, T>>, TensorList<CudaView<'v, T>>>> {
    c.encoder(grads)?;
    let theta: Vec<CudaView<'_, T>> = params[r.clone()].iter().map(|p| p.as_view()).collect();
    let grad: Vec<CudaView<'_, T>> = grads[r].iter().flatten().map(|g| g.slice(..)).collect();
    let theta0: Vec<CudaView<'_, T>> = c.theta0.iter().map(|v| v.slice(..)).collect();
    let extra = c
        .extra
        .iter()
        .map(|e| TensorList(e.iter().map(|v| v.slice(..)).collect::<Vec<_>>()));
    Ok(Projection::drift(
        TensorList(theta),
        TensorList(theta0),
        extra,
        TensorList(grad),
    )
    .beta(c.beta)
    .opts(c.opts))
}

/// A step's constants: the step count of the scalar arguments, and the per-tensor step
/// table's device address (0: none, every stepped tensor uses the scalars of `t`).
#[derive(Clone, Copy)]
struct Consts {
    t: u64,
    table: u64,
}

fn grid(n: usize) -> Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|&g| g <= i32::MAX as u32)
        .ok_or_else(|| invalid("chunk tasks", format!("{n} blocks exceed the grid limit")))
}

fn cfg(blocks: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
