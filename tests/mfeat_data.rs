//! The vendored UCI Multiple Features data (`data/mfeat/`) and the balance example's loader
//! (`examples/balance/mfeat.rs`, included as it is): shapes, class counts and a checksum of
//! every parsed value against an independent reader; a corrupt or missing file gives an
//! error that names the file and the line; the stratified split and the standardisation.

#[path = "../examples/balance/mfeat.rs"]
#[allow(dead_code)]
mod mfeat;

use mfeat::{load_view, load_views, standardised, stratified_split, View, CLASSES, VIEWS};
use std::path::{Path, PathBuf};

/// Per view: rows, features, FNV-1a 64 over every row's features (f64, little-endian bits)
/// followed by its label (u32 LE), and the bits of the f64 sum of all features in row-major
/// order. Computed by a separate reader — Python's `csv` module, `float()` (the correctly
/// rounded double, as Rust's `parse::<f64>`), `int()` — with the script in
/// `data/mfeat/README.md`, not by this loader.
const EXPECTED: [(&str, usize, usize, u64, u64); 6] = [
    ("pix", 2000, 240, 0x0001232253430fb5, 0x41362b2200000000),
    ("fou", 2000, 76, 0xf8c1f86bb5001371, 0x40d3993817b3fbff),
    ("kar", 2000, 64, 0x7251f056567e2391, 0x40ba8ada55046982),
    ("fac", 2000, 216, 0xe9216a38c4946c55, 0x41a063f290000000),
    ("zer", 2000, 47, 0x1ffa61797c962ebd, 0x415fc88c44cf66c7),
    ("mor", 2000, 6, 0x4bfc46d0cee6eda3, 0x41681828d4504808),
];

fn fnv(v: &View) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (i, &y) in v.y.iter().enumerate() {
        for x in &v.x[i * v.dim..(i + 1) * v.dim] {
            eat(&x.to_le_bytes());
        }
        eat(&y.to_le_bytes());
    }
    h
}

#[test]
fn vendored_views_parse_to_the_independent_checksums() {
    let names: Vec<&str> = VIEWS.iter().map(|v| v.0).collect();
    let views = load_views(&mfeat::default_dir(), &names).unwrap();
    assert_eq!(views.len(), 6);
    for (v, &(name, rows, dim, hash, sum_bits)) in views.iter().zip(&EXPECTED) {
        assert_eq!(v.name, name);
        assert_eq!(
            (v.rows(), v.dim, v.x.len()),
            (rows, dim, rows * dim),
            "{name}"
        );
        let mut counts = [0usize; CLASSES];
        v.y.iter().for_each(|&c| counts[c as usize] += 1);
        assert_eq!(counts, [200; CLASSES], "{name}: 200 images per digit");
        assert_eq!(fnv(v), hash, "{name}: checksum of the parsed values");
        let sum: f64 = v.x.iter().sum();
        assert_eq!(sum.to_bits(), sum_bits, "{name}: sum {sum}");
    }
    // The views describe the same images: load_views checked the labels row by row.
    assert!(views.iter().all(|v| v.y == views[0].y));
}

/// A scratch directory holding a copy of `views`, edited by `edit(view, text) -> text`.
fn scratch(tag: &str, views: &[&str], edit: impl Fn(&str, String) -> String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redreg-mfeat-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for v in views {
        let src = mfeat::view_path(&mfeat::default_dir(), v);
        let text = std::fs::read_to_string(src).unwrap();
        std::fs::write(mfeat::view_path(&dir, v), edit(v, text)).unwrap();
    }
    dir
}

/// `text` with line `n` (1-based) replaced by `f(line)`, its line end (`\r\n` in the vendored
/// files) kept.
fn edit_line(text: String, n: usize, f: impl Fn(&str) -> String) -> String {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| {
            if i + 1 != n {
                return l.to_string();
            }
            let body = l.trim_end_matches(['\r', '\n']);
            f(body) + &l[body.len()..]
        })
        .collect()
}

/// The error of loading `view` from `dir`, as displayed; the directory is removed.
fn load_err(dir: &Path, views: &[&str]) -> String {
    let e = load_views(dir, views).expect_err("a corrupt file must not load");
    std::fs::remove_dir_all(dir).ok();
    e.to_string()
}

fn assert_names(msg: &str, file: &Path, line: Option<usize>, what: &str) {
    assert!(
        msg.contains(&file.display().to_string()),
        "no file in: {msg}"
    );
    if let Some(l) = line {
        assert!(msg.contains(&format!("line {l}:")), "no line {l} in: {msg}");
    }
    assert!(msg.contains(what), "no {what:?} in: {msg}");
}

fn bad_number_on_line_17(text: String) -> String {
    edit_line(text, 17, |l| {
        let mut f: Vec<&str> = l.split(',').collect();
        f[2] = "1.2.3";
        f.join(",")
    })
}

#[test]
fn a_bad_number_names_the_file_line_and_field() {
    // As vendored (\r\n line ends: the csv crate's own line count is one short there).
    let raw = std::fs::read_to_string(mfeat::view_path(&mfeat::default_dir(), "mor")).unwrap();
    assert!(
        raw.starts_with("0,1,2,3,4,5,0\r\n"),
        "the vendored files end lines with \\r\\n"
    );
    let dir = scratch("num", &["mor"], |_, t| bad_number_on_line_17(t));
    let file = mfeat::view_path(&dir, "mor");
    let msg = load_err(&dir, &["mor"]);
    assert_names(&msg, &file, Some(17), "field 3: \"1.2.3\" is not a number");
    // The same with \n line ends, and with blank lines before it (lines 3 and 4 blank: the bad
    // row moves to line 19).
    let dir = scratch("num-lf", &["mor"], |_, t| {
        bad_number_on_line_17(t.replace("\r\n", "\n"))
    });
    assert_names(
        &load_err(&dir, &["mor"]),
        &file_in(&dir),
        Some(17),
        "field 3",
    );
    let dir = scratch("num-blank", &["mor"], |_, t| {
        edit_line(bad_number_on_line_17(t), 3, |l| format!("\r\n\r\n{l}"))
    });
    assert_names(
        &load_err(&dir, &["mor"]),
        &file_in(&dir),
        Some(19),
        "field 3",
    );
}

fn file_in(dir: &Path) -> PathBuf {
    mfeat::view_path(dir, "mor")
}

#[test]
fn a_short_row_names_the_file_and_line() {
    let dir = scratch("short", &["mor"], |_, t| {
        edit_line(t, 5, |l| l.rsplit_once(',').unwrap().0.to_string())
    });
    let file = mfeat::view_path(&dir, "mor");
    assert_names(
        &load_err(&dir, &["mor"]),
        &file,
        Some(5),
        "6 fields, expected 7",
    );
}

#[test]
fn a_bad_label_names_the_file_and_line() {
    let dir = scratch("label", &["mor"], |_, t| {
        edit_line(t, 9, |l| format!("{},12", l.rsplit_once(',').unwrap().0))
    });
    let file = mfeat::view_path(&dir, "mor");
    assert_names(
        &load_err(&dir, &["mor"]),
        &file,
        Some(9),
        "\"12\" is not a digit",
    );
}

#[test]
fn a_non_finite_value_names_the_file_and_line() {
    let dir = scratch("inf", &["mor"], |_, t| {
        edit_line(t, 3, |l| format!("inf{}", &l[l.find(',').unwrap()..]))
    });
    let file = mfeat::view_path(&dir, "mor");
    assert_names(&load_err(&dir, &["mor"]), &file, Some(3), "is not finite");
}

#[test]
fn views_that_disagree_on_a_label_name_the_file_and_line() {
    // Row 99 of zer says 2 where mor (the first view) says 0: line 100 of mfeat-zer.csv.
    let dir = scratch("agree", &["mor", "zer"], |v, t| match v {
        "zer" => edit_line(t, 100, |l| format!("{},2", l.rsplit_once(',').unwrap().0)),
        _ => t,
    });
    let file = mfeat::view_path(&dir, "zer");
    assert_names(
        &load_err(&dir, &["mor", "zer"]),
        &file,
        Some(100),
        "label 2 where view mor has 0",
    );
}

#[test]
fn a_missing_or_empty_file_is_named() {
    let dir = scratch("missing", &[], |_, t| t);
    let file = mfeat::view_path(&dir, "pix");
    let e = load_view(&dir, "pix").unwrap_err().to_string();
    assert_names(&e, &file, None, "cannot open");
    std::fs::write(&file, "").unwrap();
    let e = load_view(&dir, "pix").unwrap_err().to_string();
    assert_names(&e, &file, None, "empty file");
    std::fs::remove_dir_all(&dir).ok();
    let e = load_view(&mfeat::default_dir(), "png")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown view \"png\""), "{e}");
}

/// xorshift64* permutations, independent of the example's generator.
fn permuter(seed: u64) -> impl FnMut(usize) -> Vec<usize> {
    let mut s = seed | 1;
    move |n| {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
            p.swap(i, (r % (i as u64 + 1)) as usize);
        }
        p
    }
}

#[test]
fn the_split_is_stratified_disjoint_and_seeded() {
    let y: Vec<u32> = (0..2000).map(|i| (i / 200) as u32).collect();
    let (tr, te) = stratified_split(&y, 0.3, &mut permuter(7));
    assert_eq!((tr.len(), te.len()), (1400, 600));
    for c in 0..10u32 {
        assert_eq!(te.iter().filter(|&&i| y[i] == c).count(), 60, "class {c}");
    }
    let mut all: Vec<usize> = tr.iter().chain(&te).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..2000).collect::<Vec<_>>(),
        "a partition of the rows"
    );
    assert_eq!(
        stratified_split(&y, 0.3, &mut permuter(7)),
        (tr.clone(), te.clone())
    );
    assert_ne!(stratified_split(&y, 0.3, &mut permuter(8)).1, te);
}

#[test]
fn standardisation_uses_the_training_rows_only() {
    let v = load_view(&mfeat::default_dir(), "mor").unwrap();
    let (tr, te) = stratified_split(&v.y, 0.3, &mut permuter(3));
    let d = v.dim;
    let x = standardised(&v, &tr, &tr);
    for j in 0..d {
        let col: Vec<f64> = (0..tr.len()).map(|i| x[i * d + j] as f64).collect();
        let n = col.len() as f64;
        let m = col.iter().sum::<f64>() / n;
        let sd = (col.iter().map(|c| (c - m) * (c - m)).sum::<f64>() / n).sqrt();
        assert!(m.abs() < 1e-5, "feature {j}: mean {m}");
        assert!((sd - 1.0).abs() < 1e-5, "feature {j}: std {sd}");
    }
    // A test row is scaled with the training statistics, computed here directly.
    let (i, j) = (te[5], 3);
    let col: Vec<f64> = tr.iter().map(|&r| v.x[r * d + j]).collect();
    let n = col.len() as f64;
    let m = col.iter().sum::<f64>() / n;
    let sd = (col.iter().map(|c| (c - m) * (c - m)).sum::<f64>() / n).sqrt();
    let got = standardised(&v, &tr, &[i])[j] as f64;
    assert!((got - (v.x[i * d + j] - m) / sd).abs() < 1e-5, "{got}");
}
