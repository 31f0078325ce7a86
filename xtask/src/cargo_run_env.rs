//! `cargo run` (the `cargo xtask` alias) puts its own folders in front of LD_LIBRARY_PATH:
//! the target's `debug` and `debug/deps` and the toolchain's libraries. The scripts that
//! the xtask replaces ran the test binaries with the caller's LD_LIBRARY_PATH; this takes
//! cargo's additions off again so that they still do.

use std::path::{Path, PathBuf};

/// Removes from the front of LD_LIBRARY_PATH the folders under our target folder or under
/// the toolchain of the `cargo` that runs us. Does nothing outside `cargo run`. Call
/// before any thread.
pub fn undo() {
    let Some(cargo) = std::env::var_os("CARGO").map(PathBuf::from) else {
        return;
    };
    let Ok(ld) = std::env::var("LD_LIBRARY_PATH") else {
        return;
    };
    // our binary: TARGET/debug/xtask; cargo: TOOLCHAIN/bin/cargo
    let exe = std::env::current_exe().ok();
    let target = exe.as_deref().and_then(Path::parent).and_then(Path::parent);
    let toolchain = cargo.parent().and_then(Path::parent);
    let ours: Vec<&Path> = target.into_iter().chain(toolchain).collect();
    match strip_leading(&ld, &ours) {
        rest if rest.is_empty() => std::env::remove_var("LD_LIBRARY_PATH"),
        rest => std::env::set_var("LD_LIBRARY_PATH", rest),
    }
}

/// `path_list` without its leading entries that lie under any of `prefixes`.
pub fn strip_leading(path_list: &str, prefixes: &[&Path]) -> String {
    let entries: Vec<&str> = path_list.split(':').collect();
    let first_kept = entries
        .iter()
        .position(|e| !prefixes.iter().any(|p| Path::new(e).starts_with(p)))
        .unwrap_or(entries.len());
    entries[first_kept..].join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cargos_leading_folders_go() {
        // As recorded in a `cargo xtask` process, after /work/env.sh.
        let ld = "/w/target/debug:/w/target/debug/deps:\
                  /r/toolchains/stable/lib/rustlib/x86_64-unknown-linux-gnu/lib:/r/toolchains/stable/lib:\
                  /venv/nvrtc-link:/venv/cu13/lib:/w/target/debug";
        let ours = [Path::new("/w/target"), Path::new("/r/toolchains/stable")];
        assert_eq!(
            strip_leading(ld, &ours),
            "/venv/nvrtc-link:/venv/cu13/lib:/w/target/debug"
        );
        assert_eq!(strip_leading("/w/target/debug", &ours), "");
        assert_eq!(strip_leading("/w/targets:/a", &ours), "/w/targets:/a");
    }
}
