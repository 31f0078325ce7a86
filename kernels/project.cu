// redreg: batched projection and orthonormalisation kernels (module "project").
//
// Operations (see src/project/solve.rs for the per-segment method, src/project/reference.rs for the oracle):
//   project_out:    out = alpha*base + beta_s * (x - sum_i w_i b_i)   per segment s, where
//                   x = v, or x = v - v0 formed in f64 when v0 != 0 (the RedReg drift
//                   theta - theta0 with no drift buffer); with the B0_OUT flag basis vector
//                   0 is `out` itself (the gradient: pass 1 gets out as b0, pass 2 reads it
//                   once as the in-place base — 7 element passes for the fused step)
//   orthonormalize: Cholesky-QR twice (CholQR2) of the k basis vectors of every segment
//
// Work decomposition (all kernels except project_finish): ONE launch per pass covers all
// segments. The host builds a chunk-task table once per layout (crate::segments::chunk_tasks
// with RR_CHUNK = 16384 elements): task t = (seg, start, end) as three u64. Grid = number of
// tasks (one block per chunk), RR_THREADS = 256 threads per block. Pass 1: inside a chunk,
// thread i takes the groups of VEC (16 bytes) consecutive elements i, i+256, ... counted
// from the chunk's start — one 16-byte load per operand when every operand is 16-byte
// aligned there, else VEC scalar loads, the same order either way. Pass 2 (no sums):
// thread i takes 16-byte vectors i, i+256, ... and the scalar head/tail elements i, i+256,
// ... (vectors when every buffer has the same misalignment; else all scalar).
// All indices are 64-bit. Element types: f32, f16, bf16 (raw bits), arithmetic in f64.
//
// Determinism: every sum has a fixed order given the layout, whatever the buffers'
// addresses or alignment (thread-sequential over canonical groups, then a fixed
// warp-shuffle tree, then warps 0..7 in order, then chunks combined by a fixed
// strided+tree order: in project_partials by the segment's last block (rr_fold), in
// project_finish otherwise — the same order, the same bits). No floating-point atomics;
// the only atomic is an integer ticket per segment. Repeated runs are bitwise identical,
// whatever order the blocks run in, and so are a tensor list and its packed flat buffer.
//
// Launches: project_out = project_partials (pass 1 + per-segment reduce + solve) and
// project_apply (pass 2): 2 for any number of segments, 1 for k = 0. partials = 1.
// apply (split form) = project_finish (SOLVE from uploaded partials) + project_apply.
// orthonormalize = orth_partials (+ fold: M1), orth_partials (transform, + fold: M2), orth_apply.
// Pass 2 (project_apply) takes the tasks in reverse order (block b: task n_tasks - 1 - b),
// so the chunks pass 1 read last are the likeliest still in L2.
//
// Kernels and entry points (<dt> in f32, f16, bf16):
// (every <dt> kernel exists once per k, suffix _k<k>: project_partials_f32_k1, ...)
//   project_partials_<dt>  pass 1: per-chunk f64 partials (packed Gram upper triangle + B^T v);
//                          the last block of each segment reduces them and solves (rr_fold)
//   orth_partials_<dt>     pass 1 of orthonormalize: per-chunk Gram of B, or of B*M1 (transform=1);
//                          the last block of each segment reduces them and computes M1 / M2
//   project_finish         per segment: solve from uploaded partials (the split form's apply)
//   project_apply_<dt>     pass 2: fused apply (modes: no base / base buffer / in place), tasks
//                          in reverse order
//   orth_apply_<dt>        final pass of orthonormalize: b_j <- sum_i (M1 M2)[i][j] b_i in place
#include "common.cuh"

// Finish modes RR_FIN_* (bit flags) and apply modes RR_MODE_*: generated from src/abi.rs.
#include "redreg_abi.cuh"

// Index of G[i][j] (i <= j) in the packed upper triangle (src/project/solve.rs tri_index).
__device__ __forceinline__ constexpr int rr_tri(int k, int i, int j) {
    return i * k - (i * i - i) / 2 + (j - i);
}

// ---------------------------------------------------------------------------------------
// Pass 1: per-chunk partial sums.
// ---------------------------------------------------------------------------------------

// Accumulates one element: q = b (or q_j = sum_i M[i][j] b_i with XFORM, M in shared),
// acc[tri(i,j)] += q_i q_j, acc[NT + i] += q_i x, each an explicit fused multiply-add: the
// compiler's own contraction choices may differ between the vector and the scalar form of
// a loop, and q_i x (x = v - v0) is not exact in f64, so an implicit a*b + c could round
// differently in the two forms and make the bits depend on the buffers' alignment.
// Products of f32/f16/bf16 values are exact in f64, so without XFORM and v0 only the
// summation rounds.
template <int K, int NS, bool HAS_V, bool XFORM>
__device__ __forceinline__ void rr_gram_elem(double (&acc)[NS], double x, const double (&bx)[K],
                                             const double* sm) {
    constexpr int NT = K * (K + 1) / 2;
    double q[K];
    if (XFORM) {
#pragma unroll
        for (int j = 0; j < K; ++j) {
            double s = 0.0;
#pragma unroll
            for (int i = 0; i < K; ++i) s = __fma_rn(sm[i * K + j], bx[i], s);
            q[j] = s;
        }
    } else {
#pragma unroll
        for (int j = 0; j < K; ++j) q[j] = bx[j];
    }
#pragma unroll
    for (int i = 0; i < K; ++i) {
#pragma unroll
        for (int j = i; j < K; ++j) acc[rr_tri(K, i, j)] = __fma_rn(q[i], q[j], acc[rr_tri(K, i, j)]);
        if (HAS_V) acc[NT + i] = __fma_rn(q[i], x, acc[NT + i]);
    }
}

// One block = one chunk task. Writes RR_STRIDE(K) f64 values to chunk_partials[t*NS ..].
// Without HAS_V the B^T v entries are written as 0. `red` is shared [RR_WARPS][RR_MAX_STRIDE],
// `sm` shared [K*K] (only with XFORM: M1 of the task's segment, from xform[seg*K*K ..]).
template <class E, int K, bool HAS_V, bool XFORM>
__device__ __forceinline__ void rr_partials(const rr_u64* __restrict__ tasks,
                                            const rr_u64* __restrict__ ptrs,
                                            const typename E::S* __restrict__ v,
                                            const typename E::S* __restrict__ v0,
                                            const typename E::S* const (&bp)[RR_MAX_K],
                                            const double* __restrict__ xform,
                                            double* __restrict__ chunk_partials, double* red,
                                            double* sm) {
    typedef typename E::S S;
    constexpr int NS = RR_STRIDE(K);
    const rr_u64 t = blockIdx.x;
    const rr_task task = rr_load_task(tasks, t);
    const S* b[K > 0 ? K : 1];
#pragma unroll
    for (int i = 0; i < K; ++i) b[i] = bp[i];
    if (ptrs) {  // tensor list: this segment's operands (v0 only when the call has one)
        const rr_u64* row = ptrs + task.seg * (rr_u64)RR_PTR_WORDS;
        if (HAS_V) v = rr_slot<const S>(row, RR_PTR_V);
        if (HAS_V && v0) v0 = rr_slot<const S>(row, RR_PTR_V0);
#pragma unroll
        for (int i = 0; i < K; ++i) b[i] = rr_slot<const S>(row, RR_PTR_B0 + i);
    }
    if (XFORM) {
        for (int i = threadIdx.x; i < K * K; i += RR_THREADS) sm[i] = xform[task.seg * (K * K) + i];
        __syncthreads();
    }
    double acc[NS];
#pragma unroll
    for (int s = 0; s < NS; ++s) acc[s] = 0.0;

    // Canonical element order: thread t sums the groups of VEC consecutive elements
    // t, t + 256, ... of the chunk (counted from the chunk's start), each group in element
    // order, whatever the buffers' addresses. A group is one 16-byte load per operand when
    // every operand is 16-byte aligned at the chunk's start (uniform per block), else VEC
    // scalar loads — the same values in the same order, so the partials (and everything
    // after them) do not depend on the alignment: a tensor list gives the bits of the
    // packed flat buffer, and a buffer moved to another address gives the same bits.
    // With XFORM (orthonormalize's second Gram only) always the scalar form: the k*k
    // transform plus k vectors in flight would exceed the register file at k = 8.
    bool vec = !XFORM;
    if (HAS_V) vec = vec && rr_mis<E>(v, task.start) == 0;
    if (HAS_V && v0) vec = vec && rr_mis<E>(v0, task.start) == 0;
#pragma unroll
    for (int i = 0; i < K; ++i) vec = vec && rr_mis<E>(b[i], task.start) == 0;
    const rr_u64 n_groups = (task.end - task.start + E::VEC - 1) / (rr_u64)E::VEC;

    for (rr_u64 q = threadIdx.x; q < n_groups; q += RR_THREADS) {
        const rr_u64 e0 = task.start + q * (rr_u64)E::VEC;
        if (vec && e0 + E::VEC <= task.end) {
            rr_v16 vv, vv0;
            if (HAS_V) vv = rr_ld16<E>(v, e0);
            if (HAS_V && v0) vv0 = rr_ld16<E>(v0, e0);
            rr_v16 bv[K];
#pragma unroll
            for (int i = 0; i < K; ++i) bv[i] = rr_ld16<E>(b[i], e0);
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) {
                double bx[K];
#pragma unroll
                for (int i = 0; i < K; ++i) bx[i] = E::lane(bv[i], j);
                double x = HAS_V ? E::lane(vv, j) : 0.0;
                if (HAS_V && v0) x -= E::lane(vv0, j);
                rr_gram_elem<K, NS, HAS_V, XFORM>(acc, x, bx, sm);
            }
        } else {
            const rr_u64 e1 = e0 + E::VEC < task.end ? e0 + E::VEC : task.end;
#pragma unroll 1
            for (rr_u64 e = e0; e < e1; ++e) {
                double bx[K];
#pragma unroll
                for (int i = 0; i < K; ++i) bx[i] = E::load(b[i][e]);
                double x = HAS_V ? E::load(v[e]) : 0.0;
                if (HAS_V && v0) x -= E::load(v0[e]);
                rr_gram_elem<K, NS, HAS_V, XFORM>(acc, x, bx, sm);
            }
        }
    }

    // Fixed-order block reduction: warp tree, then warps in order.
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int s = 0; s < NS; ++s) {
        const double r = rr_warp_sum(acc[s]);
        if (lane == 0) red[warp * RR_MAX_STRIDE + s] = r;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < NS; s += RR_THREADS) {
        double sum = 0.0;
#pragma unroll
        for (int wi = 0; wi < RR_WARPS; ++wi) sum += red[wi * RR_MAX_STRIDE + s];
        chunk_partials[t * (rr_u64)NS + s] = sum;
    }
}

#define RR_BASIS_PARAMS(S)                                                                   \
    S *b0, S *b1, S *b2, S *b3, S *b4, S *b5, S *b6, S *b7

// Entry points are specialised per k (suffix _k<k>) rather than switching on a runtime k:
// a kernel's register count is the maximum over all paths it contains, and the k = 8 Gram
// accumulators (44 f64) would otherwise cap the occupancy of the k = 1 kernels.
#define RR_FOR_K1_8(M, NAME, E) \
    M(NAME, E, 1) M(NAME, E, 2) M(NAME, E, 3) M(NAME, E, 4) M(NAME, E, 5) M(NAME, E, 6) M(NAME, E, 7) M(NAME, E, 8)
#define RR_FOR_K0_8(M, NAME, E) M(NAME, E, 0) RR_FOR_K1_8(M, NAME, E)



// ---------------------------------------------------------------------------------------
// Per-segment solve: CUDA port of src/project/solve.rs (factor, solve_segment, orth_segment), line
// for line, in f64. `p` points at one segment's packed partials in global memory.
// Every floating-point operation is an explicitly rounded intrinsic (__dmul_rn, __dadd_rn,
// __dsub_rn, __ddiv_rn, __dsqrt_rn): ptxas never contracts those into DFMA, and Rust never
// contracts either, so the same partials give the same rank and bit-identical coefficients
// on the CPU and here (src/project/solve.rs, "Same arithmetic on every backend"). Keep it that way:
// a plain `s -= a * b` here would be fused and flip rank decisions near the threshold.
// ---------------------------------------------------------------------------------------

// The rank rule's noise factor 64*k*u (u = 2^-53; exact): src/project/solve.rs noise_factor.
#define RR_UNIT_ROUNDOFF 1.1102230246251565404236316680908203125e-16

// max(tol^2 * gjj, noise * a^2) as src/project/solve.rs `threshold` (same operations, same order).
__device__ __forceinline__ double rr_threshold(double tol, double gjj, double noise, double a) {
    const double t = __dmul_rn(__dmul_rn(tol, tol), gjj);
    const double n = __dmul_rn(noise, __dmul_rn(a, a));
    return t > n ? t : n;
}

template <int K>
__device__ __forceinline__ void rr_factor(const double* p, int max_rank, double tol,
                                          double (&l)[K][K], bool (&kept)[K]) {
    const double noise = __dmul_rn((double)(64 * K), RR_UNIT_ROUNDOFF);
    double norm[K];
    int n_kept = 0;
#pragma unroll
    for (int j = 0; j < K; ++j) {
        kept[j] = false;
        norm[j] = 0.0;
#pragma unroll
        for (int i = 0; i < K; ++i) l[j][i] = 0.0;
    }
#pragma unroll
    for (int j = 0; j < K; ++j) {
        const double gjj = p[rr_tri(K, j, j)];
        // A zero vector, or the kept ones already span the segment.
        if (gjj <= 0.0 || n_kept >= max_rank) continue;
        norm[j] = __dsqrt_rn(gjj);
        double d = gjj;
#pragma unroll
        for (int i = 0; i < j; ++i) {
            if (!kept[i]) continue;
            double s = p[rr_tri(K, i, j)];
#pragma unroll
            for (int m = 0; m < i; ++m) s = __dsub_rn(s, __dmul_rn(l[j][m], l[i][m]));
            const double lji = __ddiv_rn(s, l[i][i]);
            l[j][i] = lji;
            d = __dsub_rn(d, __dmul_rn(lji, lji));
        }
        // w = L_K^-T l_j and a = |b_j| + sum |w_i| |b_i|: the scale of d's rounding noise.
        double w[K];
#pragma unroll
        for (int i = 0; i < K; ++i) w[i] = 0.0;
#pragma unroll
        for (int i = j - 1; i >= 0; --i) {
            if (!kept[i]) continue;
            double s = l[j][i];
#pragma unroll
            for (int r = i + 1; r < j; ++r) s = __dsub_rn(s, __dmul_rn(l[r][i], w[r]));
            w[i] = __ddiv_rn(s, l[i][i]);
        }
        double a = norm[j];
#pragma unroll
        for (int i = 0; i < j; ++i) {
            if (kept[i]) {
                const double wi = w[i] < 0.0 ? -w[i] : w[i];
                a = __dadd_rn(a, __dmul_rn(wi, norm[i]));
            }
        }
        if (d > rr_threshold(tol, gjj, noise, a)) {
            kept[j] = true;
            ++n_kept;
            l[j][j] = __dsqrt_rn(d);
        } else {
#pragma unroll
            for (int m = 0; m < K; ++m) l[j][m] = 0.0;
        }
    }
}

// solve_segment: writes k coefficients to coef, returns the rank (<= max_rank).
template <int K>
__device__ __forceinline__ rr_u32 rr_solve_segment(const double* p, int max_rank, double tol,
                                                   double ridge, double* coef) {
    constexpr int NS = RR_STRIDE(K);
    constexpr int NT = K * (K + 1) / 2;
    bool finite = true;
#pragma unroll
    for (int s = 0; s < NS; ++s) finite = finite && rr_isfinite(p[s]);
    if (!finite) {
#pragma unroll
        for (int i = 0; i < K; ++i) coef[i] = rr_nan();
        return 0;
    }
    double l[K][K];
    bool kept[K];
    rr_factor<K>(p, max_rank, tol, l, kept);
    rr_u32 rank = 0;
#pragma unroll
    for (int j = 0; j < K; ++j) rank += kept[j] ? 1u : 0u;

    // k = 1: the script's closed form (d.g) / (g.g + ridge), one division (src/project/solve.rs).
    if (K == 1) {
        coef[0] = kept[0] ? __ddiv_rn(p[NT], __dadd_rn(p[0], ridge)) : 0.0;
        return rank;
    }

    if (ridge != 0.0) {
#pragma unroll
        for (int j = 0; j < K; ++j) {
#pragma unroll
            for (int i = 0; i < K; ++i) l[j][i] = 0.0;
        }
#pragma unroll
        for (int j = 0; j < K; ++j) {
            if (!kept[j]) continue;
#pragma unroll
            for (int i = 0; i <= j; ++i) {
                if (!kept[i]) continue;
                double s = __dadd_rn(p[rr_tri(K, i, j)], i == j ? ridge : 0.0);
#pragma unroll
                for (int m = 0; m < i; ++m) s = __dsub_rn(s, __dmul_rn(l[j][m], l[i][m]));
                if (i == j)
                    l[j][j] = __dsqrt_rn(s);
                else
                    l[j][i] = __ddiv_rn(s, l[i][i]);
            }
        }
    }

    double y[K];
    double w[K];
#pragma unroll
    for (int j = 0; j < K; ++j) {
        y[j] = 0.0;
        w[j] = 0.0;
    }
#pragma unroll
    for (int j = 0; j < K; ++j) {
        if (!kept[j]) continue;
        double s = p[NT + j];
#pragma unroll
        for (int i = 0; i < j; ++i) s = __dsub_rn(s, __dmul_rn(l[j][i], y[i]));
        y[j] = __ddiv_rn(s, l[j][j]);
    }
#pragma unroll
    for (int j = K - 1; j >= 0; --j) {
        if (!kept[j]) {
            w[j] = 0.0;
            continue;
        }
        double s = y[j];
#pragma unroll
        for (int i = j + 1; i < K; ++i) s = __dsub_rn(s, __dmul_rn(l[i][j], w[i]));
        w[j] = __ddiv_rn(s, l[j][j]);
    }
#pragma unroll
    for (int j = 0; j < K; ++j) coef[j] = w[j];
    return rank;
}

// orth_segment: writes the k*k row-major m (q_j = sum_i m[i*k+j] b_i) to global memory
// (read back by the same thread), returns the rank (<= max_rank).
template <int K>
__device__ __forceinline__ rr_u32 rr_orth_segment(const double* p, int max_rank, double tol,
                                                  double* m) {
    constexpr int NT = K * (K + 1) / 2;
    bool finite = true;
#pragma unroll
    for (int s = 0; s < NT; ++s) finite = finite && rr_isfinite(p[s]);
    if (!finite) {
        for (int i = 0; i < K * K; ++i) m[i] = rr_nan();
        return 0;
    }
    double l[K][K];
    bool kept[K];
    rr_factor<K>(p, max_rank, tol, l, kept);
    for (int i = 0; i < K * K; ++i) m[i] = 0.0;
#pragma unroll
    for (int j = 0; j < K; ++j) {
        if (!kept[j]) continue;
        m[j * K + j] = __ddiv_rn(1.0, l[j][j]);
#pragma unroll
        for (int i = j - 1; i >= 0; --i) {
            if (!kept[i]) continue;
            double s = 0.0;
#pragma unroll
            for (int r = i + 1; r <= j; ++r) s = __dsub_rn(s, __dmul_rn(l[r][i], m[r * K + j]));
            m[i * K + j] = __ddiv_rn(s, l[i][i]);
        }
    }
    rr_u32 rank = 0;
#pragma unroll
    for (int j = 0; j < K; ++j) rank += kept[j] ? 1u : 0u;
    return rank;
}

// One warp per segment. REDUCE: lane l sums chunks first+l, first+l+32, ... (in order), then
// a fixed warp tree; lane 0 writes seg_partials. Then lane 0 runs the selected solve.
template <int K>
__device__ __forceinline__ void rr_finish(const double* __restrict__ chunk_partials,
                                          const rr_u64* __restrict__ seg_first,
                                          const rr_u64* __restrict__ tasks, rr_u64 n_seg,
                                          int mode, double tol, double ridge,
                                          double* seg_partials, double* coef, double* coef2,
                                          rr_u32* __restrict__ ranks) {
    constexpr int NS = RR_STRIDE(K);
    const rr_u64 seg = (rr_u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (seg >= n_seg) return;  // warp-uniform
    double* ps = seg_partials + seg * (rr_u64)NS;
    if (mode & RR_FIN_REDUCE) {
        double acc[NS];
#pragma unroll
        for (int s = 0; s < NS; ++s) acc[s] = 0.0;
        const rr_u64 t1 = seg_first[seg + 1];
        for (rr_u64 t = seg_first[seg] + lane; t < t1; t += 32) {
#pragma unroll
            for (int s = 0; s < NS; ++s) acc[s] += chunk_partials[t * (rr_u64)NS + s];
        }
#pragma unroll
        for (int s = 0; s < NS; ++s) {
            const double r = rr_warp_sum(acc[s]);
            if (lane == 0) ps[s] = r;
        }
    }
    if (lane != 0) return;
    int max_rank = K;
    if (mode & RR_FIN_CAP) {
        // The segment's tasks are seg_first[seg] .. seg_first[seg + 1], contiguous and in
        // order: its length is the last task's end minus the first task's start.
        const rr_u64 t0 = seg_first[seg];
        const rr_u64 t1 = seg_first[seg + 1];
        const rr_u64 len = t1 > t0 ? tasks[RR_TASK_WORDS * (t1 - 1) + 2] - tasks[RR_TASK_WORDS * t0 + 1] : 0;
        if (len < (rr_u64)K) max_rank = (int)len;
    }
    if (mode & RR_FIN_SOLVE) {
        ranks[seg] = rr_solve_segment<K>(ps, max_rank, tol, ridge, coef + seg * K);
    } else if (mode & RR_FIN_ORTH1) {
        ranks[seg] = rr_orth_segment<K>(ps, max_rank, tol, coef + seg * (K * K));
    } else if (mode & RR_FIN_ORTH2) {
        ranks[seg] = rr_orth_segment<K>(ps, max_rank, tol, coef2 + seg * (K * K));
    }
}

// project_partials_<dt>_k<k>: pass 1 of project_out / partials, 1 <= k <= 8 (k = 0 needs no
// pass 1), with the per-segment finish folded in (rr_fold, below the solve port).
// Launch: grid = (n_tasks), block = (RR_THREADS), no dynamic shared memory.
// b0..b(k-1) are the basis buffers (the rest unused, pass 0). ptrs: null for flat buffers,
// else the tensor list's pointer table (RR_PTR_WORDS u64 per segment, common.cuh): each
// block then reads its segment's v, v0 (when the v0 parameter is non-null) and basis from
// it, and the pointer parameters only say which operands the call has. Outputs:
// chunk_partials[n_tasks * RR_STRIDE(k)] (f64), and from the last block of each segment:
// seg_partials[n_seg * RR_STRIDE(k)], with mode SOLVE coef[n_seg * k] and ranks[n_seg].
// seg_count[n_seg] (u32): the segments' tickets, 0 on entry and left 0 on exit.
// Minimum resident blocks per SM hint: k <= 2 stays at <= 64 registers (occupancy for
// bandwidth); k >= 3 may use what the folded solve needs (without the hint ptxas capped
// k = 3 at 64 registers and spilled on sm_75-86).
#define RR_PARTIALS_MINB(KK) ((KK) <= 2 ? 4 : 1)
#define RR_PROJECT_PARTIALS(NAME, E, KK)                                                      \
    extern "C" __global__ void __launch_bounds__(RR_THREADS, RR_PARTIALS_MINB(KK)) project_partials_##NAME##_k##KK( \
        const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ ptrs,                   \
        const E::S* __restrict__ v,                                                          \
        const E::S* __restrict__ v0, RR_BASIS_PARAMS(const E::S), double* chunk_partials,    \
        const rr_u64* __restrict__ seg_first, rr_u32* seg_count, int mode, double tol,       \
        double ridge, double* __restrict__ seg_partials, double* __restrict__ coef,          \
        rr_u32* __restrict__ ranks) {                                                        \
        __shared__ double red[RR_WARPS * RR_MAX_STRIDE];                                     \
        __shared__ rr_u32 last;                                                              \
        const E::S* const b[RR_MAX_K] = {b0, b1, b2, b3, b4, b5, b6, b7};                    \
        rr_partials<E, KK, true, false>(tasks, ptrs, v, v0, b, 0, chunk_partials, red, 0);   \
        rr_fold<KK>(tasks, seg_first, seg_count, chunk_partials, mode, tol, ridge,           \
                    seg_partials, coef, 0, ranks, red, &last);                               \
    }

// ---------------------------------------------------------------------------------------
// The per-segment finish folded into pass 1 (project_partials): after a block has written
// its chunk's partials it takes a ticket of its segment (atomicAdd on seg_count[seg], after
// a __threadfence that publishes the partials device-wide); the block that draws the
// segment's last ticket (n_chunks - 1) resets the counter to 0 for the next call and then
// reduces the segment's chunk partials and solves. The reduction is project_finish's
// REDUCE, bit for bit: component s is summed by one warp (warp w takes s = w, w + 8, ...),
// lane l over chunks first+l, first+l+32, ... in chunk order, then the same warp tree —
// the same operations in the same order as one warp per segment, only 8 components at a
// time. It does not depend on which block came last (each chunk's partials are a pure
// function of its chunk). Thread 0 then runs the solve on the reduced partials (shared
// memory copy; seg_partials gets the same values) with rr_solve_segment, same arithmetic.
// The chunk partials of other blocks are read through volatile loads (no stale L1 line).
// ---------------------------------------------------------------------------------------
template <int K>
__device__ __forceinline__ void rr_fold(const rr_u64* __restrict__ tasks,
                                        const rr_u64* __restrict__ seg_first,
                                        rr_u32* seg_count, const double* chunk_partials,
                                        int mode, double tol, double ridge,
                                        double* __restrict__ seg_partials,
                                        double* __restrict__ coef, double* __restrict__ coef2,
                                        rr_u32* __restrict__ ranks, double* red,
                                        rr_u32* last) {
    constexpr int NS = RR_STRIDE(K);
    const rr_u64 seg = tasks[RR_TASK_WORDS * (rr_u64)blockIdx.x];
    const rr_u64 t0 = seg_first[seg];
    const rr_u64 t1 = seg_first[seg + 1];
    __threadfence();  // this block's chunk partials, visible to the segment's last block
    __syncthreads();  // every writer has fenced (and `red` is free again)
    if (threadIdx.x == 0) {
        const rr_u32 ticket = atomicAdd(seg_count + seg, 1u);
        const bool is_last = ticket == (rr_u32)(t1 - t0 - 1);
        // Every other block of the segment has taken its ticket: reset for the next call.
        if (is_last) seg_count[seg] = 0u;
        *last = is_last ? 1u : 0u;
    }
    __syncthreads();
    if (*last == 0u) return;  // block-uniform
    __threadfence();  // order the reads below after the ticket
    const volatile double* cp = chunk_partials;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    double* ps = seg_partials + seg * (rr_u64)NS;
    for (int s = warp; s < NS; s += RR_WARPS) {  // warp-uniform
        double acc = 0.0;
        for (rr_u64 t = t0 + lane; t < t1; t += 32) acc += cp[t * (rr_u64)NS + s];
        const double r = rr_warp_sum(acc);
        if (lane == 0) {
            red[s] = r;
            ps[s] = r;
        }
    }
    __syncthreads();
    if (threadIdx.x != 0 || !(mode & (RR_FIN_SOLVE | RR_FIN_ORTH1 | RR_FIN_ORTH2))) return;
    int max_rank = K;
    if (mode & RR_FIN_CAP) {
        const rr_u64 len = tasks[RR_TASK_WORDS * (t1 - 1) + 2] - tasks[RR_TASK_WORDS * t0 + 1];
        if (len < (rr_u64)K) max_rank = (int)len;
    }
    // The same solves as rr_finish, on the same reduced values.
    if (mode & RR_FIN_SOLVE) {
        ranks[seg] = rr_solve_segment<K>(red, max_rank, tol, ridge, coef + seg * K);
    } else if (mode & RR_FIN_ORTH1) {
        ranks[seg] = rr_orth_segment<K>(red, max_rank, tol, coef + seg * (K * K));
    } else {
        ranks[seg] = rr_orth_segment<K>(red, max_rank, tol, coef2 + seg * (K * K));
    }
}

RR_FOR_K1_8(RR_PROJECT_PARTIALS, f32, rr_f32)
RR_FOR_K1_8(RR_PROJECT_PARTIALS, f16, rr_f16)
RR_FOR_K1_8(RR_PROJECT_PARTIALS, bf16, rr_bf16)

// orth_partials_<dt>_k<k>: Gram pass of orthonormalize, 1 <= k <= 8 (register hint as
// project_partials: without it ptxas capped k = 3 at 64 registers and spilled), with the per-segment
// finish folded in (rr_fold, as project_partials). transform = 0: Gram of B, the fold
// (mode ORTH1 | CAP) writes M1 to m_out; transform = 1: Gram of Q1 = B*M1 computed on the
// fly in f64 (M1 = xform[seg*k*k ..], row-major, q_j = sum_i M1[i][j] b_i) — CholQR2's second
// Gram without storing Q1 — and the fold (ORTH2 | CAP) writes M2 to m_out. xform is null
// with transform = 0 and never the same buffer as m_out. Launch: grid = (n_tasks), block =
// (RR_THREADS). chunk_partials as project_partials (the B^T v entries are 0); seg_first,
// seg_count, seg_partials and ranks as project_partials.
#define RR_ORTH_PARTIALS(NAME, E, KK)                                                         \
    extern "C" __global__ void __launch_bounds__(RR_THREADS, RR_PARTIALS_MINB(KK)) orth_partials_##NAME##_k##KK( \
        const rr_u64* __restrict__ tasks, RR_BASIS_PARAMS(const E::S),                       \
        const double* __restrict__ xform, int transform, double* chunk_partials,             \
        const rr_u64* __restrict__ seg_first, rr_u32* seg_count, int mode, double tol,       \
        double* __restrict__ seg_partials, double* __restrict__ m_out,                       \
        rr_u32* __restrict__ ranks) {                                                        \
        __shared__ double red[RR_WARPS * RR_MAX_STRIDE];                                     \
        __shared__ double sm[RR_MAX_K * RR_MAX_K];                                           \
        __shared__ rr_u32 last;                                                              \
        const E::S* const b[RR_MAX_K] = {b0, b1, b2, b3, b4, b5, b6, b7};                    \
        if (transform)                                                                       \
            rr_partials<E, KK, false, true>(tasks, 0, 0, 0, b, xform, chunk_partials, red, sm); \
        else                                                                                 \
            rr_partials<E, KK, false, false>(tasks, 0, 0, 0, b, xform, chunk_partials, red, sm); \
        rr_fold<KK>(tasks, seg_first, seg_count, chunk_partials, mode, tol, 0.0,             \
                    seg_partials, m_out, m_out, ranks, red, &last);                          \
    }

RR_FOR_K1_8(RR_ORTH_PARTIALS, f32, rr_f32)
RR_FOR_K1_8(RR_ORTH_PARTIALS, f16, rr_f16)
RR_FOR_K1_8(RR_ORTH_PARTIALS, bf16, rr_bf16)

// project_finish: per-segment reduction of chunk partials and/or per-segment solve.
// Launch: grid = (ceil(n_seg / 4)), block = (128) — one warp per segment; 1 <= k <= 8.
// seg_first[n_seg + 1]: first task index of each segment (empty segments: no tasks, so
// their partials are 0 and their rank 0); tasks: the chunk-task table (read with CAP only,
// for segment lengths). seg_partials[n_seg * RR_STRIDE(k)] (written with
// REDUCE, else read), coef[n_seg * k] (SOLVE) or [n_seg * k * k] (ORTH1), coef2 (ORTH2),
// ranks[n_seg] (u32). Numerics: f64, see the solve port above.
extern "C" __global__ void __launch_bounds__(128)
    project_finish(const double* __restrict__ chunk_partials, const rr_u64* __restrict__ seg_first,
                   const rr_u64* __restrict__ tasks, rr_u64 n_seg, int k, int mode, double tol,
                   double ridge, double* seg_partials, double* coef, double* coef2,
                   rr_u32* __restrict__ ranks) {
#define RR_FIN_CASE(KK)                                                                      \
    case KK:                                                                                 \
        rr_finish<KK>(chunk_partials, seg_first, tasks, n_seg, mode, tol, ridge, seg_partials, \
                      coef, coef2, ranks);                                                   \
        break;
    switch (k) {
        RR_FIN_CASE(1)
        RR_FIN_CASE(2)
        RR_FIN_CASE(3)
        RR_FIN_CASE(4)
        RR_FIN_CASE(5)
        RR_FIN_CASE(6)
        RR_FIN_CASE(7)
        RR_FIN_CASE(8)
        default: break;
    }
#undef RR_FIN_CASE
}

// ---------------------------------------------------------------------------------------
// Pass 2: the fused apply.
// ---------------------------------------------------------------------------------------

template <class E, int K>
__device__ __forceinline__ double rr_apply_elem(double x, const double (&bx)[K > 0 ? K : 1],
                                                const double (&w)[K > 0 ? K : 1], double beta,
                                                double alpha, int mode, double base) {
    double y = x;
#pragma unroll
    for (int i = 0; i < K; ++i) y = __fma_rn(-w[i], bx[i], y);
    // (beta * y cannot be contracted: its only consumer is the return or an fma intrinsic.)
    double z = beta * y;
    if (mode != RR_MODE_NONE) z = __fma_rn(alpha, base, z);
    return z;
}

// Where pass 2 finds a block's operands. Flat (LIST = false): the kernel parameters, read
// from the constant bank at each use (no register). Tensor list: the segment's row of the
// pointer table, copied to shared memory once per block and read at each use (volatile, so
// the compiler does not hoist them): held in registers, five more 64-bit pointers pushed
// the k <= 1 kernels past their 48-register budget (spills on sm_80-90). A few shared
// loads per 16-byte vector cost nothing next to the global traffic.
template <bool LIST>
struct rr_operands {
    const volatile rr_u64* row;
    template <class S>
    __device__ __forceinline__ S* at(int slot, S* flat) const {
        return LIST ? reinterpret_cast<S*>((rr_u64)row[slot]) : flat;
    }
};

template <class E, int K, bool LIST>
__device__ __forceinline__ void rr_apply(const rr_u64* __restrict__ tasks,
                                         const rr_u64* __restrict__ ptrs,
                                         const typename E::S* __restrict__ v,
                                         const typename E::S* __restrict__ v0,
                                         const typename E::S* const (&b)[RR_MAX_K],
                                         const double* __restrict__ coef,
                                         const double* __restrict__ beta_seg, double beta_scalar,
                                         double alpha, int mode_flags,
                                         const typename E::S* __restrict__ base,
                                         typename E::S* out) {
    typedef typename E::S S;
    constexpr int KA = K > 0 ? K : 1;
    const int mode = mode_flags & RR_MODE_MASK;
    // Basis vector 0 is `out` itself (the fused RedReg step: the gradient is the basis and
    // the destination): its value is the in-place base `ov`, read before the write.
    const bool b0_out = K > 0 && (mode_flags & RR_MODE_B0_OUT) != 0;
    // Reverse chunk order (block b takes task n_tasks - 1 - b): pass 1 ran its blocks in
    // task order, so the chunks it read last are the likeliest still in L2 when pass 2 starts.
    const rr_task task = rr_load_task(tasks, (rr_u64)(gridDim.x - 1 - blockIdx.x));
    __shared__ rr_u64 row[RR_PTR_WORDS];
    if (LIST) {  // uniform per block: ptrs is a kernel parameter
        if (threadIdx.x < RR_PTR_WORDS) row[threadIdx.x] = ptrs[task.seg * (rr_u64)RR_PTR_WORDS + threadIdx.x];
        __syncthreads();
    }
    const rr_operands<LIST> ops{row};
    double w[KA];
    w[0] = 0.0;
#pragma unroll
    for (int i = 0; i < K; ++i) w[i] = coef[task.seg * K + i];
    const double beta = beta_seg ? beta_seg[task.seg] : beta_scalar;
    // The operands (in place, the base term is read from `out` itself). The presence of v0
    // is the parameter's, flat or list.
#define RR_V ops.at(RR_PTR_V, v)
#define RR_V0 ops.at(RR_PTR_V0, v0)
#define RR_B(i) ops.at(RR_PTR_B0 + (i), b[i])
#define RR_OUT ops.at(RR_PTR_OUT, out)
    const S* const src_flat = mode == RR_MODE_BASE ? base : out;
#define RR_SRC (LIST ? (mode == RR_MODE_BASE ? ops.at(RR_PTR_BASE, base) : (const S*)RR_OUT) : src_flat)

    const rr_u32 mis0 = rr_mis<E>(RR_V, task.start);
    bool same = rr_mis<E>(RR_OUT, task.start) == mis0;
    if (v0) same = same && rr_mis<E>(RR_V0, task.start) == mis0;
    if (mode == RR_MODE_BASE) same = same && rr_mis<E>(RR_SRC, task.start) == mis0;
#pragma unroll
    for (int i = b0_out ? 1 : 0; i < K; ++i) same = same && rr_mis<E>(RR_B(i), task.start) == mis0;
    const rr_window win = rr_make_window<E>(task.start, task.end, mis0, same);
    const rr_u64 vend = win.vbeg + win.nvec * (rr_u64)E::VEC;

#pragma unroll 1
    for (rr_u64 qv = threadIdx.x; qv < win.nvec; qv += RR_THREADS) {
        const rr_u64 e = win.vbeg + qv * (rr_u64)E::VEC;
        const rr_v16 vv = rr_ld16<E>(RR_V, e);
        rr_v16 vv0;
        vv0.x = vv0.y = vv0.z = vv0.w = 0u;
        if (v0) vv0 = rr_ld16<E>(RR_V0, e);
        rr_v16 ov;
        ov.x = ov.y = ov.z = ov.w = 0u;
        if (mode != RR_MODE_NONE) ov = rr_ld16<E>(RR_SRC, e);
        rr_v16 bv[KA];
#pragma unroll
        for (int i = 0; i < K; ++i) bv[i] = (i == 0 && b0_out) ? ov : rr_ld16<E>(RR_B(i), e);
        double y[E::VEC];
#pragma unroll
        for (int j = 0; j < E::VEC; ++j) {
            double bx[KA];
            bx[0] = 0.0;
#pragma unroll
            for (int i = 0; i < K; ++i) bx[i] = E::lane(bv[i], j);
            double x = E::lane(vv, j);
            if (v0) x -= E::lane(vv0, j);
            y[j] = rr_apply_elem<E, K>(x, bx, w, beta, alpha, mode, E::lane(ov, j));
        }
        rr_st16<E>(RR_OUT, e, rr_pack<E>(y));
    }
    // Scalar head and tail.
#pragma unroll 1
    for (int part = 0; part < 2; ++part) {
        const rr_u64 lo = part == 0 ? task.start : vend;
        const rr_u64 hi = part == 0 ? win.vbeg : task.end;
        for (rr_u64 e = lo + threadIdx.x; e < hi; e += RR_THREADS) {
            const double bs = mode != RR_MODE_NONE ? E::load(RR_SRC[e]) : 0.0;
            double bx[KA];
            bx[0] = 0.0;
#pragma unroll
            for (int i = 0; i < K; ++i) bx[i] = (i == 0 && b0_out) ? bs : E::load(RR_B(i)[e]);
            double x = E::load(RR_V[e]);
            if (v0) x -= E::load(RR_V0[e]);
            RR_OUT[e] = E::store(rr_apply_elem<E, K>(x, bx, w, beta, alpha, mode, bs));
        }
    }
#undef RR_V
#undef RR_V0
#undef RR_B
#undef RR_OUT
#undef RR_SRC
}

// project_apply_<dt>_k<k>: pass 2 of project_out / apply (ptrs unused, null).
// project_apply_list_<dt>_k<k>: the same for a tensor list: ptrs is its pointer table (as
// project_partials'), each block reads its segment's v, v0, basis (from b1 with B0_OUT),
// base (mode BASE) and out from it; the pointer parameters only say which are present.
// Launch: grid = (n_tasks), block = (RR_THREADS); 0 <= k <= 8; coef[n_seg * k] from
// project_finish (SOLVE). beta = beta_seg[seg] when beta_seg != 0, else beta_scalar.
// mode: 0 out = beta*y; 1 out = alpha*base + beta*y; 2 out = alpha*out + beta*y, where
// y = x - sum_i w_i b_i, x = v or v - v0 (v0 != 0); flag B0_OUT (with mode 2): b_0 is the
// value of out read before the write (b0 is then null, never dereferenced). All arithmetic in f64, ONE rounding to the element type per
// output (explicit fused multiply-adds, the same in the vector and the scalar form). `out` must not alias v, base or the basis (in place
// reads `out` element-wise before writing it: each element is owned by one thread).
// Minimum resident blocks per SM hint: keeps the common small-k kernels at <= 48/64
// registers (occupancy for bandwidth: k <= 1 five blocks of 256 threads, 62.5 % of an
// SM's 2048 threads; eight (32 registers) and six (40) spilled on sm_80-90 once the fused
// step's v0 stream and in-place basis were added) and lets large k use what it needs (no
// spills; scripts/check-kernels.sh fails on any).
// 16-bit types with k = 2, 3 take 3 blocks (f16 k = 3 spilled 8 bytes at 64 registers on
// sm_80-89 once pass 2 took its operands through the list-or-flat accessor).
#define RR_APPLY_MINB(KK, E) ((KK) <= 1 ? 5 : ((KK) <= 3 ? (sizeof(E::S) == 4 ? 4 : 3) : 1))
// The tensor-list twin of each apply kernel (project_apply_list_<dt>_k<k>: the same code,
// LIST = true) is a kernel of its own so that the flat kernels keep their register budget:
// one kernel with both paths took the list path's registers everywhere (f16/bf16 k <= 3
// spilled at the flat budget on sm_80-90). The list kernels get one block less per SM.
#define RR_APPLY_LIST_MINB(KK) ((KK) <= 1 ? 4 : ((KK) <= 3 ? 3 : 1))
#define RR_PROJECT_APPLY_ONE(NAME, E, KK, SUFFIX, MINB, LIST)                                 \
    extern "C" __global__ void __launch_bounds__(RR_THREADS, MINB) project_apply_##SUFFIX##NAME##_k##KK( \
        const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ ptrs,                   \
        const E::S* __restrict__ v, const E::S* __restrict__ v0, RR_BASIS_PARAMS(const E::S), \
        const double* __restrict__ coef,                                                     \
        const double* __restrict__ beta_seg, double beta_scalar, double alpha, int mode,     \
        const E::S* __restrict__ base, E::S* out) {                                          \
        const E::S* const b[RR_MAX_K] = {b0, b1, b2, b3, b4, b5, b6, b7};                    \
        rr_apply<E, KK, LIST>(tasks, ptrs, v, v0, b, coef, beta_seg, beta_scalar, alpha, mode, base, out); \
    }
#define RR_PROJECT_APPLY(NAME, E, KK)                                                         \
    RR_PROJECT_APPLY_ONE(NAME, E, KK, , RR_APPLY_MINB(KK, E), false)                            \
    RR_PROJECT_APPLY_ONE(NAME, E, KK, list_, RR_APPLY_LIST_MINB(KK), true)

RR_FOR_K0_8(RR_PROJECT_APPLY, f32, rr_f32)
RR_FOR_K0_8(RR_PROJECT_APPLY, f16, rr_f16)
RR_FOR_K0_8(RR_PROJECT_APPLY, bf16, rr_bf16)

// ---------------------------------------------------------------------------------------
// orth_apply_<dt>_k<k>: last pass of orthonormalize (CholQR2): b_j <- sum_i M[i][j] b_i in place
// with M = M1 * M2 (both row-major k*k per segment, from the orth_partials folds ORTH1 / ORTH2),
// computed per block in shared memory. Each element e is owned by one thread, which loads
// all k values before writing any: in place is race-free.
// Launch: grid = (n_tasks), block = (RR_THREADS); 1 <= k <= 8. f64 arithmetic, one
// rounding per output.
// ---------------------------------------------------------------------------------------
template <class E, int K>
__device__ __forceinline__ void rr_orth_apply(const rr_u64* __restrict__ tasks,
                                              typename E::S* const (&b)[RR_MAX_K],
                                              const double* __restrict__ m1,
                                              const double* __restrict__ m2, double* sm) {
    const rr_task task = rr_load_task(tasks, blockIdx.x);
    for (int idx = threadIdx.x; idx < K * K; idx += RR_THREADS) {
        const int i = idx / K;
        const int j = idx % K;
        const double* a = m1 + task.seg * (K * K);
        const double* c = m2 + task.seg * (K * K);
        double s = 0.0;
#pragma unroll
        for (int r = 0; r < K; ++r) s += a[i * K + r] * c[r * K + j];
        sm[idx] = s;
    }
    __syncthreads();

    const rr_u32 mis0 = rr_mis<E>(b[0], task.start);
    // 16-bit types with k >= 7: k*8 lanes in flight exceed the register file (spills on
    // sm_80-89), so those read element by element; orthonormalize is not on the hot path.
    bool same = K * E::VEC <= 48;
#pragma unroll
    for (int i = 1; i < K; ++i) same = same && rr_mis<E>(b[i], task.start) == mis0;
    const rr_window win = rr_make_window<E>(task.start, task.end, mis0, same);
    const rr_u64 vend = win.vbeg + win.nvec * (rr_u64)E::VEC;

    for (rr_u64 qv = threadIdx.x; qv < win.nvec; qv += RR_THREADS) {
        const rr_u64 e = win.vbeg + qv * (rr_u64)E::VEC;
        rr_v16 bv[K];
#pragma unroll
        for (int i = 0; i < K; ++i) bv[i] = rr_ld16<E>(b[i], e);
#pragma unroll
        for (int c = 0; c < K; ++c) {
            double y[E::VEC];
#pragma unroll
            for (int j = 0; j < E::VEC; ++j) {
                double s = 0.0;
#pragma unroll
                for (int i = 0; i < K; ++i) s += sm[i * K + c] * E::lane(bv[i], j);
                y[j] = s;
            }
            rr_st16<E>(b[c], e, rr_pack<E>(y));
        }
    }
#pragma unroll 1
    for (int part = 0; part < 2; ++part) {
        const rr_u64 lo = part == 0 ? task.start : vend;
        const rr_u64 hi = part == 0 ? win.vbeg : task.end;
        for (rr_u64 e = lo + threadIdx.x; e < hi; e += RR_THREADS) {
            double bx[K];
#pragma unroll
            for (int i = 0; i < K; ++i) bx[i] = E::load(b[i][e]);
#pragma unroll
            for (int c = 0; c < K; ++c) {
                double s = 0.0;
#pragma unroll
                for (int i = 0; i < K; ++i) s += sm[i * K + c] * bx[i];
                b[c][e] = E::store(s);
            }
        }
    }
}

#define RR_ORTH_APPLY(NAME, E, KK)                                                            \
    extern "C" __global__ void __launch_bounds__(RR_THREADS) orth_apply_##NAME##_k##KK(       \
        const rr_u64* __restrict__ tasks, RR_BASIS_PARAMS(E::S),                             \
        const double* __restrict__ m1, const double* __restrict__ m2) {                      \
        __shared__ double sm[RR_MAX_K * RR_MAX_K];                                           \
        E::S* const b[RR_MAX_K] = {b0, b1, b2, b3, b4, b5, b6, b7};                          \
        rr_orth_apply<E, KK>(tasks, b, m1, m2, sm);                                          \
    }

RR_FOR_K1_8(RR_ORTH_APPLY, f32, rr_f32)
RR_FOR_K1_8(RR_ORTH_APPLY, f16, rr_f16)
RR_FOR_K1_8(RR_ORTH_APPLY, bf16, rr_bf16)
