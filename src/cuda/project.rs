//! The projection and orthonormalisation on the GPU (module `project`, `kernels/project.cu`).
//!
//! Buffers: inputs are `&CudaView<T>` (`slice.as_view()` / `slice.slice(range)`), outputs
//! `CudaViewMut<T>` (`slice.as_view_mut()`), the basis a slice of views. Every buffer must
//! cover the layout exactly (`segs.total()` elements).

use super::{
    byte_range, check_no_alias, drv, CudaBackend, CudaElement, DeviceRanks, CHUNK, THREADS,
};
use crate::abi::{
    FIN_CAP, FIN_ORTH1, FIN_ORTH2, FIN_REDUCE, FIN_SOLVE, MODE_BASE, MODE_INPLACE, MODE_NONE,
};
use crate::error::{check_len, invalid, Result};
use crate::projection::{check_finite, check_k, Beta, Partials, ProjectOptions};
use crate::segments::{chunk_tasks, Segments};
use crate::solve::{partial_stride, MAX_K};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

const MODULE: &str = "project";
const MAX_STRIDE: usize = partial_stride(MAX_K);

/// Where [`CudaBackend::project_out`] / [`CudaBackend::apply`] write
/// `alpha·base + beta·(v - P v)` (the device twin of [`crate::Output`]).
#[derive(Debug)]
pub enum DeviceOutput<'a, 'b, T> {
    /// `out = alpha·base + beta·(v - P v)`; with `base = None`, `out = beta·(v - P v)`.
    Write {
        /// Optional base term.
        base: Option<&'a CudaView<'b, T>>,
        /// Destination (must not alias `v`, `base` or the basis).
        out: &'a mut CudaViewMut<'b, T>,
    },
    /// In place: `out = alpha·out + beta·(v - P v)` (the script's `grad += beta * d_perp`).
    Accumulate(&'a mut CudaViewMut<'b, T>),
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
        let mut map = self.workspaces.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(segs) {
            let ws = self.new_workspace(segs)?;
            map.insert(segs.clone(), ws);
        }
        f(map.get_mut(segs).expect("inserted above"))
    }

    fn new_workspace(&self, segs: &Segments) -> Result<Workspace> {
        let tasks = chunk_tasks(segs, CHUNK)?;
        let n_tasks = tasks.len();
        grid(n_tasks.max(1), "chunk tasks")?;
        let l = segs.len();
        let mut table = Vec::with_capacity(3 * n_tasks.max(1));
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
        })
    }

    fn check_basis(segs: &Segments, v_len: Option<usize>, basis: &[usize]) -> Result<()> {
        check_k(basis.len())?;
        if let Some(n) = v_len {
            segs.check_buffer("v", n)?;
        }
        for &b in basis {
            segs.check_buffer("basis", b)?;
        }
        Ok(())
    }

    /// Pass 1 (k >= 1) with the finish folded in: chunk partials; the last block of each
    /// segment reduces them into `seg_partials` (project_finish's REDUCE order) and, with
    /// `solve = Some((tol, ridge, ranks))`, solves (SOLVE | CAP) into `coef` and `ranks`.
    /// One launch.
    fn launch_partials<T: CudaElement>(
        &self,
        ws: &mut Workspace,
        v: &CudaView<'_, T>,
        basis: &[CudaView<'_, T>],
        solve: Option<(f64, f64, &mut DeviceRanks)>,
    ) -> Result<()> {
        let k = basis.len();
        if ws.n_tasks == 0 {
            return Ok(());
        }
        let n_seg = ws.segs as u64;
        let name = format!("project_partials_{}_k{k}", T::DTYPE.name());
        let f = self.function(MODULE, &name)?;
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ws.tasks).arg(v);
        for bi in basis {
            b.arg(bi);
        }
        for _ in k..MAX_K {
            b.arg(&null);
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
        // SAFETY: signature project_partials_<dt>_k<k>(tasks, v, b0..b7, chunk_partials,
        // seg_first, seg_count, mode, tol, ridge, seg_partials, coef, ranks) in
        // kernels/project.cu; tasks holds 3*n_tasks u64 with every (start, end) inside
        // 0..segs.total(), and v and b0..b(k-1) were checked to hold segs.total() elements;
        // b(k)..b7 are unused (null); chunk_partials holds n_tasks*MAX_STRIDE f64; seg_first
        // holds n_seg + 1 task indices (each segment's tasks contiguous); seg_count holds
        // n_seg u32, all 0 (zeroed at creation, reset by each segment's last block);
        // seg_partials holds n_seg*MAX_STRIDE and coef n_seg*MAX_K² f64; ranks holds n_seg
        // u32 (a DeviceRanks of this layout), or is null only without SOLVE (no rank written).
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

    #[allow(clippy::too_many_arguments)]
    fn launch_apply<T: CudaElement>(
        &self,
        ws: &mut Workspace,
        v: &CudaView<'_, T>,
        basis: &[CudaView<'_, T>],
        out: DeviceOutput<'_, '_, T>,
        alpha: f64,
        beta: &Beta<'_>,
    ) -> Result<()> {
        let k = basis.len();
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
        let name = format!("project_apply_{}_k{k}", T::DTYPE.name());
        let f = self.function(MODULE, &name)?;
        let null = 0u64;
        let (mode, base, out) = match out {
            DeviceOutput::Write { base: None, out } => (MODE_NONE, None, out),
            DeviceOutput::Write { base: Some(b), out } => (MODE_BASE, Some(b), out),
            DeviceOutput::Accumulate(out) => (MODE_INPLACE, None, out),
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ws.tasks).arg(v);
        for bi in basis {
            b.arg(bi);
        }
        for _ in k..MAX_K {
            b.arg(&null);
        }
        b.arg(&ws.coef);
        if per_seg {
            b.arg(&ws.beta);
        } else {
            b.arg(&null);
        }
        b.arg(&beta_scalar).arg(&alpha).arg(&mode);
        match base {
            Some(base) => b.arg(base),
            None => b.arg(&null),
        };
        b.arg(out);
        // SAFETY: signature project_apply_<dt>_k<k>(tasks, v, b0..b7, coef, beta_seg,
        // beta_scalar, alpha, mode, base, out); v, basis, base and out were checked to hold
        // segs.total() elements and every task lies inside; coef holds k values per segment
        // written by project_finish (or zeros for k = 0, never read); beta_seg is null or
        // holds n_seg f64; base is null unless mode == BASE; out does not alias the inputs
        // (Rust borrows: `&mut` vs `&`).
        unsafe { b.launch(cfg(grid(ws.n_tasks, "chunk tasks")?, THREADS)) }.map_err(drv)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn validate_project<T>(
        &self,
        segs: &Segments,
        v: &CudaView<'_, T>,
        basis: &[CudaView<'_, T>],
        out: &DeviceOutput<'_, '_, T>,
        alpha: f64,
        beta: &Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<()> {
        let lens: Vec<usize> = basis.iter().map(|b| b.len()).collect();
        Self::check_basis(segs, Some(v.len()), &lens)?;
        self.check_context("v", v)?;
        for b in basis {
            self.check_context("basis", b)?;
        }
        match out {
            DeviceOutput::Write { base, out } => {
                segs.check_buffer("out", out.len())?;
                self.check_context("out", *out)?;
                if let Some(b) = base {
                    segs.check_buffer("base", b.len())?;
                    self.check_context("base", *b)?;
                }
            }
            DeviceOutput::Accumulate(out) => {
                segs.check_buffer("out", out.len())?;
                self.check_context("out", *out)?;
            }
        }
        // No aliasing between the output and any input (ForeignSlice can make it).
        let s = &*self.stream;
        let mut inputs = vec![("v", byte_range(v, s))];
        inputs.extend(basis.iter().map(|b| ("basis", byte_range(b, s))));
        let out_range = match out {
            DeviceOutput::Write { base, out } => {
                if let Some(b) = base {
                    inputs.push(("base", byte_range(*b, s)));
                }
                byte_range(*out, s)
            }
            DeviceOutput::Accumulate(out) => byte_range(*out, s),
        };
        check_no_alias("out", out_range, &inputs)?;
        check_finite("alpha", alpha)?;
        beta.validate(segs.len())?;
        opts.validate()
    }

    /// Both passes, asynchronously on [`CudaBackend::stream`]:
    /// `out = alpha·base + beta·(v - P v)` per segment, `P` the projector onto the span of
    /// the segment's basis vectors (same method and options as [`crate::reference::project_out`]).
    /// Launches: pass 1 with the per-segment reduce + solve folded in (done by the last block
    /// of each segment), then pass 2 — 2 kernels for any number of segments; 1 for k = 0. Returns this call's ranks (at most `min(length, k)` per
    /// segment), on the device: [`DeviceRanks::to_vec`] reads them.
    #[allow(clippy::too_many_arguments)]
    pub fn project_out<T: CudaElement>(
        &self,
        segs: &Segments,
        v: &CudaView<'_, T>,
        basis: &[CudaView<'_, T>],
        out: DeviceOutput<'_, '_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<DeviceRanks> {
        self.validate_project(segs, v, basis, &out, alpha, &beta, opts)?;
        let k = basis.len();
        let mut ranks = DeviceRanks::zeros(&self.stream, segs.len())?;
        self.with_workspace(segs, |ws| {
            if k > 0 {
                let solve = Some((opts.tol, opts.ridge, &mut ranks));
                self.launch_partials(ws, v, basis, solve)?;
            }
            self.launch_apply(ws, v, basis, out, alpha, &beta)
        })?;
        Ok(ranks)
    }

    /// Pass 1 of the split form: per segment the Gram matrix and `Bᵀv`, summed on the
    /// device in a fixed order and copied to the host — this call **synchronises** the
    /// stream. Sum the partials of all shards (all-reduce) and pass them to
    /// [`CudaBackend::apply`].
    pub fn partials<T: CudaElement>(
        &self,
        segs: &Segments,
        v: &CudaView<'_, T>,
        basis: &[CudaView<'_, T>],
    ) -> Result<Partials> {
        let lens: Vec<usize> = basis.iter().map(|b| b.len()).collect();
        Self::check_basis(segs, Some(v.len()), &lens)?;
        self.check_context("v", v)?;
        for b in basis {
            self.check_context("basis", b)?;
        }
        let k = basis.len();
        if k == 0 || segs.is_empty() {
            return Partials::zeros(k, segs.len());
        }
        self.with_workspace(segs, |ws| {
            // One launch: the fold reduces each segment's chunks (no solve).
            self.launch_partials(ws, v, basis, None)?;
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

    /// Pass 2 of the split form: solves each segment from host `partials` (possibly summed
    /// over shards; uploaded, a small host-to-device copy) and writes the output like
    /// [`CudaBackend::project_out`]. Asynchronous. Returns this call's ranks, at most k per
    /// segment (not capped by the local length: the partials may be summed over shards).
    #[allow(clippy::too_many_arguments)]
    pub fn apply<T: CudaElement>(
        &self,
        segs: &Segments,
        v: &CudaView<'_, T>,
        basis: &[CudaView<'_, T>],
        partials: &Partials,
        out: DeviceOutput<'_, '_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<DeviceRanks> {
        self.validate_project(segs, v, basis, &out, alpha, &beta, opts)?;
        let k = basis.len();
        partials.check_shape(segs, k)?;
        check_len(
            "partials",
            segs.len() * partial_stride(k),
            partials.as_slice().len(),
        )?;
        let mut ranks = DeviceRanks::zeros(&self.stream, segs.len())?;
        self.with_workspace(segs, |ws| {
            if k > 0 && !segs.is_empty() {
                let n = partials.as_slice().len();
                self.stream
                    .memcpy_htod(partials.as_slice(), &mut ws.seg_partials.slice_mut(0..n))
                    .map_err(drv)?;
                self.launch_finish(ws, k, FIN_SOLVE, opts.tol, opts.ridge, Some(&mut ranks))?;
            }
            self.launch_apply(ws, v, basis, out, alpha, &beta)
        })?;
        Ok(ranks)
    }

    fn launch_orth_partials<T: CudaElement>(
        &self,
        ws: &mut Workspace,
        basis: &[CudaView<'_, T>],
        transform: bool,
    ) -> Result<()> {
        let k = basis.len();
        if ws.n_tasks == 0 {
            return Ok(());
        }
        let name = format!("orth_partials_{}_k{k}", T::DTYPE.name());
        let f = self.function(MODULE, &name)?;
        let null = 0u64;
        let tr = transform as i32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ws.tasks);
        for bi in basis {
            b.arg(bi);
        }
        for _ in k..MAX_K {
            b.arg(&null);
        }
        b.arg(&ws.coef).arg(&tr).arg(&mut ws.chunk_partials);
        // SAFETY: signature orth_partials_<dt>_k<k>(tasks, b0..b7, xform, transform,
        // chunk_partials); the basis views hold segs.total() elements each (checked), every
        // task lies inside; xform = coef holds k*k f64 per segment (M1 from project_finish
        // ORTH1 when transform = 1); chunk_partials holds n_tasks*MAX_STRIDE f64.
        unsafe { b.launch(cfg(grid(ws.n_tasks, "chunk tasks")?, THREADS)) }.map_err(drv)?;
        Ok(())
    }

    fn launch_orth_apply<T: CudaElement>(
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
    /// [`crate::solve::orth_segment`] (at most `min(length, k)`); dropped vectors become
    /// zero. Asynchronous; returns this call's ranks on the device. 5 launches for any
    /// number of segments.
    pub fn orthonormalize<T: CudaElement>(
        &self,
        segs: &Segments,
        basis: &mut [CudaViewMut<'_, T>],
        tol: f64,
    ) -> Result<DeviceRanks> {
        if !(0.0..1.0).contains(&tol) {
            return Err(invalid("tol", format!("must be in [0, 1), got {tol}")));
        }
        let lens: Vec<usize> = basis.iter().map(|b| b.len()).collect();
        Self::check_basis(segs, None, &lens)?;
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
                let r = Some(&mut ranks);
                self.launch_orth_partials(ws, &views, false)?;
                self.launch_finish(ws, k, FIN_REDUCE | FIN_ORTH1 | FIN_CAP, tol, 0.0, r)?;
                self.launch_orth_partials(ws, &views, true)?;
                let r = Some(&mut ranks);
                self.launch_finish(ws, k, FIN_REDUCE | FIN_ORTH2 | FIN_CAP, tol, 0.0, r)?;
            }
            self.launch_orth_apply(ws, basis)
        })?;
        Ok(ranks)
    }

    /// Names of every kernel of module `project` (for symbol tests).
    pub fn project_kernel_names() -> Vec<String> {
        let mut names = vec!["project_finish".to_string()];
        for dt in crate::DType::ALL {
            for k in 0..=MAX_K {
                names.push(format!("project_apply_{dt}_k{k}"));
                if k > 0 {
                    names.push(format!("project_partials_{dt}_k{k}"));
                    names.push(format!("orth_partials_{dt}_k{k}"));
                    names.push(format!("orth_apply_{dt}_k{k}"));
                }
            }
        }
        names
    }

    /// Loads every kernel of module `project` (fails on the first missing symbol).
    pub fn preload_project(&self) -> Result<()> {
        for n in Self::project_kernel_names() {
            self.function(MODULE, &n)?;
        }
        Ok(())
    }
}
