//! [`AllReduce`] over MPI (the `mpi` crate, rsmpi 0.8; feature `mpi`).

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::Communicator;

use super::AllReduce;
use crate::error::Result;

/// An MPI communicator borrowed as an [`AllReduce`]: `MPI_Allreduce(MPI_SUM)` on `f64`.
///
/// ```no_run
/// # fn main() -> redreg::Result<()> {
/// use redreg::dist::{AllReduce, MpiComm};
/// let universe = mpi::initialize().expect("MPI initialised twice");
/// let world = universe.world();
/// let comm = MpiComm::new(&world);
/// let mut buf = [comm.rank() as f64];
/// comm.all_reduce_sum_checked(&mut buf)?;
/// # Ok(()) }
/// ```
///
/// MPI's default error handler aborts the job on an MPI error, so the calls return `Ok` or
/// never return; lengths are checked collectively by
/// [`AllReduce::all_reduce_sum_checked`] before the payload is reduced.
#[derive(Debug)]
pub struct MpiComm<'c, C: Communicator> {
    comm: &'c C,
}

impl<'c, C: Communicator> MpiComm<'c, C> {
    /// Borrows `comm` (for example `universe.world()`).
    pub fn new(comm: &'c C) -> Self {
        Self { comm }
    }

    /// This process's rank in the communicator.
    pub fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size() as usize
    }

    /// The borrowed communicator.
    pub fn communicator(&self) -> &'c C {
        self.comm
    }
}

impl<C: Communicator> AllReduce for MpiComm<'_, C> {
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
        let local = buf.to_vec();
        self.comm
            .all_reduce_into(&local[..], buf, SystemOperation::sum());
        Ok(())
    }
}
