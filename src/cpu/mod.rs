//! The CPU backend: the same operations as the CUDA backend, multi-threaded with rayon.
//!
//! # Parallel layout and determinism
//! Every buffer is cut into the fixed chunk table of [`crate::segments::chunk_tasks`]
//! (default [`DEFAULT_CHUNK`] elements). Pass 1 computes one f64 partial per chunk with a
//! fixed summation pattern (4 interleaved lanes, combined pairwise), then sums the chunk
//! partials of each segment in chunk order. Which thread computes which chunk does not
//! change a single bit, so results are identical run to run and for any thread count.
//!
//! # Methods
//! - `project_out` = `partials` + `apply` ([`Backend`]): the Gram-matrix method of
//!   [`crate::solve`] (same shared solve as the reference).
//! - `orthonormalize`: Cholesky QR applied twice (CholQR2) through
//!   [`crate::solve::orth_segment`]. In exact arithmetic it yields the same Q as CGS2 (QR
//!   with a positive diagonal is unique), and it makes the same rank decisions; the second
//!   round restores orthogonality lost to conditioning and to rounding of the stored
//!   intermediate (f16/bf16). Four passes over the basis for any k.

mod kernels;

use crate::backend::Backend;
use crate::dtype::Element;
use crate::error::{invalid, Result};
use crate::projection::Projection;
use crate::projection::{check_k, BaseMode, Partials};
use crate::reference::HostProjection;
use crate::segments::{chunk_tasks, ChunkTask, Segments};
use crate::solve::{orth_segment, partial_stride, solve_segment, MAX_K};
use crate::sum::Acc;
use rayon::prelude::*;
use std::sync::Arc;

/// Default chunk size in elements (128 KiB of f32 per buffer: fits L2 with k = 8).
pub const DEFAULT_CHUNK: usize = 1 << 15;

/// Multi-threaded CPU implementation of the projection.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    pool: Option<Arc<rayon::ThreadPool>>,
    chunk: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend on rayon's global thread pool with the default chunk size.
    pub fn new() -> Self {
        Self {
            pool: None,
            chunk: DEFAULT_CHUNK,
        }
    }

    /// A backend with its own pool of `threads` threads (`threads >= 1`).
    pub fn with_threads(threads: usize) -> Result<Self> {
        if threads == 0 {
            return Err(invalid("threads", "must be >= 1"));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| invalid("threads", format!("cannot build thread pool: {e}")))?;
        Ok(Self {
            pool: Some(Arc::new(pool)),
            chunk: DEFAULT_CHUNK,
        })
    }

    /// Changes the chunk size (elements, `>= 1`). Results depend on it at the last bit
    /// (summation order), never on the thread count.
    pub fn with_chunk(mut self, chunk: usize) -> Result<Self> {
        if chunk == 0 {
            return Err(invalid("chunk", "must be >= 1"));
        }
        self.chunk = chunk;
        Ok(self)
    }

    /// The chunk size in elements.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Number of worker threads this backend runs on.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// Pass 1 ([`Backend::partials`]) on validated arguments.
    fn partials_of<T: Element>(
        &self,
        segs: &Segments,
        p: &HostProjection<'_, T>,
        k: usize,
    ) -> Result<Partials> {
        let tasks = chunk_tasks(segs, self.chunk)?;
        let mut parts = Partials::zeros(k, segs.len())?;
        let mut basis: Vec<&[T]> = Vec::with_capacity(k);
        if p.out_in_basis {
            basis.push(&**p.out.out());
        }
        basis.extend(p.basis.iter().map(|b| &**b));
        self.partials_into(&tasks, Some((p.v, p.v0)), &basis, &mut parts);
        Ok(parts)
    }

    /// Chunk partials in parallel, then per-segment sums in chunk order.
    #[allow(clippy::type_complexity)]
    fn partials_into<T: Element>(
        &self,
        tasks: &[ChunkTask],
        v: Option<(&[T], Option<&[T]>)>,
        basis: &[&[T]],
        p: &mut Partials,
    ) {
        let k = basis.len();
        let st = partial_stride(k);
        let chunk_sums: Vec<[Acc; kernels::MAX_STRIDE]> = self.run(|| {
            tasks
                .par_iter()
                .map(|t| {
                    let r = t.start..t.end;
                    let bs: Vec<&[T]> = basis.iter().map(|b| &b[r.clone()]).collect();
                    kernels::chunk_partial(
                        v.map(|(v, _)| &v[r.clone()]),
                        v.and_then(|(_, v0)| v0).map(|v0| &v0[r.clone()]),
                        &bs,
                    )
                })
                .collect()
        });
        // Per segment, merge the chunk sums in chunk order, then round once to f64.
        let out = p.as_mut_slice();
        out.iter_mut().for_each(|x| *x = 0.0);
        let mut seg_acc = [Acc::default(); kernels::MAX_STRIDE];
        let mut i = 0;
        while i < tasks.len() {
            let seg = tasks[i].seg;
            seg_acc.iter_mut().for_each(|a| *a = Acc::default());
            while i < tasks.len() && tasks[i].seg == seg {
                seg_acc
                    .iter_mut()
                    .zip(&chunk_sums[i])
                    .for_each(|(a, c)| a.merge(*c));
                i += 1;
            }
            out[seg * st..(seg + 1) * st]
                .iter_mut()
                .zip(&seg_acc)
                .for_each(|(o, a)| *o = a.value());
        }
    }

    /// Pass 2 on validated arguments; `cap_by_len` also caps each rank at the segment's
    /// length (the partials are the segment's own, `crate::solve`).
    fn apply_capped<T: Element>(
        &self,
        segs: &Segments,
        partials: &Partials,
        p: HostProjection<'_, T>,
        k: usize,
        cap_by_len: bool,
    ) -> Result<Vec<u32>> {
        partials.check_shape(segs, k)?;
        let mut coef = vec![0.0f64; segs.len() * k];
        let ranks: Vec<u32> = (0..segs.len())
            .map(|s| {
                solve_segment(
                    k,
                    partials.seg(s),
                    if cap_by_len {
                        segs.seg_len(s).min(k)
                    } else {
                        k
                    },
                    p.opts.tol,
                    p.opts.ridge,
                    &mut coef[s * k..(s + 1) * k],
                )
            })
            .collect();
        let tasks = chunk_tasks(segs, self.chunk)?;
        let (v, v0, extra, b0_out) = (p.v, p.v0, p.basis, p.out_in_basis);
        let (alpha, beta) = (p.alpha, p.beta);
        let (mode, out) = p.out.split();
        let outs = split_by_tasks(out, &tasks);
        self.run(|| {
            tasks.par_iter().zip(outs).for_each(|(t, o)| {
                let r = t.start..t.end;
                let bs: Vec<&[T]> = extra.iter().map(|b| &b[r.clone()]).collect();
                let mode = match mode {
                    BaseMode::Slice(b) => BaseMode::Slice(&b[r.clone()]),
                    BaseMode::None => BaseMode::None,
                    BaseMode::InPlace => BaseMode::InPlace,
                };
                let x = kernels::ApplyIn {
                    v: &v[r.clone()],
                    v0: v0.map(|v0| &v0[r.clone()]),
                    basis: &bs,
                    b0_out,
                };
                kernels::chunk_apply(
                    x,
                    &coef[t.seg * k..(t.seg + 1) * k],
                    alpha,
                    beta.at(t.seg),
                    mode,
                    o,
                );
            })
        });
        Ok(ranks)
    }

    /// CholQR2 (see the module docs).
    fn orthonormalize_impl<T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [&mut [T]],
        tol: f64,
    ) -> Result<Vec<u32>> {
        if !(0.0..1.0).contains(&tol) {
            return Err(invalid("tol", format!("must be in [0, 1), got {tol}")));
        }
        let k = basis.len();
        check_k(k)?;
        for b in basis.iter() {
            segs.check_buffer("basis", b.len())?;
        }
        let tasks = chunk_tasks(segs, self.chunk)?;
        let mut p = Partials::zeros(k, segs.len())?;
        let mut m = vec![0.0f64; segs.len() * k * k];
        let mut ranks = vec![0u32; segs.len()];
        for _round in 0..2 {
            {
                let views: Vec<&[T]> = basis.iter().map(|b| &**b).collect();
                self.partials_into(&tasks, None, &views, &mut p);
            }
            for (s, rank) in ranks.iter_mut().enumerate() {
                let max_rank = segs.seg_len(s).min(k);
                *rank = orth_segment(
                    k,
                    p.seg(s),
                    max_rank,
                    tol,
                    &mut m[s * k * k..(s + 1) * k * k],
                );
            }
            // Per task, the k sub-slices of the basis buffers for that chunk.
            let mut per_task: Vec<Vec<&mut [T]>> = (0..tasks.len()).map(|_| Vec::new()).collect();
            for b in basis.iter_mut() {
                for (slot, piece) in per_task.iter_mut().zip(split_by_tasks(b, &tasks)) {
                    slot.push(piece);
                }
            }
            let m = &m;
            self.run(|| {
                tasks.par_iter().zip(per_task).for_each(|(t, mut bs)| {
                    kernels::chunk_orth(&mut bs, &m[t.seg * k * k..(t.seg + 1) * k * k]);
                })
            });
        }
        Ok(ranks)
    }
}

/// Host slices; `project_out` = pass 1 + pass 2 (module docs), `orthonormalize` = CholQR2.
impl Backend for CpuBackend {
    type Memory = crate::backend::Host;
    type Ranks = Vec<u32>;

    fn project_out<'a, T: Element>(
        &self,
        segs: &Segments,
        p: Projection<'_, &'a [T], &'a mut [T]>,
    ) -> Result<Vec<u32>> {
        let k = p.validate(segs)?;
        let parts = self.partials_of(segs, &p, k)?;
        self.apply_capped(segs, &parts, p, k, true)
    }

    fn partials<'a, T: Element>(
        &self,
        segs: &Segments,
        v: &'a [T],
        v0: Option<&'a [T]>,
        basis: &[&'a [T]],
    ) -> Result<Partials> {
        crate::projection::check_inputs(segs, &v, v0.as_ref(), basis)?;
        let tasks = chunk_tasks(segs, self.chunk)?;
        let mut parts = Partials::zeros(basis.len(), segs.len())?;
        self.partials_into(&tasks, Some((v, v0)), basis, &mut parts);
        Ok(parts)
    }

    fn apply<'a, T: Element>(
        &self,
        segs: &Segments,
        partials: &Partials,
        p: Projection<'_, &'a [T], &'a mut [T]>,
    ) -> Result<Vec<u32>> {
        let k = p.validate(segs)?;
        self.apply_capped(segs, partials, p, k, false)
    }

    fn orthonormalize<T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [&mut [T]],
        tol: f64,
    ) -> Result<Vec<u32>> {
        self.orthonormalize_impl(segs, basis, tol)
    }

    fn copy<'a, T: Element>(&self, src: &'a [T], dst: &'a mut [T]) -> Result<()> {
        crate::backend::host_copy(src, dst)
    }
}

/// Splits `buf` into the disjoint pieces covered by `tasks` (which are in order and cover
/// every non-empty segment, see [`chunk_tasks`]).
fn split_by_tasks<'a, T>(buf: &'a mut [T], tasks: &[ChunkTask]) -> Vec<&'a mut [T]> {
    let mut pieces = Vec::with_capacity(tasks.len());
    let mut rest = buf;
    let mut pos = 0;
    for t in tasks {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(t.start - pos);
        let (piece, tail) = tail.split_at_mut(t.end - t.start);
        pieces.push(piece);
        rest = tail;
        pos = t.end;
    }
    pieces
}

const _: () = assert!(kernels::MAX_STRIDE == partial_stride(MAX_K));
