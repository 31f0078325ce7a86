// redreg: fused redundancy statistics (issue 4), module `stats`.
//
// One launch of `stats_tasks` runs a whole plan: one block per task (the same task table as
// the CPU executor, src/stats/cpu.rs, built for the declared rows; a run with fewer rows has
// them in its descriptors, and the tasks beyond them do nothing: st_clip), each writing 4
// f64 partials; the last block of each statistic (an integer ticket) combines the
// statistic's partials in task order — the CPU's finishing pass line for line, st_finish —
// into the result buffer, which the host copies back once. Every reduction has a fixed
// order: results are bitwise identical run to run. Arithmetic in f64; accumulator update acc = f32(f64(acc) + x^2) as on the CPU.
//
// Tables (u64; word counts and order from redreg_abi.cuh):
// task t = tasks[5t..5t+5] = {entry, mode, a, start, end};
// entry i = desc[8i..8i+8] = {kind, dtype, p0, p1, p2, n1, n2, out}, uploaded every run
// (n1 of a row statistic: this run's elements (SQDIFF) or rows (COS, PROB));
// entry_tasks[2i..2i+2] = {first task, end task}.
#include "common.cuh"

// Kinds RR_ST_*, task modes RR_ST_MODE_*, dtype codes RR_DT_*, the tables' layouts
// (RR_ST_TASK_*, RR_ST_DESC_*, RR_ST_ENTRY_*, RR_ST_PARTIALS): generated from src/abi.rs.
#include "redreg_abi.cuh"

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

// The elements of one task [start, end) of one or two buffers, in the canonical order of
// the projection's pass 1: thread t takes the groups of VEC (16 bytes) consecutive
// elements t, t + 256, ... counted from the task's start, and calls
// f(first element, x[VEC], y[VEC], count) once per group (count < VEC only for the last
// group; y is 0 without p1). The group is one 16-byte load per buffer when both are
// 16-byte aligned at the task's start (uniform per block), else VEC scalar loads: the same
// values in the same order, so the sums do not depend on the buffers' alignment, and a
// thread has a whole group of loads in flight before it accumulates (a task used to wait
// a memory round trip per element).
template <class E, class F>
__device__ __forceinline__ void st_groups(rr_u64 p0, rr_u64 p1, rr_u64 start, rr_u64 end, F f) {
    typedef typename E::S S;
    const S* x = reinterpret_cast<const S*>(p0);
    const S* y = reinterpret_cast<const S*>(p1);
    const bool vec = rr_mis<E>(x, start) == 0 && (!y || rr_mis<E>(y, start) == 0);
    const rr_u64 n_groups = (end - start + E::VEC - 1) / (rr_u64)E::VEC;
    for (rr_u64 q = threadIdx.x; q < n_groups; q += RR_THREADS) {
        const rr_u64 e0 = start + q * (rr_u64)E::VEC;
        const int cnt = e0 + E::VEC <= end ? E::VEC : (int)(end - e0);
        double xs[E::VEC], ys[E::VEC];
        if (vec && cnt == E::VEC) {
            const rr_v16 xv = rr_ld16<E>(x, e0);
            rr_v16 yv;
            yv.x = yv.y = yv.z = yv.w = 0u;
            if (y) yv = rr_ld16<E>(y, e0);
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) {
                xs[j] = E::lane(xv, j);
                ys[j] = y ? E::lane(yv, j) : 0.0;
            }
        } else {
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) {
                xs[j] = j < cnt ? E::load(x[e0 + j]) : 0.0;
                ys[j] = (y && j < cnt) ? E::load(y[e0 + j]) : 0.0;
            }
        }
        f(e0, xs, ys, cnt);
    }
}

template <class E>
__device__ void run_task(const rr_u64* __restrict__ d, rr_u64 mode, rr_u64 a, rr_u64 start,
                         rr_u64 end, double* __restrict__ out) {
    const rr_u64 kind = d[RR_ST_DESC_KIND], p0 = d[RR_ST_DESC_P0], p1 = d[RR_ST_DESC_P1],
                 p2 = d[RR_ST_DESC_P2], n2 = d[RR_ST_DESC_N2];
    double v[3] = {0.0, 0.0, 0.0};
    // Sums of products as explicit fused multiply-adds (the same in the vector and the
    // scalar form of a group, see st_groups).
    if (kind == RR_ST_SQDIFF || kind == RR_ST_DOTS) {
        const bool sq = kind == RR_ST_SQDIFF;
        st_groups<E>(p0, p1, start, end, [&](rr_u64, const double* xs, const double* ys, int cnt) {
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) {
                if (j < cnt) {
                    const double dd = xs[j] - ys[j];
                    v[0] = sq ? __fma_rn(dd, dd, v[0]) : __fma_rn(xs[j], ys[j], v[0]);
                }
            }
        });
        block_sum<1>(v);
        if (threadIdx.x == 0) out[0] = v[0];
    } else if (kind == RR_ST_SUMS) {
        float* __restrict__ acc = reinterpret_cast<float*>(p2);
        st_groups<E>(p0, 0, start, end, [&](rr_u64 e0, const double* xs, const double*, int cnt) {
            // The group's accumulator values are all loaded before the first store.
            float a[E::VEC];
            if (acc) {
#pragma unroll
                for (int j = 0; j < E::VEC; ++j) a[j] = j < cnt ? acc[e0 + j] : 0.0f;
            }
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) {
                if (j < cnt) {
                    const double x = xs[j];
                    v[0] += x;
                    v[1] = __fma_rn(x, x, v[1]);
                    v[2] += fabs(x);
                    if (acc) acc[e0 + j] = __double2float_rn(__fma_rn(x, x, (double)a[j]));
                }
            }
        });
        block_sum<3>(v);
        if (threadIdx.x == 0) {
            out[0] = v[0];
            out[1] = v[1];
            out[2] = v[2];
        }
    } else if (mode == RR_ST_MODE_PIECE && kind == RR_ST_COS) {
        st_groups<E>(p0, p1, start, end, [&](rr_u64, const double* xs, const double* ys, int cnt) {
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) {
                if (j < cnt) {
                    v[0] = __fma_rn(xs[j], ys[j], v[0]);
                    v[1] = __fma_rn(xs[j], xs[j], v[1]);
                    v[2] = __fma_rn(ys[j], ys[j], v[2]);
                }
            }
        });
        block_sum<3>(v);
        if (threadIdx.x == 0) {
            out[0] = v[0];
            out[1] = v[1];
            out[2] = v[2];
        }
    } else if (mode == RR_ST_MODE_PIECE) {  // RR_ST_PROB: max, then sum exp(x - max)
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
    } else {  // RR_ST_MODE_ROWS: a warp per row, rows start..end; warp totals in row order
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        double s = 0.0, bad = -1.0;
        for (rr_u64 r = start + warp; r < end; r += RR_WARPS) {
            const rr_u64 b0 = r * n2, b1 = b0 + n2;
            if (kind == RR_ST_COS) {
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

// This run's part of task (mode, a, start, end) of a statistic of `kind` whose descriptor
// holds this run's N1 (src/stats/cpu.rs, Task::clip, line for line): false when the task
// lies wholly beyond the run's rows (a short batch), else true with `end` cut at the last
// row. SQDIFF: N1 elements; COS, PROB: N1 rows (a row piece belongs to row `a`); the
// per-segment statistics always run as declared. A statistic's tasks are in row order, so
// those that remain are a prefix of them.
__device__ __forceinline__ bool st_clip(rr_u64 kind, rr_u64 n1, rr_u64 mode, rr_u64 a,
                                        rr_u64 start, rr_u64* end) {
    if (kind == RR_ST_SUMS || kind == RR_ST_DOTS) return true;
    if (mode == RR_ST_MODE_PIECE) return a < n1;
    if (start >= n1) return false;
    if (*end > n1) *end = n1;
    return true;
}

__device__ double ld_any(rr_u64 dt, rr_u64 p, rr_u64 i) {
    if (dt == RR_DT_F32) return ld<rr_f32>(p, i);
    if (dt == RR_DT_F16) return ld<rr_f16>(p, i);
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

// PROB: close row `row` (max m, scaled sum z): add its probability of the label, or record
// the first row whose label is out of range (src/stats/cpu.rs, finish).
__device__ void st_close_row(const rr_u64* d, rr_i64 row, double m, double z, double* s,
                             rr_i64* frow, rr_i64* flab) {
    const rr_u64 n2 = d[RR_ST_DESC_N2];
    const rr_i64 lab = reinterpret_cast<const rr_i64*>(d[RR_ST_DESC_P1])[row];
    if (lab < 0 || (rr_u64)lab >= n2) {
        if (*frow < 0) {
            *frow = row;
            *flab = lab;
        }
    } else {
        *s += exp(ld_any(d[RR_ST_DESC_DTYPE], d[RR_ST_DESC_P0], (rr_u64)row * n2 + (rr_u64)lab) - m) / z;
    }
}

// One batch of staged tasks (shared memory, one per block: declared once in st_finish, not
// per kind, or each instantiation would get its own).
struct StStage {
    double p[RR_THREADS * RR_ST_PARTIALS];
    rr_u64 a[RR_THREADS];
    int flags[RR_THREADS];  // bit 0: st_clip keeps the task; bit 1: a row piece
    int done;
};

// The finish of statistic e: the CPU's `finish` (src/stats/cpu.rs) line for line, over the
// partials of this run's tasks in task order. Called by every thread of the statistic's last
// block. The partials are staged through shared memory RR_THREADS tasks at a time: each
// thread loads one task's RR_ST_PARTIALS values (volatile: they were written by other
// blocks, no stale L1 line), its row/segment and mode, and whether st_clip keeps it; then
// thread 0 consumes the batch in task order. Every sum keeps the serial order (the results
// are the same bits as a one-thread finish); only the loads run in parallel. A one-thread
// finish waited an L2 round trip per partial: about 0.5 ms of a ResNet-18 step's 0.58 ms
// plan on an H200; staged, the plan takes 0.22 ms (docs/gpu-results.md, 2026-12-04).
template <int KIND>
__device__ void st_finish_kind(StStage* st, rr_u64 e, const rr_u64* __restrict__ entry_tasks,
                               const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ desc,
                               const volatile double* partials, double* __restrict__ results) {
    double* sp = st->p;
    rr_u64* sa = st->a;
    int* sflags = st->flags;
    int& s_done = st->done;
    const rr_u64* d = desc + RR_ST_DESC_WORDS * e;
    const rr_u64 n1 = d[RR_ST_DESC_N1];
    double* v = results + d[RR_ST_DESC_OUT];
    const rr_u64 t0 = entry_tasks[RR_ST_ENTRY_WORDS * e + RR_ST_ENTRY_FIRST];
    const rr_u64 tn = entry_tasks[RR_ST_ENTRY_WORDS * e + RR_ST_ENTRY_END];
    constexpr int NV = KIND == RR_ST_SUMS ? 3 : 1;  // DOTS, SUMS: values per segment
    // Thread 0's running state (the serial finish's locals), kept across batches.
    double s = 0.0, acc[NV];
    double cd = 0.0, ca = 0.0, cb = 0.0;  // COS: the open row's sums
    double m = 0.0, z = 0.0;              // PROB: the open row's max and scaled sum
    rr_i64 row = -1, frow = -1, flab = 0, cur = -1;
    for (int k = 0; k < NV; k++) acc[k] = 0.0;
    if (threadIdx.x == 0) {
        s_done = 0;
        if (KIND == RR_ST_DOTS || KIND == RR_ST_SUMS)
            for (rr_u64 i = 0; i < (rr_u64)NV * n1; i++) v[i] = 0.0;
    }
    for (rr_u64 base = t0; base < tn; base += RR_THREADS) {
        __syncthreads();    // the previous batch is consumed (and s_done is visible)
        if (s_done) break;  // block-uniform
        const rr_u64 t = base + threadIdx.x;
        if (t < tn) {
            const rr_u64* tk = tasks + RR_ST_TASK_WORDS * t;
            rr_u64 end = tk[RR_ST_TASK_END];
            const rr_u64 mode = tk[RR_ST_TASK_MODE];
            sa[threadIdx.x] = tk[RR_ST_TASK_A];
            sflags[threadIdx.x] =
                (st_clip(KIND, n1, mode, tk[RR_ST_TASK_A], tk[RR_ST_TASK_START], &end) ? 1 : 0) |
                (mode == RR_ST_MODE_PIECE ? 2 : 0);
#pragma unroll
            for (int k = 0; k < RR_ST_PARTIALS; k++)
                sp[RR_ST_PARTIALS * threadIdx.x + k] = partials[RR_ST_PARTIALS * t + k];
        }
        __syncthreads();
        if (threadIdx.x != 0) continue;
        const rr_u64 bend = tn - base < (rr_u64)RR_THREADS ? tn - base : (rr_u64)RR_THREADS;
        for (rr_u64 i = 0; i < bend; i++) {
            if (!(sflags[i] & 1)) {  // this run's tasks are a prefix (a short batch has fewer rows)
                s_done = 1;
                break;
            }
            const double* p = sp + RR_ST_PARTIALS * i;
            const bool piece = (sflags[i] & 2) != 0;
            if (KIND == RR_ST_SQDIFF) {
                s += p[0];
            } else if (KIND == RR_ST_DOTS || KIND == RR_ST_SUMS) {
                // v[k·n1 + seg] += p[k] in task order, with the segment's running sums held
                // in registers between its (consecutive) tasks: the same additions.
                const rr_i64 seg = (rr_i64)sa[i];
                if (seg != cur) {
                    if (cur >= 0)
                        for (int k = 0; k < NV; k++) v[k * n1 + cur] = acc[k];
                    cur = seg;
                    for (int k = 0; k < NV; k++) acc[k] = v[k * n1 + seg];
                }
                for (int k = 0; k < NV; k++) acc[k] += p[k];
            } else if (KIND == RR_ST_COS) {
                if (piece) {
                    const rr_i64 r = (rr_i64)sa[i];
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
            } else {  // RR_ST_PROB
                const rr_i64 r = (rr_i64)sa[i];
                if (piece && r == row) {
                    const double nm = st_max(m, p[0]);
                    const double a = m == st_ninf() ? 0.0 : z * exp(m - nm);
                    const double b = p[0] == st_ninf() ? 0.0 : p[1] * exp(p[0] - nm);
                    z = a + b;
                    m = nm;
                    continue;
                }
                if (row >= 0) {  // close the previous row
                    st_close_row(d, row, m, z, &s, &frow, &flab);
                    row = -1;
                }
                if (piece) {
                    row = r;
                    m = p[0];
                    z = p[1];
                } else {
                    s += p[0];
                    if (p[1] >= 0.0 && frow < 0) {
                        frow = (rr_i64)p[1];
                        flab = reinterpret_cast<const rr_i64*>(d[RR_ST_DESC_P1])[frow];
                    }
                }
            }
        }
    }
    if (threadIdx.x != 0) return;
    if (KIND == RR_ST_SQDIFF) {
        v[0] = s / (double)n1;
    } else if (KIND == RR_ST_DOTS || KIND == RR_ST_SUMS) {
        if (cur >= 0)
            for (int k = 0; k < NV; k++) v[k * n1 + cur] = acc[k];
    } else if (KIND == RR_ST_COS) {
        if (row >= 0) s += st_cos(cd, ca, cb);
        v[0] = s / (double)n1;
    } else {  // RR_ST_PROB: close the last row
        if (row >= 0) st_close_row(d, row, m, z, &s, &frow, &flab);
        write_prob(v, s / (double)n1, frow, flab);
    }
}

__device__ void st_finish(rr_u64 e, const rr_u64* __restrict__ entry_tasks,
                          const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ desc,
                          const volatile double* partials, double* __restrict__ results) {
    __shared__ StStage st;
#define ST_FINISH_ARGS &st, e, entry_tasks, tasks, desc, partials, results
    switch (desc[RR_ST_DESC_WORDS * e + RR_ST_DESC_KIND]) {  // block-uniform
        case RR_ST_SQDIFF: st_finish_kind<RR_ST_SQDIFF>(ST_FINISH_ARGS); break;
        case RR_ST_COS: st_finish_kind<RR_ST_COS>(ST_FINISH_ARGS); break;
        case RR_ST_PROB: st_finish_kind<RR_ST_PROB>(ST_FINISH_ARGS); break;
        case RR_ST_SUMS: st_finish_kind<RR_ST_SUMS>(ST_FINISH_ARGS); break;
        default: st_finish_kind<RR_ST_DOTS>(ST_FINISH_ARGS); break;
    }
#undef ST_FINISH_ARGS
}

// stats_tasks: the whole run in one launch. Launch: grid = (n_tasks of the table), block =
// (RR_THREADS). Block t runs task t (or, beyond this run's rows, nothing: zero partials),
// then takes a ticket of its statistic (atomicAdd on counts[entry], after a __threadfence
// that publishes its partials device-wide); the block that draws the statistic's last
// ticket resets the counter to 0 for the next run and finishes the statistic (st_finish,
// the whole block) into `results`, which the host copies back once. The finish reads the partials
// in task order, so the result does not depend on which block came last. A statistic with
// no task at all (no elements) is never touched here: its constant results are written when
// the executor is made (src/stats/cuda.rs). counts[n_entries] (u32): 0 on entry and on exit.
// (4 resident blocks per SM, <= 64 registers, as before the block-wide finish: ptxas 13.0
// gives 56-64 registers and no spills on sm_75-90.)
extern "C" __global__ void __launch_bounds__(RR_THREADS, 4)
    stats_tasks(const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ entry_tasks,
                const rr_u64* __restrict__ desc, double* partials, rr_u32* counts,
                double* __restrict__ results) {
    const rr_u64 t = blockIdx.x;
    const rr_u64* tk = tasks + RR_ST_TASK_WORDS * t;
    const rr_u64 e = tk[RR_ST_TASK_ENTRY];
    const rr_u64* d = desc + RR_ST_DESC_WORDS * e;
    double* out = partials + RR_ST_PARTIALS * t;
    if (threadIdx.x < RR_ST_PARTIALS) out[threadIdx.x] = 0.0;
    __syncthreads();
    rr_u64 end = tk[RR_ST_TASK_END];
    // Beyond this run's rows the zero partials stay (and st_finish stops before them); the
    // block still takes its ticket.
    if (st_clip(d[RR_ST_DESC_KIND], d[RR_ST_DESC_N1], tk[RR_ST_TASK_MODE], tk[RR_ST_TASK_A],
                tk[RR_ST_TASK_START], &end)) {  // block-uniform
#define ST_TASK_ARGS tk[RR_ST_TASK_MODE], tk[RR_ST_TASK_A], tk[RR_ST_TASK_START], end
        switch (d[RR_ST_DESC_DTYPE]) {
            case RR_DT_F32: run_task<rr_f32>(d, ST_TASK_ARGS, out); break;
            case RR_DT_F16: run_task<rr_f16>(d, ST_TASK_ARGS, out); break;
            default: run_task<rr_bf16>(d, ST_TASK_ARGS, out); break;
        }
#undef ST_TASK_ARGS
    }
    __shared__ rr_u32 last;
    __threadfence();  // this block's partials, visible to the statistic's last block
    __syncthreads();  // every writer has fenced
    if (threadIdx.x == 0) {
        const rr_u64 n = entry_tasks[RR_ST_ENTRY_WORDS * e + RR_ST_ENTRY_END] -
                         entry_tasks[RR_ST_ENTRY_WORDS * e + RR_ST_ENTRY_FIRST];
        const rr_u32 ticket = atomicAdd(counts + e, 1u);
        const bool is_last = ticket == (rr_u32)(n - 1);
        // Every other block of the statistic has taken its ticket: reset for the next run.
        if (is_last) counts[e] = 0u;
        last = is_last ? 1u : 0u;
    }
    __syncthreads();
    if (last == 0u) return;  // block-uniform
    __threadfence();          // order the reads below after the ticket
    st_finish(e, entry_tasks, tasks, desc, partials, results);  // the whole block
}
