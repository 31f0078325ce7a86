//! Build script: compiles `kernels/*.cu` to fatbins with nvcc when it can, and always
//! embeds the kernel sources (and headers) so the crate can compile them with NVRTC at
//! run time when no fatbin was built.
//!
//! Environment:
//! - `NVCC`: path of nvcc (else `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`,
//!   `/usr/local/cuda/bin/nvcc`, then `nvcc` on `PATH`).
//! - `CUDA_COMPUTE_CAP`: comma-separated SASS targets, e.g. `80,90` (default
//!   `75,80,86,89,90`); PTX of the lowest is added for newer GPUs.
//! - `REDREG_REQUIRE_NVCC=1`: a missing nvcc or a failed compile is a build error.
//! - `REDREG_NVCC_FLAGS`: extra nvcc flags (space separated).
//!
//! Output: `$OUT_DIR/redreg_abi.cuh`, the ABI header generated from `src/abi.rs` (always,
//! with the cfg `redreg_abi_header` that makes `redreg::abi::CUDA_HEADER` include it);
//! `$OUT_DIR/redreg_kernels.rs`, included by `src/cuda/mod.rs`; and the cfg
//! `redreg_prebuilt_kernels` when every module was compiled.
//!
//! Also, for every build: the cfg `redreg_avx512` when the target is x86-64 and the
//! compiler accepts the AVX-512 intrinsics of `src/dtype/avx512.rs` (stable since Rust
//! 1.89, above the MSRV 1.80), found by compiling a probe as `autocfg` does. The CPU
//! kernels then gain an AVX-512 level, chosen at run time on CPUs that have it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// The ABI table shared with the kernels (dependency-free on purpose, see its docs).
// (`CUDA_HEADER` is behind the cfg `redreg_abi_header`, which only the crate gets.)
#[path = "src/abi.rs"]
#[allow(dead_code, unexpected_cfgs)]
mod abi;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/abi.rs");
    println!("cargo:rustc-check-cfg=cfg(redreg_prebuilt_kernels)");
    println!("cargo:rustc-check-cfg=cfg(redreg_abi_header)");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // The one generator of the kernels' ABI header (also without `cuda`: the constants and
    // `redreg::abi::CUDA_HEADER` exist in every build).
    let abi_header = out.join(abi::HEADER_NAME);
    fs::write(&abi_header, abi::cuda_header()).expect("write the ABI header");
    println!("cargo:rustc-cfg=redreg_abi_header");
    println!("cargo:rustc-check-cfg=cfg(redreg_avx512)");
    if avx512_intrinsics(&out) {
        println!("cargo:rustc-cfg=redreg_avx512");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return; // feature `cuda` off: nothing CUDA-related at all
    }
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
        "REDREG_REQUIRE_NVCC",
        "REDREG_NVCC_FLAGS",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let require = env::var("REDREG_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let kdir = manifest.join("kernels");
    println!("cargo:rerun-if-changed={}", kdir.display());

    let mut sources = Vec::new();
    let mut headers = Vec::new();
    if let Ok(rd) = fs::read_dir(&kdir) {
        for e in rd.flatten() {
            let p = e.path();
            println!("cargo:rerun-if-changed={}", p.display());
            match p.extension().and_then(|x| x.to_str()) {
                Some("cu") => sources.push(p),
                Some("cuh") => headers.push(p),
                _ => {}
            }
        }
    }
    sources.sort();
    headers.sort();
    check_no_abi_defines(sources.iter().chain(&headers));

    let nvcc = find_nvcc();
    let mut fatbins: Vec<Option<PathBuf>> = vec![None; sources.len()];
    match &nvcc {
        None => {
            let msg = "nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, /usr/local/cuda, PATH): \
                       embedding the CUDA sources, which will be compiled with NVRTC at run time";
            if require {
                panic!("REDREG_REQUIRE_NVCC=1 but {msg}");
            }
            println!("cargo:warning={msg}");
        }
        Some(nvcc) => {
            let archs = compute_caps();
            for (i, src) in sources.iter().enumerate() {
                let stem = src.file_stem().unwrap().to_string_lossy().to_string();
                let dst = out.join(format!("{stem}.fatbin"));
                match compile(nvcc, src, &[&kdir, &out], &dst, &archs) {
                    Ok(()) => fatbins[i] = Some(dst),
                    Err(e) => {
                        if require {
                            panic!(
                                "REDREG_REQUIRE_NVCC=1 and nvcc failed on {}:\n{e}",
                                src.display()
                            );
                        }
                        println!(
                            "cargo:warning=nvcc failed on {} (falling back to NVRTC at run time): {}",
                            src.display(),
                            e.lines().next().unwrap_or("")
                        );
                    }
                }
            }
        }
    }
    let all_built = !sources.is_empty() && fatbins.iter().all(|f| f.is_some());
    if all_built {
        println!("cargo:rustc-cfg=redreg_prebuilt_kernels");
    }

    // Generated Rust: one entry per module, the header table for NVRTC inlining.
    let mut gen = String::new();
    gen.push_str("// @generated by build.rs\n");
    gen.push_str("/// Kernel modules: (name, prebuilt fatbin if nvcc ran, CUDA source).\n");
    gen.push_str("pub(crate) static MODULES: &[KernelModule] = &[\n");
    for (src, fb) in sources.iter().zip(&fatbins) {
        let name = src.file_stem().unwrap().to_string_lossy();
        let fatbin = match fb {
            Some(p) => format!("Some(include_bytes!({:?}))", p.display().to_string()),
            None => "None".to_string(),
        };
        gen.push_str(&format!(
            "    KernelModule {{ name: {name:?}, fatbin: {fatbin}, source: include_str!({:?}) }},\n",
            src.display().to_string()
        ));
    }
    gen.push_str("];\n");
    gen.push_str("/// Headers inlined into the sources before NVRTC: (file name, text).\n");
    gen.push_str("pub(crate) static HEADERS: &[(&str, &str)] = &[\n");
    gen.push_str(&format!(
        "    ({:?}, include_str!({:?})),\n",
        abi::HEADER_NAME,
        abi_header.display().to_string()
    ));
    for h in &headers {
        let name = h.file_name().unwrap().to_string_lossy();
        gen.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            h.display().to_string()
        ));
    }
    gen.push_str("];\n");
    fs::write(out.join("redreg_kernels.rs"), gen).expect("write redreg_kernels.rs");
}

/// Panics (a build error) when a kernel file `#define`s or `#undef`s a name of the ABI
/// table: those values come only from the generated header, so a second, possibly
/// different, definition must not compile.
/// Whether `$RUSTC` compiles AVX-512 intrinsics and target features for this target (a
/// probe library of the calls `src/dtype/avx512.rs` makes).
fn avx512_intrinsics(out: &Path) -> bool {
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return false;
    }
    let probe = out.join("avx512_probe.rs");
    let src = r#"
use std::arch::x86_64::*;
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
pub unsafe fn probe(x: __m512d, u: __m256i) -> (__m256, __m128i, u8, u8, __m512i) {
    let m = _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(x, x);
    let k = _mm256_cmpeq_epi32_mask(u, u);
    let t = _mm512_test_epi64_mask(_mm512_castpd_si512(x), _mm512_set1_epi64(1));
    let o = _mm512_mask_or_epi64(_mm512_setzero_si512(), t, _mm512_set1_epi64(1), _mm512_set1_epi64(2));
    (_mm512_cvtpd_ps(x), _mm256_cvtepi32_epi16(u), m, k, o)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512dq,avx2,f16c")]
pub unsafe fn probe_bf16(f: __m256) -> (u8, __m128i) {
    let b = _mm256_cvtneps_pbh(f);
    (_mm256_fpclass_ps_mask::<0xa1>(f), std::mem::transmute::<__m128bh, __m128i>(b))
}
"#;
    if fs::write(&probe, src).is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--crate-type=lib",
        "--edition=2021",
        "--emit=metadata",
        "--crate-name",
    ])
    .arg("redreg_avx512_probe")
    .arg("--out-dir")
    .arg(out)
    .arg(&probe);
    if let Ok(target) = env::var("TARGET") {
        cmd.args(["--target", &target]);
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn check_no_abi_defines<'a>(files: impl Iterator<Item = &'a PathBuf>) {
    let mut found = Vec::new();
    for f in files {
        let text = fs::read_to_string(f).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix('#') else {
                continue;
            };
            let rest = rest.trim_start();
            let Some(rest) = rest
                .strip_prefix("define")
                .or_else(|| rest.strip_prefix("undef"))
            else {
                continue;
            };
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if abi::header_names().any(|c| c == name) {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    if !found.is_empty() {
        panic!(
            "kernel files define ABI constants that only the generated {} may define \
             (their values live in src/abi.rs):\n{}",
            abi::HEADER_NAME,
            found.join("\n")
        );
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        println!(
            "cargo:warning=NVCC={} is not a file; searching elsewhere",
            p.display()
        );
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if p.is_file() {
        return Some(p);
    }
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|d| d.join("nvcc"))
            .find(|p| p.is_file())
    })
}

fn compute_caps() -> Vec<u32> {
    let raw = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75,80,86,89,90".into());
    let mut caps: Vec<u32> = raw
        .split([',', ' ', ';'])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .trim_start_matches("sm_")
                .replace('.', "")
                .parse()
                .unwrap_or_else(|_| {
                    panic!("CUDA_COMPUTE_CAP: cannot parse {s:?} (want e.g. 80,90)")
                })
        })
        .collect();
    caps.sort_unstable();
    caps.dedup();
    assert!(!caps.is_empty(), "CUDA_COMPUTE_CAP is empty");
    caps
}

fn compile(
    nvcc: &Path,
    src: &Path,
    inc: &[&Path],
    dst: &Path,
    archs: &[u32],
) -> Result<(), String> {
    let mut cmd = Command::new(nvcc);
    cmd.arg("--fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        .arg("--threads")
        .arg("0");
    for dir in inc {
        cmd.arg("-I").arg(dir);
    }
    for a in archs {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let lo = archs[0];
    cmd.arg(format!("-gencode=arch=compute_{lo},code=compute_{lo}"));
    if let Ok(extra) = env::var("REDREG_NVCC_FLAGS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.arg("-o").arg(dst).arg(src);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} exited with {}\n{}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
