//! The distributed scenarios (`common/dist.rs`) over MPI, one process per rank:
//! `scripts/mpi-check.sh` runs this binary under `mpirun -n 2` and `-n 3` (uneven shards).
//! Run alone (`cargo test --features mpi --test mpi_dist`) it is a world of one rank: the
//! data-parallel and sharded scenarios still run (one rank = the whole batch), the
//! wrong-length scenario prints SKIP (it needs two ranks).
//!
//! Every rank prints its result; the process exits non-zero if any check failed on it,
//! and rank 0 also fails when another rank reported a failure (summed through MPI).

mod common;

use common::dist;

use dist::Checks;
use redreg::dist::{AllReduce, MpiComm};

fn main() {
    // libtest's flags (`--nocapture`, filters) are accepted and ignored.
    let Some(universe) = mpi::initialize() else {
        eprintln!("mpi_dist: MPI was already initialised");
        std::process::exit(2);
    };
    let world = universe.world();
    let comm = MpiComm::new(&world);
    let (rank, size) = (comm.rank(), comm.size());
    let t0 = std::time::Instant::now();
    let mut ck = Checks::default();

    let decisions = dist::ddp_decisions(&comm, rank, size, 3, 14, &mut ck);
    let suppressed: Vec<String> = decisions
        .iter()
        .map(|d| d.suppressed.map_or("-".into(), |m| m.to_string()))
        .collect();
    println!(
        "rank {rank}/{size}: (a) data parallel, batch of {} rows (mine {:?}): {} decisions, suppressed {}",
        dist::B,
        dist::cut(dist::B, rank, size, 0),
        decisions.len(),
        suppressed.join("")
    );
    dist::ddp_label_fault(&comm, rank, size, &mut ck);
    for k in [0, 1, 3, 8] {
        dist::sharded(&comm, rank, size, k, &mut ck);
    }
    println!("rank {rank}/{size}: (b) sharded projection, k = 0, 1, 3, 8");
    if dist::wrong_length(&comm, rank, size, &mut ck) {
        println!("rank {rank}/{size}: (c) wrong lengths");
    } else {
        println!("rank {rank}/{size}: (c) SKIP wrong lengths: needs >= 2 ranks (run under mpirun)");
    }

    let mut failed = [f64::from(u8::from(!ck.failures.is_empty()))];
    comm.all_reduce_sum_checked(&mut failed)
        .expect("final all-reduce");
    for f in &ck.failures {
        eprintln!("rank {rank}/{size}: FAILED {f}");
    }
    println!(
        "rank {rank}/{size}: {} checks passed, {} failed, {:.2} s; ranks with failures: {}",
        ck.passed,
        ck.failures.len(),
        t0.elapsed().as_secs_f64(),
        failed[0]
    );
    if failed[0] != 0.0 {
        std::process::exit(1);
    }
}
