//! The ABI table (`src/abi.rs`) is the only source of the constants the kernels and the Rust
//! wrappers share: the generated header is what every kernel includes, no kernel defines a
//! table name itself, the NVRTC sources carry the Rust values, and the Rust constants the
//! wrappers use are the table's. CPU only (no GPU, no nvcc, no NVRTC).

use redreg::testing::abi::{self, AbiConst, TABLE};
use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

fn kernel_files() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut files: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("cu" | "cuh")))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(
        files.iter().filter(|(n, _)| n.ends_with(".cu")).count() >= 2,
        "kernels/ should hold the project and stats modules"
    );
    files
}

/// The name a preprocessor line `#<directive> NAME...` defines or undefines.
fn directive_name<'a>(line: &'a str, directive: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix(directive)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn includes_abi_header(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim() == format!("#include \"{}\"", abi::HEADER_NAME))
}

/// The `#define` line the generated header has for `c`.
fn define_line(c: &AbiConst) -> String {
    format!("#define {} {}", c.c_name, c.value)
}

fn strip_line_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn table_rows_are_the_rust_constants() {
    let mut names = HashSet::new();
    for c in TABLE {
        assert!(c.c_name.starts_with("RR_"), "{}", c.c_name);
        assert!(names.insert(c.c_name), "{} twice in the table", c.c_name);
        assert!(!c.comment.trim().is_empty(), "{} has no comment", c.c_name);
    }
    let row = |name: &str| {
        TABLE
            .iter()
            .find(|c| c.c_name == name)
            .unwrap_or_else(|| panic!("{name} is not in the table"))
            .value
    };
    // The constants the wrappers use, each against its row.
    let rust: &[(&str, i64)] = &[
        ("RR_CHUNK", abi::CHUNK as i64),
        ("RR_THREADS", abi::THREADS as i64),
        ("RR_MAX_K", abi::MAX_K as i64),
        ("RR_MAX_K", redreg::testing::solve::MAX_K as i64),
        ("RR_TASK_WORDS", abi::TASK_WORDS as i64),
        ("RR_FIN_REDUCE", abi::FIN_REDUCE as i64),
        ("RR_FIN_SOLVE", abi::FIN_SOLVE as i64),
        ("RR_FIN_ORTH1", abi::FIN_ORTH1 as i64),
        ("RR_FIN_ORTH2", abi::FIN_ORTH2 as i64),
        ("RR_FIN_CAP", abi::FIN_CAP as i64),
        ("RR_MODE_NONE", abi::MODE_NONE as i64),
        ("RR_MODE_BASE", abi::MODE_BASE as i64),
        ("RR_MODE_INPLACE", abi::MODE_INPLACE as i64),
        ("RR_ST_SQDIFF", abi::ST_SQDIFF as i64),
        ("RR_ST_COS", abi::ST_COS as i64),
        ("RR_ST_PROB", abi::ST_PROB as i64),
        ("RR_ST_SUMS", abi::ST_SUMS as i64),
        ("RR_ST_DOTS", abi::ST_DOTS as i64),
        ("RR_ST_MODE_ELEMS", abi::ST_MODE_ELEMS as i64),
        ("RR_ST_MODE_ROWS", abi::ST_MODE_ROWS as i64),
        ("RR_ST_MODE_PIECE", abi::ST_MODE_PIECE as i64),
        ("RR_DT_F32", abi::DT_F32 as i64),
        ("RR_DT_F16", abi::DT_F16 as i64),
        ("RR_DT_BF16", abi::DT_BF16 as i64),
        ("RR_ST_TASK_WORDS", abi::ST_TASK_WORDS as i64),
        ("RR_ST_DESC_WORDS", abi::ST_DESC_WORDS as i64),
        ("RR_ST_ENTRY_WORDS", abi::ST_ENTRY_WORDS as i64),
        ("RR_ST_PARTIALS", abi::ST_PARTIALS as i64),
        #[cfg(feature = "cuda")]
        ("RR_CHUNK", redreg::cuda::CHUNK as i64),
        #[cfg(feature = "cuda")]
        ("RR_THREADS", redreg::cuda::THREADS as i64),
    ];
    for (name, value) in rust {
        assert_eq!(row(name), *value, "{name}: table row vs Rust constant");
    }
    // The values the kernels were written for (a change here is an ABI change: the
    // kernels' code is rebuilt from the header, but review it).
    assert_eq!((abi::CHUNK, abi::THREADS, abi::MAX_K), (16384, 256, 8));
}

#[test]
fn generated_header_is_the_table() {
    // What build.rs wrote for this build is what the generator gives now.
    assert_eq!(abi::CUDA_HEADER, abi::cuda_header());
    let h = abi::CUDA_HEADER;
    assert!(h.starts_with("// @generated"), "banner");
    assert!(h.contains("DO NOT EDIT"), "banner");
    assert!(h.lines().any(|l| l.trim() == "#pragma once"));
    for c in TABLE {
        let line = define_line(c);
        assert_eq!(
            h.lines().filter(|l| l.trim() == line).count(),
            1,
            "header lacks (or repeats) {line:?}"
        );
    }
    let defines = h
        .lines()
        .filter(|l| directive_name(l, "define").is_some())
        .count();
    assert_eq!(defines, TABLE.len(), "the header defines only the table");
}

#[test]
fn kernels_include_the_header_and_define_no_table_name() {
    let table: HashSet<&str> = TABLE.iter().map(|c| c.c_name).collect();
    let files = kernel_files();
    let mut local_macros = HashSet::new();
    let mut errors = Vec::new();
    for (name, text) in &files {
        for (n, line) in text.lines().enumerate() {
            for d in ["define", "undef"] {
                if let Some(m) = directive_name(line, d) {
                    if table.contains(m) {
                        errors.push(format!(
                            "kernels/{name}:{}: #{d} {m}: table names come only from {}",
                            n + 1,
                            abi::HEADER_NAME
                        ));
                    } else if d == "define" {
                        local_macros.insert(m.to_string());
                    }
                }
            }
        }
    }
    for (name, text) in &files {
        let code = strip_line_comments(text);
        let uses: Vec<&str> = table
            .iter()
            .copied()
            .filter(|t| {
                code.match_indices(t).any(|(i, _)| {
                    let after = code[i + t.len()..].chars().next();
                    !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            })
            .collect();
        if (name.ends_with(".cu") || !uses.is_empty()) && !includes_abi_header(text) {
            errors.push(format!(
                "kernels/{name} does not #include \"{}\" (uses {uses:?})",
                abi::HEADER_NAME
            ));
        }
        // Every RR_ macro a kernel uses is the table's or a kernel-local formula: a stale
        // or misspelt name shows up here (NVRTC would only fail at run time).
        let mut rest = code.as_str();
        while let Some(i) = rest.find("RR_") {
            let boundary = i == 0 || {
                let c = rest.as_bytes()[i - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            };
            let end = rest[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(rest.len(), |e| i + e);
            let ident = &rest[i..end];
            if boundary
                && ident.len() > 3
                && !table.contains(ident)
                && !local_macros.contains(ident)
            {
                errors.push(format!(
                    "kernels/{name}: {ident} is neither in the ABI table nor a kernel macro"
                ));
            }
            rest = &rest[end..];
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The NVRTC path compiles exactly these texts: the header inlined, every table value the
/// Rust one, and nothing else defining a table name.
#[cfg(feature = "cuda")]
#[test]
fn nvrtc_sources_carry_the_rust_values() {
    let table: HashSet<&str> = TABLE.iter().map(|c| c.c_name).collect();
    let modules = redreg::cuda::module_names();
    assert!(modules.contains(&"project") && modules.contains(&"stats"));
    for m in modules {
        let src = redreg::cuda::inlined_source(m).unwrap();
        assert!(
            !src.lines().any(|l| l.trim_start().starts_with("#include")),
            "module {m}: an #include is left for NVRTC"
        );
        assert_eq!(
            src.matches(abi::CUDA_HEADER).count(),
            1,
            "module {m}: the generated header inlined once"
        );
        for c in TABLE {
            let line = define_line(c);
            assert_eq!(
                src.lines().filter(|l| l.trim() == line).count(),
                1,
                "module {m}: {line:?} once"
            );
        }
        let defs = src
            .lines()
            .filter_map(|l| directive_name(l, "define").or_else(|| directive_name(l, "undef")))
            .filter(|n| table.contains(n))
            .count();
        assert_eq!(
            defs,
            TABLE.len(),
            "module {m}: table names defined elsewhere"
        );
    }
}
