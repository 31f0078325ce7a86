//! `cargo xtask artifacts`: the executables of a cargo build, from its JSON messages.

use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};

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
    let found = match build(rest, &[], log.as_deref()) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let mut stdout = std::io::stdout().lock();
    for a in found {
        if writeln!(stdout, "{} {} {}", a.name, a.kind, a.path).is_err() {
            return 1; // the reader went away
        }
    }
    0
}

/// Runs `cargo CARGO_ARGS --message-format=json-render-diagnostics` (with `envs` added to its
/// environment, cargo's own output to `log` or to this process's stderr) and returns the
/// executables it made; Err: the exit status to give (cargo's, 1 when it announced none, 2
/// when it could not start).
pub fn build(
    rest: &[String],
    envs: &[(&str, &str)],
    log: Option<&str>,
) -> Result<Vec<Artifact>, i32> {
    // CARGO: the cargo that runs us (`cargo run` sets it); the lock on the build directory
    // is released before `cargo run` starts its binary, so this nested build does not wait.
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(rest)
        .envs(envs.iter().copied())
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit()); // (`output()` would capture it)
    if let Some(path) = log {
        match File::create(path) {
            Ok(f) => {
                cmd.stderr(f);
            }
            Err(e) => {
                eprintln!("cargo xtask artifacts: {path}: {e}");
                return Err(2);
            }
        }
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("cargo xtask artifacts: cannot start cargo: {e}");
            return Err(2);
        }
    };
    if !out.status.success() {
        eprintln!(
            "cargo xtask artifacts: `cargo {}` failed ({}){}",
            rest.join(" "),
            out.status,
            log.map(|l| format!("; see {l}")).unwrap_or_default()
        );
        return Err(out.status.code().unwrap_or(1));
    }
    let found = parse(&String::from_utf8_lossy(&out.stdout));
    if found.is_empty() {
        eprintln!(
            "cargo xtask artifacts: `cargo {}` announced no executable",
            rest.join(" ")
        );
        return Err(1);
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
