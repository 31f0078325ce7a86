// redreg: fused redundancy statistics (issue 4), module `stats`.
//
// One launch of `stats_tasks` runs every task of a plan (one block per task, the same task
// table as the CPU executor, src/stats/cpu.rs), writing 4 f64 partials per task; one launch
// of `stats_finish` (one thread per statistic) combines the partials of each statistic in
// task order — the CPU's finishing pass line for line — into the result buffer, which the
// host copies back once. Every reduction has a fixed order: results are bitwise identical
// run to run. Arithmetic in f64; accumulator update acc = f32(f64(acc) + x^2) as on the CPU.
//
// Tables (u64): task t = tasks[5t..5t+5] = {entry, mode, a, start, end};
// entry i = desc[8i..8i+8] = {kind, dtype, p0, p1, p2, n1, n2, out};
// entry_tasks[2i..2i+2] = {first task, end task}.
#include "common.cuh"

#define ST_SQDIFF 0
#define ST_COS 1
#define ST_PROB 2
#define ST_SUMS 3
#define ST_DOTS 4
#define MODE_ELEMS 0
#define MODE_ROWS 1
#define MODE_PIECE 2
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2
#define ST_P 4

__device__ __forceinline__ double st_max(double m, double x) { return (x > m || x != x) ? x : m; }
__device__ __forceinline__ double st_ninf() { return __longlong_as_double(0xfff0000000000000LL); }

// cos from (dot, |a|^2, |b|^2): NaN if any is not finite, 0 for a zero row.
__device__ __forceinline__ double st_cos(double d, double na, double nb) {
    if (!rr_isfinite(d + na + nb)) return rr_nan();
    if (na == 0.0 || nb == 0.0) return 0.0;
    return d / (sqrt(na) * sqrt(nb));
}

template <class E>
__device__ __forceinline__ double ld(rr_u64 p, rr_u64 i) {
    return E::load(reinterpret_cast<const typename E::S*>(p)[i]);
}

// Block sum of N values (fixed order: per-thread, warp tree, warps in order); result valid
// in thread 0.
template <int N>
__device__ __forceinline__ void block_sum(double* v) {
    __shared__ double red[N * RR_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int k = 0; k < N; k++) v[k] = rr_warp_sum(v[k]);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < N; k++) red[k * RR_WARPS + warp] = v[k];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
        for (int k = 0; k < N; k++) {
            double s = 0.0;
            for (int w = 0; w < RR_WARPS; w++) s += red[k * RR_WARPS + w];
            v[k] = s;
        }
    }
}

__device__ __forceinline__ double warp_allsum(double x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ double warp_allmax(double x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x = st_max(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

template <class E>
__device__ void run_task(const rr_u64* __restrict__ d, rr_u64 mode, rr_u64 a, rr_u64 start,
                         rr_u64 end, double* __restrict__ out) {
    const rr_u64 kind = d[0], p0 = d[2], p1 = d[3], p2 = d[4], n2 = d[6];
    double v[3] = {0.0, 0.0, 0.0};
    if (kind == ST_SQDIFF || kind == ST_DOTS) {
        for (rr_u64 i = start + threadIdx.x; i < end; i += RR_THREADS) {
            double x = ld<E>(p0, i), y = ld<E>(p1, i);
            v[0] += kind == ST_SQDIFF ? (x - y) * (x - y) : x * y;
        }
        block_sum<1>(v);
        if (threadIdx.x == 0) out[0] = v[0];
    } else if (kind == ST_SUMS) {
        float* acc = reinterpret_cast<float*>(p2);
        for (rr_u64 i = start + threadIdx.x; i < end; i += RR_THREADS) {
            double x = ld<E>(p0, i);
            v[0] += x;
            v[1] += x * x;
            v[2] += fabs(x);
            if (acc) acc[i] = __double2float_rn((double)acc[i] + x * x);
        }
        block_sum<3>(v);
        if (threadIdx.x == 0) {
            out[0] = v[0];
            out[1] = v[1];
            out[2] = v[2];
        }
    } else if (mode == MODE_PIECE && kind == ST_COS) {
        for (rr_u64 i = start + threadIdx.x; i < end; i += RR_THREADS) {
            double x = ld<E>(p0, i), y = ld<E>(p1, i);
            v[0] += x * y;
            v[1] += x * x;
            v[2] += y * y;
        }
        block_sum<3>(v);
        if (threadIdx.x == 0) {
            out[0] = v[0];
            out[1] = v[1];
            out[2] = v[2];
        }
    } else if (mode == MODE_PIECE) {  // ST_PROB: max, then sum exp(x - max)
        __shared__ double bm;
        double m = st_ninf();
        for (rr_u64 i = start + threadIdx.x; i < end; i += RR_THREADS) m = st_max(m, ld<E>(p0, i));
        m = warp_allmax(m);
        __shared__ double wm[RR_WARPS];
        if ((threadIdx.x & 31) == 0) wm[threadIdx.x >> 5] = m;
        __syncthreads();
        if (threadIdx.x == 0) {
            double mm = st_ninf();
            for (int w = 0; w < RR_WARPS; w++) mm = st_max(mm, wm[w]);
            bm = mm;
        }
        __syncthreads();
        m = bm;
        if (m != st_ninf()) {
            for (rr_u64 i = start + threadIdx.x; i < end; i += RR_THREADS) v[0] += exp(ld<E>(p0, i) - m);
        }
        block_sum<1>(v);
        if (threadIdx.x == 0) {
            out[0] = m;
            out[1] = v[0];
        }
    } else {  // MODE_ROWS: one warp per row, rows start..end; per-warp totals in row order
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        double s = 0.0, bad = -1.0;
        for (rr_u64 r = start + warp; r < end; r += RR_WARPS) {
            const rr_u64 b0 = r * n2, b1 = b0 + n2;
            if (kind == ST_COS) {
                double dd = 0.0, na = 0.0, nb = 0.0;
                for (rr_u64 i = b0 + lane; i < b1; i += 32) {
                    double x = ld<E>(p0, i), y = ld<E>(p1, i);
                    dd += x * y;
                    na += x * x;
                    nb += y * y;
                }
                dd = rr_warp_sum(dd);
                na = rr_warp_sum(na);
                nb = rr_warp_sum(nb);
                if (lane == 0) s += st_cos(dd, na, nb);
            } else {
                const rr_i64 lab = reinterpret_cast<const rr_i64*>(p1)[r];
                const bool ok = lab >= 0 && (rr_u64)lab < n2;
                if (!ok) {
                    if (lane == 0 && bad < 0.0) bad = (double)r;
                    continue;
                }
                double m = st_ninf();
                for (rr_u64 i = b0 + lane; i < b1; i += 32) m = st_max(m, ld<E>(p0, i));
                m = warp_allmax(m);
                double z = 0.0;
                if (m != st_ninf()) {
                    for (rr_u64 i = b0 + lane; i < b1; i += 32) z += exp(ld<E>(p0, i) - m);
                }
                z = rr_warp_sum(z);
                if (lane == 0) s += exp(ld<E>(p0, b0 + (rr_u64)lab) - m) / z;
            }
        }
        __shared__ double ws[RR_WARPS], wb[RR_WARPS];
        if (lane == 0) {
            ws[warp] = s;
            wb[warp] = bad;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double t = 0.0, b = -1.0;
            for (int w = 0; w < RR_WARPS; w++) {
                t += ws[w];
                if (wb[w] >= 0.0 && (b < 0.0 || wb[w] < b)) b = wb[w];
            }
            out[0] = t;
            out[1] = b;
        }
    }
}

extern "C" __global__ void __launch_bounds__(RR_THREADS)
    stats_tasks(const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ desc,
                double* __restrict__ partials) {
    const rr_u64 t = blockIdx.x;
    const rr_u64* tk = tasks + 5 * t;
    const rr_u64* d = desc + 8 * tk[0];
    double* out = partials + ST_P * t;
    if (threadIdx.x < ST_P) out[threadIdx.x] = 0.0;
    __syncthreads();
    switch (d[1]) {
        case DT_F32: run_task<rr_f32>(d, tk[1], tk[2], tk[3], tk[4], out); break;
        case DT_F16: run_task<rr_f16>(d, tk[1], tk[2], tk[3], tk[4], out); break;
        default: run_task<rr_bf16>(d, tk[1], tk[2], tk[3], tk[4], out); break;
    }
}

__device__ double ld_any(rr_u64 dt, rr_u64 p, rr_u64 i) {
    if (dt == DT_F32) return ld<rr_f32>(p, i);
    if (dt == DT_F16) return ld<rr_f16>(p, i);
    return ld<rr_bf16>(p, i);
}

// Probability fault slots hold bit patterns (src/stats/plan.rs: write_prob).
__device__ void write_prob(double* v, double mean, rr_i64 row, rr_i64 label) {
    if (row < 0) {
        v[0] = mean;
        v[1] = __longlong_as_double(-1LL);
        v[2] = __longlong_as_double(-1LL);
    } else {
        v[0] = rr_nan();
        v[1] = __longlong_as_double(row);
        v[2] = __longlong_as_double(label);
    }
}

// One thread per statistic: the CPU's `finish` (src/stats/cpu.rs).
extern "C" __global__ void stats_finish(const rr_u64* __restrict__ entry_tasks,
                                        const rr_u64* __restrict__ tasks,
                                        const rr_u64* __restrict__ desc,
                                        const double* __restrict__ partials,
                                        double* __restrict__ results, rr_u64 n_entries) {
    const rr_u64 e = (rr_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n_entries) return;
    const rr_u64* d = desc + 8 * e;
    const rr_u64 kind = d[0], dt = d[1], n1 = d[5], n2 = d[6];
    double* v = results + d[7];
    const rr_u64 t0 = entry_tasks[2 * e], t1 = entry_tasks[2 * e + 1];
    if (kind == ST_SQDIFF) {
        double s = 0.0;
        for (rr_u64 t = t0; t < t1; t++) s += partials[ST_P * t];
        v[0] = s / (double)n1;
    } else if (kind == ST_DOTS || kind == ST_SUMS) {
        const int nv = kind == ST_SUMS ? 3 : 1;
        for (rr_u64 i = 0; i < (rr_u64)nv * n1; i++) v[i] = 0.0;
        for (rr_u64 t = t0; t < t1; t++) {
            const rr_u64 seg = tasks[5 * t + 2];
            for (int k = 0; k < nv; k++) v[k * n1 + seg] += partials[ST_P * t + k];
        }
    } else if (kind == ST_COS) {
        double s = 0.0, cd = 0.0, ca = 0.0, cb = 0.0;
        rr_i64 row = -1;
        for (rr_u64 t = t0; t < t1; t++) {
            const double* p = partials + ST_P * t;
            if (tasks[5 * t + 1] == MODE_PIECE) {
                const rr_i64 r = (rr_i64)tasks[5 * t + 2];
                if (r == row) {
                    cd += p[0];
                    ca += p[1];
                    cb += p[2];
                } else {
                    if (row >= 0) s += st_cos(cd, ca, cb);
                    row = r;
                    cd = p[0];
                    ca = p[1];
                    cb = p[2];
                }
            } else {
                s += p[0];
            }
        }
        if (row >= 0) s += st_cos(cd, ca, cb);
        v[0] = s / (double)n1;
    } else {  // ST_PROB
        const rr_i64* labels = reinterpret_cast<const rr_i64*>(d[3]);
        double s = 0.0, m = 0.0, z = 0.0;
        rr_i64 row = -1, frow = -1, flab = 0;
        for (rr_u64 t = t0; t <= t1; t++) {
            const bool piece = t < t1 && tasks[5 * t + 1] == MODE_PIECE;
            const rr_i64 r = t < t1 ? (rr_i64)tasks[5 * t + 2] : -2;
            const double* p = partials + ST_P * t;
            if (piece && r == row) {
                const double nm = st_max(m, p[0]);
                const double a = m == st_ninf() ? 0.0 : z * exp(m - nm);
                const double b = p[0] == st_ninf() ? 0.0 : p[1] * exp(p[0] - nm);
                z = a + b;
                m = nm;
                continue;
            }
            if (row >= 0) {  // close the previous row
                const rr_i64 lab = labels[row];
                if (lab < 0 || (rr_u64)lab >= n2) {
                    if (frow < 0) {
                        frow = row;
                        flab = lab;
                    }
                } else {
                    s += exp(ld_any(dt, d[2], (rr_u64)row * n2 + (rr_u64)lab) - m) / z;
                }
                row = -1;
            }
            if (t == t1) break;
            if (piece) {
                row = r;
                m = p[0];
                z = p[1];
            } else {
                s += p[0];
                if (p[1] >= 0.0 && frow < 0) {
                    frow = (rr_i64)p[1];
                    flab = labels[frow];
                }
            }
        }
        write_prob(v, s / (double)n1, frow, flab);
    }
}
