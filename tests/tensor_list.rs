//! Tensor lists (`Backend::project_list`: one buffer per segment) on every backend — the
//! f64 `Reference`, the `CpuBackend` and, with feature `cuda`, the `CudaBackend` (the flat
//! kernels reading a per-segment pointer table; a real GPU or the emulated driver, SKIP
//! convention of tests/common/gpu.rs) — one body each, run by `backend_tests!`:
//! - against the same backend's flat `project_out` on the tensors packed into one buffer:
//!   bit for bit (the definition of the list operation), ranks equal — every tensor its own
//!   allocation at its own misalignment (on CUDA some tensors take the 16-byte vector path
//!   and others the scalar one), empty tensors and tensors of several chunks included; the
//!   memory around every tensor untouched;
//! - against the f64 oracle within rounding;
//! - bad lists (a missing or extra tensor, a tensor of the wrong length) are `Err` with
//!   nothing written; flat results do not depend on the buffers' alignment.
//!
//! The CUDA-only checks (overlap found through raw pointers) are in `mod cuda_only`; the
//! list past 2^31 elements runs on the CPU (4 GiB of host memory).

mod common;

use common::backends::{quick, TestBackend};
use common::Mode;
use redreg::testing::{assert_close, elements};
use redreg::{
    bf16, f16, Backend, Beta, CpuBackend, Element, Error, Output, ProjectOptions, Projection,
    Reference, Segments, TensorList,
};

const SENTINEL: f64 = 7.0;

/// Empty tensors, tiny and odd ones, ones of many 64-element CPU test chunks, one of three
/// CUDA chunks (RR_CHUNK = 16384), and thousands-long ones whose misalignment in the list
/// differs from the packed buffer's (inexact sums: only the same summation order gives the
/// same bits).
fn layout() -> Segments {
    Segments::from_lengths(&[
        5,
        0,
        1,
        64,
        3,
        0,
        257,
        130,
        7,
        1000,
        2,
        16384 * 2 + 5,
        33,
        3001,
        4099,
    ])
    .unwrap()
}

/// One allocation per tensor: `pad = s % 5` sentinel elements, the segment, one sentinel.
struct Tensors<B: TestBackend, T: Element> {
    bufs: Vec<B::Buf<T>>,
    pads: Vec<usize>,
    lens: Vec<usize>,
}

impl<B: TestBackend, T: Element> Tensors<B, T> {
    fn new(b: &B, segs: &Segments, flat: &[T]) -> Self {
        let (mut bufs, mut pads, mut lens) = (Vec::new(), Vec::new(), Vec::new());
        for (s, r) in segs.iter().enumerate() {
            let pad = s % 5;
            let mut host = vec![T::from_f64(SENTINEL); pad + r.len() + 1];
            host[pad..pad + r.len()].copy_from_slice(&flat[r.clone()]);
            bufs.push(b.upload(&host));
            pads.push(pad);
            lens.push(r.len());
        }
        Self { bufs, pads, lens }
    }

    fn list(&self) -> TensorList<redreg::Src<'_, B, T>> {
        self.bufs
            .iter()
            .zip(self.pads.iter().zip(&self.lens))
            .map(|(buf, (&p, &n))| B::view(buf, p..p + n))
            .collect()
    }

    fn list_mut(&mut self) -> TensorList<redreg::Dst<'_, B, T>> {
        self.bufs
            .iter_mut()
            .zip(self.pads.iter().zip(&self.lens))
            .map(|(buf, (&p, &n))| B::view_mut(buf, p..p + n))
            .collect()
    }

    /// The tensors packed, after checking the sentinels around each.
    fn packed(&self, b: &B) -> Vec<T> {
        let mut flat = Vec::new();
        for (buf, (&p, &n)) in self.bufs.iter().zip(self.pads.iter().zip(&self.lens)) {
            let host = b.download(buf);
            for x in host[..p].iter().chain(&host[p + n..]) {
                assert_eq!(x.to_f64(), SENTINEL, "a list call wrote outside its tensor");
            }
            flat.extend_from_slice(&host[p..p + n]);
        }
        flat
    }
}

fn bits<T: Element>(x: &[T]) -> Vec<u64> {
    x.iter().map(|e| e.to_f64().to_bits()).collect()
}

/// Runs `mode` with k basis vectors (k includes the destination for `Drift`) flat and as
/// lists on `b`, and flat on the oracle: list = flat bit for bit, ranks equal, the oracle
/// within rounding.
fn check<B: TestBackend, T: Element>(b: &B, segs: &Segments, k: usize, mode: Mode) {
    let n = segs.total();
    let seed = 300 + k as u64 * 10 + mode as u64;
    let v: Vec<T> = elements(n, seed, 1.0);
    let v0: Vec<T> = elements(n, seed + 1, 1.0);
    let base: Vec<T> = elements(n, seed + 2, 1.0);
    let out0: Vec<T> = elements(n, seed + 3, 1.0);
    let drift = matches!(mode, Mode::Drift);
    let basis: Vec<Vec<T>> = (0..k - usize::from(drift))
        .map(|i| elements(n, seed + 10 + i as u64, 1.0))
        .collect();
    let betas: Vec<f64> = (0..segs.len()).map(|s| 0.5 + s as f64 * 0.25).collect();
    let beta = match mode {
        Mode::Base => Beta::PerSegment(&betas),
        _ => Beta::Scalar(0.75),
    };
    let (alpha, opts) = (1.25, ProjectOptions::default());
    let what = format!("{} k={k} {mode:?}", T::DTYPE.name());

    // Flat, in the backend's memory.
    let (dv, dv0, dbase) = (b.upload(&v), b.upload(&v0), b.upload(&base));
    let dbasis: Vec<B::Buf<T>> = basis.iter().map(|x| b.upload(x)).collect();
    let mut dout = b.upload(&out0);
    let flat_ranks = {
        let bv: Vec<_> = dbasis.iter().map(|x| B::view(x, 0..n)).collect();
        let out = B::view_mut(&mut dout, 0..n);
        let (v, v0, base) = (
            B::view(&dv, 0..n),
            B::view(&dv0, 0..n),
            B::view(&dbase, 0..n),
        );
        let p = mode.projection(v, v0, bv, base, out);
        let r = b.project_out(segs, p.alpha(alpha).beta(beta).opts(opts));
        B::host_ranks(&r.unwrap())
    };
    let flat_out = b.download(&dout);

    // The same as tensor lists.
    let tv = Tensors::new(b, segs, &v);
    let tv0 = Tensors::new(b, segs, &v0);
    let tbase = Tensors::new(b, segs, &base);
    let tb: Vec<Tensors<B, T>> = basis.iter().map(|x| Tensors::new(b, segs, x)).collect();
    let mut tout = Tensors::new(b, segs, &out0);
    let list_ranks = {
        let lb: Vec<_> = tb.iter().map(|t| t.list()).collect();
        let out = tout.list_mut();
        let p = mode.projection(tv.list(), tv0.list(), lb, tbase.list(), out);
        let r = b.project_list(segs, p.alpha(alpha).beta(beta).opts(opts));
        B::host_ranks(&r.unwrap())
    };
    let list_out = tout.packed(b);
    for t in [&tv, &tv0, &tbase].into_iter().chain(&tb) {
        t.packed(b);
    }
    assert_eq!(list_ranks, flat_ranks, "{what}: ranks, list vs flat");
    assert!(
        bits(&list_out) == bits(&flat_out),
        "{what}: the list result differs from the flat one; first mismatch at {:?}",
        bits(&list_out)
            .iter()
            .zip(bits(&flat_out))
            .position(|(a, b)| *a != b)
    );

    // And the oracle within rounding: the backends sum in another order than the oracle,
    // so within a few roundings of T (relative, plus an absolute floor for cancellation).
    let mut ref_out = out0.clone();
    let ref_ranks = {
        let bs: Vec<&[T]> = basis.iter().map(|x| &x[..]).collect();
        let p = mode.projection(&v[..], &v0[..], bs, &base[..], &mut ref_out[..]);
        Reference
            .project_out(segs, p.alpha(alpha).beta(beta).opts(opts))
            .unwrap()
    };
    assert_eq!(list_ranks, ref_ranks, "{what}: ranks vs the oracle");
    let u = match T::DTYPE {
        redreg::DType::F32 => 1.2e-7,
        redreg::DType::F16 => 9.8e-4,
        redreg::DType::BF16 => 7.9e-3,
    };
    assert_close(&what, &list_out, &ref_out, 4.0 * u, 2.0 * u);
}

fn all<B: TestBackend, T: Element>(b: &B) {
    let segs = layout();
    let ks: &[usize] = if quick() { &[1, 3] } else { &[1, 2, 3, 8] };
    check::<B, T>(b, &segs, 0, Mode::Write);
    for &k in ks {
        check::<B, T>(b, &segs, k, Mode::Drift);
        check::<B, T>(b, &segs, k, Mode::Base);
    }
    check::<B, T>(b, &segs, 2, Mode::Write);
    check::<B, T>(b, &segs, 1, Mode::Accumulate);
    // Every k (on CUDA every list kernel, k = 0..8) once, also in quick mode.
    for k in 0..=redreg::testing::solve::MAX_K {
        check::<B, T>(b, &segs, k, Mode::Base);
    }
}

fn list_equals_flat_f32<B: TestBackend>(b: &B) {
    all::<B, f32>(b);
}

fn list_equals_flat_f16<B: TestBackend>(b: &B) {
    all::<B, f16>(b);
}

fn list_equals_flat_bf16<B: TestBackend>(b: &B) {
    all::<B, bf16>(b);
}

/// A missing or extra tensor, a tensor of the wrong length, a destination list of the
/// wrong shape: `Err`, nothing written.
fn bad_lists_are_errors_and_write_nothing<B: TestBackend>(b: &B) {
    let segs = Segments::from_lengths(&[3, 4]).unwrap();
    let (a, c) = (b.upload(&[1.0f32; 3]), b.upload(&[2.0f32; 4]));
    let short = b.upload(&[2.0f32; 3]);
    let (mut o1, mut o2) = (b.upload(&[9.0f32; 3]), b.upload(&[9.0f32; 4]));
    let cases: Vec<(&str, Vec<&B::Buf<f32>>, Vec<usize>)> = vec![
        ("missing tensor", vec![&a], vec![3]),
        ("wrong length", vec![&a, &short], vec![3, 3]),
        ("extra tensor", vec![&a, &c, &c], vec![3, 4, 4]),
    ];
    for (what, v, lens) in cases {
        let v: TensorList<_> = v
            .iter()
            .zip(&lens)
            .map(|(x, &n)| B::view(x, 0..n))
            .collect();
        let basis = [TensorList(vec![B::view(&a, 0..3), B::view(&c, 0..4)])];
        let out = TensorList(vec![B::view_mut(&mut o1, 0..3), B::view_mut(&mut o2, 0..4)]);
        let p = Projection::new(v, basis, Output::Write { base: None, out });
        match b.project_list(&segs, p) {
            Err(Error::CountMismatch { .. }) | Err(Error::InvalidArgument { .. }) => {}
            Err(e) => panic!("{what}: expected a count or argument error, got {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    // A destination list of the wrong shape.
    let v = TensorList(vec![B::view(&a, 0..3), B::view(&c, 0..4)]);
    let out = TensorList(vec![B::view_mut(&mut o1, 0..3)]);
    let p = Projection::new(v, [], Output::Write { base: None, out });
    assert!(
        b.project_list(&segs, p).is_err(),
        "short destination list accepted"
    );
    let written: Vec<f32> = [b.download(&o1), b.download(&o2)].concat();
    assert!(written.iter().all(|&x| x == 9.0), "an Err wrote output");
}

/// The same projection on the same values at other addresses (1, 2, 3 elements into their
/// allocations: on CUDA 16-byte vector loads impossible or possible) gives the same bits:
/// pass 1 sums every chunk in one canonical order whatever the alignment. Segments of
/// thousands of elements, so the sums are inexact and a different order would show.
fn alignment_independent<B: TestBackend, T: Element>(b: &B) {
    let segs = Segments::from_lengths(&[40_000, 777, 12_345]).unwrap();
    let n = segs.total();
    let theta: Vec<T> = elements(n, 71, 1.0);
    let theta0: Vec<T> = elements(n, 72, 1.0);
    let extra: Vec<T> = elements(n, 73, 1.0);
    let g: Vec<T> = elements(n, 74, 1.0);
    let mut results = Vec::new();
    for off in 0..4usize {
        let up = |x: &[T]| {
            let mut h = vec![T::from_f64(SENTINEL); off + n];
            h[off..].copy_from_slice(x);
            b.upload(&h)
        };
        let (dt, dt0, de) = (up(&theta), up(&theta0), up(&extra));
        let mut dg = up(&g);
        // The f64 partials themselves (an output rounded to T would hide a last-bit change).
        let mut scratch = up(&g);
        let r = off..off + n;
        let basis = [B::view(&dg, r.clone()), B::view(&de, r.clone())];
        let out = Output::Write {
            base: None,
            out: B::view_mut(&mut scratch, r.clone()),
        };
        let p =
            Projection::new(B::view(&dt, r.clone()), basis, out).minus(B::view(&dt0, r.clone()));
        let parts = b.partials(&segs, &p).unwrap();
        drop(p);
        let part_bits: Vec<u64> = parts.as_slice().iter().map(|x| x.to_bits()).collect();
        let ex = [B::view(&de, r.clone())];
        let (t, t0) = (B::view(&dt, r.clone()), B::view(&dt0, r.clone()));
        let p = Projection::drift(t, t0, ex, B::view_mut(&mut dg, r.clone()));
        let ranks = B::host_ranks(&b.project_out(&segs, p.beta(0.5)).unwrap());
        let out = b.download(&dg)[off..].to_vec();
        results.push((part_bits, bits(&out), ranks));
    }
    for (off, r) in results.iter().enumerate().skip(1) {
        assert!(
            *r == results[0],
            "{}: offset {off} gives other bits than offset 0 (first partial that differs: {:?})",
            T::DTYPE.name(),
            r.0.iter().zip(&results[0].0).position(|(a, b)| a != b)
        );
    }
}

fn flat_results_do_not_depend_on_alignment<B: TestBackend>(b: &B) {
    alignment_independent::<B, f32>(b);
    alignment_independent::<B, bf16>(b);
    alignment_independent::<B, f16>(b);
}

backend_tests!(
    list_equals_flat_f32,
    list_equals_flat_f16,
    list_equals_flat_bf16,
    bad_lists_are_errors_and_write_nothing,
    flat_results_do_not_depend_on_alignment,
);

/// On CUDA a destination tensor overlapping an input, or another destination tensor, is an
/// `Err` (the kernels would read values they already overwrote, or two segments would
/// write the same memory); nothing is written. Overlapping views come from the raw-pointer
/// path (`ForeignSlice`), the only way to make them (safe Rust cannot alias on the host).
#[cfg(feature = "cuda")]
mod cuda_only {
    use super::common::gpu;
    use cudarc::driver::{CudaSlice, CudaViewMut, DevicePtr};
    use redreg::cuda::ForeignSlice;
    use redreg::{Backend, Output, Projection, RankList, Segments, TensorList};

    #[test]
    fn overlapping_lists_are_errors() {
        let Some(b) = gpu::backend("cuda_only::overlapping_lists_are_errors") else {
            return;
        };
        let s = b.stream();
        let segs = Segments::from_lengths(&[4, 6]).unwrap();
        let x = s.clone_htod(&[1.0f32; 10]).unwrap();
        let y = s.clone_htod(&[2.0f32; 10]).unwrap();
        let o = s.clone_htod(&[9.0f32; 20]).unwrap();
        let addr = |c: &CudaSlice<f32>| c.device_ptr(s).0;
        let (xa, ya, oa) = (addr(&x), addr(&y), addr(&o));
        // SAFETY: every range lies inside x, y or o (10, 10 and 20 f32), alive until the end.
        let wrap = |a: u64, off: u64, n: usize| {
            unsafe { ForeignSlice::<f32>::new(b, a + 4 * off, n) }.unwrap()
        };
        let v = [wrap(xa, 0, 4), wrap(xa, 4, 6)];
        let basis = [wrap(ya, 0, 4), wrap(ya, 4, 6)];
        let run = |v: &[ForeignSlice<f32>],
                   basis: &[ForeignSlice<f32>],
                   outs: &mut [ForeignSlice<f32>]| {
            let lb = [basis.iter().map(|f| f.view()).collect::<TensorList<_>>()];
            let out: TensorList<CudaViewMut<'_, f32>> =
                outs.iter_mut().map(|f| f.view_mut()).collect();
            let lv: TensorList<_> = v.iter().map(|f| f.view()).collect();
            b.project_list(
                &segs,
                Projection::new(lv, lb, Output::Write { base: None, out }),
            )
            .map(|r| r.to_vec().unwrap())
        };
        // Destination tensors overlapping each other: o[0..4] and o[2..8].
        let mut outs = [wrap(oa, 0, 4), wrap(oa, 2, 6)];
        let e = run(&v, &basis, &mut outs).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // A destination tensor overlapping an input tensor (basis tensor 1 is o[10..16]).
        let alias_basis = [wrap(ya, 0, 4), wrap(oa, 10, 6)];
        let mut outs = [wrap(oa, 0, 4), wrap(oa, 12, 6)];
        let e = run(&v, &alias_basis, &mut outs).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        let host = s.clone_dtoh(&o).unwrap();
        assert!(host.iter().all(|&x| x == 9.0), "an Err wrote output");
        // Disjoint tensors of one allocation are fine.
        let mut outs = [wrap(oa, 0, 4), wrap(oa, 4, 6)];
        assert_eq!(run(&v, &basis, &mut outs).unwrap().len(), 2);
    }
}

/// A tensor list of more than 2^31 elements in all (65 tensors of 2^25 bf16 each, 4.1 GiB of
/// output): offsets past `u32` and `i32`. The inputs are one 64 MiB slice repeated (inputs
/// may be shared; only destinations must be distinct). With the basis equal to v and the
/// exact projector (ridge 0) the coefficient is exactly 1 and `v - P v` exactly 0, so every
/// output tensor must equal its base tensor bit for bit, and every rank is 1.
#[test]
fn list_beyond_2_pow_31_elements() {
    const LEN: usize = 1 << 25;
    const COUNT: usize = 65; // 65 · 2^25 = 2^31 + 2^25
    let v: Vec<bf16> = elements(LEN, 91, 1.0);
    let base: Vec<bf16> = elements(LEN, 92, 1.0);
    let segs = Segments::from_lengths(&[LEN; COUNT]).unwrap();
    assert!(segs.total() > 1 << 31);
    let mut outs: Vec<Vec<bf16>> = (0..COUNT).map(|_| vec![bf16::ZERO; LEN]).collect();
    fn list(x: &[bf16]) -> TensorList<&[bf16]> {
        (0..COUNT).map(|_| x).collect()
    }
    let basis = [list(&v)];
    let out: TensorList<&mut [bf16]> = outs.iter_mut().map(|o| &mut o[..]).collect();
    let p = Projection::new(
        list(&v),
        basis,
        Output::Write {
            base: Some(list(&base)),
            out,
        },
    )
    .opts(ProjectOptions::exact());
    let ranks = CpuBackend::new().project_list(&segs, p).unwrap();
    assert_eq!(ranks, vec![1; COUNT]);
    for (i, o) in outs.iter().enumerate() {
        assert!(
            o.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()),
            "tensor {i} (elements from {}) differs from its base",
            i * LEN
        );
    }
}
