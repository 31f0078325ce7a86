//! The statistics executors under the one `backend_tests!` mechanism (`backends.rs`): a
//! statistics body is `fn body<S: TestStats>(s: &S)`, and `backend_tests!(body, …)` runs it
//! as `reference::body` (the f64 oracle `redreg::stats::reference::run` as an executor,
//! [`Oracle`]), `cpu::body` ([`CpuStats`]) and, with feature `cuda`, `cuda::body`
//! (`CudaStats` on a real GPU or the emulated driver, SKIP convention of `gpu.rs`). The
//! executors are not `Backend`s, so the special case is this trait, implemented for the
//! same three backend types the macro passes: it names the executor of each and moves the
//! test data in and out of its memory.
#![allow(dead_code)]

use redreg::stats::{reference, Buf, CpuStats, Labels, Stats, StatsPlan, StatsResults};
use redreg::{bf16, f16, CpuBackend, Element, Host, Memory, Reference};
use std::ops::{Bound, Range, RangeBounds};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Every statistics test holds it shared ([`TestStats::lock`]); a test that counts the
/// process's allocations holds it exclusively ([`exclusive`]).
static EXCLUSIVE: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

/// Held by every test that launches kernels: the launch and copy counts asserted on the
/// emulated driver are process-wide, so no other test may launch meanwhile.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a test body holds while it runs.
pub struct Guard(
    #[allow(dead_code)] RwLockReadGuard<'static, ()>,
    #[allow(dead_code)] Option<MutexGuard<'static, ()>>,
);

/// An element a test buffer holds (the statistics' element types, labels, accumulators).
#[cfg(feature = "cuda")]
pub trait Item:
    Copy + 'static + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits
{
}
#[cfg(not(feature = "cuda"))]
pub trait Item: Copy + 'static {}
impl Item for f32 {}
impl Item for f16 {}
impl Item for bf16 {}
impl Item for i64 {}

/// A statistic's element type, as a [`Buf`] of any memory takes it.
pub trait Elem: Element + Item {
    #[cfg(feature = "cuda")]
    fn device(v: cudarc::driver::CudaView<'_, Self>) -> Buf<'_, redreg::cuda::Device>;
}
macro_rules! elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            #[cfg(feature = "cuda")]
            fn device(v: cudarc::driver::CudaView<'_, $t>) -> Buf<'_, redreg::cuda::Device> {
                v.into()
            }
        }
    )*};
}
elem!(f32, f16, bf16);

/// A statistics executor under test, with the means to move test data in and out of its
/// memory.
pub trait TestStats {
    type Memory: Memory;
    type Exec: Stats<Memory = Self::Memory>;
    /// An owned buffer in this executor's memory.
    type Buf<T: Item>;

    /// The executor of `plan`.
    fn exec(&self, plan: &StatsPlan) -> redreg::Result<Self::Exec>;
    /// A new buffer holding `x` (empty ones included).
    fn upload<T: Item>(&self, x: &[T]) -> Self::Buf<T>;
    /// The buffer's elements.
    fn download<T: Item>(&self, b: &Self::Buf<T>) -> Vec<T>;
    /// Elements `r` of the buffer as a statistic's operand.
    fn buf<T: Elem>(b: &Self::Buf<T>, r: impl RangeBounds<usize>) -> Buf<'_, Self::Memory>;
    /// Elements `r` of a label buffer.
    fn labels(b: &Self::Buf<i64>, r: impl RangeBounds<usize>) -> Labels<'_, Self::Memory>;
    /// Elements `r` of an accumulator, writable.
    fn acc(
        b: &mut Self::Buf<f32>,
        r: impl RangeBounds<usize>,
    ) -> <Self::Memory as Memory>::Dst<'_, f32>;
    /// The emulated driver's (launches, host-to-device, device-to-host, device-to-device
    /// copies) so far; `None` elsewhere (the host, NVIDIA's driver).
    fn counts(&self) -> Option<[u64; 4]> {
        None
    }
    /// What the body holds while it runs ([`shared`]; on a device also [`serial`]).
    fn lock(&self) -> Guard {
        Guard(shared(), None)
    }
}

/// `r` resolved against a buffer of `len` elements.
pub fn range(r: impl RangeBounds<usize>, len: usize) -> Range<usize> {
    let start = match r.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match r.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    assert!(start <= end && end <= len, "{start}..{end} of {len}");
    start..end
}

/// The f64 oracle as an executor: `reference::run` on a copy of the plan.
pub struct Oracle {
    plan: StatsPlan,
    out: StatsResults,
}

impl Stats for Oracle {
    type Memory = Host;

    fn plan(&self) -> &StatsPlan {
        &self.plan
    }

    fn results(&self) -> &StatsResults {
        &self.out
    }

    fn run(
        &mut self,
        inputs: &mut [redreg::stats::Input<'_, Host>],
    ) -> redreg::Result<&StatsResults> {
        reference::run(&self.plan, inputs, &mut self.out)?;
        Ok(&self.out)
    }
}

macro_rules! host_test_stats {
    ($b:ty, $exec:ty, |$plan:ident| $new:expr) => {
        impl TestStats for $b {
            type Memory = Host;
            type Exec = $exec;
            type Buf<T: Item> = Vec<T>;

            fn exec(&self, $plan: &StatsPlan) -> redreg::Result<$exec> {
                $new
            }
            fn upload<T: Item>(&self, x: &[T]) -> Vec<T> {
                x.to_vec()
            }
            fn download<T: Item>(&self, b: &Vec<T>) -> Vec<T> {
                b.clone()
            }
            fn buf<T: Elem>(b: &Vec<T>, r: impl RangeBounds<usize>) -> Buf<'_, Host> {
                Buf::of(&b[range(r, b.len())]).expect("buffer")
            }
            fn labels(b: &Vec<i64>, r: impl RangeBounds<usize>) -> Labels<'_, Host> {
                Labels(&b[range(r, b.len())])
            }
            fn acc(b: &mut Vec<f32>, r: impl RangeBounds<usize>) -> &mut [f32] {
                let r = range(r, b.len());
                &mut b[r]
            }
        }
    };
}
host_test_stats!(Reference, Oracle, |plan| Ok(Oracle {
    plan: plan.clone(),
    out: plan.new_results(),
}));
host_test_stats!(CpuBackend, CpuStats, |plan| CpuStats::new(plan));

/// A device buffer of `len` elements (at least one allocated: a zero-byte device
/// allocation is an error).
#[cfg(feature = "cuda")]
pub struct DevBuf<T> {
    s: cudarc::driver::CudaSlice<T>,
    len: usize,
}

#[cfg(feature = "cuda")]
impl TestStats for redreg::cuda::CudaBackend {
    type Memory = redreg::cuda::Device;
    type Exec = redreg::stats::CudaStats;
    type Buf<T: Item> = DevBuf<T>;

    fn exec(&self, plan: &StatsPlan) -> redreg::Result<Self::Exec> {
        redreg::stats::CudaStats::new(self, plan)
    }
    fn upload<T: Item>(&self, x: &[T]) -> DevBuf<T> {
        let s = if x.is_empty() {
            self.stream().alloc_zeros::<T>(1)
        } else {
            self.stream().clone_htod(x)
        };
        DevBuf {
            s: s.expect("upload"),
            len: x.len(),
        }
    }
    fn download<T: Item>(&self, b: &DevBuf<T>) -> Vec<T> {
        let mut v = self.stream().clone_dtoh(&b.s).expect("download");
        v.truncate(b.len);
        v
    }
    fn buf<T: Elem>(b: &DevBuf<T>, r: impl RangeBounds<usize>) -> Buf<'_, redreg::cuda::Device> {
        T::device(b.s.slice(range(r, b.len)))
    }
    fn labels(b: &DevBuf<i64>, r: impl RangeBounds<usize>) -> Labels<'_, redreg::cuda::Device> {
        Labels(b.s.slice(range(r, b.len)))
    }
    fn acc(
        b: &mut DevBuf<f32>,
        r: impl RangeBounds<usize>,
    ) -> cudarc::driver::CudaViewMut<'_, f32> {
        b.s.slice_mut(range(r, b.len))
    }
    fn counts(&self) -> Option<[u64; 4]> {
        let c = super::emu::Counters::open().ok()?.now();
        Some([c.launches, c.htod, c.dtoh, c.dtod])
    }
    fn lock(&self) -> Guard {
        Guard(shared(), Some(serial()))
    }
}
