//! The distributed scenarios (`common/dist.rs`) on an in-process group of threads
//! (`ThreadGroup`): data-parallel decisions equal the single-process decision on the whole
//! batch, the sharded split form equals the unsharded oracle, and a wrong length errs on
//! every rank — without MPI, in the normal `cargo test`.

mod common;

use common::dist;

use dist::Checks;
use redreg::dist::{AllReduce, ThreadGroup};

/// Runs `f(comm, rank, size, checks)` on `size` threads and fails on any rank's failures.
fn on_threads(size: usize, f: impl Fn(&ThreadGroup, usize, usize, &mut Checks) + Sync) {
    let group = ThreadGroup::new(size).unwrap();
    let results: Vec<Checks> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .iter()
            .map(|comm| {
                let f = &f;
                s.spawn(move || {
                    let mut ck = Checks::default();
                    f(comm, comm.rank(), comm.size(), &mut ck);
                    ck
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<&String> = results.iter().flat_map(|c| &c.failures).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(results.iter().all(|c| c.passed > 0));
}

#[test]
fn ddp_decisions_equal_the_whole_batch() {
    for size in [1, 2, 3, 4] {
        on_threads(size, |comm, rank, size, ck| {
            let d = dist::ddp_decisions(comm, rank, size, 3, 14, ck);
            assert_eq!(d.len(), 3 * 14);
        });
    }
}

#[test]
fn a_label_fault_on_one_rank_errs_on_every_rank() {
    for size in [1, 2, 3] {
        on_threads(size, |comm, rank, size, ck| {
            dist::ddp_label_fault(comm, rank, size, ck)
        });
    }
}

#[test]
fn sharded_projection_equals_the_unsharded_oracle() {
    for size in [1, 2, 3] {
        for k in [0, 1, 3] {
            on_threads(size, |comm, rank, size, ck| {
                dist::sharded(comm, rank, size, k, ck)
            });
        }
    }
}

#[test]
fn wrong_lengths_err_on_every_rank() {
    for size in [2, 3] {
        on_threads(size, |comm, rank, size, ck| {
            assert!(dist::wrong_length(comm, rank, size, ck));
        });
    }
}

#[test]
fn thread_group_sums_and_detects_mismatch_without_the_check() {
    on_threads(3, |comm, rank, _, ck| {
        let mut b = [rank as f64, 1.0];
        comm.all_reduce_sum(&mut b).unwrap();
        ck.check(b == [3.0, 3.0], || format!("sum {b:?}"));
        let mut c = vec![0.0; 1 + rank];
        let r = comm.all_reduce_sum(&mut c);
        ck.check(r.is_err(), || format!("rank {rank}: {r:?}"));
    });
    assert!(ThreadGroup::new(0).is_err());
}
