//! Prints the kernels' ABI header `redreg_abi.cuh`: `src/abi.rs`'s `cuda_header()`, the
//! same function `build.rs` calls (one generator), for the tools that compile
//! `kernels/*.cu` outside cargo. Built by `scripts/abi-header.sh` with plain rustc.

#[path = "../src/abi.rs"]
#[allow(dead_code)]
mod abi;

fn main() {
    print!("{}", abi::cuda_header());
}
