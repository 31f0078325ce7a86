//! The synthetic, deterministic, imbalanced two-modality dataset and its batches.

use super::dev;
use candle_core::Tensor;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub const CLASSES: usize = 8;
pub const DIM_A: usize = 16;
pub const DIM_B: usize = 64;
pub const N_TRAIN: usize = 6144;
pub const N_TEST: usize = 2048;
/// Fraction of samples whose A carries the class code (the rest: A is pure noise).
pub const P_A: f64 = 0.92;
/// Amplitude of B's class code (times a random sign per sample) in unit-variance noise.
pub const AMP_B: f32 = 0.35;

/// SplitMix64: a small deterministic generator (same numbers on every machine).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn normals(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * sigma).collect()
    }
    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
        p
    }
}

pub struct Data {
    pub xa: Vec<f32>,
    pub xb: Vec<f32>,
    pub y: Vec<u32>,
}

/// (train, test) for `seed`: A is a low-noise code of the class in `P_A` of the samples
/// (noise otherwise); B is the class prototype with a random sign per sample in noise.
pub fn make_data(seed: u64) -> (Data, Data) {
    let mut rng = Rng(seed ^ 0xDA7A);
    let proto_a: Vec<f32> = rng.normals(CLASSES * DIM_A, 1.0);
    let proto_b: Vec<f32> = rng.normals(CLASSES * DIM_B, 1.0);
    let mut gen = |n: usize| {
        let mut d = Data {
            xa: Vec::with_capacity(n * DIM_A),
            xb: Vec::with_capacity(n * DIM_B),
            y: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let y = (rng.next_u64() % CLASSES as u64) as usize;
            let a_has = rng.uniform() < P_A;
            for j in 0..DIM_A {
                let c = if a_has {
                    1.5 * proto_a[y * DIM_A + j]
                } else {
                    0.0
                };
                d.xa.push(c + 0.5 * rng.normal());
            }
            // Random sign: the class-conditional mean of B is zero, so no linear read-out of
            // the raw input works; the encoder has to learn |proto_y · x|-like features.
            let amp = if rng.next_u64() & 1 == 0 {
                AMP_B
            } else {
                -AMP_B
            };
            for j in 0..DIM_B {
                d.xb.push(amp * proto_b[y * DIM_B + j] + rng.normal());
            }
            d.y.push(y as u32);
        }
        d
    };
    let train = gen(N_TRAIN);
    let test = gen(N_TEST);
    (train, test)
}

/// The samples `idx` as tensors (A: n×DIM_A, B: n×DIM_B, labels: n, u32).
pub fn batch(d: &Data, idx: &[usize]) -> Res<(Tensor, Tensor, Tensor)> {
    let mut xa = Vec::with_capacity(idx.len() * DIM_A);
    let mut xb = Vec::with_capacity(idx.len() * DIM_B);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        xa.extend_from_slice(&d.xa[i * DIM_A..(i + 1) * DIM_A]);
        xb.extend_from_slice(&d.xb[i * DIM_B..(i + 1) * DIM_B]);
        y.push(d.y[i]);
    }
    let n = idx.len();
    Ok((
        Tensor::from_vec(xa, (n, DIM_A), dev())?,
        Tensor::from_vec(xb, (n, DIM_B), dev())?,
        Tensor::from_vec(y, n, dev())?,
    ))
}
