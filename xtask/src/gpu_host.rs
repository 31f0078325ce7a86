//! What `scripts/gpu-check.sh run` needs on the GPU machine, where there is no cargo: the
//! bundle carries this binary uncompressed (`gpu-check.sh bundle`).
//!
//! - `unxz FILE.xz...`: each file decompressed beside itself without the `.xz`, made
//!   executable, the `.xz` removed (the bundle's test binaries are xz-packed to fit the
//!   64 MiB carry; a lent machine need not have the `xz` tool).
//! - `nvidia-lib-dirs`: the `lib` folders of NVIDIA's Python wheels (`nvidia/*/lib` in a
//!   `site-packages` or `dist-packages` folder: NCCL, NVRTC, cuBLAS as PyTorch installs
//!   them), one per line, for `LD_LIBRARY_PATH`. Searched where a `python3` on `PATH` keeps
//!   its packages (`BIN/../lib/python3*/`), in `$VIRTUAL_ENV` and `$CONDA_PREFIX`, in the
//!   user's `~/.local`, and in `/usr`, `/usr/local` and `/opt/conda`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

pub fn unxz(args: &[String]) -> i32 {
    let mut status = 0;
    for a in args {
        if let Err(e) = unxz_one(Path::new(a)) {
            eprintln!("xtask unxz: {a}: {e}");
            status = 1;
        }
    }
    status
}

fn unxz_one(xz: &Path) -> Result<(), String> {
    let out = xz
        .to_str()
        .and_then(|s| s.strip_suffix(".xz"))
        .ok_or("the name does not end in .xz")?;
    let mut input = BufReader::new(fs::File::open(xz).map_err(|e| e.to_string())?);
    let mut output = BufWriter::new(fs::File::create(out).map_err(|e| e.to_string())?);
    lzma_rs::xz_decompress(&mut input, &mut output).map_err(|e| format!("{e:?}"))?;
    output.flush().map_err(|e| e.to_string())?;
    set_executable(Path::new(out))?;
    fs::remove_file(xz).map_err(|e| e.to_string())
}

#[cfg(unix)]
fn set_executable(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<(), String> {
    Ok(())
}

pub fn nvidia_lib_dirs(_args: &[String]) -> i32 {
    let mut out = std::io::stdout().lock();
    for d in wheel_lib_dirs() {
        let _ = writeln!(out, "{}", d.display());
    }
    0
}

/// The lib folders `nvidia-lib-dirs` prints (also read in-process by `gpu-run`).
pub fn wheel_lib_dirs() -> BTreeSet<PathBuf> {
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for bin in std::env::split_paths(&path) {
            if bin.join("python3").exists() {
                if let Some(prefix) = bin.parent() {
                    prefixes.push(prefix.to_path_buf());
                }
            }
        }
    }
    prefixes.extend(env("VIRTUAL_ENV"));
    prefixes.extend(env("CONDA_PREFIX"));
    prefixes.extend(env("HOME").map(|h| h.join(".local")));
    prefixes.extend(["/usr", "/usr/local", "/opt/conda"].map(PathBuf::from));
    lib_dirs(&prefixes)
}

/// `PREFIX/lib/python3*/{site,dist}-packages/nvidia/*/lib` and `PREFIX/lib/python3/dist-packages/…`
/// (Debian's), for every prefix; sorted, without duplicates.
fn lib_dirs(prefixes: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    for prefix in prefixes {
        for py in children(&prefix.join("lib"), |n| n.starts_with("python3")) {
            for pk in ["site-packages", "dist-packages"] {
                for wheel in children(&py.join(pk).join("nvidia"), |_| true) {
                    let lib = wheel.join("lib");
                    if lib.is_dir() {
                        found.insert(fs::canonicalize(&lib).unwrap_or(lib));
                    }
                }
            }
        }
    }
    found
}

/// The folders in `dir` whose name passes `keep` (none when `dir` cannot be read).
fn children(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(&keep) && e.path().is_dir())
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_the_wheels_lib_folders_and_nothing_else() {
        let root = scratch("libs");
        let mk = |p: &str| fs::create_dir_all(root.join(p)).unwrap();
        mk("venv/lib/python3.11/site-packages/nvidia/nccl/lib");
        mk("venv/lib/python3.11/site-packages/nvidia/cu13/lib");
        mk("venv/lib/python3.11/site-packages/nvidia/cudnn/include"); // no lib: not listed
        mk("venv/lib/python3.11/site-packages/torch/lib"); // not NVIDIA's
        mk("usr/lib/python3/dist-packages/nvidia/nvrtc/lib"); // Debian's layout
        mk("usr/lib/perl5/nvidia/x/lib"); // not Python's
        let got = lib_dirs(&[root.join("venv"), root.join("usr"), root.join("missing")]);
        let want: BTreeSet<PathBuf> = [
            "usr/lib/python3/dist-packages/nvidia/nvrtc/lib",
            "venv/lib/python3.11/site-packages/nvidia/cu13/lib",
            "venv/lib/python3.11/site-packages/nvidia/nccl/lib",
        ]
        .iter()
        .map(|p| fs::canonicalize(root.join(p)).unwrap())
        .collect();
        assert_eq!(got, want);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unxz_restores_the_file_and_rejects_bad_input() {
        let d = scratch("unxz");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut packed = Vec::new();
        lzma_rs::xz_compress(&mut &data[..], &mut packed).unwrap();
        fs::write(d.join("bin.xz"), &packed).unwrap();
        fs::write(d.join("junk.xz"), b"not xz at all").unwrap();
        fs::write(d.join("plain"), b"x").unwrap();
        let arg = |n: &str| d.join(n).to_str().unwrap().to_string();
        assert_eq!(unxz(&[arg("bin.xz")]), 0);
        assert_eq!(fs::read(d.join("bin")).unwrap(), data);
        assert!(!d.join("bin.xz").exists(), "the .xz is removed");
        assert_eq!(unxz(&[arg("junk.xz")]), 1, "corrupt input is an error");
        assert!(
            d.join("junk.xz").exists(),
            "a failed unpack keeps its input"
        );
        assert_eq!(unxz(&[arg("plain")]), 1, "a name without .xz is an error");
        fs::remove_dir_all(&d).unwrap();
    }
}
