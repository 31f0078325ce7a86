//! The fused optimizer step (`redreg::optim`), one test binary for the whole operation (one
//! link instead of four): the oracle against closed forms (`reference`), the CPU pass
//! against the oracle (`cpu`), the RedReg correction folded into the pass (`fused`), and
//! the candle optimizer (`candle`, feature `candle`), and the CUDA step on a GPU or the
//! emulated driver (`cuda`, feature `cuda`).

mod cpu;
mod fused;
mod reference;

#[cfg(feature = "candle")]
mod candle;
#[cfg(feature = "cuda")]
mod cuda;
