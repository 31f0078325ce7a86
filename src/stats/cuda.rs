//! CUDA executor of a statistics plan (feature `cuda`, module `stats`, `kernels/stats.cu`).
//!
//! A run is: one small host-to-device copy of the step's descriptors (8 u64 per statistic:
//! its buffer addresses and this run's rows, from preallocated page-locked host storage into
//! a preallocated device table), one launch of `stats_tasks` (one block per task of the
//! same task table as the CPU executor, built once for the declared rows; the last block of
//! each statistic runs the CPU's finishing pass), one device-to-host copy of all results,
//! then one stream synchronisation. No device memory is allocated after [`CudaStats::new`];
//! a run with fewer rows than declared has the same launch, grid and copies (the tasks
//! beyond its rows do nothing).
//!
//! Results are bitwise identical run to run (fixed block and finishing orders; the only
//! atomic is an integer ticket per statistic that elects the block that finishes it).
//! They equal the CPU executor's up to f64 summation order inside a task (relative
//! differences ~1e-15 of Σ|terms|); the accumulator update is bitwise the CPU's.

use super::cpu::{build_tasks, Mode};
use super::plan::{write_prob, Bound, Buf, Decl, Input, Labels, StatsPlan, StatsResults};
use crate::abi::{
    DT_BF16, DT_F16, DT_F32, ST_COS, ST_DESC_DTYPE, ST_DESC_KIND, ST_DESC_N1, ST_DESC_N2,
    ST_DESC_OUT, ST_DESC_P0, ST_DESC_P1, ST_DESC_P2, ST_DESC_WORDS, ST_DOTS, ST_ENTRY_END,
    ST_ENTRY_FIRST, ST_ENTRY_WORDS, ST_MODE_ELEMS, ST_MODE_PIECE, ST_MODE_ROWS, ST_PARTIALS,
    ST_PROB, ST_SQDIFF, ST_SUMS, ST_TASK_A, ST_TASK_END, ST_TASK_ENTRY, ST_TASK_MODE,
    ST_TASK_START, ST_TASK_WORDS,
};
use crate::cuda::{
    byte_range, check_buffer_context, check_no_alias, drv, ByteRange, CudaBackend, Device, THREADS,
};
use crate::dtype::DType;
use crate::error::{invalid, Result};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchConfig,
    PinnedHostSlice, PushKernelArg, SyncOnDrop,
};
use half::{bf16, f16};
use std::sync::Arc;

const MODULE: &str = "stats";

impl Buf<'_, Device> {
    /// `Err` unless the buffer belongs to `ctx`.
    fn check_context(&self, ctx: &cudarc::driver::CudaContext, name: &'static str) -> Result<()> {
        match self {
            Buf::F32(v) => check_buffer_context(ctx, name, v),
            Buf::F16(v) => check_buffer_context(ctx, name, v),
            Buf::BF16(v) => check_buffer_context(ctx, name, v),
        }
    }

    fn range(&self, s: &CudaStream) -> ByteRange {
        match self {
            Buf::F32(v) => byte_range(v, s),
            Buf::F16(v) => byte_range(v, s),
            Buf::BF16(v) => byte_range(v, s),
        }
    }

    fn ptr<'s>(&'s self, s: &'s CudaStream, guards: &mut Vec<SyncOnDrop<'s>>) -> u64 {
        let (p, g) = match self {
            Buf::F32(v) => v.device_ptr(s),
            Buf::F16(v) => v.device_ptr(s),
            Buf::BF16(v) => v.device_ptr(s),
        };
        guards.push(g);
        p
    }
}

macro_rules! devbuf_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<CudaView<'a, $t>> for Buf<'a, Device> {
            fn from(s: CudaView<'a, $t>) -> Self {
                Buf::$v(s)
            }
        }
        impl<'a> From<&'a CudaSlice<$t>> for Buf<'a, Device> {
            fn from(s: &'a CudaSlice<$t>) -> Self {
                Buf::$v(s.as_view())
            }
        }
    };
}
devbuf_from!(f32, F32);
devbuf_from!(f16, F16);
devbuf_from!(bf16, BF16);

impl<'a> From<CudaView<'a, i64>> for Labels<'a, Device> {
    fn from(s: CudaView<'a, i64>) -> Self {
        Labels(s)
    }
}

impl<'a> From<&'a CudaSlice<i64>> for Labels<'a, Device> {
    fn from(s: &'a CudaSlice<i64>) -> Self {
        Labels(s.as_view())
    }
}

impl Input<'_, Device> {
    /// `Err` unless every buffer belongs to `ctx` and the accumulator (the only device
    /// buffer a run writes) does not overlap the gradient it accumulates.
    fn check(&self, ctx: &cudarc::driver::CudaContext, s: &CudaStream) -> Result<()> {
        match &self.data {
            Bound::Pair(x, y) => {
                x.check_context(ctx, "x")?;
                y.check_context(ctx, "y")
            }
            Bound::Prob(l, lab) => {
                l.check_context(ctx, "logits")?;
                check_buffer_context(ctx, "labels", lab)
            }
            Bound::Sums(x, acc) => {
                x.check_context(ctx, "x")?;
                if let Some(a) = acc {
                    check_buffer_context(ctx, "acc", a)?;
                    check_no_alias("acc", byte_range(a, s), &[("x", x.range(s))])?;
                }
                Ok(())
            }
        }
    }
}

/// CUDA executor of one [`StatsPlan`] (see the module docs).
pub struct CudaStats {
    plan: StatsPlan,
    stream: Arc<CudaStream>,
    f_tasks: CudaFunction,
    n_tasks: usize,
    tasks: CudaSlice<u64>,
    entry_tasks: CudaSlice<u64>,
    desc: CudaSlice<u64>,
    partials: CudaSlice<f64>,
    values: CudaSlice<f64>,
    /// One ticket counter per statistic (0 between runs: the kernel's last block resets it).
    counts: CudaSlice<u32>,
    /// The descriptors' host copy in page-locked memory: the per-run upload is one
    /// asynchronous copy (from pageable memory the driver would stage it first).
    desc_host: PinnedHostSlice<u64>,
    order: Vec<usize>,
    /// Per statistic, the rows of the current run (0 for the per-segment statistics).
    rows: Vec<usize>,
    results: StatsResults,
}

impl std::fmt::Debug for CudaStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStats")
            .field("statistics", &self.plan.len())
            .field("tasks", &self.n_tasks)
            .finish()
    }
}

/// The results of a statistic with no elements (no tasks): what the CPU's finishing pass
/// gives over no tasks — 0 for the per-segment sums and dots, NaN for a mean (without a
/// label fault).
fn empty_values(decl: &Decl, v: &mut [f64]) {
    match decl {
        Decl::SegSums { .. } | Decl::SegDots { .. } => v.fill(0.0),
        Decl::TrueProb { .. } => write_prob(v, f64::NAN, None),
        Decl::SqDiff { .. } | Decl::RowCos { .. } => v[0] = f64::NAN,
    }
}

fn dtype_code(d: DType) -> u64 {
    match d {
        DType::F32 => DT_F32,
        DType::F16 => DT_F16,
        DType::BF16 => DT_BF16,
    }
}

impl CudaStats {
    /// Loads the kernels, uploads the task table and allocates every device buffer for
    /// `plan` (a copy of the plan is kept).
    pub fn new(backend: &CudaBackend, plan: &StatsPlan) -> Result<Self> {
        let (tasks, entry_tasks) = build_tasks(plan)?;
        let n_tasks = tasks.len();
        u32::try_from(n_tasks)
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| invalid("plan", format!("{n_tasks} tasks exceed the grid limit")))?;
        // The tables' layouts are the kernels' (crate::abi): one padding row each, so no
        // device buffer is empty.
        let mut tt = Vec::with_capacity(ST_TASK_WORDS * (n_tasks + 1));
        for t in &tasks {
            let mut w = [0u64; ST_TASK_WORDS];
            w[ST_TASK_ENTRY] = t.entry as u64;
            w[ST_TASK_MODE] = match t.mode {
                Mode::Elems => ST_MODE_ELEMS,
                Mode::Rows => ST_MODE_ROWS,
                Mode::RowPiece => ST_MODE_PIECE,
            };
            w[ST_TASK_A] = t.a as u64;
            w[ST_TASK_START] = t.start as u64;
            w[ST_TASK_END] = t.end as u64;
            tt.extend_from_slice(&w);
        }
        tt.extend_from_slice(&[0; ST_TASK_WORDS]);
        let mut et = Vec::with_capacity(ST_ENTRY_WORDS * (entry_tasks.len() + 1));
        for r in &entry_tasks {
            let mut w = [0u64; ST_ENTRY_WORDS];
            w[ST_ENTRY_FIRST] = r.start as u64;
            w[ST_ENTRY_END] = r.end as u64;
            et.extend_from_slice(&w);
        }
        et.extend_from_slice(&[0; ST_ENTRY_WORDS]);
        let s = backend.stream().clone();
        let n = |x: usize| x.max(1);
        Ok(Self {
            f_tasks: backend.function(MODULE, "stats_tasks")?,
            counts: s.alloc_zeros(n(plan.len())).map_err(drv)?,
            tasks: s.clone_htod(&tt).map_err(drv)?,
            entry_tasks: s.clone_htod(&et).map_err(drv)?,
            desc: s.alloc_zeros(n(ST_DESC_WORDS * plan.len())).map_err(drv)?,
            partials: s.alloc_zeros(n(ST_PARTIALS * n_tasks)).map_err(drv)?,
            // A statistic without tasks (no elements) is never finished by the kernel: its
            // constant results (as the CPU's finish of no tasks) are written here, once.
            values: {
                let mut v = plan.new_results().values;
                for (e, r) in plan.entries.iter().zip(&entry_tasks) {
                    if r.is_empty() {
                        empty_values(&e.decl, &mut v[e.out..e.out + e.n_values()]);
                    }
                }
                v.resize(n(v.len()), 0.0);
                s.clone_htod(&v).map_err(drv)?
            },
            desc_host: {
                // SAFETY: the memory is zeroed below before anything reads it.
                let mut h = unsafe {
                    s.context()
                        .alloc_pinned::<u64>(n(ST_DESC_WORDS * plan.len()))
                }
                .map_err(drv)?;
                h.as_mut_slice().map_err(drv)?.fill(0);
                h
            },
            order: vec![usize::MAX; plan.len()],
            rows: vec![0; plan.len()],
            results: plan.new_results(),
            plan: plan.clone(),
            stream: s,
            n_tasks,
        })
    }

    /// The stream it runs on (its backend's).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl super::Stats for CudaStats {
    type Memory = Device;

    fn plan(&self) -> &StatsPlan {
        &self.plan
    }

    fn results(&self) -> &StatsResults {
        &self.results
    }

    /// See [`super::Stats::run`]: one upload of the descriptors (this run's buffers and
    /// rows), the launches, one device-to-host copy of the results, one synchronisation.
    fn run(&mut self, inputs: &mut [Input<'_, Device>]) -> Result<&StatsResults> {
        self.plan.resolve(inputs, &mut self.order, &mut self.rows)?;
        if self.plan.is_empty() {
            return Ok(&self.results);
        }
        let s = self.stream.clone();
        // Buffers of another context (device) would be a sticky device fault, not an Err.
        for inp in inputs.iter() {
            inp.check(s.context(), &s).map_err(|e| {
                let name = self.plan.entries[inp.id.idx as usize].name.clone();
                invalid("inputs", format!("statistic {name:?}: {e}"))
            })?;
        }
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(2 * inputs.len());
        // (Waits for the previous run's upload from it, long finished: runs end synchronised.)
        let desc_host = self.desc_host.as_mut_slice().map_err(drv)?;
        for inp in inputs.iter_mut() {
            let i = inp.id.idx as usize;
            let e = &self.plan.entries[i];
            // A row statistic's N1 is this run's: the kernels skip the tasks beyond it and
            // divide by it (st_clip, the CPU's Task::clip).
            let rows = self.rows[i];
            let (kind, n1, n2) = match &e.decl {
                Decl::SqDiff { row_len, .. } => (ST_SQDIFF, rows * row_len, 0),
                Decl::RowCos { dim, .. } => (ST_COS, rows, *dim),
                Decl::TrueProb { classes, .. } => (ST_PROB, rows, *classes),
                Decl::SegSums { segs, .. } => (ST_SUMS, segs.len(), 0),
                Decl::SegDots { segs } => (ST_DOTS, segs.len(), 0),
            };
            let (p0, p1, p2) = match &mut inp.data {
                Bound::Pair(x, y) => (x.ptr(&s, &mut guards), y.ptr(&s, &mut guards), 0),
                Bound::Prob(l, lab) => {
                    let (p, g) = lab.device_ptr(&s);
                    guards.push(g);
                    (l.ptr(&s, &mut guards), p, 0)
                }
                Bound::Sums(x, acc) => {
                    let p2 = match acc {
                        Some(a) => {
                            let (p, g) = a.device_ptr_mut(&s);
                            guards.push(g);
                            p
                        }
                        None => 0,
                    };
                    (x.ptr(&s, &mut guards), 0, p2)
                }
            };
            let d = &mut desc_host[ST_DESC_WORDS * i..ST_DESC_WORDS * (i + 1)];
            d[ST_DESC_KIND] = kind;
            d[ST_DESC_DTYPE] = dtype_code(e.dtype);
            d[ST_DESC_P0] = p0;
            d[ST_DESC_P1] = p1;
            d[ST_DESC_P2] = p2;
            d[ST_DESC_N1] = n1 as u64;
            d[ST_DESC_N2] = n2 as u64;
            d[ST_DESC_OUT] = e.out as u64;
        }
        s.memcpy_htod(&self.desc_host, &mut self.desc)
            .map_err(drv)?;
        if self.n_tasks > 0 {
            let mut b = s.launch_builder(&self.f_tasks);
            b.arg(&self.tasks)
                .arg(&self.entry_tasks)
                .arg(&self.desc)
                .arg(&mut self.partials)
                .arg(&mut self.counts)
                .arg(&mut self.values);
            // SAFETY: argument types match `stats_tasks`; the grid has one block per task
            // of the uploaded table (the tickets count them: `entry_tasks`); every address
            // in `desc` was validated to cover this run's shape and stays borrowed (with
            // its stream guard) until after the launch; the last block of a statistic
            // writes only that statistic's result range of `values`.
            unsafe {
                b.launch(LaunchConfig {
                    grid_dim: (self.n_tasks as u32, 1, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map_err(drv)?;
        }
        drop(guards);
        let nv = self.plan.values_len;
        if nv > 0 {
            s.memcpy_dtoh(&self.values.slice(0..nv), &mut self.results.values)
                .map_err(drv)?;
        }
        s.synchronize().map_err(drv)?;
        self.results.rows.copy_from_slice(&self.rows);
        self.plan.label_error(&self.results)?;
        Ok(&self.results)
    }
}
