//! The UCI Multiple Features digits (`data/mfeat/`, see its README): the CSV loader, the
//! stratified seeded split and the standardisation. Candle-free and self-contained, so that
//! `tests/mfeat_data.rs` can include this file as it is.
//!
//! Each file `mfeat-<view>.csv` has one header row, then one row per image (the same 2,000
//! images in the same order in every view), the view's features and the digit (0–9) in the
//! last column. A missing or malformed file is an error naming the file and the line.

use std::fmt;
use std::path::{Path, PathBuf};

/// The six views and their feature counts (van Breukelen et al., 1998).
pub const VIEWS: [(&str, usize); 6] = [
    ("pix", 240),
    ("fou", 76),
    ("kar", 64),
    ("fac", 216),
    ("zer", 47),
    ("mor", 6),
];
pub const CLASSES: usize = 10;

/// Where the vendored files are: `data/mfeat/` in the repository (the path is fixed at
/// compile time; a binary moved to another machine takes `--data DIR`).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("mfeat")
}

/// The file of `view` in `dir`.
pub fn view_path(dir: &Path, view: &str) -> PathBuf {
    dir.join(format!("mfeat-{view}.csv"))
}

/// What went wrong, with the file and (where there is one) the 1-based line.
#[derive(Debug)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub what: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} line {l}: {}", self.file.display(), self.what),
            None => write!(f, "{}: {}", self.file.display(), self.what),
        }
    }
}

impl std::error::Error for LoadError {}

/// One view: `rows × dim` features, row-major, as parsed (f64: decimal text to the nearest
/// double, so checksums can be recomputed by any other reader), and the labels.
#[derive(Clone, Debug)]
pub struct View {
    pub name: String,
    pub dim: usize,
    pub x: Vec<f64>,
    pub y: Vec<u32>,
    /// The file's line of every row (for errors found after parsing).
    pub line: Vec<u64>,
}

impl View {
    pub fn rows(&self) -> usize {
        self.y.len()
    }
}

/// The feature count of a known view name.
pub fn view_dim(view: &str) -> Option<usize> {
    VIEWS.iter().find(|(n, _)| *n == view).map(|&(_, d)| d)
}

/// Reads `mfeat-<view>.csv` from `dir` (the header and `dim + 1` fields per row checked,
/// labels in `0..CLASSES`, every value finite).
pub fn load_view(dir: &Path, view: &str) -> Result<View, LoadError> {
    let file = view_path(dir, view);
    let err = |line: Option<u64>, what: String| LoadError {
        file: file.clone(),
        line,
        what,
    };
    let dim = view_dim(view).ok_or_else(|| {
        err(
            None,
            format!(
                "unknown view {view:?} (views: {})",
                VIEWS.map(|v| v.0).join(", ")
            ),
        )
    })?;
    let bytes = std::fs::read(&file).map_err(|e| {
        err(
            None,
            format!(
                "cannot open ({e}); the data is vendored in the repository's data/mfeat/ \
                 (see its README): run from a checkout, or name the folder with --data DIR"
            ),
        )
    })?;
    let lines = Lines::new(&bytes);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&bytes[..]);
    let mut v = View {
        name: view.to_string(),
        dim,
        x: Vec::with_capacity(2000 * dim),
        y: Vec::with_capacity(2000),
        line: Vec::with_capacity(2000),
    };
    let mut rec = csv::StringRecord::new();
    let mut header = true;
    loop {
        let more = rdr.read_record(&mut rec).map_err(|e| {
            let line = e.position().map(|p| lines.at(p.byte()));
            err(line, format!("not valid CSV: {e}"))
        })?;
        if !more {
            break;
        }
        let line = rec.position().map(|p| lines.at(p.byte()));
        if rec.len() != dim + 1 {
            return Err(err(
                line,
                format!(
                    "{} fields, expected {} ({dim} features of view {view} and the label)",
                    rec.len(),
                    dim + 1
                ),
            ));
        }
        if header {
            // The header names the columns 0..dim-1 (and the label column); it carries no data.
            header = false;
            continue;
        }
        for (j, field) in rec.iter().take(dim).enumerate() {
            let x: f64 = field
                .trim()
                .parse()
                .map_err(|_| err(line, format!("field {}: {field:?} is not a number", j + 1)))?;
            if !x.is_finite() {
                return Err(err(
                    line,
                    format!("field {}: {field:?} is not finite", j + 1),
                ));
            }
            v.x.push(x);
        }
        let label = &rec[dim];
        match label.trim().parse::<u32>() {
            Ok(c) if (c as usize) < CLASSES => {
                v.y.push(c);
                v.line.push(line.unwrap_or(0));
            }
            _ => {
                return Err(err(
                    line,
                    format!(
                        "label (field {}) {label:?} is not a digit 0..{}",
                        dim + 1,
                        CLASSES - 1
                    ),
                ))
            }
        }
    }
    if header {
        return Err(err(None, "empty file (no header row)".into()));
    }
    if v.y.is_empty() {
        return Err(err(None, "no data rows after the header".into()));
    }
    Ok(v)
}

/// Line numbers from byte offsets. The csv reader's own `Position::line` lags by one after
/// every `\r\n` (it reports a record as starting at the `\n` that ends the line before) and
/// after blank lines; the vendored files end their lines with `\r\n`.
struct Lines<'a> {
    bytes: &'a [u8],
    /// Byte offsets of every `\n`.
    newlines: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let newlines = (0..bytes.len()).filter(|&i| bytes[i] == b'\n').collect();
        Self { bytes, newlines }
    }
    /// The 1-based line of the first character at or after `byte` that is not a line end.
    fn at(&self, byte: u64) -> u64 {
        let mut b = byte as usize;
        while b < self.bytes.len() && matches!(self.bytes[b], b'\r' | b'\n') {
            b += 1;
        }
        1 + self.newlines.partition_point(|&n| n < b) as u64
    }
}

/// Reads the views and checks that they describe the same images: the same number of rows
/// and the same label on every row (the first disagreement is named by file and line).
pub fn load_views(dir: &Path, views: &[&str]) -> Result<Vec<View>, LoadError> {
    let out: Vec<View> = views
        .iter()
        .map(|v| load_view(dir, v))
        .collect::<Result<_, _>>()?;
    if let Some(first) = out.first() {
        for v in &out[1..] {
            let file = view_path(dir, &v.name);
            if v.rows() != first.rows() {
                return Err(LoadError {
                    file,
                    line: None,
                    what: format!(
                        "{} data rows, but view {} has {}",
                        v.rows(),
                        first.name,
                        first.rows()
                    ),
                });
            }
            if let Some(i) = (0..v.rows()).find(|&i| v.y[i] != first.y[i]) {
                return Err(LoadError {
                    file,
                    line: Some(v.line[i]),
                    what: format!(
                        "label {} where view {} has {} (the views must list the same images in \
                         the same order)",
                        v.y[i], first.name, first.y[i]
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Stratified split: in every class, `test_frac` of its rows (rounded) go to the test set,
/// chosen by `permute(n)` (a permutation of `0..n`, drawn from the caller's seeded
/// generator). Returns (train, test) row indices, each in increasing row order.
pub fn stratified_split(
    y: &[u32],
    test_frac: f64,
    permute: &mut dyn FnMut(usize) -> Vec<usize>,
) -> (Vec<usize>, Vec<usize>) {
    let classes = y.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for c in 0..classes {
        let rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] as usize == c).collect();
        let n_test = (rows.len() as f64 * test_frac).round() as usize;
        let p = permute(rows.len());
        for (k, &pi) in p.iter().enumerate() {
            if k < n_test {
                test.push(rows[pi]);
            } else {
                train.push(rows[pi]);
            }
        }
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The rows `idx` of `v`, standardised with the mean and (population) standard deviation
/// of each feature over the rows `fit` (the training rows: nothing of the test set leaks
/// into the scaling). A feature constant over `fit` is only centred. Returns f32, row-major.
pub fn standardised(v: &View, fit: &[usize], idx: &[usize]) -> Vec<f32> {
    let d = v.dim;
    let n = fit.len().max(1) as f64;
    let mut mean = vec![0.0f64; d];
    for &i in fit {
        for (m, x) in mean.iter_mut().zip(&v.x[i * d..(i + 1) * d]) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; d];
    for &i in fit {
        for ((s, x), m) in var.iter_mut().zip(&v.x[i * d..(i + 1) * d]).zip(&mean) {
            *s += (x - m) * (x - m);
        }
    }
    let scale: Vec<f64> = var
        .iter()
        .map(|s| {
            let sd = (s / n).sqrt();
            if sd > 1e-12 {
                1.0 / sd
            } else {
                1.0
            }
        })
        .collect();
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        for j in 0..d {
            out.push(((v.x[i * d + j] - mean[j]) * scale[j]) as f32);
        }
    }
    out
}
