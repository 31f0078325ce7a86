//! `cargo xtask`: the parts of redreg's orchestration that are more than a few lines of
//! shell, in Rust (issue #22). Today: reading cargo's JSON messages with serde, which
//! `scripts/emu-check.sh`, `scripts/gpu-check.sh` and `scripts/mpi-check.sh` need to find the
//! executables a build made (they had seven inline Python parsers for it).

mod artifacts;

use std::io::Write;

const USAGE: &str = "cargo xtask COMMAND [ARGS]

  artifacts [--log FILE] -- CARGO_ARGS...
        runs `cargo CARGO_ARGS --message-format=json-render-diagnostics` and prints one line
        per executable the build made: NAME KIND PATH (KIND: test, bench or example; a
        library's unit tests count as test). cargo's own output goes to FILE (default: this
        process's stderr). Exit status: cargo's, or 1 when cargo succeeded but announced no
        executable.
  help  this text";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("artifacts") => artifacts::main(&args[1..]),
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
