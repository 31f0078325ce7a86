//! The selftest step: the f16 host conversions of tests/emu against the compiler's IEEE
//! binary16.

use crate::proc;
use std::path::Path;
use std::process::Command;

/// The f16 host conversions against the compiler's IEEE binary16, all 2^32 f32 values.
pub fn run(emu: &Path) -> bool {
    let abi = emu.join("abi");
    let exe = emu.join("f16_check");
    // kernels/common.cuh includes the generated ABI header (scripts/abi-header.sh).
    if proc::run(Command::new("bash").arg("scripts/abi-header.sh").arg(&abi)) != 0 {
        return false;
    }
    let mut gxx = Command::new("g++");
    gxx.args(["-std=c++17", "-O2"]);
    if cpu_has_flag("f16c") {
        gxx.arg("-mf16c");
    }
    gxx.args(["-I", "tests/emu", "-I"])
        .arg(&abi)
        .arg("-o")
        .arg(&exe)
        .arg("tests/emu/f16_check.cpp");
    proc::run(&mut gxx) == 0 && proc::run(&mut Command::new(&exe)) == 0
}

/// Whether /proc/cpuinfo names `flag` (as a whole word).
fn cpu_has_flag(flag: &str) -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w == flag)
}
