//! The CUDA compiler venv's environment (scripts/install-cuda-compiler.sh writes
//! `redreg-cuda-env.sh`: NVCC, NVRTC's library path on LD_LIBRARY_PATH). It is a shell
//! file, so bash reads it and we take over what it changed, as `. FILE` did in the scripts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// `$REDREG_CUDA_VENV/redreg-cuda-env.sh` (default venv: ~/.cache/redreg-cuda-venv).
pub fn env_file() -> PathBuf {
    let venv = std::env::var_os("REDREG_CUDA_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/redreg-cuda-venv")
        });
    venv.join("redreg-cuda-env.sh")
}

/// Sources the env file, if there is one, into this process's environment; an NVCC already
/// set wins over the file's (CI's choice of nvcc, gpu-check's). Call before any thread.
pub fn import() {
    let file = env_file();
    if !file.is_file() {
        return;
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$1\" && env -0")
        .arg("bash")
        .arg(&file)
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!("{}: failed ({})", file.display(), out.status);
            return;
        }
        Err(e) => {
            eprintln!("{}: cannot run bash: {e}", file.display());
            return;
        }
    };
    let now: HashMap<String, String> = std::env::vars().collect();
    for (k, v) in changes(&now, &String::from_utf8_lossy(&out.stdout)) {
        std::env::set_var(k, v);
    }
}

/// The variables of `env -0`'s output that differ from `now`, less bash's own bookkeeping
/// and less NVCC when `now` has a nonempty one.
pub fn changes(now: &HashMap<String, String>, env0: &str) -> Vec<(String, String)> {
    const BASH_OWN: [&str; 4] = ["_", "SHLVL", "PWD", "OLDPWD"];
    env0.split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, v)| {
            !k.is_empty() && !BASH_OWN.contains(k) && now.get(*k).map(String::as_str) != Some(*v)
        })
        .filter(|(k, _)| !(*k == "NVCC" && now.get("NVCC").is_some_and(|n| !n.is_empty())))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_the_file_changed_but_a_set_nvcc() {
        let now: HashMap<String, String> = [
            ("HOME", "/root"),
            ("LD_LIBRARY_PATH", "/a"),
            ("NVCC", "/ci/nvcc"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let env0 = "HOME=/root\0LD_LIBRARY_PATH=/venv/lib:/a\0NVCC=/venv/bin/nvcc\0SHLVL=1\0_=/usr/bin/env\0\
                    REDREG_NVRTC_LIB_DIR=/venv/lib\0";
        let got = changes(&now, env0);
        let want = [
            ("LD_LIBRARY_PATH", "/venv/lib:/a"),
            ("REDREG_NVRTC_LIB_DIR", "/venv/lib"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
        let mut unset = now.clone();
        unset.insert("NVCC".into(), String::new());
        assert!(changes(&unset, env0).contains(&("NVCC".into(), "/venv/bin/nvcc".into())));
    }
}
