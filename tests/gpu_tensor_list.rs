//! Tensor lists on CUDA (`CudaBackend::project_list`: the flat kernels reading a
//! per-segment pointer table) against the flat `project_out` on the same values packed
//! into one buffer: bit for bit, ranks equal — every tensor its own allocation, at its own
//! misalignment (so some tensors take the 16-byte vector path and others the scalar one),
//! empty tensors and tensors of several chunks included; the memory around every tensor
//! untouched; the f64 oracle within rounding; bad lists `Err` before any launch.
//! SKIP convention of tests/common/gpu.rs.
#![cfg(feature = "cuda")]

mod common;

use common::{gpu, Mode};

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use redreg::cuda::CudaBackend;
use redreg::testing::{assert_close, elements};
use redreg::{
    bf16, f16, Backend, Beta, Element, Output, ProjectOptions, Projection, Reference, Segments,
    TensorList,
};

const SENTINEL: f64 = 7.0;

/// Empty tensors, tiny and odd ones, one of three chunks (RR_CHUNK = 16384), and
/// thousands-long ones whose misalignment in the list differs from the packed buffer's
/// (inexact sums: only the same summation order gives the same bits).
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

/// One device allocation per tensor: `pad = s % 5` sentinel elements, the segment, one
/// sentinel.
struct DevTensors<T> {
    bufs: Vec<CudaSlice<T>>,
    pads: Vec<usize>,
    lens: Vec<usize>,
}

impl<T: Element> DevTensors<T> {
    fn new(b: &CudaBackend, segs: &Segments, flat: &[T]) -> Self {
        let (mut bufs, mut pads, mut lens) = (Vec::new(), Vec::new(), Vec::new());
        for (s, r) in segs.iter().enumerate() {
            let pad = s % 5;
            let mut host = vec![T::from_f64(SENTINEL); pad + r.len() + 1];
            host[pad..pad + r.len()].copy_from_slice(&flat[r.clone()]);
            bufs.push(b.stream().clone_htod(&host).unwrap());
            pads.push(pad);
            lens.push(r.len());
        }
        Self { bufs, pads, lens }
    }

    fn list(&self) -> TensorList<CudaView<'_, T>> {
        self.bufs
            .iter()
            .zip(self.pads.iter().zip(&self.lens))
            .map(|(b, (&p, &n))| b.slice(p..p + n))
            .collect()
    }

    fn list_mut(&mut self) -> TensorList<CudaViewMut<'_, T>> {
        self.bufs
            .iter_mut()
            .zip(self.pads.iter().zip(&self.lens))
            .map(|(b, (&p, &n))| b.slice_mut(p..p + n))
            .collect()
    }

    /// The tensors packed, after checking the sentinels around each.
    fn packed(&self, b: &CudaBackend) -> Vec<T> {
        let mut flat = Vec::new();
        for (buf, (&p, &n)) in self.bufs.iter().zip(self.pads.iter().zip(&self.lens)) {
            let host = b.stream().clone_dtoh(buf).unwrap();
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

fn check<T: Element>(b: &CudaBackend, segs: &Segments, k: usize, mode: Mode) {
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
    let s = b.stream();

    // Flat, on the device.
    let up = |x: &[T]| s.clone_htod(x).unwrap();
    let (dv, dv0, dbase) = (up(&v), up(&v0), up(&base));
    let dbasis: Vec<CudaSlice<T>> = basis.iter().map(|x| up(x)).collect();
    let mut dout = up(&out0);
    let flat_ranks = {
        let bv: Vec<CudaView<'_, T>> = dbasis.iter().map(|x| x.slice(..)).collect();
        let out = dout.slice_mut(..);
        let p = mode.projection(dv.slice(..), dv0.slice(..), bv, dbase.slice(..), out);
        let r = b.project_out(segs, p.alpha(alpha).beta(beta).opts(opts));
        r.unwrap().to_vec().unwrap()
    };
    let flat_out = s.clone_dtoh(&dout).unwrap();

    // The same as tensor lists.
    let tv = DevTensors::new(b, segs, &v);
    let tv0 = DevTensors::new(b, segs, &v0);
    let tbase = DevTensors::new(b, segs, &base);
    let tb: Vec<DevTensors<T>> = basis.iter().map(|x| DevTensors::new(b, segs, x)).collect();
    let mut tout = DevTensors::new(b, segs, &out0);
    let list_ranks = {
        let lb: Vec<TensorList<CudaView<'_, T>>> = tb.iter().map(|t| t.list()).collect();
        let out = tout.list_mut();
        let p = mode.projection(tv.list(), tv0.list(), lb, tbase.list(), out);
        let r = b.project_list(segs, p.alpha(alpha).beta(beta).opts(opts));
        r.unwrap().to_vec().unwrap()
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

    // And the oracle (packs, projects, unpacks) within rounding.
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

fn all<T: Element>(b: &CudaBackend, quick: bool) {
    let segs = layout();
    let ks: &[usize] = if quick { &[1, 3] } else { &[1, 2, 3, 8] };
    check::<T>(b, &segs, 0, Mode::Write);
    for &k in ks {
        check::<T>(b, &segs, k, Mode::Drift);
        check::<T>(b, &segs, k, Mode::Base);
    }
    check::<T>(b, &segs, 2, Mode::Write);
    check::<T>(b, &segs, 1, Mode::Accumulate);
    // Every list kernel (k = 0..8) once, also in quick mode.
    for k in 0..=redreg::testing::solve::MAX_K {
        check::<T>(b, &segs, k, Mode::Base);
    }
}

fn quick() -> bool {
    std::env::var("REDREG_GPU_QUICK").is_ok_and(|v| v == "1")
}

#[test]
fn list_equals_flat_f32() {
    let Some(b) = gpu::backend("list_equals_flat_f32") else {
        return;
    };
    all::<f32>(b, quick());
}

#[test]
fn list_equals_flat_f16() {
    let Some(b) = gpu::backend("list_equals_flat_f16") else {
        return;
    };
    all::<f16>(b, quick());
}

#[test]
fn list_equals_flat_bf16() {
    let Some(b) = gpu::backend("list_equals_flat_bf16") else {
        return;
    };
    all::<bf16>(b, quick());
}

/// A destination tensor overlapping an input, or another destination tensor, is an `Err`
/// (the kernels would read values they already overwrote, or two segments would write the
/// same memory), and so is a tensor of the wrong length; nothing is written. Overlapping
/// views come from the raw-pointer path (`ForeignSlice`), the only way to make them.
#[test]
fn bad_lists_are_errors() {
    use cudarc::driver::DevicePtr;
    use redreg::cuda::ForeignSlice;
    let Some(b) = gpu::backend("bad_lists_are_errors") else {
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
        let out: TensorList<CudaViewMut<'_, f32>> = outs.iter_mut().map(|f| f.view_mut()).collect();
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
    // A tensor of the wrong length.
    let short = [wrap(xa, 0, 4), wrap(xa, 4, 5)];
    let mut outs = [wrap(oa, 0, 4), wrap(oa, 4, 6)];
    assert!(
        run(&short, &basis, &mut outs).is_err(),
        "wrong length accepted"
    );
    let host = s.clone_dtoh(&o).unwrap();
    assert!(host.iter().all(|&x| x == 9.0), "an Err wrote output");
    // Disjoint tensors of one allocation are fine.
    let mut outs = [wrap(oa, 0, 4), wrap(oa, 4, 6)];
    assert_eq!(run(&v, &basis, &mut outs).unwrap().len(), 2);
}

/// The same projection on the same values at other addresses (1, 2, 3 elements into their
/// allocations, so 16-byte vector loads are impossible or possible) gives the same bits:
/// pass 1 sums every chunk in one canonical order whatever the alignment. Segments of
/// thousands of elements, so the sums are inexact and a different order would show.
fn alignment_independent<T: Element>(b: &CudaBackend) {
    let segs = Segments::from_lengths(&[40_000, 777, 12_345]).unwrap();
    let n = segs.total();
    let theta: Vec<T> = elements(n, 71, 1.0);
    let theta0: Vec<T> = elements(n, 72, 1.0);
    let extra: Vec<T> = elements(n, 73, 1.0);
    let g: Vec<T> = elements(n, 74, 1.0);
    let s = b.stream();
    let mut results = Vec::new();
    for off in 0..4usize {
        let up = |x: &[T]| {
            let mut h = vec![T::from_f64(SENTINEL); off + n];
            h[off..].copy_from_slice(x);
            s.clone_htod(&h).unwrap()
        };
        let (dt, dt0, de) = (up(&theta), up(&theta0), up(&extra));
        let mut dg = up(&g);
        // The f64 partials themselves (an output rounded to T would hide a last-bit change).
        let mut scratch = up(&g);
        let basis = [dg.slice(off..), de.slice(off..)];
        let out = Output::Write {
            base: None,
            out: scratch.slice_mut(off..),
        };
        let p = Projection::new(dt.slice(off..), basis, out).minus(dt0.slice(off..));
        let parts = b.partials(&segs, &p).unwrap();
        drop(p);
        let part_bits: Vec<u64> = parts.as_slice().iter().map(|x| x.to_bits()).collect();
        let ex = [de.slice(off..)];
        let p = Projection::drift(dt.slice(off..), dt0.slice(off..), ex, dg.slice_mut(off..));
        let ranks = b.project_out(&segs, p.beta(0.5)).unwrap().to_vec().unwrap();
        let out = s.clone_dtoh(&dg).unwrap()[off..].to_vec();
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

#[test]
fn flat_results_do_not_depend_on_alignment() {
    let Some(b) = gpu::backend("flat_results_do_not_depend_on_alignment") else {
        return;
    };
    alignment_independent::<f32>(b);
    alignment_independent::<bf16>(b);
    alignment_independent::<f16>(b);
}
