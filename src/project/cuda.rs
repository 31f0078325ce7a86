//! The projection and orthonormalisation on the GPU (module `project`, `kernels/project.cu`).
//!
//! Buffers: inputs are `&CudaView<T>` (`slice.as_view()` / `slice.slice(range)`), outputs
//! `CudaViewMut<T>` (`slice.as_view_mut()`), the basis a slice of views. Every buffer must
//! cover the layout exactly (`segs.total()` elements).

use crate::abi::{FIN_CAP, FIN_ORTH1, FIN_ORTH2, FIN_SOLVE, MODE_B0_OUT};
use crate::abi::{PTR_B0, PTR_BASE, PTR_OUT, PTR_V, PTR_V0, PTR_WORDS};
use crate::backend::Backend;
use crate::cuda::{
    byte_range, check_list_alias, check_no_alias, drv, ByteRange, CudaBackend, DeviceRanks, CHUNK,
    THREADS,
};
use crate::dtype::Element;
use crate::error::{check_len, invalid, Result};
use crate::project::solve::{partial_stride, MAX_K};
use crate::project::{
    check_orthonormalize, BasisRef, Beta, Buffer, Partials, Projection, TensorList,
};
use crate::segments::{chunk_tasks, Segments};
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice,
    LaunchConfig, PushKernelArg, SyncOnDrop,
};

const MODULE: &str = "project";
const MAX_STRIDE: usize = partial_stride(MAX_K);

/// A projection's arguments on device views (what [`CudaBackend`] takes as a
/// [`Backend`]).
pub type CudaProjection<'a, 'b, T> = Projection<'a, CudaView<'b, T>, CudaViewMut<'b, T>>;

/// Layouts whose workspace the backend keeps (least recently used evicted beyond).
const MAX_LAYOUTS: usize = 16;

/// The per-layout workspaces of a backend, with a use clock for eviction.
#[derive(Default)]
pub(crate) struct Workspaces {
    map: std::collections::HashMap<Segments, (Workspace, u64)>,
    clock: u64,
}

/// Device workspace of one layout, kept across calls: scratch only. Results that a caller
/// reads later (the ranks) go to a per-call [`DeviceRanks`], never to this shared state.
pub(crate) struct Workspace {
    n_tasks: usize,
    segs: usize,
    /// (seg, start, end) per chunk task, u64.
    tasks: CudaSlice<u64>,
    /// First task of each segment, `segs + 1` values.
    seg_first: CudaSlice<u64>,
    /// `n_tasks * MAX_STRIDE` f64 (sized for k = 8 once).
    chunk_partials: CudaSlice<f64>,
    /// `segs * MAX_STRIDE` f64.
    seg_partials: CudaSlice<f64>,
    /// One ticket counter per segment (u32) for the finish folded into pass 1: 0 between
    /// calls (the last block of each segment resets its counter).
    seg_count: CudaSlice<u32>,
    /// `segs * MAX_K²` f64 each: projection coefficients or M1, and M2.
    coef: CudaSlice<f64>,
    coef2: CudaSlice<f64>,
    beta: CudaSlice<f64>,
    /// Tensor lists: the pointer table last uploaded (`segs * PTR_WORDS` u64, created on
    /// the first list call of the layout) and its host copy, so a call whose pointers did
    /// not change uploads nothing.
    ptrs: Option<(Vec<u64>, CudaSlice<u64>)>,
}

/// The device addresses one launch of `project_partials` / `project_apply` reads, as its
/// pointer parameters (0 = absent). Flat buffers: each operand's address, `table` 0. Tensor
/// list: `table` is the per-segment pointer table (src/abi.rs `PTR_*`) and every present
/// operand's parameter is the table's own address (the kernels only test it for null; a
/// live allocation, as the emulated driver's argument check wants).
#[derive(Clone, Copy, Debug, Default)]
struct Operands {
    table: u64,
    v: u64,
    v0: u64,
    /// b0..b7 of pass 1 (an implicit vector first).
    basis: [u64; MAX_K],
    base: u64,
    out: u64,
    /// Basis vectors, the implicit one included.
    k: usize,
    /// The apply mode ([`Projection::mode`]).
    mode: i32,
}

impl Operands {
    /// Tensor list: every present operand's parameter becomes the table's address.
    fn with_table(mut self, table: u64) -> Self {
        let mark = |a: &mut u64| {
            if *a != 0 {
                *a = table;
            }
        };
        self.table = table;
        mark(&mut self.v);
        mark(&mut self.v0);
        self.basis.iter_mut().for_each(mark);
        mark(&mut self.base);
        mark(&mut self.out);
        self
    }
}

/// An operand of a projection as the kernels take it: a flat device buffer (one address
/// for every segment) or a [`TensorList`] (one buffer, hence one pointer-table entry, per
/// segment). The one difference between the flat and the list calls.
pub(crate) trait Operand<T> {
    /// Its device buffers.
    type Buf: DevicePtr<T> + DeviceSlice<T>;
    /// A tensor list (else one flat buffer).
    const LIST: bool;
    /// The buffers: one (flat) or one per segment (list).
    fn bufs(&self) -> &[Self::Buf];
    /// The same, to write.
    fn bufs_mut(&mut self) -> &mut [Self::Buf];
}

impl<'a, T> Operand<T> for CudaView<'a, T> {
    type Buf = CudaView<'a, T>;
    const LIST: bool = false;
    fn bufs(&self) -> &[Self::Buf] {
        std::slice::from_ref(self)
    }
    fn bufs_mut(&mut self) -> &mut [Self::Buf] {
        std::slice::from_mut(self)
    }
}

impl<'a, T> Operand<T> for CudaViewMut<'a, T> {
    type Buf = CudaViewMut<'a, T>;
    const LIST: bool = false;
    fn bufs(&self) -> &[Self::Buf] {
        std::slice::from_ref(self)
    }
    fn bufs_mut(&mut self) -> &mut [Self::Buf] {
        std::slice::from_mut(self)
    }
}

impl<T, B: DevicePtr<T> + DeviceSlice<T>> Operand<T> for TensorList<B> {
    type Buf = B;
    const LIST: bool = true;
    fn bufs(&self) -> &[B] {
        &self.0
    }
    fn bufs_mut(&mut self) -> &mut [B] {
        &mut self.0
    }
}

/// A destination buffer: writable views give their address with cudarc's write event; a
/// read-only view can stand as the destination only when nothing writes it (pass 1 of the
/// optimizer's corrected step reads the gradient as the implicit basis vector 0: `Dest::Read`).
pub(crate) trait DestBuf<T>: DevicePtr<T> + DeviceSlice<T> {
    /// The address to write through, `None` for a read-only view.
    fn ptr_mut<'s>(
        &'s mut self,
        stream: &'s std::sync::Arc<CudaStream>,
    ) -> Option<(u64, SyncOnDrop<'s>)>;
}

impl<T> DestBuf<T> for CudaViewMut<'_, T> {
    fn ptr_mut<'s>(
        &'s mut self,
        stream: &'s std::sync::Arc<CudaStream>,
    ) -> Option<(u64, SyncOnDrop<'s>)> {
        Some(self.device_ptr_mut(stream))
    }
}

impl<T> DestBuf<T> for CudaView<'_, T> {
    fn ptr_mut<'s>(
        &'s mut self,
        _: &'s std::sync::Arc<CudaStream>,
    ) -> Option<(u64, SyncOnDrop<'s>)> {
        None
    }
}

/// How a launch uses the destination.
enum Dest<'g, D> {
    /// Written (cudarc's write event, checked against every input).
    Write(&'g mut D),
    /// Only checked as a destination ([`Backend::check`]): nothing is launched.
    Check(&'g D),
    /// Only read, as an implicit basis vector (pass 1 of the split form).
    Read(&'g D),
}

/// Collects the addresses of a projection's buffers: checks each buffer's context, keeps
/// cudarc's guards until after the launches, fills the pointer table of a tensor list and
/// the byte ranges of the alias checks.
struct Collect<'g, 'b> {
    backend: &'g CudaBackend,
    segs: &'b Segments,
    /// Bytes per element.
    size: u64,
    guards: &'b mut Vec<SyncOnDrop<'g>>,
    /// Tensor lists: `segs * PTR_WORDS` words.
    table: Option<Vec<u64>>,
    inputs: Vec<(&'static str, ByteRange)>,
    outs: Vec<ByteRange>,
}

impl<'g> Collect<'g, '_> {
    /// Keeps the guard of one buffer at `a` (segment `s` of a list, or the flat buffer)
    /// and writes its address, biased by the segment's offset, into the table slots.
    fn keep(&mut self, slots: &[usize], s: usize, a: u64, g: SyncOnDrop<'g>) {
        self.guards.push(g);
        if let Some(t) = &mut self.table {
            let biased = a.wrapping_sub(self.segs.offsets()[s] as u64 * self.size);
            slots.iter().for_each(|&w| t[s * PTR_WORDS + w] = biased);
        }
    }

    /// A read-only operand in the table slots `slots`; returns its kernel parameter (its
    /// address; 1, "present", for a list).
    fn src<T, S: Operand<T>>(
        &mut self,
        name: &'static str,
        slots: &[usize],
        op: &'g S,
    ) -> Result<u64>
    where
        S::Buf: 'g,
    {
        let backend = self.backend;
        let mut param = 1;
        for (s, b) in op.bufs().iter().enumerate() {
            backend.check_context(name, b)?;
            let bytes = b.len() as u64 * self.size;
            let (a, g) = b.device_ptr(&backend.stream);
            self.keep(slots, s, a, g);
            self.inputs.push((name, (a, bytes)));
            if !S::LIST {
                param = a;
            }
        }
        Ok(param)
    }

    /// The destination in the table slots `slots`; returns its kernel parameter.
    fn dst<T, D: Operand<T>>(&mut self, slots: &[usize], d: Dest<'g, D>) -> Result<u64>
    where
        D::Buf: DestBuf<T> + 'g,
    {
        let backend = self.backend;
        let is_out = !matches!(d, Dest::Read(_));
        let mut ranges = Vec::new();
        match d {
            Dest::Write(d) => {
                for (s, b) in d.bufs_mut().iter_mut().enumerate() {
                    backend.check_context("out", &*b)?;
                    let bytes = b.len() as u64 * self.size;
                    let (a, g) = b
                        .ptr_mut(&backend.stream)
                        .ok_or_else(|| invalid("out", "a read-only buffer as the destination"))?;
                    self.keep(slots, s, a, g);
                    ranges.push((a, bytes));
                }
            }
            Dest::Check(d) | Dest::Read(d) => {
                for (s, b) in d.bufs().iter().enumerate() {
                    backend.check_context("out", b)?;
                    let bytes = b.len() as u64 * self.size;
                    let (a, g) = b.device_ptr(&backend.stream);
                    self.keep(slots, s, a, g);
                    ranges.push((a, bytes));
                }
            }
        }
        let param = match (D::LIST, ranges.first()) {
            (false, Some(r)) => r.0,
            _ => 1,
        };
        if is_out {
            self.outs.extend(ranges);
        } else {
            self.inputs.extend(ranges.into_iter().map(|r| ("out", r)));
        }
        Ok(param)
    }
}

fn grid(n: usize, what: &'static str) -> Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|&g| g <= i32::MAX as u32)
        .ok_or_else(|| invalid(what, format!("{n} blocks exceed the grid limit")))
}

fn cfg(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// Runs `f` with the workspace of `segs`, creating it (the only device allocations of
    /// these operations) on first use of the layout.
    fn with_workspace<R>(
        &self,
        segs: &Segments,
        f: impl FnOnce(&mut Workspace) -> Result<R>,
    ) -> Result<R> {
        let mut cache = self.workspaces.lock().unwrap_or_else(|p| p.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        if !cache.map.contains_key(segs) {
            let ws = self.new_workspace(segs)?;
            if cache.map.len() >= MAX_LAYOUTS {
                // Evict the least recently used layout (its buffers are freed in stream
                // order, after every kernel queued with them).
                let oldest = cache
                    .map
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    cache.map.remove(&k);
                }
            }
            cache.map.insert(segs.clone(), (ws, now));
        }
        match cache.map.get_mut(segs) {
            Some((ws, t)) => {
                *t = now;
                f(ws)
            }
            None => Err(invalid(
                "workspace",
                "layout missing from the cache after insertion",
            )),
        }
    }

    /// Number of layouts whose device workspace is cached (at most 16: the least recently
    /// used one is freed when a 17th layout is used).
    pub fn cached_layouts(&self) -> usize {
        self.workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    fn new_workspace(&self, segs: &Segments) -> Result<Workspace> {
        let tasks = chunk_tasks(segs, CHUNK)?;
        let n_tasks = tasks.len();
        grid(n_tasks.max(1), "chunk tasks")?;
        let l = segs.len();
        let mut table = Vec::with_capacity(crate::abi::TASK_WORDS * n_tasks.max(1));
        let mut first = vec![0u64; l + 1];
        for (t, c) in tasks.iter().enumerate().rev() {
            first[c.seg] = t as u64;
        }
        // Segments without tasks (empty) point at the next segment's first task.
        first[l] = n_tasks as u64;
        for s in (0..l).rev() {
            if segs.seg_len(s) == 0 {
                first[s] = first[s + 1];
            }
        }
        for c in &tasks {
            table.extend_from_slice(&[c.seg as u64, c.start as u64, c.end as u64]);
        }
        if table.is_empty() {
            table.extend_from_slice(&[0, 0, 0]);
        }
        let s = &self.stream;
        let n = |x: usize| x.max(1);
        Ok(Workspace {
            n_tasks,
            segs: l,
            tasks: s.clone_htod(&table).map_err(drv)?,
            seg_first: s.clone_htod(&first).map_err(drv)?,
            chunk_partials: s.alloc_zeros(n(n_tasks * MAX_STRIDE)).map_err(drv)?,
            seg_partials: s.alloc_zeros(n(l * MAX_STRIDE)).map_err(drv)?,
            seg_count: s.alloc_zeros(n(l)).map_err(drv)?,
            coef: s.alloc_zeros(n(l * MAX_K * MAX_K)).map_err(drv)?,
            coef2: s.alloc_zeros(n(l * MAX_K * MAX_K)).map_err(drv)?,
            beta: s.alloc_zeros(n(l)).map_err(drv)?,
            ptrs: None,
        })
    }

    /// Pass 1 (k >= 1) with the finish folded in: chunk partials; the last block of each
    /// segment reduces them into `seg_partials` (project_finish's REDUCE order) and, with
    /// `solve = Some((tol, ridge, ranks))`, solves (SOLVE | CAP) into `coef` and `ranks`.
    /// One launch.
    fn launch_partials<T: Element>(
        &self,
        ws: &mut Workspace,
        ops: &Operands,
        solve: Option<(f64, f64, &mut DeviceRanks)>,
    ) -> Result<()> {
        let k = ops.k;
        if ws.n_tasks == 0 {
            return Ok(());
        }
        let n_seg = ws.segs as u64;
        let name = format!("project_partials_{}_k{k}", T::DTYPE.name());
        let f = self.function(MODULE, &name)?;
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ws.tasks).arg(&ops.table).arg(&ops.v).arg(&ops.v0);
        for bi in &ops.basis {
            b.arg(bi);
        }
        let (mode, tol, ridge) = match &solve {
            Some((tol, ridge, _)) => (FIN_SOLVE | FIN_CAP, *tol, *ridge),
            None => (0, 0.0, 0.0),
        };
        b.arg(&mut ws.chunk_partials)
            .arg(&ws.seg_first)
            .arg(&mut ws.seg_count)
            .arg(&mode)
            .arg(&tol)
            .arg(&ridge)
            .arg(&mut ws.seg_partials)
            .arg(&mut ws.coef);
        match solve {
            Some((_, _, r)) => b.arg(r.buffer_mut()),
            None => b.arg(&null),
        };
        debug_assert!(n_seg > 0, "tasks imply segments");
        // SAFETY: signature project_partials_<dt>_k<k>(tasks, ptrs, v, v0, b0..b7,
        // chunk_partials, seg_first, seg_count, mode, tol, ridge, seg_partials, coef, ranks)
        // in kernels/project.cu; tasks holds 3*n_tasks u64 with every (start, end) inside
        // 0..segs.total(); `ops` holds the addresses of buffers checked to cover the layout
        // (flat: v, v0 or 0, b0..b(k-1) of segs.total() elements each, the rest 0; tensor
        // list: the table of this workspace, one row per segment of addresses of buffers of
        // the segment's length, biased by its offset, and the table's address as the
        // presence of each operand), read only (b0 may be the destination), whose guards the
        // caller holds until after this launch; chunk_partials holds n_tasks*MAX_STRIDE f64;
        // seg_first holds n_seg + 1 task indices (each segment's tasks contiguous);
        // seg_count holds n_seg u32, all 0 (zeroed at creation, reset by each segment's last
        // block); seg_partials holds n_seg*MAX_STRIDE and coef n_seg*MAX_K² f64; ranks holds
        // n_seg u32 (a DeviceRanks of this layout), or is null only without SOLVE.
        let launched = unsafe { b.launch(cfg(grid(ws.n_tasks, "chunk tasks")?, THREADS)) };
        if let Err(e) = launched {
            // A launch that failed part-way may leave tickets behind; the next call needs
            // them at 0 (best effort: after a real fault the context is unusable anyway).
            let _ = self.stream.memset_zeros(&mut ws.seg_count);
            return Err(drv(e));
        }
        Ok(())
    }

    /// The per-segment reduce and/or solve. `ranks` receives the ranks (modes with SOLVE
    /// or ORTH; `None` only for REDUCE alone, which writes none).
    fn launch_finish(
        &self,
        ws: &mut Workspace,
        k: usize,
        mode: i32,
        tol: f64,
        ridge: f64,
        ranks: Option<&mut DeviceRanks>,
    ) -> Result<()> {
        if ws.segs == 0 || k == 0 {
            return Ok(());
        }
        if ranks.is_none() && mode & (FIN_SOLVE | FIN_ORTH1 | FIN_ORTH2) != 0 {
            return Err(crate::Error::Cuda(
                "internal: a solve without a rank buffer".into(),
            ));
        }
        let f = self.function(MODULE, "project_finish")?;
        let n_seg = ws.segs as u64;
        let k_i = k as i32;
        let blocks = grid(ws.segs.div_ceil(4), "segments")?;
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ws.chunk_partials)
            .arg(&ws.seg_first)
            .arg(&ws.tasks)
            .arg(&n_seg)
            .arg(&k_i)
            .arg(&mode)
            .arg(&tol)
            .arg(&ridge)
            .arg(&mut ws.seg_partials)
            .arg(&mut ws.coef)
            .arg(&mut ws.coef2);
        match ranks {
            Some(r) => b.arg(r.buffer_mut()),
            None => b.arg(&null),
        };
        // SAFETY: signature project_finish(chunk_partials, seg_first, tasks, n_seg, k, mode,
        // tol, ridge, seg_partials, coef, coef2, ranks); 1 <= k <= 8; seg_first holds
        // n_seg + 1 task indices <= n_tasks into tasks (3*n_tasks u64, each segment's tasks
        // contiguous); seg_partials holds n_seg*MAX_STRIDE, coef/coef2 n_seg*MAX_K² f64;
        // ranks holds n_seg u32 (a DeviceRanks of this layout), or is null only when mode is
        // REDUCE alone, which writes no rank; one warp per segment, 4 per 128-thread block.
        unsafe { b.launch(cfg(blocks, 128)) }.map_err(drv)?;
        Ok(())
    }

    /// Pass 2 over every task: `out = alpha·base + beta·(x - Σ w_i b_i)` with `coef` from
    /// the workspace, `mode` one of MODE_NONE / MODE_BASE / MODE_INPLACE.
    fn launch_apply<T: Element>(
        &self,
        ws: &mut Workspace,
        ops: &Operands,
        alpha: f64,
        beta: &Beta<'_>,
    ) -> Result<()> {
        let (beta_scalar, per_seg) = match beta {
            Beta::Scalar(b) => (*b, false),
            Beta::PerSegment(bs) => {
                if !bs.is_empty() {
                    self.stream
                        .memcpy_htod(*bs, &mut ws.beta.slice_mut(0..bs.len()))
                        .map_err(drv)?;
                }
                (0.0, true)
            }
        };
        if ws.n_tasks == 0 {
            return Ok(());
        }
        let k = ops.k;
        // A tensor list runs the apply kernel's list twin (same code, its own register
        // budget: kernels/project.cu).
        let list = if ops.table != 0 { "list_" } else { "" };
        let name = format!("project_apply_{list}{}_k{k}", T::DTYPE.name());
        let f = self.function(MODULE, &name)?;
        let null = 0u64;
        let mode = ops.mode;
        // Pass 2 takes basis vector 0 from the destination's value with B0_OUT: b0 null.
        let mut basis = ops.basis;
        if mode & MODE_B0_OUT != 0 {
            basis[0] = 0;
        }
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ws.tasks).arg(&ops.table).arg(&ops.v).arg(&ops.v0);
        for bi in &basis {
            b.arg(bi);
        }
        b.arg(&ws.coef);
        if per_seg {
            b.arg(&ws.beta);
        } else {
            b.arg(&null);
        }
        b.arg(&beta_scalar)
            .arg(&alpha)
            .arg(&mode)
            .arg(&ops.base)
            .arg(&ops.out);
        // SAFETY: signature project_apply[_list]_<dt>_k<k>(tasks, ptrs, v, v0, b0..b7, coef,
        // beta_seg, beta_scalar, alpha, mode, base, out); `ops` as in launch_partials (v,
        // v0, basis, base and out cover the layout, flat or per segment through the table;
        // their guards held by the caller until after this launch), base 0 unless mode ==
        // BASE; with the B0_OUT flag (mode INPLACE only, checked) b0 is null and the kernel
        // takes basis vector 0 from out's value read before the write; coef holds k values
        // per segment written by the solve (or zeros for k = 0, never read); beta_seg is
        // null or holds n_seg f64; out overlaps no input and, in a list, no other segment's
        // out (checked by validate_device / validate_list).
        unsafe { b.launch(cfg(grid(ws.n_tasks, "chunk tasks")?, THREADS)) }.map_err(drv)?;
        Ok(())
    }

    /// One Gram pass of orthonormalize with the per-segment finish folded in: transform =
    /// false writes M1 to `coef` (ORTH1), true reads M1 and writes M2 to `coef2` (ORTH2).
    fn launch_orth_partials<T: Element>(
        &self,
        ws: &mut Workspace,
        basis: &[CudaView<'_, T>],
        transform: bool,
        tol: f64,
        ranks: &mut DeviceRanks,
    ) -> Result<()> {
        let k = basis.len();
        if ws.n_tasks == 0 {
            return Ok(());
        }
        let name = format!("orth_partials_{}_k{k}", T::DTYPE.name());
        let f = self.function(MODULE, &name)?;
        let null = 0u64;
        let tr = transform as i32;
        let mode = FIN_CAP | if transform { FIN_ORTH2 } else { FIN_ORTH1 };
        let Workspace {
            tasks,
            chunk_partials,
            seg_first,
            seg_count,
            seg_partials,
            coef,
            coef2,
            ..
        } = ws;
        // M1 is read in the second pass and written in the first; M2 written in the second.
        let (xform, m_out) = if transform {
            (Some(&*coef), coef2)
        } else {
            (None, coef)
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&*tasks);
        for bi in basis {
            b.arg(bi);
        }
        for _ in k..MAX_K {
            b.arg(&null);
        }
        match xform {
            Some(x) => b.arg(x),
            None => b.arg(&null),
        };
        b.arg(&tr)
            .arg(chunk_partials)
            .arg(&*seg_first)
            .arg(&mut *seg_count)
            .arg(&mode)
            .arg(&tol)
            .arg(seg_partials)
            .arg(m_out)
            .arg(ranks.buffer_mut());
        // SAFETY: signature orth_partials_<dt>_k<k>(tasks, b0..b7, xform, transform,
        // chunk_partials, seg_first, seg_count, mode, tol, seg_partials, m_out, ranks); the
        // basis views hold segs.total() elements each (checked), every task lies inside;
        // xform is null (transform = 0) or coef, holding k*k f64 per segment (M1 from the
        // first pass), never the same buffer as m_out (coef, or coef2 with transform = 1);
        // chunk_partials holds n_tasks*MAX_STRIDE f64; seg_first n_seg + 1 task indices;
        // seg_count n_seg u32, all 0 (reset by each segment's last block); seg_partials
        // n_seg*MAX_STRIDE, coef/coef2 n_seg*MAX_K² f64; ranks n_seg u32 (this call's).
        let launched = unsafe { b.launch(cfg(grid(ws.n_tasks, "chunk tasks")?, THREADS)) };
        if let Err(e) = launched {
            // As in launch_partials: leave no ticket behind.
            let _ = self.stream.memset_zeros(seg_count);
            return Err(drv(e));
        }
        Ok(())
    }

    fn launch_orth_apply<T: Element>(
        &self,
        ws: &mut Workspace,
        basis: &mut [CudaViewMut<'_, T>],
    ) -> Result<()> {
        let k = basis.len();
        if ws.n_tasks == 0 {
            return Ok(());
        }
        let name = format!("orth_apply_{}_k{k}", T::DTYPE.name());
        let f = self.function(MODULE, &name)?;
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ws.tasks);
        for bi in basis.iter_mut() {
            b.arg(bi);
        }
        for _ in k..MAX_K {
            b.arg(&null);
        }
        b.arg(&ws.coef).arg(&ws.coef2);
        // SAFETY: signature orth_apply_<dt>_k<k>(tasks, b0..b7, m1, m2); the k basis views
        // are distinct `&mut` borrows holding segs.total() elements each; each element is
        // read and written by one thread only; m1/m2 hold k*k f64 per segment written by
        // project_finish (ORTH1, ORTH2).
        unsafe { b.launch(cfg(grid(ws.n_tasks, "chunk tasks")?, THREADS)) }.map_err(drv)?;
        Ok(())
    }

    /// Orthonormalises the k basis vectors of every segment in place by Cholesky-QR twice
    /// (CholQR2, the Gram matrix in f64; the second Gram is of `B·M1` computed on the fly,
    /// so only the final result is rounded to `T`). Rank decision as
    /// [`crate::project::solve::orth_segment`] (at most `min(length, k)`); dropped vectors become
    /// zero. Asynchronous; returns this call's ranks on the device. 3 launches for any
    /// number of segments.
    fn orthonormalize_device<T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [CudaViewMut<'_, T>],
        tol: f64,
    ) -> Result<DeviceRanks> {
        check_orthonormalize(segs, basis, tol)?;
        for b in basis.iter() {
            self.check_context("basis", b)?;
        }
        // The k vectors are rewritten in place, each from all k: they must be distinct.
        let ranges: Vec<_> = basis.iter().map(|b| byte_range(b, &self.stream)).collect();
        for (i, r) in ranges.iter().enumerate() {
            let earlier: Vec<_> = ranges[..i].iter().map(|&e| ("basis", e)).collect();
            check_no_alias("basis", *r, &earlier)?;
        }
        let k = basis.len();
        let mut ranks = DeviceRanks::zeros(&self.stream, segs.len())?;
        self.with_workspace(segs, |ws| {
            if k == 0 {
                return Ok(());
            }
            {
                let views: Vec<CudaView<'_, T>> = basis.iter().map(|b| b.as_view()).collect();
                // Both folds write the ranks; the second's (of Q1) are the result, as in
                // the CPU backend's CholQR2.
                self.launch_orth_partials(ws, &views, false, tol, &mut ranks)?;
                self.launch_orth_partials(ws, &views, true, tol, &mut ranks)?;
            }
            self.launch_orth_apply(ws, basis)
        })?;
        Ok(ranks)
    }
}

impl CudaBackend {
    /// The kernel operands of a projection (flat buffers or tensor lists) whose buffers are
    /// lent for `'g`: every buffer in this backend's context, the destination overlapping no
    /// input (nor, in a list, another destination), a list's pointer table filled
    /// (`PTR_WORDS` per segment, addresses biased by the segment's offset, src/abi.rs).
    /// The guards go to `guards`, which the caller holds until after the launches. The
    /// implicit basis vector is resolved here, from [`Projection::basis_refs`], for flat
    /// and list calls alike. Returns the operands and the table (lists).
    fn operands<'g, T: Element, S: Operand<T>, D: Operand<T>>(
        &'g self,
        segs: &Segments,
        p: Projection<'_, &'g S, Dest<'g, D>>,
        guards: &mut Vec<SyncOnDrop<'g>>,
    ) -> Result<(Operands, Option<Vec<u64>>)>
    where
        S::Buf: 'g,
        D::Buf: DestBuf<T> + 'g,
    {
        let mut c = Collect {
            backend: self,
            segs,
            size: std::mem::size_of::<T>() as u64,
            guards,
            table: S::LIST.then(|| vec![0u64; segs.len() * PTR_WORDS]),
            inputs: Vec::new(),
            outs: Vec::new(),
        };
        let mut ops = Operands {
            k: p.k(),
            mode: p.mode(),
            ..Operands::default()
        };
        ops.v = c.src("v", &[PTR_V], p.v)?;
        if let Some(v0) = p.v0 {
            ops.v0 = c.src("v0", &[PTR_V0], v0)?;
        }
        // Basis slots that read the destination (an implicit vector) get its address.
        let mut out_slots = vec![PTR_OUT];
        for (i, b) in p.basis_refs().enumerate() {
            match b {
                BasisRef::Src(s) => ops.basis[i] = c.src("basis", &[PTR_B0 + i], *s)?,
                BasisRef::Out(_) => out_slots.push(PTR_B0 + i),
            }
        }
        let (dest, base) = p.out.into_parts();
        if let Some(b) = base {
            ops.base = c.src("base", &[PTR_BASE], b)?;
        }
        if !matches!(dest, Dest::Read(_)) || out_slots.len() > 1 {
            ops.out = c.dst(&out_slots, dest)?;
            for &w in &out_slots[1..] {
                ops.basis[w - PTR_B0] = ops.out;
            }
        }
        check_list_alias("out", &c.outs, &c.inputs)?;
        Ok((ops, c.table))
    }

    /// Both passes of a projection on flat buffers or tensor lists: validation, pass 1 with
    /// the solve folded in (k >= 1), pass 2; a list's pointer table is uploaded first when
    /// it changed. 2 launches (1 for k = 0), plus one host-to-device copy for a new table.
    fn project<T: Element, S: Operand<T> + Buffer, D: Operand<T> + Buffer>(
        &self,
        segs: &Segments,
        mut p: Projection<'_, S, D>,
    ) -> Result<DeviceRanks>
    where
        D::Buf: DestBuf<T>,
    {
        p.validate(segs)?;
        let (alpha, beta, opts) = (p.alpha, p.beta, p.opts);
        let mut guards = Vec::new();
        let (ops, table) = self.operands(segs, p.as_mut().map(|s| s, Dest::Write), &mut guards)?;
        let mut ranks = DeviceRanks::zeros(&self.stream, segs.len())?;
        self.with_workspace(segs, |ws| {
            let ops = match &table {
                Some(t) => ops.with_table(self.upload_table(ws, t)?),
                None => ops,
            };
            if ops.k > 0 {
                let solve = Some((opts.tol, opts.ridge, &mut ranks));
                self.launch_partials::<T>(ws, &ops, solve)?;
            }
            self.launch_apply::<T>(ws, &ops, alpha, &beta)
        })?;
        Ok(ranks)
    }

    /// The workspace's pointer table holding `t` (uploaded only when it differs from the
    /// last upload); returns its device address.
    fn upload_table(&self, ws: &mut Workspace, t: &[u64]) -> Result<u64> {
        match &mut ws.ptrs {
            Some((host, dev)) if host.len() == t.len() => {
                if host[..] != t[..] {
                    self.stream.memcpy_htod(t, dev).map_err(drv)?;
                    host.copy_from_slice(t);
                }
            }
            slot => {
                let dev = self.stream.clone_htod(t).map_err(drv)?;
                *slot = Some((t.to_vec(), dev));
            }
        }
        match &ws.ptrs {
            Some((_, dev)) => Ok(dev.device_ptr(&self.stream).0),
            None => Err(crate::Error::Cuda("internal: no pointer table".into())),
        }
    }

    /// Pass 1 of a tensor-list projection with the per-segment reduce and solve folded in
    /// (one launch, `launch_partials` as in `project_list`), then `f` with the coefficients
    /// on the device (k f64 per segment, segment order) while the layout's workspace is
    /// held, so that `f` can queue a launch reading them. The CUDA twin of
    /// `CpuBackend::coefficients_list` (the optimizer's corrected step, `src/optim/cuda.rs`).
    /// Validation and the buffer checks run before anything is launched.
    pub(crate) fn coefficients_list<'a, T: Element, R>(
        &self,
        segs: &Segments,
        p: &Projection<'_, TensorList<CudaView<'a, T>>, TensorList<CudaView<'a, T>>>,
        f: impl FnOnce(&CudaSlice<f64>) -> Result<R>,
    ) -> Result<(R, DeviceRanks)> {
        let k = p.validate(segs)?;
        let opts = p.opts;
        let mut guards = Vec::new();
        let (ops, table) = self.operands(segs, p.as_ref().map(|s| s, Dest::Read), &mut guards)?;
        let mut ranks = DeviceRanks::zeros(&self.stream, segs.len())?;
        let r = self.with_workspace(segs, |ws| {
            let ops = match &table {
                Some(t) => ops.with_table(self.upload_table(ws, t)?),
                None => ops,
            };
            if k > 0 {
                let solve = Some((opts.tol, opts.ridge, &mut ranks));
                self.launch_partials::<T>(ws, &ops, solve)?;
            }
            f(&ws.coef)
        })?;
        Ok((r, ranks))
    }

    /// Loads every kernel of module `project` (fails on the first missing symbol): at
    /// start-up, so the first training step does not pay for loading (or NVRTC).
    pub fn preload_project(&self) -> Result<()> {
        for n in project_kernel_names() {
            self.function(MODULE, &n)?;
        }
        Ok(())
    }
}

/// Device views; `project_out` / `project_list` = 2 launches (pass 1 with the per-segment
/// reduce and solve folded in, pass 2), 1 for k = 0; `apply` = solve + pass 2; `partials`
/// = 1 launch and a synchronising copy; `orthonormalize` = 3 launches. All asynchronous on
/// [`CudaBackend::stream`] unless said otherwise; each call returns its own
/// [`DeviceRanks`].
impl Backend for CudaBackend {
    type Memory = crate::cuda::Device;
    type Ranks = DeviceRanks;

    /// [`Projection::validate`], every buffer in this backend's context, the destination
    /// overlapping no input. Launches nothing.
    fn check<'a, T: Element>(
        &self,
        segs: &Segments,
        p: &CudaProjection<'_, 'a, T>,
    ) -> Result<usize> {
        let k = p.validate(segs)?;
        let mut guards = Vec::new();
        self.operands(segs, p.as_ref().map(|s| s, Dest::Check), &mut guards)?;
        Ok(k)
    }

    fn project_out<'a, T: Element>(
        &self,
        segs: &Segments,
        p: CudaProjection<'_, 'a, T>,
    ) -> Result<DeviceRanks> {
        self.project(segs, p)
    }

    /// The flat kernels with a per-segment pointer table: the same 2 launches (1 for k = 0)
    /// whatever the number of tensors, plus one host-to-device copy of the table when the
    /// pointers differ from the last list call on this layout. Every tensor's own
    /// alignment decides its vector loads.
    fn project_list<'a, T: Element>(
        &self,
        segs: &Segments,
        p: Projection<'_, TensorList<CudaView<'a, T>>, TensorList<CudaViewMut<'a, T>>>,
    ) -> Result<DeviceRanks> {
        self.project(segs, p)
    }

    /// One launch, then a copy to the host: **synchronises** the stream.
    fn partials<'a, T: Element>(
        &self,
        segs: &Segments,
        p: &CudaProjection<'_, 'a, T>,
    ) -> Result<Partials> {
        let k = p.validate_inputs(segs)?;
        let mut guards = Vec::new();
        let (ops, _) = self.operands(segs, p.as_ref().map(|s| s, Dest::Read), &mut guards)?;
        if k == 0 || segs.is_empty() {
            return Partials::zeros(k, segs.len());
        }
        self.with_workspace(segs, |ws| {
            // One launch: the fold reduces each segment's chunks (no solve).
            self.launch_partials::<T>(ws, &ops, None)?;
            let stride = partial_stride(k);
            let n = segs.len() * stride;
            let mut data = self
                .stream
                .clone_dtoh(&ws.seg_partials.slice(0..n))
                .map_err(drv)?;
            // Empty segments have no chunk, hence no last block: their partials are 0 (the
            // workspace may hold another call's values there, e.g. apply's uploaded ones).
            for s in 0..segs.len() {
                if segs.seg_len(s) == 0 {
                    data[s * stride..(s + 1) * stride].fill(0.0);
                }
            }
            Partials::from_vec(k, segs.len(), data)
        })
    }

    /// Uploads `partials` (a small host-to-device copy), solves on the device, pass 2.
    fn apply<'a, T: Element>(
        &self,
        segs: &Segments,
        partials: &Partials,
        mut p: CudaProjection<'_, 'a, T>,
    ) -> Result<DeviceRanks> {
        let k = p.validate(segs)?;
        partials.check_shape(segs, k)?;
        check_len(
            "partials",
            segs.len() * partial_stride(k),
            partials.as_slice().len(),
        )?;
        let (alpha, beta, opts) = (p.alpha, p.beta, p.opts);
        let mut guards = Vec::new();
        let (ops, _) = self.operands(segs, p.as_mut().map(|s| s, Dest::Write), &mut guards)?;
        let mut ranks = DeviceRanks::zeros(&self.stream, segs.len())?;
        self.with_workspace(segs, |ws| {
            if k > 0 && !segs.is_empty() {
                let n = partials.as_slice().len();
                self.stream
                    .memcpy_htod(partials.as_slice(), &mut ws.seg_partials.slice_mut(0..n))
                    .map_err(drv)?;
                self.launch_finish(ws, k, FIN_SOLVE, opts.tol, opts.ridge, Some(&mut ranks))?;
            }
            self.launch_apply::<T>(ws, &ops, alpha, &beta)
        })?;
        Ok(ranks)
    }

    fn orthonormalize<'a, T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [CudaViewMut<'a, T>],
        tol: f64,
    ) -> Result<DeviceRanks> {
        self.orthonormalize_device(segs, basis, tol)
    }

    /// Device to device, asynchronous.
    fn copy<'a, T: Element>(
        &self,
        src: CudaView<'a, T>,
        mut dst: CudaViewMut<'a, T>,
    ) -> Result<()> {
        check_len("copy destination", src.len(), dst.len())?;
        self.check_context("src", &src)?;
        self.check_context("dst", &dst)?;
        if src.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_dtod(&src, &mut dst).map_err(drv)
    }
}

/// Names of every kernel of module `project` (public as
/// `redreg::testing::project_kernel_names`, for symbol tests).
pub(crate) fn project_kernel_names() -> Vec<String> {
    let mut names = vec!["project_finish".to_string()];
    for dt in crate::DType::ALL {
        for k in 0..=MAX_K {
            names.push(format!("project_apply_{dt}_k{k}"));
            names.push(format!("project_apply_list_{dt}_k{k}"));
            if k > 0 {
                names.push(format!("project_partials_{dt}_k{k}"));
                names.push(format!("orth_partials_{dt}_k{k}"));
                names.push(format!("orth_apply_{dt}_k{k}"));
            }
        }
    }
    names
}
