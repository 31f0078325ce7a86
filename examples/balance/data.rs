//! The two datasets (the real UCI Multiple Features digits and the synthetic controlled
//! case), the seeded generator, and batches as tensors.

use super::dev;
use super::mfeat::{self, View};
use candle_core::Tensor;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

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

/// Samples of both modalities: `x[m]` is `n × dims[m]`, row-major.
pub struct Data {
    pub x: [Vec<f32>; 2],
    pub dims: [usize; 2],
    pub y: Vec<u32>,
}

impl Data {
    pub fn len(&self) -> usize {
        self.y.len()
    }
}

/// One seed's train and test sets, with the modalities' names (`A`/`B` for the synthetic
/// data, the view names for mfeat: A the strong view, B the weak one).
pub struct Dataset {
    pub names: [String; 2],
    /// Hidden width of each modality's MLP encoder.
    pub hidden: [usize; 2],
    pub classes: usize,
    pub train: Data,
    pub test: Data,
}

impl Dataset {
    pub fn dims(&self) -> [usize; 2] {
        self.train.dims
    }
}

// ---------------------------------------------------------------- mfeat
/// Fraction of every class held out for testing (60 of 200 images per digit).
pub const MFEAT_TEST_FRAC: f64 = 0.3;

/// Hidden width of a view's encoder: twice its features, at least 32 and at most 128
/// (pix, fou, kar, fac: 128; zer: 94; mor: 32).
pub fn mfeat_hidden(dim: usize) -> usize {
    (2 * dim).clamp(32, 128)
}

/// The views `[a, b]` split for `seed` (stratified: 140 train / 60 test images per digit)
/// and standardised with the training rows' statistics.
pub fn mfeat_data(views: [&View; 2], seed: u64) -> Dataset {
    let mut rng = Rng(seed ^ 0x5EA1);
    let (tr, te) =
        mfeat::stratified_split(&views[0].y, MFEAT_TEST_FRAC, &mut |n| rng.permutation(n));
    let dims = [views[0].dim, views[1].dim];
    let part = |idx: &[usize]| Data {
        x: [
            mfeat::standardised(views[0], &tr, idx),
            mfeat::standardised(views[1], &tr, idx),
        ],
        dims,
        y: idx.iter().map(|&i| views[0].y[i]).collect(),
    };
    Dataset {
        names: [views[0].name.clone(), views[1].name.clone()],
        hidden: [mfeat_hidden(dims[0]), mfeat_hidden(dims[1])],
        classes: mfeat::CLASSES,
        train: part(&tr),
        test: part(&te),
    }
}

// ---------------------------------------------------------------- synthetic
pub const SYN_CLASSES: usize = 8;
pub const SYN_DIM_A: usize = 16;
pub const SYN_DIM_B: usize = 64;
pub const SYN_TRAIN: usize = 6144;
pub const SYN_TEST: usize = 2048;
/// Fraction of samples whose A carries the class code (the rest: A is pure noise).
pub const SYN_P_A: f64 = 0.92;
/// Amplitude of B's class code (times a random sign per sample) in unit-variance noise.
pub const SYN_AMP_B: f32 = 0.35;

/// (train, test) for `seed`: A is a low-noise code of the class in `SYN_P_A` of the
/// samples (noise otherwise); B is the class prototype with a random sign per sample in
/// noise.
pub fn synthetic_data(seed: u64) -> Dataset {
    let mut rng = Rng(seed ^ 0xDA7A);
    let proto_a: Vec<f32> = rng.normals(SYN_CLASSES * SYN_DIM_A, 1.0);
    let proto_b: Vec<f32> = rng.normals(SYN_CLASSES * SYN_DIM_B, 1.0);
    let mut gen = |n: usize| {
        let mut d = Data {
            x: [
                Vec::with_capacity(n * SYN_DIM_A),
                Vec::with_capacity(n * SYN_DIM_B),
            ],
            dims: [SYN_DIM_A, SYN_DIM_B],
            y: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let y = (rng.next_u64() % SYN_CLASSES as u64) as usize;
            let a_has = rng.uniform() < SYN_P_A;
            for j in 0..SYN_DIM_A {
                let c = if a_has {
                    1.5 * proto_a[y * SYN_DIM_A + j]
                } else {
                    0.0
                };
                d.x[0].push(c + 0.5 * rng.normal());
            }
            // Random sign: the class-conditional mean of B is zero, so no linear read-out of
            // the raw input works; the encoder has to learn |proto_y · x|-like features.
            let amp = if rng.next_u64() & 1 == 0 {
                SYN_AMP_B
            } else {
                -SYN_AMP_B
            };
            for j in 0..SYN_DIM_B {
                d.x[1].push(amp * proto_b[y * SYN_DIM_B + j] + rng.normal());
            }
            d.y.push(y as u32);
        }
        d
    };
    let train = gen(SYN_TRAIN);
    let test = gen(SYN_TEST);
    Dataset {
        names: ["A".into(), "B".into()],
        hidden: [32, 128],
        classes: SYN_CLASSES,
        train,
        test,
    }
}

/// The samples `idx` as tensors (A: n×dims[0], B: n×dims[1], labels: n, u32).
pub fn batch(d: &Data, idx: &[usize]) -> Res<(Tensor, Tensor, Tensor)> {
    let [da, db] = d.dims;
    let mut xa = Vec::with_capacity(idx.len() * da);
    let mut xb = Vec::with_capacity(idx.len() * db);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        xa.extend_from_slice(&d.x[0][i * da..(i + 1) * da]);
        xb.extend_from_slice(&d.x[1][i * db..(i + 1) * db]);
        y.push(d.y[i]);
    }
    let n = idx.len();
    Ok((
        Tensor::from_vec(xa, (n, da), dev())?,
        Tensor::from_vec(xb, (n, db), dev())?,
        Tensor::from_vec(y, n, dev())?,
    ))
}
