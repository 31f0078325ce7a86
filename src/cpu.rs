//! The CPU backend: multi-threaded with rayon, deterministic for any thread count. Its
//! operations live with their operation (the projection: `src/project/cpu.rs`).

use crate::error::{invalid, Result};
use std::sync::Arc;

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
    /// Default chunk size in elements (128 KiB of f32 per buffer: fits L2 with k = 8).
    pub const DEFAULT_CHUNK: usize = 1 << 15;

    /// A backend on rayon's global thread pool with the default chunk size.
    pub fn new() -> Self {
        Self {
            pool: None,
            chunk: Self::DEFAULT_CHUNK,
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

    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}
