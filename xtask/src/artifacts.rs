//! `cargo xtask artifacts`: the executables of a cargo build, from its JSON messages.

use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// One executable a cargo build made.
#[derive(Debug, PartialEq)]
pub struct Artifact {
    pub name: String,
    /// `test`, `bench` or `example` (a library's or binary's unit tests count as `test`).
    pub kind: &'static str,
    pub path: String,
}

/// The executables among cargo's `--message-format=json` lines. Other lines (build-script
/// output, rendered diagnostics, non-JSON text) are skipped, as cargo interleaves them.
pub fn parse(json_lines: &str) -> Vec<Artifact> {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let path = m["executable"].as_str()?.to_string();
            let kinds = m["target"]["kind"].as_array()?;
            let has = |k: &str| kinds.iter().any(|x| x == k);
            let kind = if has("bench") {
                "bench"
            } else if has("example") {
                "example"
            } else {
                "test"
            };
            let name = m["target"]["name"].as_str()?.to_string();
            Some(Artifact { name, kind, path })
        })
        .collect()
}

pub fn main(args: &[String]) -> i32 {
    let (mut log, mut rest) = (None, args);
    loop {
        match rest {
            [flag, file, tail @ ..] if flag == "--log" => {
                log = Some(file.clone());
                rest = tail;
            }
            [dd, tail @ ..] if dd == "--" => {
                rest = tail;
                break;
            }
            _ => {
                eprintln!("usage: cargo xtask artifacts [--log FILE] -- CARGO_ARGS...");
                return 2;
            }
        }
    }
    if rest.is_empty() {
        eprintln!("cargo xtask artifacts: no cargo arguments after --");
        return 2;
    }
    let found = match build(rest, log.as_deref().map(Path::new), |_| {}, |_| {}) {
        Ok(found) => found,
        Err(failure) => {
            eprintln!("cargo xtask artifacts: {}", failure.message);
            return failure.code;
        }
    };
    let mut stdout = std::io::stdout().lock();
    for a in found {
        if writeln!(stdout, "{} {} {}", a.name, a.kind, a.path).is_err() {
            return 1; // the reader went away
        }
    }
    0
}

/// Why [`build`] found no executable: `code` is the exit status to pass on (cargo's, 2 when
/// cargo did not start, 1 when it built nothing executable).
#[derive(Debug)]
pub struct BuildFailure {
    pub code: i32,
    pub message: String,
}

/// Runs `cargo CARGO_ARGS --message-format=json-render-diagnostics` and returns the
/// executables it announced. cargo's own output goes to `log` (default: our stderr);
/// `configure` adds to the command (environment, priority) before it starts, `started` sees
/// the running cargo (to end it on an early exit). Used by `cargo xtask artifacts` and,
/// in-process, by `cargo xtask emu-check`.
pub fn build(
    cargo_args: &[String],
    log: Option<&Path>,
    configure: impl FnOnce(&mut Command),
    started: impl FnOnce(&Child),
) -> Result<Vec<Artifact>, BuildFailure> {
    let fail = |code, message| Err(BuildFailure { code, message });
    // CARGO: the cargo that runs us (`cargo run` sets it); the lock on the build directory
    // is released before `cargo run` starts its binary, so this nested build does not wait.
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(cargo_args)
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(path) = log {
        match File::create(path) {
            Ok(f) => {
                cmd.stderr(f);
            }
            Err(e) => return fail(2, format!("{}: {e}", path.display())),
        }
    }
    configure(&mut cmd);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return fail(2, format!("cannot start cargo: {e}")),
    };
    started(&child);
    let out = match child.wait_with_output() {
        Ok(out) => out,
        Err(e) => return fail(2, format!("cargo's output: {e}")),
    };
    let command = cargo_args.join(" ");
    if !out.status.success() {
        let see = log.map(|l| format!("; see {}", l.display()));
        return fail(
            out.status.code().unwrap_or(1),
            format!(
                "`cargo {command}` failed ({}){}",
                out.status,
                see.unwrap_or_default()
            ),
        );
    }
    let found = parse(&String::from_utf8_lossy(&out.stdout));
    if found.is_empty() {
        return fail(1, format!("`cargo {command}` announced no executable"));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_executables_and_their_kinds() {
        let lines = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"redreg","kind":["lib"]},"executable":null}"#,
            "\n",
            "warning: not JSON\n",
            r#"{"reason":"build-script-executed","package_id":"x"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"stats","kind":["test"]},"profile":{"test":true},"executable":"/t/stats-1"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"gpu","kind":["bench"]},"executable":"/t/gpu-2"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"ddp","kind":["example"]},"executable":"/t/ddp"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"redreg","kind":["lib"]},"profile":{"test":true},"executable":"/t/redreg-3"}"#,
            "\n",
        );
        let got = parse(lines);
        let want = [
            ("stats", "test", "/t/stats-1"),
            ("gpu", "bench", "/t/gpu-2"),
            ("ddp", "example", "/t/ddp"),
            ("redreg", "test", "/t/redreg-3"),
        ];
        assert_eq!(got.len(), want.len());
        for (a, (n, k, p)) in got.iter().zip(want) {
            assert_eq!((a.name.as_str(), a.kind, a.path.as_str()), (n, k, p));
        }
    }
}
