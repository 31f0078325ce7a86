// redreg: shared device code for every kernels/*.cu module.
//
// HEADER-FREE on purpose: no <cuda_fp16.h>, no <cuda_runtime.h>, no standard headers, so the
// same text compiles under nvcc (`-I kernels`) and under NVRTC, which has no file system
// (the crate inlines this file in place of the include line before calling NVRTC).
// Only compiler built-ins are used: __shfl_down_sync, __syncthreads, __syncwarp,
// __float_as_uint & co., sqrt, and inline PTX `cvt` for f16 (with a host path for the
// emulated driver of tests/emu, selected by its shim's REDREG_EMU_HOST).
//
// Contents: integer typedefs; element types (f32, f16, bf16 stored as raw bits, arithmetic
// in f64); 16-byte vector loads/stores; the chunk-task table layout; warp reductions.
#pragma once

typedef unsigned long long rr_u64;
typedef long long rr_i64;
typedef unsigned int rr_u32;
typedef unsigned short rr_u16;

// Fixed work decomposition (must match src/cuda/mod.rs: CHUNK, THREADS). The chunk table
// depends only on the layout and CHUNK, so every reduction order is fixed: results are
// bitwise reproducible run to run for the same buffers.
#define RR_CHUNK 16384
#define RR_THREADS 256
#define RR_WARPS (RR_THREADS / 32)
#define RR_MAX_K 8
// partial_stride(k) = k(k+1)/2 + k (src/solve.rs)
#define RR_STRIDE(k) ((k) * ((k) + 1) / 2 + (k))
#define RR_MAX_STRIDE RR_STRIDE(RR_MAX_K)

// Chunk-task table: task t is three u64 at tasks[3t]: segment, first element, end element
// (absolute element offsets in the flat buffers; 64-bit so totals above 2^31 work).
struct rr_task {
    rr_u64 seg, start, end;
};

__device__ __forceinline__ rr_task rr_load_task(const rr_u64* __restrict__ tasks, rr_u64 t) {
    rr_task r;
    r.seg = tasks[3 * t];
    r.start = tasks[3 * t + 1];
    r.end = tasks[3 * t + 2];
    return r;
}

// ---------------------------------------------------------------------------------------
// Conversions. Loads widen exactly; stores round ONCE from f64 to the element type (round
// to nearest even, overflow to +-Inf, NaN stays NaN), the same as `Element::from_f64`.
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ bool rr_isfinite(double x) {
    return (__double_as_longlong(x) & 0x7ff0000000000000LL) != 0x7ff0000000000000LL;
}

__device__ __forceinline__ double rr_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

// f64 -> f32 with round-to-ODD: the f32 nearest toward zero, with its last bit forced to 1
// when inexact. Rounding that result to any format with at least 2 fewer significand bits
// (f16: 11, bf16: 8, f32 has 24) gives the correctly rounded f64 -> f16/bf16 result, i.e.
// a single rounding. Exponent range: f32 covers f16/bf16 ranges incl. subnormals.
__device__ __forceinline__ float rr_f64_to_f32_odd(double x) {
    float f = (float)x;  // round to nearest even
    double back = (double)f;
    if (back == x || x != x) return f;  // exact, or NaN
    rr_u32 b = __float_as_uint(f);
    rr_u64 ab = (rr_u64)__double_as_longlong(back) & 0x7fffffffffffffffULL;
    rr_u64 ax = (rr_u64)__double_as_longlong(x) & 0x7fffffffffffffffULL;
    if (ab > ax) b -= 1u;  // rounded away from zero (also f = Inf): step back toward zero
    b |= 1u;
    return __uint_as_float(b);
}

#ifndef REDREG_EMU_HOST
__device__ __forceinline__ float rr_h2f(rr_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ rr_u16 rr_f2h(float f) {
    rr_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
// Host path for the emulated driver (tests/emu/shim.h defines REDREG_EMU_HOST): the same
// IEEE conversions in integer arithmetic, checked exhaustively by tests/emu/f16_check.cpp.
__device__ __forceinline__ float rr_h2f(rr_u16 h) {
    const rr_u32 s = ((rr_u32)h & 0x8000u) << 16;
    rr_u32 e = ((rr_u32)h >> 10) & 0x1fu;
    rr_u32 m = (rr_u32)h & 0x3ffu;
    if (e == 0) {
        if (m == 0) return __uint_as_float(s);  // +-0
        e = 113;  // subnormal: normalise (value m * 2^-24)
        while (!(m & 0x400u)) {
            m <<= 1;
            e -= 1;
        }
        return __uint_as_float(s | (e << 23) | ((m & 0x3ffu) << 13));
    }
    if (e == 31) return __uint_as_float(s | 0x7f800000u | (m << 13));  // Inf, NaN (payload kept)
    return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
}

__device__ __forceinline__ rr_u16 rr_f2h(float f) {  // round to nearest even
    const rr_u32 u = __float_as_uint(f);
    const rr_u32 s = (u >> 16) & 0x8000u;
    rr_u32 a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (rr_u16)(s | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN stays NaN
    if (a >= 0x47800000u) return (rr_u16)(s | 0x7c00u);                         // >= 2^16: Inf
    if (a >= 0x38800000u) {  // normal f16 range (a carry into exponent 31 gives Inf)
        a += 0xc8000fffu + ((a >> 13) & 1u);
        return (rr_u16)(s | (a >> 13));
    }
    const rr_u32 e = a >> 23;
    if (e < 101) return (rr_u16)s;  // below 2^-25: rounds to zero
    const rr_u32 m = (a & 0x7fffffu) | 0x800000u;
    const rr_u32 sh = 126 - e;  // 14..25: f16 subnormal units of 2^-24
    rr_u32 q = m >> sh;
    const rr_u32 rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1);
    if (rem > half || (rem == half && (q & 1u))) q += 1;
    return (rr_u16)(s | q);
}
#endif

__device__ __forceinline__ float rr_bf2f(rr_u16 h) { return __uint_as_float(((rr_u32)h) << 16); }

// f32 -> bf16, round to nearest even in integer arithmetic (works on every arch; the PTX
// cvt.rn.bf16.f32 needs sm_80).
__device__ __forceinline__ rr_u16 rr_f2bf(float f) {
    rr_u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (rr_u16)((u >> 16) | 0x0040u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (rr_u16)(u >> 16);
}

// 16 bytes, for vectorised loads and stores (ld.global.v4.u32).
struct alignas(16) rr_v16 {
    rr_u32 x, y, z, w;
};

__device__ __forceinline__ rr_u32 rr_v16_word(const rr_v16& v, int i) {
    return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// Element types: S is the storage type, VEC the number of elements per 16 bytes.
struct rr_f32 {
    typedef float S;
    static constexpr int VEC = 4;
    static __device__ __forceinline__ double load(S x) { return (double)x; }
    static __device__ __forceinline__ S store(double x) { return (float)x; }
    static __device__ __forceinline__ double lane(const rr_v16& v, int j) {
        return (double)__uint_as_float(rr_v16_word(v, j));
    }
    static __device__ __forceinline__ rr_u32 word(const double* y, int w) {
        return __float_as_uint((float)y[w]);
    }
};

struct rr_f16 {
    typedef rr_u16 S;
    static constexpr int VEC = 8;
    static __device__ __forceinline__ double load(S x) { return (double)rr_h2f(x); }
    static __device__ __forceinline__ S store(double x) { return rr_f2h(rr_f64_to_f32_odd(x)); }
    static __device__ __forceinline__ double lane(const rr_v16& v, int j) {
        rr_u32 w = rr_v16_word(v, j >> 1);
        return (double)rr_h2f((rr_u16)((j & 1) ? (w >> 16) : (w & 0xffffu)));
    }
    static __device__ __forceinline__ rr_u32 word(const double* y, int w) {
        return (rr_u32)store(y[2 * w]) | ((rr_u32)store(y[2 * w + 1]) << 16);
    }
};

struct rr_bf16 {
    typedef rr_u16 S;
    static constexpr int VEC = 8;
    static __device__ __forceinline__ double load(S x) { return (double)rr_bf2f(x); }
    static __device__ __forceinline__ S store(double x) { return rr_f2bf(rr_f64_to_f32_odd(x)); }
    static __device__ __forceinline__ double lane(const rr_v16& v, int j) {
        rr_u32 w = rr_v16_word(v, j >> 1);
        return (double)rr_bf2f((rr_u16)((j & 1) ? (w >> 16) : (w & 0xffffu)));
    }
    static __device__ __forceinline__ rr_u32 word(const double* y, int w) {
        return (rr_u32)store(y[2 * w]) | ((rr_u32)store(y[2 * w + 1]) << 16);
    }
};

// Packs VEC f64 values into 16 bytes of element type E (one rounding each).
template <class E>
__device__ __forceinline__ rr_v16 rr_pack(const double* y) {
    rr_v16 r;
    r.x = E::word(y, 0);
    r.y = E::word(y, 1);
    r.z = E::word(y, 2);
    r.w = E::word(y, 3);
    return r;
}

template <class E>
__device__ __forceinline__ rr_v16 rr_ld16(const typename E::S* p, rr_u64 e) {
    return *reinterpret_cast<const rr_v16*>(p + e);
}

template <class E>
__device__ __forceinline__ void rr_st16(typename E::S* p, rr_u64 e, const rr_v16& v) {
    *reinterpret_cast<rr_v16*>(p + e) = v;
}

// Byte misalignment (mod 16) of element `e` of buffer `p`.
template <class E>
__device__ __forceinline__ rr_u32 rr_mis(const typename E::S* p, rr_u64 e) {
    return (rr_u32)(((rr_u64)p + e * sizeof(typename E::S)) & 15u);
}

// Vector window of a chunk [start, end): when every buffer of the call has the same
// misalignment at `start` (and element-aligned pointers), elements [vbeg, vbeg + nvec*VEC)
// are processed as 16-byte vectors and the head [start, vbeg) and tail scalar; otherwise
// nvec = 0 and the whole chunk is scalar. The decision is uniform per block.
struct rr_window {
    rr_u64 vbeg, nvec;
};

template <class E>
__device__ __forceinline__ rr_window rr_make_window(rr_u64 start, rr_u64 end, rr_u32 mis0, bool same) {
    rr_window w;
    const rr_u64 n = end - start;
    const rr_u32 es = (rr_u32)sizeof(typename E::S);
    if (!same || (mis0 % es) != 0) {
        w.vbeg = end;
        w.nvec = 0;
        return w;
    }
    rr_u64 head = mis0 == 0 ? 0 : (rr_u64)((16u - mis0) / es);
    if (head > n) head = n;
    w.vbeg = start + head;
    w.nvec = (n - head) / (rr_u64)E::VEC;
    return w;
}

// Sum over the 32 lanes of a warp in a fixed tree order; the total lands in lane 0.
__device__ __forceinline__ double rr_warp_sum(double x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
    return x;
}
