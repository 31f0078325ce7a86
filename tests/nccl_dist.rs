//! The NCCL adapter on the lent GPU (world size 1: NCCL refuses two ranks of one
//! communicator on the same device): the host and device all-reduce, the collective length
//! check, and the data-parallel and sharded scenarios of `common/dist.rs` through NCCL.
//! Prints `SKIP` without a GPU (`REDREG_REQUIRE_GPU=1`: fail) or without a libnccl under a
//! name cudarc's loader tries (`REDREG_REQUIRE_NCCL=1`: fail; see docs/distributed.md for
//! the `libnccl.so` link).

mod common;

use common::{dist, gpu};

use cudarc::nccl::Comm;
use dist::Checks;
use redreg::dist::{check_same_len, AllReduce, NcclComm};

/// One communicator of one rank on device 0, or `None` after a SKIP.
fn comm(test: &str) -> Option<Comm> {
    let backend = gpu::backend(test)?;
    let names = cudarc::get_lib_name_candidates("nccl");
    // SAFETY: loading libnccl runs its initialisers only (no other code of ours).
    let found = names
        .iter()
        .any(|n| unsafe { libloading::Library::new(n) }.is_ok());
    if !found {
        gpu::skip(
            test,
            "REDREG_REQUIRE_NCCL",
            &format!(
                "no libnccl under the names cudarc tries ({}); a PyPI wheel's libnccl.so.2 \
                 needs a libnccl.so link (docs/distributed.md)",
                names.join(", ")
            ),
        );
        return None;
    }
    let mut comms = Comm::from_devices(vec![backend.stream().clone()])
        .unwrap_or_else(|e| panic!("{test}: ncclCommInitAll: {e:?}"));
    comms.pop()
}

#[test]
fn nccl_all_reduce_host_and_device() {
    let Some(c) = comm("nccl_all_reduce_host_and_device") else {
        return;
    };
    let nc = NcclComm::new(&c);
    assert_eq!((nc.rank(), nc.size()), (0, 1));
    let mut buf = vec![1.5, -2.0, 3.25];
    nc.all_reduce_sum_checked(&mut buf).unwrap();
    assert_eq!(buf, [1.5, -2.0, 3.25]);
    check_same_len(&nc, 7).unwrap();
    let stream = c.stream();
    let mut dev = stream.clone_htod(&[4.0f64, 5.0]).unwrap();
    nc.all_reduce_sum_device(&mut dev).unwrap();
    assert_eq!(stream.clone_dtoh(&dev).unwrap(), [4.0, 5.0]);
}

#[test]
fn nccl_scenarios_at_world_size_1() {
    let Some(c) = comm("nccl_scenarios_at_world_size_1") else {
        return;
    };
    let nc = NcclComm::new(&c);
    let mut ck = Checks::default();
    let d = dist::ddp_decisions(&nc, 0, 1, 2, 12, &mut ck);
    assert_eq!(d.len(), 24);
    for k in [1, 3] {
        dist::sharded(&nc, 0, 1, k, &mut ck);
    }
    assert!(ck.failures.is_empty(), "{:#?}", ck.failures);
    assert!(ck.passed > 0);
}
