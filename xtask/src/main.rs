//! `cargo xtask`: the parts of redreg's orchestration that are more than a few lines of
//! shell, in Rust (issue #22): reading cargo's JSON messages with serde, which
//! `scripts/emu-check.sh`, `scripts/gpu-check.sh` and `scripts/mpi-check.sh` need to find the
//! executables a build made (they had seven inline Python parsers for it), and what
//! `scripts/gpu-check.sh run` needs on the GPU machine, where the bundle carries this binary
//! (they were inline Python too).

mod artifacts;
mod gpu_host;

use std::io::Write;

const USAGE: &str = "cargo xtask COMMAND [ARGS]

  artifacts [--log FILE] -- CARGO_ARGS...
        runs `cargo CARGO_ARGS --message-format=json-render-diagnostics` and prints one line
        per executable the build made: NAME KIND PATH (KIND: test, bench or example; a
        library's unit tests count as test). cargo's own output goes to FILE (default: this
        process's stderr). Exit status: cargo's, or 1 when cargo succeeded but announced no
        executable.
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
