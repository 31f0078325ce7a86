//! The preamble of the commands that work in this repository (emu-check, check-kernels,
//! mpi-check, gpu-bundle): its root as the working folder, as the scripts' `cd
//! "$(dirname "$0")/.."`, and the environment that the scripts gave their commands.

use crate::{cargo_run_env, cuda_env};
use std::path::Path;

/// Whether a command takes in the CUDA compiler venv's environment.
pub enum CudaEnv {
    /// NVCC (an NVCC already set wins) and NVRTC's library path, from
    /// `$REDREG_CUDA_VENV/redreg-cuda-env.sh` when there is one ([`cuda_env::import`]).
    Import,
    /// The caller's environment only.
    Leave,
}

/// Makes the repository root (this crate's parent) the working folder, gives the commands
/// run from here the caller's LD_LIBRARY_PATH, not `cargo run`'s ([`cargo_run_env::undo`]),
/// and takes in the CUDA environment as `cuda` says. Returns the root; Err: the exit status
/// (2, the reason said on stderr as `who: …`). Call before any thread.
pub fn enter(who: &str, cuda: CudaEnv) -> Result<&'static Path, i32> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the repository");
    if let Err(e) = std::env::set_current_dir(root) {
        eprintln!("{who}: {}: {e}", root.display());
        return Err(2);
    }
    cargo_run_env::undo();
    if let CudaEnv::Import = cuda {
        cuda_env::import();
    }
    Ok(root)
}
