//! `cargo xtask`: the parts of redreg's orchestration that are more than a few lines of
//! shell, in Rust (issue #22): reading cargo's JSON messages with serde, which
//! `scripts/emu-check.sh` and `scripts/mpi-check.sh` need to find the executables a build
//! made (they had seven inline Python parsers for it), and the GPU flow of
//! `scripts/gpu-check.sh` (now a thin entry point): the bundle built here (`gpu-bundle`) and
//! the run on the GPU machine (`gpu-run`), where the bundle carries this binary, with its
//! budget, verdicts and summary in code.

mod artifacts;
mod budget;
mod gpu_bundle;
mod gpu_host;
mod gpu_run;
mod proc;
mod sanitizer;
mod summary;

use std::io::Write;

const USAGE: &str = "cargo xtask COMMAND [ARGS]

  artifacts [--log FILE] -- CARGO_ARGS...
        runs `cargo CARGO_ARGS --message-format=json-render-diagnostics` and prints one line
        per executable the build made: NAME KIND PATH (KIND: test, bench or example; a
        library's unit tests count as test). cargo's own output goes to FILE (default: this
        process's stderr). Exit status: cargo's, or 1 when cargo succeeded but announced no
        executable.
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
        failures, sanitizer findings (each tool's ERROR SUMMARY) and the kernel path apart.
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
