// redreg emulated CUDA: the CUDA built-ins that kernels/*.cu use, for host C++.
//
// Included (g++ -include) in front of each kernels/<module>.cu when the emulated driver is
// built (tests/emu/build.sh). The kernels compile UNCHANGED: every CUDA thread of a block
// runs as a fiber (runtime.cpp); the built-ins below talk to the fiber scheduler, which
// enforces the hardware's rules (every thread of the block at the same __syncthreads, every
// lane named in a warp mask at the shuffle) and reports a violation as a launch failure.
//
// Memory spaces: device memory is host memory (driver.cpp); __shared__ variables are
// function-scope statics (one block runs at a time per OS thread: thread_local in plain
// mode; plain static under a process-wide kernel lock in the sanitizer modes, so that
// AddressSanitizer puts redzones around them and ThreadSanitizer sees one object).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#define REDREG_EMU_HOST 1  // selects the host paths in kernels/common.cuh (f16 conversions)

#ifdef EMU_LIST_KERNELS
#define __global__ __emu_global__  // a marker gen-registry.py finds in the preprocessed text
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#ifdef EMU_SHARED_THREAD_LOCAL
#define __shared__ static thread_local
#else
#define __shared__ static
#endif

namespace emu {

struct dim3 {
    unsigned int x, y, z;
};

struct Thread {
    dim3 idx;  // threadIdx
    int lane;  // linear thread id % 32
    int warp;  // linear thread id / 32
};

struct Launch {
    dim3 block_idx, block_dim, grid_dim;
};

extern thread_local Thread* cur_thread;
extern thread_local Launch* cur_launch;

// Scheduler entry points (runtime.cpp). `site` identifies the source line (divergence check).
void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
// Exchanges 8 bytes within the warp: every lane named in `mask` must arrive; returns the
// value lane `src` contributed (or this lane's own when src is outside the warp/width).
uint64_t shfl(unsigned mask, uint64_t mine, int src, const char* file, int line);
unsigned ballot(unsigned mask, bool pred, const char* file, int line);
void threadfence();

template <class T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// An optimisation barrier: the value must exist, rounded, in a register at this point, so
// the compiler cannot contract the surrounding arithmetic into an FMA.
inline double opaque(double x) {
    __asm__ volatile("" : "+x"(x));
    return x;
}

}  // namespace emu

#define threadIdx (emu::cur_thread->idx)
#define blockIdx (emu::cur_launch->block_idx)
#define blockDim (emu::cur_launch->block_dim)
#define gridDim (emu::cur_launch->grid_dim)
#define warpSize 32

#define __syncthreads() emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) emu::syncwarp(emu_mask_or_full(__VA_ARGS__), __FILE__, __LINE__)
inline unsigned emu_mask_or_full(unsigned m = 0xffffffffu) { return m; }
#define __threadfence() emu::threadfence()
#define __threadfence_block() emu::threadfence()

// Shuffles (width 32 only; the kernels use no other width).
template <class T>
inline T emu_shfl_down(unsigned mask, T v, unsigned d, const char* f, int l) {
    int lane = emu::cur_thread->lane;
    int src = lane + (int)d < 32 ? lane + (int)d : lane;
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), src, f, l));
}
template <class T>
inline T emu_shfl_up(unsigned mask, T v, unsigned d, const char* f, int l) {
    int lane = emu::cur_thread->lane;
    int src = lane - (int)d >= 0 ? lane - (int)d : lane;
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), src, f, l));
}
template <class T>
inline T emu_shfl_xor(unsigned mask, T v, int x, const char* f, int l) {
    int lane = emu::cur_thread->lane;
    int src = (lane ^ x) < 32 ? (lane ^ x) : lane;
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), src, f, l));
}
template <class T>
inline T emu_shfl_idx(unsigned mask, T v, int s, const char* f, int l) {
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), s & 31, f, l));
}
#define __shfl_down_sync(m, v, d) emu_shfl_down((m), (v), (d), __FILE__, __LINE__)
#define __shfl_up_sync(m, v, d) emu_shfl_up((m), (v), (d), __FILE__, __LINE__)
#define __shfl_xor_sync(m, v, x) emu_shfl_xor((m), (v), (x), __FILE__, __LINE__)
#define __shfl_sync(m, v, s) emu_shfl_idx((m), (v), (s), __FILE__, __LINE__)
#define __ballot_sync(m, p) emu::ballot((m), (p), __FILE__, __LINE__)
#define __any_sync(m, p) (emu::ballot((m), (p), __FILE__, __LINE__) != 0u)
#define __all_sync(m, p) (emu::ballot((m), (p), __FILE__, __LINE__) == (m))

// Bit casts and conversions.
inline long long __double_as_longlong(double x) { return emu::from_bits<long long>(emu::to_bits(x)); }
inline double __longlong_as_double(long long x) { return emu::from_bits<double>(emu::to_bits(x)); }
inline unsigned int __float_as_uint(float x) { return emu::from_bits<unsigned int>(emu::to_bits(x)); }
inline float __uint_as_float(unsigned int x) { return emu::from_bits<float>(emu::to_bits(x)); }
inline int __float_as_int(float x) { return emu::from_bits<int>(emu::to_bits(x)); }
inline float __int_as_float(int x) { return emu::from_bits<float>(emu::to_bits(x)); }
inline float __double2float_rn(double x) { return (float)x; }  // host default rounding: nearest even

// Explicitly rounded f64 arithmetic: never contracted into an FMA (nvcc guarantees the same
// for these intrinsics); the opaque() barriers stop g++ from fusing across inlining.
inline double __dadd_rn(double a, double b) { return emu::opaque(emu::opaque(a) + emu::opaque(b)); }
inline double __dsub_rn(double a, double b) { return emu::opaque(emu::opaque(a) - emu::opaque(b)); }
inline double __dmul_rn(double a, double b) { return emu::opaque(emu::opaque(a) * emu::opaque(b)); }
inline double __ddiv_rn(double a, double b) { return emu::opaque(emu::opaque(a) / emu::opaque(b)); }
inline double __dsqrt_rn(double a) { return emu::opaque(sqrt(emu::opaque(a))); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline double __drcp_rn(double a) { return __ddiv_rn(1.0, a); }

// Integer atomics (blocks of one launch run one after another on one OS thread, so these
// only need to be atomic for the race checker's benefit).
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned int atomicInc(unsigned int* p, unsigned int lim) {
    unsigned int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(p, &old, old >= lim ? 0u : old + 1u, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline unsigned int atomicCAS(unsigned int* p, unsigned int cmp, unsigned int v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
inline unsigned int atomicExch(unsigned int* p, unsigned int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }

#include "registry.h"
