//! The CPU backend: multi-threaded with rayon, deterministic for any thread count. Its
//! operations live with their operation (the projection: `src/project/cpu.rs`).

use crate::error::{invalid, Result};
use rayon::prelude::*;
use std::sync::Arc;

pub(crate) mod two_pass;

/// Calls that read at most this many elements (the projection: per operand; the statistics
/// plan: over all its inputs) run on the calling thread. A small model's per-step work is
/// tens of microseconds; handing it to rayon's pool adds a thread hand-off, which on a
/// loaded machine costs milliseconds when a pool thread is descheduled (measured in
/// `examples/balance`: 1.3–1.9 ms for a 1,600-element encoder). Results are unchanged, bit
/// for bit: the same tasks, combined in the same order.
pub const INLINE_ELEMENTS: usize = 1 << 16;

/// Multi-threaded CPU implementation of the projection.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    pool: Option<Arc<rayon::ThreadPool>>,
    chunk: usize,
    inline_elements: usize,
    cache_bytes: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// Default chunk size in elements (128 KiB of f32 per buffer: fits L2 with k = 8).
    pub const DEFAULT_CHUNK: usize = 1 << 15;

    /// Default cache budget of a projection's group of tensors, in bytes over all its
    /// operands (8 MiB: a quarter of a 32 MiB L3, half of a 16 MiB one, so that a group's
    /// pass 2 finds what its pass 1 read still cached; see [`CpuBackend::with_cache_bytes`]).
    pub const DEFAULT_CACHE_BYTES: usize = 8 << 20;

    /// A backend on rayon's global thread pool with the default chunk size.
    pub fn new() -> Self {
        Self {
            pool: None,
            chunk: Self::DEFAULT_CHUNK,
            inline_elements: INLINE_ELEMENTS,
            cache_bytes: Self::DEFAULT_CACHE_BYTES,
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
            chunk: Self::DEFAULT_CHUNK,
            inline_elements: INLINE_ELEMENTS,
            cache_bytes: Self::DEFAULT_CACHE_BYTES,
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

    /// Calls of at most `elements` elements per operand run on the calling thread
    /// (default `redreg::stats::cpu::INLINE_ELEMENTS`, 65 536; 0: every call on the pool). Results do not depend on
    /// it, bit for bit.
    pub fn with_inline_elements(mut self, elements: usize) -> Self {
        self.inline_elements = elements;
        self
    }

    /// Sets the cache budget of the projection's scheduling (bytes; 0: off). Consecutive
    /// tensors whose operands fit in `bytes` together form a group, and each group runs
    /// both passes before the next starts, so pass 2 reads from cache what pass 1 just
    /// read; a larger tensor is a group of its own, its pass 2 run backwards. Results do
    /// not depend on it, bit for bit (the same chunks, sums and solve per tensor); only
    /// the DRAM traffic does.
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The chunk size in elements.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The cache budget of the projection's scheduling in bytes (0: off).
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
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

    pub(crate) fn inline(&self, elements: usize) -> bool {
        elements <= self.inline_elements
    }

    /// `f` of every task, in task order: on the calling thread for a call of at most
    /// `elements` ≤ the inline limit, else in parallel on this backend's pool.
    pub(crate) fn map_tasks<A: Sync, R: Send>(
        &self,
        elements: usize,
        tasks: &[A],
        f: impl Fn(&A) -> R + Sync + Send,
    ) -> Vec<R> {
        if self.inline(elements) {
            return tasks.iter().map(f).collect();
        }
        self.run(|| tasks.par_iter().map(f).collect())
    }

    /// `f` on the calling thread and at the same time on each other thread of the pool
    /// (for a call of at most `elements` ≤ the inline limit, on the calling thread alone).
    /// `f` is a worker that claims its work ([`two_pass`]): a thread that starts late, or
    /// never, finds nothing left to do.
    pub(crate) fn workers(&self, elements: usize, f: impl Fn() + Sync) {
        if self.inline(elements) {
            return f();
        }
        self.run(|| {
            rayon::scope(|sc| {
                for _ in 1..self.threads() {
                    sc.spawn(|_| f());
                }
                f();
            })
        })
    }

    /// `f` of every task with its own piece of `with` (a destination), as [`Self::map_tasks`]
    /// decides where.
    pub(crate) fn zip_tasks<A: Sync, B: Send>(
        &self,
        elements: usize,
        tasks: &[A],
        with: Vec<B>,
        f: impl Fn(&A, B) + Sync + Send,
    ) {
        if self.inline(elements) {
            return tasks.iter().zip(with).for_each(|(a, b)| f(a, b));
        }
        self.run(|| tasks.par_iter().zip(with).for_each(|(a, b)| f(a, b)))
    }
}
