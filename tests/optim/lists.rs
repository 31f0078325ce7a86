//! The tensor lists of the CPU optimizer tests (`cpu`, `steps`): θ and each call's gradients
//! from fixed seeds, the backends that step them, the bits they are compared by, and the
//! optimizer's state buffers against the oracle's.

use redreg::optim::{Optimizer, Rule};
use redreg::testing::elements;
use redreg::{CpuBackend, Element};

/// The CPU backends the oracle tests step on, with a label: 1, 2 and 8 threads, the default
/// chunk and chunks (64, 7 elements) that cut tensors anywhere; nothing inline (every
/// tensor goes through the threaded pass).
pub fn backends() -> impl Iterator<Item = (String, CpuBackend)> {
    [(1, 1 << 15), (2, 64), (8, 7)]
        .into_iter()
        .map(|(threads, chunk)| {
            let be = CpuBackend::with_threads(threads)
                .unwrap()
                .with_chunk(chunk)
                .unwrap()
                .with_inline_elements(0);
            (format!("{threads} threads, chunk {chunk}"), be)
        })
}

/// θ: tensor `i` of length `lens[i]` from seed `10 + i`, in `[-1, 1)`.
pub fn theta<T: Element>(lens: &[usize]) -> Vec<Vec<T>> {
    (lens.iter().enumerate())
        .map(|(i, &n)| elements(n, 10 + i as u64, 1.0))
        .collect()
}

/// The gradients of call `t`: tensor `i` from seed `100·t + i`, in `[-0.5, 0.5)`.
pub fn grads<T: Element>(lens: &[usize], t: u64) -> Vec<Vec<T>> {
    (lens.iter().enumerate())
        .map(|(i, &n)| elements(n, 100 * t + i as u64, 0.5))
        .collect()
}

/// Bits of every element (f16/bf16 widen exactly, so f64 bits identify the value).
pub fn bits<T: Element>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// The optimizer's state buffers equal the oracle's `s0`, `s1` — those the rule keeps:
/// `s0` unless SGD without momentum, `s1` for AdamW.
pub fn same_buffers(opt: &Optimizer, rule: &Rule, s0: &[Vec<f32>], s1: &[Vec<f32>], what: &str) {
    for i in 0..s0.len() {
        let (a, b) = opt.state(i).unwrap();
        if !matches!(rule, Rule::Sgd(p) if p.momentum == 0.0) {
            assert_eq!(a, &s0[i][..], "{what}: state 0 of tensor {i}");
        }
        if matches!(rule, Rule::AdamW(_)) {
            assert_eq!(b, &s1[i][..], "{what}: state 1 of tensor {i}");
        }
    }
}
