//! Tensor lists on the host backends (`Backend::project_list`): one buffer per segment,
//! each its own allocation at its own alignment, against
//! - the same backend's flat `project_out` on the tensors packed into one buffer: bit for
//!   bit (the definition of the list operation), ranks equal;
//! - the f64 oracle (`Reference::project_list`, which packs, projects and unpacks) within
//!   rounding;
//!
//! and bad lists (a missing tensor, a tensor of the wrong length) are `Err` with nothing
//! written.

mod common;

use common::Mode;
use redreg::testing::{assert_close, elements};
/// A host tensor-list projection.
type ListP<'a, 'b, T> = Projection<'a, TensorList<&'b [T]>, TensorList<&'b mut [T]>>;

use redreg::{
    bf16, f16, Backend, Beta, CpuBackend, Element, Error, Output, ProjectOptions, Projection,
    Reference, Segments, TensorList,
};

/// Empty tensors, one-element ones, odd lengths, and ones of many chunks of the 64-element
/// test chunk.
fn layout() -> Segments {
    Segments::from_lengths(&[5, 0, 1, 64, 3, 0, 257, 130, 7, 1000, 2]).unwrap()
}

/// One tensor per segment, each its own allocation, starting `s % 4` elements into it (so
/// that neighbouring tensors have different alignments), holding `flat`'s segment.
struct Tensors<T> {
    storage: Vec<Vec<T>>,
    pads: Vec<usize>,
}

impl<T: Element> Tensors<T> {
    fn new(segs: &Segments, flat: &[T]) -> Self {
        let mut storage = Vec::new();
        let mut pads = Vec::new();
        for (s, r) in segs.iter().enumerate() {
            let pad = s % 4;
            let mut buf = vec![T::from_f64(7.0); pad + r.len() + 1];
            buf[pad..pad + r.len()].copy_from_slice(&flat[r]);
            storage.push(buf);
            pads.push(pad);
        }
        Self { storage, pads }
    }

    fn list(&self) -> TensorList<&[T]> {
        self.storage
            .iter()
            .zip(&self.pads)
            .map(|(b, &p)| &b[p..b.len() - 1])
            .collect()
    }

    fn list_mut(&mut self) -> TensorList<&mut [T]> {
        self.storage
            .iter_mut()
            .zip(&self.pads)
            .map(|(b, &p)| {
                let n = b.len() - 1;
                &mut b[p..n]
            })
            .collect()
    }

    fn packed(&self) -> Vec<T> {
        self.list().0.concat()
    }

    /// The padding around every tensor is untouched.
    fn check_padding(&self) {
        for (b, &p) in self.storage.iter().zip(&self.pads) {
            for x in b[..p].iter().chain(b.last()) {
                assert_eq!(x.to_f64(), 7.0, "a list call wrote outside its tensor");
            }
        }
    }
}

/// Runs `mode` with k basis vectors (k includes the destination for `Drift`) flat and as
/// lists on `backend`, and through the oracle; returns (flat, list, oracle) outputs and
/// ranks after checking the ranks agree.
fn check<T: Element, B>(backend: &B, segs: &Segments, k: usize, mode: Mode)
where
    B: Backend<Memory = redreg::Host, Ranks = Vec<u32>>,
{
    let n = segs.total();
    let seed = 100 + k as u64 * 10 + mode as u64;
    let v: Vec<T> = elements(n, seed, 1.0);
    let v0: Vec<T> = elements(n, seed + 1, 1.0);
    let base: Vec<T> = elements(n, seed + 2, 1.0);
    let out0: Vec<T> = elements(n, seed + 3, 1.0);
    let drift = matches!(mode, Mode::Drift);
    let n_basis = if drift { k - 1 } else { k };
    let basis: Vec<Vec<T>> = (0..n_basis)
        .map(|i| elements(n, seed + 10 + i as u64, 1.0))
        .collect();
    let betas: Vec<f64> = (0..segs.len()).map(|s| 0.5 + s as f64 * 0.25).collect();
    let beta: Beta<'_> = match mode {
        Mode::Base => Beta::PerSegment(&betas),
        _ => Beta::Scalar(0.75),
    };

    // Flat.
    let mut flat_out = out0.clone();
    let flat_ranks = {
        let bs: Vec<&[T]> = basis.iter().map(|b| &b[..]).collect();
        let p = mode.projection(&v[..], &v0[..], bs, &base[..], &mut flat_out[..]);
        let p = p.alpha(1.25).beta(beta).opts(ProjectOptions::default());
        backend.project_out(segs, p).unwrap()
    };

    // Lists (separate allocations, mixed alignments), on `backend` and on the oracle.
    let run_list = |b: &dyn Fn(ListP<'_, '_, T>) -> Vec<u32>| {
        let tv = Tensors::new(segs, &v);
        let tv0 = Tensors::new(segs, &v0);
        let tbase = Tensors::new(segs, &base);
        let tb: Vec<Tensors<T>> = basis.iter().map(|x| Tensors::new(segs, x)).collect();
        let mut tout = Tensors::new(segs, &out0);
        let lb: Vec<TensorList<&[T]>> = tb.iter().map(|t| t.list()).collect();
        let ranks = {
            let out = tout.list_mut();
            let p = mode.projection(tv.list(), tv0.list(), lb, tbase.list(), out);
            b(p.alpha(1.25).beta(beta).opts(ProjectOptions::default()))
        };
        for t in [&tv, &tv0, &tbase, &tout].into_iter().chain(&tb) {
            t.check_padding();
        }
        (tout.packed(), ranks)
    };
    let (list_out, list_ranks) = run_list(&|p| backend.project_list(segs, p).unwrap());
    let (ref_out, ref_ranks) = run_list(&|p| Reference.project_list(segs, p).unwrap());

    let what = format!("{} k={k} {mode:?}", T::DTYPE.name());
    assert_eq!(list_ranks, flat_ranks, "{what}: ranks, list vs flat");
    assert_eq!(ref_ranks, flat_ranks, "{what}: ranks, oracle vs flat");
    let bits = |x: &[T]| x.iter().map(|e| e.to_f64().to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&list_out),
        bits(&flat_out),
        "{what}: list vs flat, bit for bit"
    );
    // The CPU backend sums in another order than the oracle: within a few roundings of T.
    // (one rounding of T, relative, plus an absolute floor for cancellation near 0)
    let u = match T::DTYPE.size() {
        4 => 1.2e-7,
        _ if T::DTYPE.name() == "bf16" => 7.9e-3,
        _ => 9.8e-4,
    };
    assert_close(&what, &list_out, &ref_out, 4.0 * u, 2.0 * u);
}

fn all_modes<T: Element>() {
    let segs = layout();
    let cpu = CpuBackend::with_threads(2).unwrap().with_chunk(64).unwrap();
    for k in [0usize, 1, 2, 3, 8] {
        for mode in [Mode::Write, Mode::Base, Mode::Accumulate] {
            check::<T, _>(&cpu, &segs, k, mode);
        }
        if k >= 1 {
            check::<T, _>(&cpu, &segs, k, Mode::Drift);
        }
    }
}

#[test]
fn cpu_list_equals_flat_f32() {
    all_modes::<f32>();
}

#[test]
fn cpu_list_equals_flat_f16() {
    all_modes::<f16>();
}

#[test]
fn cpu_list_equals_flat_bf16() {
    all_modes::<bf16>();
}

/// The oracle's list is its flat call on the packed buffers by construction; this pins
/// that the CPU backend's flat call itself matches it (the chain list = flat ≈ oracle).
#[test]
fn reference_list_is_deterministic() {
    let segs = layout();
    check::<f32, _>(&Reference, &segs, 2, Mode::Drift);
    check::<f32, _>(&Reference, &segs, 3, Mode::Base);
}

#[test]
fn bad_lists_are_errors_and_write_nothing() {
    let segs = Segments::from_lengths(&[3, 4]).unwrap();
    let a = [1.0f32; 3];
    let b = [2.0f32; 4];
    let short = [2.0f32; 3];
    let mut o1 = [9.0f32; 3];
    let mut o2 = [9.0f32; 4];
    let cpu = CpuBackend::new();
    for backend_is_cpu in [true, false] {
        let cases: Vec<(&str, TensorList<&[f32]>, usize)> = vec![
            ("missing tensor", TensorList(vec![&a[..]]), 2),
            ("wrong length", TensorList(vec![&a[..], &short[..]]), 2),
            ("extra tensor", TensorList(vec![&a[..], &b[..], &b[..]]), 2),
        ];
        for (what, v, _) in cases {
            let out = TensorList(vec![&mut o1[..], &mut o2[..]]);
            let basis = [TensorList(vec![&a[..], &b[..]])];
            let p = Projection::new(v, basis, Output::Write { base: None, out });
            let r = if backend_is_cpu {
                cpu.project_list(&segs, p)
            } else {
                Reference.project_list(&segs, p)
            };
            match r {
                Err(Error::CountMismatch { .. }) | Err(Error::InvalidArgument { .. }) => {}
                other => panic!("{what}: expected an Err, got {other:?}"),
            }
        }
        // A destination list of the wrong shape.
        let v = TensorList(vec![&a[..], &b[..]]);
        let out = TensorList(vec![&mut o1[..]]);
        let p = Projection::new(v, [], Output::Write { base: None, out });
        let r = if backend_is_cpu {
            cpu.project_list(&segs, p)
        } else {
            Reference.project_list(&segs, p)
        };
        assert!(r.is_err(), "short destination list accepted");
    }
    assert!(
        o1.iter().chain(&o2).all(|&x| x == 9.0),
        "an Err wrote output"
    );
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
