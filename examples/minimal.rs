//! The smallest complete candle trainer with RedReg: two modalities (A clear, B noisy), one
//! MLP encoder each, a head on the concatenated features plus one unimodal head per
//! modality, SGD, and 1,000 samples in batches of 64 — so the last batch of every epoch has
//! 40 samples. Random data (candle's CPU random numbers are not seeded: the figures vary a
//! little between runs).
//!
//! `cargo run --example minimal --no-default-features --features candle`
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::loss::cross_entropy;
use candle_nn::{linear, Linear, Optimizer, VarBuilder, VarMap, SGD};
use redreg::candle::{stats::ModalityTensors, RedReg, NOISE_SIGMA};
use redreg::controller::Config;

const N: usize = 1000;
const BATCH: usize = 64;
const CLASSES: usize = 4;
const FEATURES: usize = 16; // pooled width: the same for both encoders (their cosine gates RedReg)
const EPOCHS: usize = 5;

/// input → 32 → FEATURES, ReLU after both layers.
struct Encoder(Linear, Linear);

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.1.forward(&self.0.forward(x)?.relu()?)?.relu()
    }
}

fn encoder(map: &VarMap, inputs: usize, dev: &Device) -> candle_core::Result<Encoder> {
    let vb = VarBuilder::from_varmap(map, DType::F32, dev);
    Ok(Encoder(
        linear(inputs, 32, vb.pp("l1"))?,
        linear(32, FEATURES, vb.pp("l2"))?,
    ))
}

/// Inputs of one modality: a random prototype per class plus Gaussian noise of `noise`.
fn modality(y: &Tensor, width: usize, noise: f32, dev: &Device) -> candle_core::Result<Tensor> {
    let protos = Tensor::randn(0f32, 1.0, (CLASSES, width), dev)?;
    protos.index_select(y, 0)? + Tensor::randn(0f32, noise, (N, width), dev)?
}

/// `[f(0), f(1)]`: one value per modality.
fn pair<T>(f: impl Fn(usize) -> candle_core::Result<T>) -> candle_core::Result<[T; 2]> {
    Ok([f(0)?, f(1)?])
}

fn main() -> redreg::Result<()> {
    let dev = Device::Cpu;
    let labels: Vec<u32> = (0..N as u32).map(|i| i % CLASSES as u32).collect();
    let y = Tensor::new(labels, &dev)?;
    let x = [modality(&y, 20, 0.5, &dev)?, modality(&y, 12, 2.0, &dev)?];

    // One VarMap per encoder: RedReg regulates the encoders; the heads have their own map.
    let (maps, heads) = ([VarMap::new(), VarMap::new()], VarMap::new());
    let enc = [encoder(&maps[0], 20, &dev)?, encoder(&maps[1], 12, &dev)?];
    let vb = VarBuilder::from_varmap(&heads, DType::F32, &dev);
    let uni = pair(|m| linear(FEATURES, CLASSES, vb.pp(m.to_string())))?;
    let fused = linear(2 * FEATURES, CLASSES, vb.pp("fused"))?;
    let mut vars = heads.all_vars();
    vars.extend(maps.iter().flat_map(VarMap::all_vars));
    let mut sgd = SGD::new(vars, 0.05)?;

    // RedReg: declared once, from the encoders and the largest batch.
    let mut redreg = RedReg::new(Config::new(EPOCHS), &[&maps[0], &maps[1]], BATCH)?;
    for epoch in 0..EPOCHS {
        redreg.begin_epoch(epoch)?; // θ₀: the drift d = θ − θ₀ starts at zero
        let (mut suppressed, mut correct) = ([0; 2], 0.0);
        for start in (0..N).step_by(BATCH) {
            let len = BATCH.min(N - start); // 64, …, 64, 40
            let y = y.narrow(0, start, len)?;
            let x = pair(|m| x[m].narrow(0, start, len))?;
            let pooled = pair(|m| enc[m].forward(&x[m]))?;
            let logits = pair(|m| uni[m].forward(&pooled[m]))?;
            let out = fused.forward(&Tensor::cat(&pooled, D::Minus1)?)?;
            let loss = (cross_entropy(&out, &y)? + cross_entropy(&logits[0], &y)?)?;
            let mut grads = (loss + cross_entropy(&logits[1], &y)?)?.backward()?;
            let hits = out.argmax(D::Minus1)?.eq(&y)?.to_dtype(DType::F32)?;
            correct += hits.sum_all()?.to_scalar::<f32>()?;

            // RedReg's redundancy: two noisy copies of each input (σ = 0.03) and their
            // encoder features, without gradient.
            let noisy = |x: &Tensor| x + Tensor::randn(0f32, NOISE_SIGMA as f32, x.dims(), &dev)?;
            let (x1, x2) = (pair(|m| noisy(&x[m]))?, pair(|m| noisy(&x[m]))?);
            let z1 = pair(|m| Ok(enc[m].forward(&x1[m])?.detach()))?;
            let z2 = pair(|m| Ok(enc[m].forward(&x2[m])?.detach()))?;
            let mods = pair(|m| {
                Ok(ModalityTensors {
                    logits: &logits[m],
                    pooled: &pooled[m],
                    x1: &x1[m],
                    x2: &x2[m],
                    z1: &z1[m],
                    z2: &z2[m],
                })
            })?;
            // Statistics, decision, and grad += β·d⊥ for the dominant encoder, in place.
            let decision = redreg.step(&y, &mods, &mut grads)?;
            if let Some(m) = decision.suppressed {
                suppressed[m] += 1;
            }
            sgd.step(&grads)?;
        }
        let [a, b] = suppressed;
        let (acc, steps) = (correct / N as f32, N.div_ceil(BATCH));
        println!(
            "epoch {epoch}: train accuracy {acc:.3}, steps suppressing A {a}, B {b} (of {steps})"
        );
    }
    Ok(())
}
