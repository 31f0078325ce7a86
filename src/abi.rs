//! The ABI shared by the Rust wrappers and the CUDA kernels: every constant and code both
//! sides must agree on, defined once, here.
//!
//! The kernels never define these values themselves: `build.rs` writes [`cuda_header`]'s
//! text (`#define RR_<NAME> <value>` for each row of [`TABLE`]) to
//! `$OUT_DIR/`[`HEADER_NAME`], which `kernels/*.cu` and `kernels/common.cuh` `#include`.
//! nvcc gets `$OUT_DIR` on its include path, the NVRTC path inlines the header like the
//! other headers (`redreg::cuda::inlined_source`), and the tools that compile the kernels
//! outside cargo (the emulated driver of `tests/emu`, `scripts/check-kernels.sh`) get it from
//! `scripts/abi-header.sh`, which runs this same [`cuda_header`] (no second generator). A
//! kernel file that defines one of these names itself fails the build (`build.rs` checks),
//! and the header refuses to compile after such a definition (`#error`).
//!
//! Available without the `cuda` feature (plain constants). This file must stay
//! dependency-free: `build.rs` and `scripts/abi-header.rs` include it with
//! `#[path = ...] mod abi;`, where neither `crate::` nor any dependency exists.

/// One row of [`TABLE`]: a constant as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiConst {
    /// The group it belongs to (a comment line in the header).
    pub section: &'static str,
    /// Its C name: `RR_` + the Rust name (`CHUNK` -> `RR_CHUNK`).
    pub c_name: &'static str,
    /// Its value (every type of this module fits in an `i64`).
    pub value: i64,
    /// Its documentation, one line per doc line.
    pub comment: &'static str,
}

/// Defines each constant (with its doc comment) and [`TABLE`], the same rows in the same
/// order, so a Rust constant and its table row cannot differ.
macro_rules! abi_table {
    ($( $section:literal {
        $( $(#[doc = $doc:literal])+ $name:ident: $ty:ty = $value:expr; )+
    } )+) => {
        $($(
            $(#[doc = $doc])+
            pub const $name: $ty = $value;
        )+)+

        /// Every constant of this module, in header order: the source of the generated
        /// `redreg_abi.cuh` ([`cuda_header`]).
        pub const TABLE: &[AbiConst] = &[$($(
            AbiConst {
                section: $section,
                c_name: concat!("RR_", stringify!($name)),
                value: $name as i64,
                comment: concat!($($doc, "\n"),+),
            },
        )+)+];
    };
}

abi_table! {
    "Work decomposition of the chunk kernels (kernels/common.cuh, kernels/project.cu)" {
        /// Elements per chunk task (one thread block). The chunk table depends only on the
        /// layout and CHUNK, so every reduction order is fixed: results are bitwise
        /// reproducible run to run.
        CHUNK: usize = 16384;
        /// Threads per block of the chunk kernels and of `stats_tasks`.
        THREADS: u32 = 256;
        /// Largest number of basis vectors per segment (one kernel per k in 0..=MAX_K; the
        /// k x k Gram accumulators live in registers).
        MAX_K: usize = 8;
        /// u64 words per entry of the chunk-task table: segment, first element, end element.
        TASK_WORDS: usize = 3;
    }
    "Tensor lists: the per-segment pointer table of project_partials / project_apply" {
        /// u64 words per segment of the pointer table: PTR_V, PTR_V0, PTR_B0 .. PTR_B0 + 7,
        /// PTR_BASE, PTR_OUT. Each word is the operand's address of the segment's element 0
        /// minus `offset(seg) * sizeof(element)` (wrapping), so that the kernels index it
        /// with the same absolute element offsets as a flat buffer.
        PTR_WORDS: usize = 12;
        /// Slot of v.
        PTR_V: usize = 0;
        /// Slot of v0 (0 when the call has none).
        PTR_V0: usize = 1;
        /// Slot of basis vector 0; vector i is at PTR_B0 + i (with B0_OUT: the destination).
        PTR_B0: usize = 2;
        /// Slot of base (0 unless the apply mode is BASE).
        PTR_BASE: usize = 10;
        /// Slot of out.
        PTR_OUT: usize = 11;
    }
    "Finish modes of project_partials / project_finish (bit flags; src/project/cuda.rs)" {
        /// Sum the chunk partials into seg_partials (else read seg_partials).
        FIN_REDUCE: i32 = 1;
        /// Rank-revealing solve of each segment -> coef (k per segment).
        FIN_SOLVE: i32 = 2;
        /// Orthonormalisation coefficients M1 -> coef (k*k per segment).
        FIN_ORTH1: i32 = 4;
        /// Orthonormalisation coefficients M2 -> coef2 (k*k per segment).
        FIN_ORTH2: i32 = 8;
        /// Cap each rank at min(segment length, k) (the partials are the segment's own; not
        /// for the split form's summed partials).
        FIN_CAP: i32 = 16;
    }
    "Apply modes of project_apply (src/project/cuda.rs)" {
        /// out = beta*(v - Pv).
        MODE_NONE: i32 = 0;
        /// out = alpha*base + beta*(v - Pv).
        MODE_BASE: i32 = 1;
        /// out = alpha*out + beta*(v - Pv) (in place).
        MODE_INPLACE: i32 = 2;
        /// The three modes above; the bits above them are flags.
        MODE_MASK: i32 = 3;
        /// Flag (with INPLACE): basis vector 0 is out's value before the write (the fused
        /// RedReg step: the gradient is basis and destination).
        MODE_B0_OUT: i32 = 4;
    }
    "The optimizer step: the per-tensor pointer table and the flags of kernels/optim.cu (src/optim/cuda.rs)" {
        /// u64 words per tensor of the optimizer's pointer table: OPT_PARAM, OPT_GRAD,
        /// OPT_S0, OPT_S1, OPT_THETA0, OPT_B1 .. OPT_B1 + 6, OPT_SKIP. Element operands are
        /// biased as PTR_WORDS' are (`address - offset(tensor) * sizeof(element)`); the f32
        /// state is one flat buffer over the layout, so its word is the buffer's address.
        OPT_WORDS: usize = 13;
        /// Slot of the parameter (read and written).
        OPT_PARAM: usize = 0;
        /// Slot of the gradient (read only; basis vector 0 of the correction).
        OPT_GRAD: usize = 1;
        /// Slot of the first f32 state (SGD's momentum buffer, AdamW's m; 0 if none).
        OPT_S0: usize = 2;
        /// Slot of the second f32 state (AdamW's v; 0 if none).
        OPT_S1: usize = 3;
        /// Slot of θ₀ (0 for a tensor without the correction).
        OPT_THETA0: usize = 4;
        /// Slot of the correction's basis vector 1 (the first extra one); vector j at
        /// OPT_B1 + j - 1.
        OPT_B1: usize = 5;
        /// Slot of the skip word: nonzero for a tensor without a gradient in this step
        /// (its blocks return at once: parameter and state neither read nor written; its
        /// OPT_GRAD is 0).
        OPT_SKIP: usize = 12;
        /// f64 per tensor of the optional per-tensor step table (a step whose tensors'
        /// step constants differ): AdamW's OPT_TS_STEP_SIZE and OPT_TS_INV_ROOT_BC2 of the
        /// tensor's own step count, SGD's OPT_TS_FIRST.
        OPT_TS_WORDS: usize = 2;
        /// Per-tensor step table, AdamW: lr/(1 - b1^t), t the tensor's step count.
        OPT_TS_STEP_SIZE: usize = 0;
        /// Per-tensor step table, AdamW: 1/sqrt(1 - b2^t).
        OPT_TS_INV_ROOT_BC2: usize = 1;
        /// Per-tensor step table, SGD: 1.0 at the tensor's first step (its momentum
        /// buffer starts as the gradient), else 0.0.
        OPT_TS_FIRST: usize = 0;
        /// Flag: SGD with momentum (a momentum buffer).
        OPT_MOMENTUM: i32 = 1;
        /// Flag: SGD's Nesterov momentum.
        OPT_NESTEROV: i32 = 2;
        /// Flag: the first step (t = 1: SGD's buffer starts as the gradient) of every
        /// tensor of a step without a per-tensor step table.
        OPT_FIRST: i32 = 4;
        /// Flag: SGD's weight decay term (λ ≠ 0).
        OPT_DECAY: i32 = 8;
    }
    "Statistic kinds (kernels/stats.cu, src/stats/cuda.rs)" {
        /// Mean of (x - y)^2.
        ST_SQDIFF: u64 = 0;
        /// Mean over rows of cos(a_r, b_r).
        ST_COS: u64 = 1;
        /// Mean over rows of the softmax probability of row r's label.
        ST_PROB: u64 = 2;
        /// Per segment: sum x, sum x^2, sum |x| (and the optional accumulator acc += x^2).
        ST_SUMS: u64 = 3;
        /// Per segment: sum x*y.
        ST_DOTS: u64 = 4;
    }
    "Statistics task modes (src/stats/cpu.rs Mode)" {
        /// start..end are element offsets (a = segment for segmented statistics).
        ST_MODE_ELEMS: u64 = 0;
        /// start..end are whole rows.
        ST_MODE_ROWS: u64 = 1;
        /// Row a, elements start..end (absolute offsets) of it.
        ST_MODE_PIECE: u64 = 2;
    }
    "Element type codes (src/dtype.rs DType)" {
        /// f32.
        DT_F32: u64 = 0;
        /// f16 (IEEE binary16).
        DT_F16: u64 = 1;
        /// bf16.
        DT_BF16: u64 = 2;
    }
    "Statistics tables (u64 words): tasks, descriptors, entry task ranges, partials" {
        /// Words per task: entry, mode, a, start, end.
        ST_TASK_WORDS: usize = 5;
        /// Task word: the statistic (entry) it belongs to.
        ST_TASK_ENTRY: usize = 0;
        /// Task word: its mode (ST_MODE_*).
        ST_TASK_MODE: usize = 1;
        /// Task word: a (segment or row, see the modes).
        ST_TASK_A: usize = 2;
        /// Task word: first element or row.
        ST_TASK_START: usize = 3;
        /// Task word: end element or row.
        ST_TASK_END: usize = 4;
        /// Words per statistic descriptor: kind, dtype, p0, p1, p2, n1, n2, out.
        ST_DESC_WORDS: usize = 8;
        /// Descriptor word: kind (ST_SQDIFF ...).
        ST_DESC_KIND: usize = 0;
        /// Descriptor word: element type (DT_*).
        ST_DESC_DTYPE: usize = 1;
        /// Descriptor word: first buffer (x, a or logits).
        ST_DESC_P0: usize = 2;
        /// Descriptor word: second buffer (y, b or the i64 labels; 0 if none).
        ST_DESC_P1: usize = 3;
        /// Descriptor word: the f32 accumulator of ST_SUMS (0 if none).
        ST_DESC_P2: usize = 4;
        /// Descriptor word: length, rows or segments.
        ST_DESC_N1: usize = 5;
        /// Descriptor word: row length (dim, classes; 0 if none).
        ST_DESC_N2: usize = 6;
        /// Descriptor word: offset of the statistic's first value in the results buffer.
        ST_DESC_OUT: usize = 7;
        /// Words per statistic in the entry-task table: first task, end task.
        ST_ENTRY_WORDS: usize = 2;
        /// Entry-task word: the statistic's first task.
        ST_ENTRY_FIRST: usize = 0;
        /// Entry-task word: its end task (one past the last).
        ST_ENTRY_END: usize = 1;
        /// f64 partials written per task.
        ST_PARTIALS: usize = 4;
    }
}

// Layout invariants (a violation does not compile).
const _: () = {
    assert!(CHUNK > 0 && THREADS > 0 && THREADS % 32 == 0);
    assert!(ST_TASK_ENTRY < ST_TASK_WORDS && ST_TASK_MODE < ST_TASK_WORDS);
    assert!(ST_TASK_A < ST_TASK_WORDS && ST_TASK_START < ST_TASK_WORDS);
    assert!(ST_TASK_END < ST_TASK_WORDS);
    assert!(PTR_B0 + MAX_K == PTR_BASE && PTR_OUT + 1 == PTR_WORDS && PTR_V0 + 1 == PTR_B0);
    assert!(OPT_B1 + MAX_K - 1 == OPT_SKIP && OPT_SKIP + 1 == OPT_WORDS);
    assert!(OPT_WORDS as u32 <= THREADS);
    assert!(OPT_TS_STEP_SIZE < OPT_TS_WORDS && OPT_TS_INV_ROOT_BC2 < OPT_TS_WORDS);
    assert!(OPT_TS_STEP_SIZE != OPT_TS_INV_ROOT_BC2 && OPT_TS_FIRST < OPT_TS_WORDS);
    assert!(ST_DESC_KIND < ST_DESC_WORDS && ST_DESC_DTYPE < ST_DESC_WORDS);
    assert!(ST_DESC_P0 < ST_DESC_WORDS && ST_DESC_P1 < ST_DESC_WORDS);
    assert!(ST_DESC_P2 < ST_DESC_WORDS && ST_DESC_N1 < ST_DESC_WORDS);
    assert!(ST_DESC_N2 < ST_DESC_WORDS && ST_DESC_OUT < ST_DESC_WORDS);
    assert!(ST_ENTRY_FIRST < ST_ENTRY_WORDS && ST_ENTRY_END < ST_ENTRY_WORDS);
    assert!(ST_PARTIALS as u32 <= THREADS); // stats_tasks zeroes them one per thread
};

/// Number of f64 values of one segment's partial sums for `k` basis vectors: the upper
/// triangle of the Gram matrix `G` (row-major, `k(k+1)/2` values) followed by the k values
/// of `Bᵀv`. The kernels' `RR_STRIDE(k)` is generated from it ([`cuda_header`]), value by
/// value for `k <= MAX_K`.
pub const fn partial_stride(k: usize) -> usize {
    k * (k + 1) / 2 + k
}

/// The header's names derived from the table rather than rows of it (`RR_STRIDE(k)` and
/// `RR_MAX_STRIDE`, from [`partial_stride`]); like the rows, no kernel may define them.
pub const DERIVED: &[&str] = &["RR_STRIDE", "RR_MAX_STRIDE"];

/// Every name the generated header defines: the table's and [`DERIVED`].
pub fn header_names() -> impl Iterator<Item = &'static str> {
    TABLE
        .iter()
        .map(|c| c.c_name)
        .chain(DERIVED.iter().copied())
}

/// File name of the generated header, as the kernels `#include` it.
pub const HEADER_NAME: &str = "redreg_abi.cuh";

/// The generated header, exactly as `build.rs` wrote it for this build (what nvcc compiled
/// and what the NVRTC path inlines).
#[cfg(redreg_abi_header)]
pub const CUDA_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/redreg_abi.cuh"));

/// The text of the generated C header [`HEADER_NAME`]: a do-not-edit banner, `#pragma once`,
/// an `#error` if any name of [`TABLE`] is already defined, then one documented
/// `#define RR_<NAME> <value>` per row.
pub fn cuda_header() -> String {
    let mut h = String::new();
    h.push_str(
        "// @generated from src/abi.rs (redreg::abi::TABLE, redreg::abi::cuda_header) by build.rs\n\
         // (scripts/abi-header.sh for tools outside cargo). DO NOT EDIT: change src/abi.rs.\n\
         //\n\
         // The constants and codes the CUDA kernels and the Rust wrappers must agree on. The\n\
         // kernels include this header and never define these names themselves.\n\
         #pragma once\n\n",
    );
    h.push_str("#if ");
    for (i, name) in header_names().enumerate() {
        if i > 0 {
            h.push_str(" || \\\n    ");
        }
        h.push_str(&format!("defined({name})"));
    }
    h.push_str(
        "\n#error \"an RR_ ABI constant is defined outside redreg_abi.cuh: remove that #define \
         (the values live in src/abi.rs)\"\n#endif\n",
    );
    let mut section = "";
    for c in TABLE {
        if c.section != section {
            section = c.section;
            h.push_str(&format!("\n// ---- {section}\n"));
        }
        for line in c.comment.lines() {
            let line = line.trim();
            if !line.is_empty() {
                h.push_str(&format!("// {line}\n"));
            }
        }
        let suffix = if i32::try_from(c.value).is_ok() {
            ""
        } else {
            "LL"
        };
        h.push_str(&format!("#define {} {}{suffix}\n", c.c_name, c.value));
    }
    // Derived from partial_stride, value by value (a constant expression for the kernels'
    // template parameters; -1 beyond MAX_K).
    h.push_str(
        "\n// ---- Values per segment of the partial sums for k basis vectors (partial_stride)\n\
         #define RR_STRIDE(k) (",
    );
    for k in 0..=MAX_K {
        h.push_str(&format!("(k) == {k} ? {} : ", partial_stride(k)));
    }
    h.push_str(&format!(
        "-1)\n#define RR_MAX_STRIDE {}\n",
        partial_stride(MAX_K)
    ));
    h
}
