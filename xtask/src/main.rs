//! `cargo xtask`: the parts of redreg's orchestration that are more than a few lines of
//! shell, in Rust (issue #22): reading cargo's JSON messages with serde, which
//! `scripts/emu-check.sh`, `scripts/gpu-check.sh` and `scripts/mpi-check.sh` need to find the
//! executables a build made (they had seven inline Python parsers for it); `scripts/emu-check.sh`
//! as a whole (`emu-check`: the steps, their environments, verdicts, coverage and table in
//! code; the script is its entry point), `scripts/check-kernels.sh` (`check-kernels`),
//! `scripts/mpi-check.sh` (`mpi-check`), and the GPU flow of `scripts/gpu-check.sh` (now a
//! thin entry point): the bundle built here (`gpu-bundle`) and the run on the GPU machine
//! (`gpu-run`), where the bundle carries this binary, with its budget, verdicts and summary
//! in code.

mod artifacts;
mod budget;
mod cargo_run_env;
mod check_kernels;
mod cuda_env;
mod emu_check;
mod gpu_bundle;
mod gpu_host;
mod gpu_run;
mod mpi_check;
mod proc;
mod repo;
mod sanitizer;
mod summary;
mod test_log;

use std::io::Write;

pub const USAGE: &str = "cargo xtask COMMAND [ARGS]

  emu-check [STEP ...]      (entry point: scripts/emu-check.sh)
        runs the crate's real CUDA kernels on the CPU, through the crate's own cudarc
        wrappers, on the emulated CUDA driver of tests/emu (no GPU, no CUDA driver needed).
        STEPS (default: all of them, in this order):
          selftest   f16 host conversions vs the compiler's IEEE binary16 (all 2^32 f32 values)
          negative   broken kernels each mode must catch (tests/emu/negative/run.sh)
          plain      every GPU test binary, REDREG_REQUIRE_GPU=1, default test threads, 2
                     devices; the NVRTC path (REDREG_FORCE_NVRTC=1) for the stats binary's
                     CUDA tests; the GPU bench in smoke mode
          address    AddressSanitizer over the kernels (exact-size allocations, 0xA5 fill)
          race       ThreadSanitizer over the kernels (each CUDA thread a TSan fiber)
          mutation   the REAL kernels, deliberately broken (tests/emu/mutate.py): a barrier
                     removed must fail the race mode, an off-by-one loop bound the address mode
          candle     the candle adapter's CUDA path (feature candle-cuda,
                     tests/gpu_candle_list.rs) in the three modes; builds candle-kernels with
                     nvcc (~12 min on 2 cores, in the background while other steps run) and
                     links against scripts/cuda-link-stubs.sh's stand-ins
        Sizes: REDREG_GPU_QUICK=1 (the tests' quick layouts) in every mode; the race mode runs
        a subset (TSan costs ~50x) that still launches every kernel. EMU_FULL=1 runs the plain
        mode at full size. Each mode fails unless every kernel of kernels/*.cu was launched.
        Sources $REDREG_CUDA_VENV/redreg-cuda-env.sh (default venv ~/.cache/redreg-cuda-venv;
        an NVCC already set is kept); CUDA_COMPUTE_CAP defaults to 90.
        Results: target/emu/results.md (a table) and target/emu/logs/*.log; prints
        `emu-check: PASS` (exit 0) or `emu-check: FAIL` (exit 1); 2: an unknown step.
        Emulated is not real: these runs prove kernel logic, launch geometry, argument
        passing, bounds, barriers and the wrappers end to end; their timings mean nothing.

  artifacts [--log FILE] -- CARGO_ARGS...
        runs `cargo CARGO_ARGS --message-format=json-render-diagnostics` and prints one line
        per executable the build made: NAME KIND PATH (KIND: test, bench or example; a
        library's unit tests count as test). cargo's own output goes to FILE (default: this
        process's stderr). Exit status: cargo's, or 1 when cargo succeeded but announced no
        executable.
  check-kernels      (entry point: scripts/check-kernels.sh)
        CI's check of the CUDA kernels, no GPU needed:
          1. cargo build with REDREG_REQUIRE_NVCC=1 (a kernel that does not compile fails the
             build); with .ci/run's environment and features it reuses the README test build;
          2. ptxas -v resource usage of every kernel for every target arch
             ($REDREG_CHECK_CAPS, default 75,80,86,89,90; $REDREG_NVCC_JOBS nvcc jobs,
             default 2); fails on any spill;
          3. the embedded sources compiled through NVRTC by the crate's own NVRTC path (test
             nvrtc_compiles_embedded_sources with REDREG_REQUIRE_NVRTC=1), beside step 2.
        Needs nvcc + NVRTC: run scripts/install-cuda-compiler.sh first (its env file is
        sourced as for emu-check).
  mpi-check      (entry point: scripts/mpi-check.sh)
        the distributed checks on the CPU (issue 17), for CI on a fresh Debian 12 with Rust,
        gcc and Python but no MPI:
          1. installs OpenMPI 4.1 and libclang (rsmpi's bindgen) from Debian if missing (as
             root);
          2. clippy with features mpi and nccl (-D warnings): the MPI and NCCL adapters compile;
          3. builds tests/mpi_dist.rs and examples/ddp.rs (features mpi, no CUDA);
          4. runs the test binary at world size 1 (no mpirun), then under mpirun -n 2 and -n 3
             (uneven shards), and the example under mpirun -n 2 and -n 3.
        Every run is bounded by 300 s (a hang fails the check instead of blocking CI); the
        first failing step ends the check with its status.
  gpu-bundle
        HERE (no GPU; `scripts/gpu-check.sh bundle`): builds the GPU test binaries with
        kernels for sm_90 (CUDA_COMPUTE_CAP, default 90) and REDREG_REQUIRE_NVCC=1, strips and
        xz-packs them into ./gpu-bundle/ (gitignored; must stay < 64 MiB) with this binary
        and COMMIT. REDREG_BUNDLE_TESTS: the test targets; REDREG_BUNDLE_BENCHES (default
        \"gpu\"): the `cargo bench` targets; REDREG_BUNDLE_MUTANTS=0: without the sanitizers'
        planted bugs (mutant-oob, mutant-barrier: gpu_kernels against tests/emu/mutate.py's
        broken kernels); REDREG_BUNDLE_CANDLE=1: also tests/gpu_candle.rs and the balance
        example with feature candle-cuda (slow: candle's own kernels; linked against
        scripts/cuda-link-stubs.sh).
  gpu-run
        THERE (GPU, $OUT set; `scripts/gpu-check.sh run` = `gpu-bundle/xtask gpu-run`):
        nvidia-smi, every bundled test binary with REDREG_REQUIRE_GPU=1 (default test threads),
        the kernel-loading path (default, then NVRTC forced), and compute-sanitizer (memcheck,
        racecheck, initcheck, synccheck) over gpu_kernels (every projection kernel), stats and
        optim (their CUDA tests), the sanitizers' self-check (each planted bug must be
        reported), every gpu-bundle/bench-* (table in $OUT/gpu-bench.md), the balance example
        when bundled, then the PyTorch anchor benches/anchors/redreg_torch.py on the same GPU;
        logs (one archive, logs.tar.gz) and summary.txt under $OUT. The summary keeps test
        failures, sanitizer findings and the kernel path apart; each tool on each binary has
        its own log and verdict (CLEAN, FINDINGS, or NO-VERDICT when killed by its time limit
        or without an ERROR SUMMARY), and a tool is CLEAN only when all its binaries are.
        The whole run fits in REDREG_GPU_BUDGET_S (default 540 s; a lent GPU allows 600 s per
        command): each step gets min(its timeout, what is left - 15 s), steps that would not
        fit say SKIP. Timeouts: REDREG_TEST_TIMEOUT (200), REDREG_SANITIZER_TIMEOUT (90),
        REDREG_BENCH_TIMEOUT (180), REDREG_EXAMPLE_TIMEOUT (120), REDREG_ANCHOR_TIMEOUT (90).
        Exit status: 0 when everything passed, else 1.
  unxz FILE.xz...
        decompresses each file beside itself (without .xz), executable, and removes the .xz;
        run on the GPU machine from the bundle (scripts/gpu-check.sh run), where there is no
        cargo and maybe no xz tool.
  nvidia-lib-dirs
        prints the lib folders of NVIDIA's Python wheels (nvidia/*/lib under site-packages or
        dist-packages of the python3 on PATH, $VIRTUAL_ENV, $CONDA_PREFIX, ~/.local, /usr,
        /usr/local, /opt/conda), one per line, for LD_LIBRARY_PATH.
  help  this text";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("artifacts") => artifacts::main(&args[1..]),
        Some("emu-check") => emu_check::main(&args[1..]),
        Some("check-kernels") => check_kernels::main(&args[1..]),
        Some("mpi-check") => mpi_check::main(&args[1..]),
        Some("gpu-bundle") => gpu_bundle::main(&args[1..]),
        Some("gpu-run") => gpu_run::main(&args[1..]),
        Some("unxz") => gpu_host::unxz(&args[1..]),
        Some("nvidia-lib-dirs") => gpu_host::nvidia_lib_dirs(&args[1..]),
        None | Some("help" | "--help" | "-h") => {
            // (a closed pipe, as in `| head`, is not an error worth a panic)
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("cargo xtask: unknown command {other:?}\n\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

/// A whole number of seconds from the environment (`${K:-default}`; unset, empty or not a
/// number: the default).
pub fn env_num(key: &str, default: i64) -> i64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
