//! An in-process group: one [`ThreadGroup`] handle per thread, summing through shared
//! memory. For tests of distributed code without MPI, and for single-node trainers that run
//! one replica per thread.

use std::sync::{Arc, Barrier, Mutex, MutexGuard};

use super::AllReduce;
use crate::error::{invalid, Result};

#[derive(Debug, Default)]
struct Round {
    /// Sum so far (length of the first arrival's buffer).
    acc: Vec<f64>,
    /// Ranks that added their buffer this round.
    arrived: usize,
    /// Ranks that read the sum this round.
    read: usize,
    /// Some rank's length differed from the first arrival's.
    mismatch: bool,
}

#[derive(Debug)]
struct Shared {
    round: Mutex<Round>,
    barrier: Barrier,
    size: usize,
}

/// One rank of an in-process group of `size` ranks (one per thread). Every rank must call
/// the collectives in the same order, like any other [`AllReduce`]. The sum is formed in
/// arrival order, so it may differ at the last bit between runs (never between ranks of
/// the same call: all read the same sum).
///
/// Unlike MPI or NCCL, a length mismatch in a plain [`AllReduce::all_reduce_sum`] is
/// detected here too (every rank gets `Err`).
#[derive(Clone, Debug)]
pub struct ThreadGroup {
    shared: Arc<Shared>,
    rank: usize,
}

impl ThreadGroup {
    /// The `size` ranks of a new group (`size >= 1`), rank `r` at index `r`: hand one to
    /// each thread.
    pub fn new(size: usize) -> Result<Vec<ThreadGroup>> {
        if size == 0 {
            return Err(invalid("size", "a group needs at least one rank"));
        }
        let shared = Arc::new(Shared {
            round: Mutex::new(Round::default()),
            barrier: Barrier::new(size),
            size,
        });
        Ok((0..size)
            .map(|rank| ThreadGroup {
                shared: shared.clone(),
                rank,
            })
            .collect())
    }

    /// This rank's index.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.shared.size
    }

    fn lock(&self) -> Result<MutexGuard<'_, Round>> {
        self.shared
            .round
            .lock()
            .map_err(|_| invalid("thread group", "another rank panicked during a collective"))
    }
}

impl AllReduce for ThreadGroup {
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
        {
            let mut r = self.lock()?;
            if r.arrived == 0 {
                r.acc.clear();
                r.acc.extend_from_slice(buf);
                r.mismatch = false;
            } else if r.acc.len() != buf.len() {
                r.mismatch = true;
            } else {
                r.acc.iter_mut().zip(buf.iter()).for_each(|(a, b)| *a += b);
            }
            r.arrived += 1;
        }
        self.shared.barrier.wait();
        let mismatch = {
            let mut r = self.lock()?;
            let mismatch = r.mismatch;
            if !mismatch {
                buf.copy_from_slice(&r.acc);
            }
            r.read += 1;
            if r.read == self.shared.size {
                r.arrived = 0;
                r.read = 0;
            }
            mismatch
        };
        // Nobody starts the next round before the last reader has reset this one.
        self.shared.barrier.wait();
        if mismatch {
            return Err(invalid(
                "all-reduce buffer",
                format!(
                    "the ranks of the thread group pass buffers of different lengths \
                     (rank {}: {})",
                    self.rank,
                    buf.len()
                ),
            ));
        }
        Ok(())
    }
}
