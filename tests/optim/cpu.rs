//! The CPU optimizer pass against the f64 oracle, bit for bit: every dtype, SGD (plain,
//! momentum, Nesterov with weight decay, the script's settings) and AdamW, several steps,
//! 1, 2 and 8 threads, chunk sizes that cut tensors anywhere; and a list of another layout.

use super::lists::{backends, bits, grads, same_buffers, theta};
use super::rules;
use redreg::optim::reference::{adamw_step, sgd_step, widen};
use redreg::optim::{AdamW, Optimizer, Rule, Sgd};
use redreg::{bf16, f16, CpuBackend, Element};

/// Tensor lengths with empty, tiny and multi-chunk tensors.
const LENS: [usize; 6] = [0, 1, 37, 1000, 5000, 64];

fn check<T: Element>() {
    for rule in rules() {
        for (cut, be) in backends() {
            let mut opt = Optimizer::new(rule, &LENS).unwrap();
            let mut params = theta::<T>(&LENS);
            let mut want = params.clone();
            let mut s0: Vec<Vec<f32>> = LENS.iter().map(|&n| vec![0.0; n]).collect();
            let mut s1 = s0.clone();
            for t in 1..=4u64 {
                let grads = grads::<T>(&LENS, t);
                for i in 0..LENS.len() {
                    let g = widen(&grads[i]);
                    match &rule {
                        Rule::Sgd(p) => sgd_step(p, t, &mut want[i], &g, &mut s0[i]).unwrap(),
                        Rule::AdamW(p) => {
                            adamw_step(p, t, &mut want[i], &g, &mut s0[i], &mut s1[i]).unwrap()
                        }
                    }
                }
                let mut pv: Vec<&mut [T]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
                let gv: Vec<&[T]> = grads.iter().map(|g| g.as_slice()).collect();
                opt.step(&be, &mut pv, &gv).unwrap();
                let what = format!("{:?} {rule:?}, {cut}, step {t}", T::DTYPE);
                for i in 0..LENS.len() {
                    assert_eq!(bits(&params[i]), bits(&want[i]), "{what}, tensor {i}");
                }
                same_buffers(&opt, &rule, &s0, &s1, &what);
            }
            assert_eq!(opt.steps(), 4);
        }
    }
}

#[test]
fn matches_the_reference_f32() {
    check::<f32>();
}

#[test]
fn matches_the_reference_f16() {
    check::<f16>();
}

#[test]
fn matches_the_reference_bf16() {
    check::<bf16>();
}

/// A list of another layout: `Err`, nothing written, the step count unchanged.
#[test]
fn another_layout_is_rejected() {
    let be = CpuBackend::new();
    let mut opt = Optimizer::new(Rule::AdamW(AdamW::default()), &[3, 4]).unwrap();
    let (mut a, mut b) = (vec![1f32; 3], vec![1f32; 5]);
    let g = (vec![0.5f32; 3], vec![0.5f32; 5]);
    let e = opt
        .step(&be, &mut [&mut a[..], &mut b[..]], &[&g.0[..], &g.1[..]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 4 elements, got 5"), "{e}");
    assert_eq!((a, b), (vec![1f32; 3], vec![1f32; 5]));
    assert_eq!(opt.steps(), 0);
    let mut c = [1f32; 3];
    assert!(opt.step(&be, &mut [&mut c[..]], &[&g.0[..]]).is_err());
    assert!(Optimizer::new(Rule::Sgd(Sgd::new(-1.0)), &[3]).is_err());
    assert_eq!(opt.state(0).unwrap().0, &[0f32; 3][..]);
}
