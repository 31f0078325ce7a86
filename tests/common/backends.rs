//! One test body for every backend, as candle's `test_device!` does for its devices: a body
//! is a generic function over [`TestBackend`], and `backend_tests!(body, …)` makes one
//! `#[test]` per backend from it — `reference::body` (the f64 oracle), `cpu::body`
//! ([`CpuBackend`], 2 threads, a 64-element chunk so small layouts span many chunks, and no
//! inline path) and,
//! with feature `cuda`, `cuda::body` ([`CudaBackend`] on a real GPU or the emulated driver,
//! under the SKIP convention of `gpu.rs`). The emulated runs select the CUDA tests with the
//! filter `cuda::`.

use redreg::{Backend, CpuBackend, Dst, Element, Host, RankList, Reference, Src};
use std::ops::Range;

/// A backend under test, with the means to move test data in and out of its memory.
pub trait TestBackend: Backend {
    /// An owned buffer in this backend's memory.
    type Buf<T: Element>;

    /// A new buffer holding `x`.
    fn upload<T: Element>(&self, x: &[T]) -> Self::Buf<T>;
    /// The buffer's elements.
    fn download<T: Element>(&self, b: &Self::Buf<T>) -> Vec<T>;
    /// Elements `r` of the buffer, read-only.
    fn view<T: Element>(b: &Self::Buf<T>, r: Range<usize>) -> Src<'_, Self, T>;
    /// Elements `r` of the buffer, writable.
    fn view_mut<T: Element>(b: &mut Self::Buf<T>, r: Range<usize>) -> Dst<'_, Self, T>;
    /// A call's ranks on the host.
    fn host_ranks(r: &Self::Ranks) -> Vec<u32> {
        r.to_vec().expect("ranks")
    }
    /// Whether a body runs its small variant of a case: on the host always (the full sizes
    /// are a GPU's: chunks of 16384, occupancy, L2; the CPU's own random layouts are the
    /// `cpu_only` tests of each file), on CUDA with `REDREG_GPU_QUICK=1` ([`quick`]).
    fn quick() -> bool {
        true
    }
}

macro_rules! host_test_backend {
    ($b:ty) => {
        impl TestBackend for $b {
            type Buf<T: Element> = Vec<T>;

            fn upload<T: Element>(&self, x: &[T]) -> Vec<T> {
                x.to_vec()
            }
            fn download<T: Element>(&self, b: &Vec<T>) -> Vec<T> {
                b.clone()
            }
            fn view<T: Element>(b: &Vec<T>, r: Range<usize>) -> &[T] {
                &b[r]
            }
            fn view_mut<T: Element>(b: &mut Vec<T>, r: Range<usize>) -> &mut [T] {
                &mut b[r]
            }
        }
    };
}
host_test_backend!(Reference);
host_test_backend!(CpuBackend);

const _: fn() = || {
    fn host<B: Backend<Memory = Host>>() {}
    host::<Reference>();
    host::<CpuBackend>();
};

#[cfg(feature = "cuda")]
impl TestBackend for redreg::cuda::CudaBackend {
    type Buf<T: Element> = cudarc::driver::CudaSlice<T>;

    fn upload<T: Element>(&self, x: &[T]) -> Self::Buf<T> {
        self.stream().clone_htod(x).expect("upload")
    }
    fn download<T: Element>(&self, b: &Self::Buf<T>) -> Vec<T> {
        self.stream().clone_dtoh(b).expect("download")
    }
    fn view<T: Element>(b: &Self::Buf<T>, r: Range<usize>) -> cudarc::driver::CudaView<'_, T> {
        b.slice(r)
    }
    fn view_mut<T: Element>(
        b: &mut Self::Buf<T>,
        r: Range<usize>,
    ) -> cudarc::driver::CudaViewMut<'_, T> {
        b.slice_mut(r)
    }
    fn quick() -> bool {
        quick()
    }
}

/// The CPU backend of the shared tests: 2 threads, 64-element chunks, every call on the
/// pool (small test layouts would otherwise run on the calling thread).
pub fn cpu() -> CpuBackend {
    CpuBackend::with_threads(2)
        .and_then(|b| b.with_chunk(64))
        .expect("CPU backend")
        .with_inline_elements(0)
}

/// `REDREG_GPU_QUICK=1` (the emulated driver, sanitizers): the bodies' smaller variants.
pub fn quick() -> bool {
    std::env::var("REDREG_GPU_QUICK").is_ok_and(|v| v == "1")
}

/// One `#[test]` per backend for each generic body `fn body<B: TestBackend>(b: &B)`.
#[macro_export]
macro_rules! backend_tests {
    ($($body:ident),+ $(,)?) => {
        mod reference {
            $(
                #[test]
                fn $body() {
                    super::$body(&redreg::Reference);
                }
            )+
        }
        mod cpu {
            $(
                #[test]
                fn $body() {
                    super::$body(&$crate::common::backends::cpu());
                }
            )+
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            $(
                #[test]
                fn $body() {
                    if let Some(b) = $crate::common::gpu::backend(concat!("cuda::", stringify!($body))) {
                        super::$body(b);
                    }
                }
            )+
        }
    };
}
