// redreg: the fused optimizer step (module "optim"; wrapper src/optim/cuda.rs, oracle
// src/optim/reference.rs, CPU pass src/optim/cpu.rs).
//
// Operations (<dt> in f32, f16, bf16; parameters and gradients of type <dt>, state f32):
//   optim_sgd_<dt>    torch.optim.SGD:   g += wd*theta; b = g (t = 1) or mu*b + (1-tau)*g;
//                     g = g + mu*b (Nesterov) or b; theta -= lr*g
//   optim_adamw_<dt>  torch.optim.AdamW: theta *= 1 - lr*wd; m = b1*m + (1-b1)*g;
//                     v = b2*v + (1-b2)*g*g; theta -= step_size*m / (sqrt(v)*inv_root_bc2 + eps)
// where g is the stored gradient, or for the tensors of the RedReg correction the corrected
// gradient g + beta*(d - sum_j w_j b_j), d = theta - theta0 (f64), b_0 = g, formed in f64 in
// registers and never written. The coefficients w (k per corrected tensor) come from pass 1
// of the projection with the solve folded in (project_partials_<dt>_k<k>, the same launch
// the projection makes); a plain step passes coef = null. The plain and the corrected step
// are this one kernel: a corrected step = project_partials + optim_*, a plain step = optim_*.
//
// Work decomposition (apex multi_tensor_apply style, the projection's machinery): ONE launch
// for every tensor of the model. The host builds the chunk-task table of the optimizer's
// layout once (crate::segments::chunk_tasks, RR_CHUNK = 16384 elements; rr_task of
// common.cuh) and a per-tensor pointer table of RR_OPT_WORDS u64 (src/abi.rs OPT_*), whose
// element operands are biased by the tensor's offset so that every operand is indexed with
// the task's absolute element offset. Launch: grid = (n_tasks), block = (RR_THREADS = 256);
// block b runs task b; thread i takes elements start + i, start + i + 256, ... (coalesced
// scalar loads; the update is elementwise, so the order is irrelevant to the result). Each
// element is read and written by one thread only: in place is race-free. All indices 64-bit.
//
// Per-tensor steps (PyTorch's per-parameter semantics, src/optim/optimizer.rs): a tensor
// without a gradient in this step has OPT_SKIP set in its pointer-table row (and OPT_GRAD 0):
// its blocks return after loading the row, nothing of it read or written. Each tensor's
// update uses its own step count: when every stepped tensor has the same step constants the
// host passes them as scalars (flags' RR_OPT_FIRST, step_size, inv_root_bc2) and tstep is
// null; otherwise tstep holds RR_OPT_TS_WORDS f64 per tensor (SGD: RR_OPT_TS_FIRST; AdamW:
// RR_OPT_TS_STEP_SIZE, RR_OPT_TS_INV_ROOT_BC2), read once per block instead of the scalars.
//
// Arithmetic: f64, every operation an explicit __d*_rn intrinsic (never contracted into an
// FMA by nvcc, nor by the emulated driver's host compiler), in the order of
// src/optim/cpu.rs / reference.rs, each stored value rounded once (state: f64 -> f32 round
// to nearest even; parameter: E::store). Given the same coefficients the result is bit for
// bit the CPU pass's and the oracle's (NaN payloads aside, docs/numerics.md). Step-wide
// constants (1 - tau, 1 - lr*wd, 1 - b1, 1 - b2, step_size, inv_root_bc2) are computed once
// on the host in f64, as the CPU pass computes them.
#include "common.cuh"

// OPT_* slots and flags: generated from src/abi.rs.
#include "redreg_abi.cuh"

// The per-block view of one tensor: its row of the pointer table and its correction.
struct rr_opt_block {
    rr_task task;
    bool skip;  // the tensor has no gradient in this step (uniform per block)
    bool corr;  // the tensor is one of the correction's (uniform per block)
    int k;      // basis vectors of the correction (1 + extra)
    double beta;
};

// Loads the block's task, its tensor's pointer row (to shared memory) and, for a corrected
// tensor, its k coefficients (to shared memory). Ends with a barrier every thread reaches.
__device__ __forceinline__ rr_opt_block rr_opt_begin(const rr_u64* __restrict__ tasks,
                                                     const rr_u64* __restrict__ ptrs,
                                                     const double* __restrict__ coef,
                                                     rr_u64 corr_first, rr_u64 corr_count, int k,
                                                     const double* __restrict__ beta_seg,
                                                     double beta_scalar, rr_u64* row, double* w) {
    rr_opt_block b;
    b.task = rr_load_task(tasks, blockIdx.x);
    const rr_u64 s = b.task.seg - corr_first;  // wraps for tensors before the encoder
    b.corr = coef != 0 && b.task.seg >= corr_first && s < corr_count;
    b.k = b.corr ? k : 0;
    b.beta = b.corr ? (beta_seg ? beta_seg[s] : beta_scalar) : 0.0;
    if (threadIdx.x < RR_OPT_WORDS) row[threadIdx.x] = ptrs[b.task.seg * (rr_u64)RR_OPT_WORDS + threadIdx.x];
    if (b.corr && threadIdx.x < (unsigned)k) w[threadIdx.x] = coef[s * (rr_u64)k + threadIdx.x];
    __syncthreads();
    b.skip = row[RR_OPT_SKIP] != 0;
    return b;
}

// The gradient the update uses at element e: g, or g + beta*((x - theta0) - w_0*g - sum_j
// w_j*b_j) as src/optim/cpu.rs Drift::at (the projection's pass 2 with alpha = 1, unfused).
template <class E>
__device__ __forceinline__ double rr_opt_grad(const rr_opt_block& b, const volatile rr_u64* row,
                                              const volatile double* w, rr_u64 e, double x,
                                              double g) {
    typedef typename E::S S;
    if (!b.corr) return g;
    const S* t0 = reinterpret_cast<const S*>((rr_u64)row[RR_OPT_THETA0]);
    double y = __dsub_rn(x, E::load(t0[e]));
    y = __dsub_rn(y, __dmul_rn(w[0], g));
#pragma unroll 1
    for (int j = 1; j < b.k; ++j) {
        const S* bj = reinterpret_cast<const S*>((rr_u64)row[RR_OPT_B1 + j - 1]);
        y = __dsub_rn(y, __dmul_rn(w[j], E::load(bj[e])));
    }
    return __dadd_rn(g, __dmul_rn(b.beta, y));
}

// Launch: grid = (n_tasks), block = (RR_THREADS). flags: RR_OPT_MOMENTUM | RR_OPT_NESTEROV |
// RR_OPT_FIRST | RR_OPT_DECAY. ptrs: RR_OPT_WORDS u64 per tensor (OPT_S0 the f32 momentum
// buffer over the layout when MOMENTUM, else 0; OPT_SKIP). coef: null (plain step) or k f64
// per corrected tensor, tensors corr_first .. corr_first + corr_count; beta_seg null or one
// f64 per corrected tensor; tstep null (RR_OPT_FIRST for every tensor) or RR_OPT_TS_WORDS f64
// per tensor (RR_OPT_TS_FIRST).
template <class E>
__device__ __forceinline__ void rr_optim_sgd(const rr_u64* __restrict__ tasks,
                                             const rr_u64* __restrict__ ptrs, int flags, double lr,
                                             double momentum, double one_minus_damp,
                                             double weight_decay, const double* __restrict__ coef,
                                             rr_u64 corr_first, rr_u64 corr_count, int k,
                                             const double* __restrict__ beta_seg,
                                             double beta_scalar,
                                             const double* __restrict__ tstep) {
    typedef typename E::S S;
    __shared__ rr_u64 row[RR_OPT_WORDS];
    __shared__ double w[RR_MAX_K];
    const rr_opt_block b =
        rr_opt_begin(tasks, ptrs, coef, corr_first, corr_count, k, beta_seg, beta_scalar, row, w);
    if (b.skip) return;
    const bool first = tstep ? tstep[b.task.seg * (rr_u64)RR_OPT_TS_WORDS + RR_OPT_TS_FIRST] != 0.0
                             : (flags & RR_OPT_FIRST) != 0;
    // The row is read at each use (volatile): held in registers the pointers cost more than
    // the shared loads (as project_apply's list kernels).
    const volatile rr_u64* vrow = row;
    const volatile double* vw = w;
#pragma unroll 1
    for (rr_u64 e = b.task.start + threadIdx.x; e < b.task.end; e += RR_THREADS) {
        S* p = reinterpret_cast<S*>((rr_u64)vrow[RR_OPT_PARAM]);
        const S* gp = reinterpret_cast<const S*>((rr_u64)vrow[RR_OPT_GRAD]);
        const double x = E::load(p[e]);
        double g = rr_opt_grad<E>(b, vrow, vw, e, x, E::load(gp[e]));
        if (flags & RR_OPT_DECAY) g = __dadd_rn(g, __dmul_rn(weight_decay, x));
        if (flags & RR_OPT_MOMENTUM) {
            float* s0 = reinterpret_cast<float*>((rr_u64)vrow[RR_OPT_S0]);
            const double m = first
                                 ? g
                                 : __dadd_rn(__dmul_rn(momentum, (double)s0[e]),
                                             __dmul_rn(one_minus_damp, g));
            s0[e] = (float)m;
            g = (flags & RR_OPT_NESTEROV) ? __dadd_rn(g, __dmul_rn(momentum, m)) : m;
        }
        p[e] = E::store(__dsub_rn(x, __dmul_rn(lr, g)));
    }
}

// Launch: as rr_optim_sgd; OPT_S0 and OPT_S1 are the f32 moments m and v over the layout.
// decay_mul = 1 - lr*wd; step_size = lr/(1 - b1^t); inv_root_bc2 = 1/sqrt(1 - b2^t)
// (crate::optim::AdamW::step_scalars), or, with tstep, each tensor's own pair from tstep
// (RR_OPT_TS_STEP_SIZE, RR_OPT_TS_INV_ROOT_BC2 of its step count t).
template <class E>
__device__ __forceinline__ void rr_optim_adamw(const rr_u64* __restrict__ tasks,
                                               const rr_u64* __restrict__ ptrs, double decay_mul,
                                               double beta1, double one_minus_beta1, double beta2,
                                               double one_minus_beta2, double step_size,
                                               double inv_root_bc2, double eps,
                                               const double* __restrict__ coef, rr_u64 corr_first,
                                               rr_u64 corr_count, int k,
                                               const double* __restrict__ beta_seg,
                                               double beta_scalar,
                                               const double* __restrict__ tstep) {
    typedef typename E::S S;
    __shared__ rr_u64 row[RR_OPT_WORDS];
    __shared__ double w[RR_MAX_K];
    const rr_opt_block b =
        rr_opt_begin(tasks, ptrs, coef, corr_first, corr_count, k, beta_seg, beta_scalar, row, w);
    if (b.skip) return;
    if (tstep) {
        const double* ts = tstep + b.task.seg * (rr_u64)RR_OPT_TS_WORDS;
        step_size = ts[RR_OPT_TS_STEP_SIZE];
        inv_root_bc2 = ts[RR_OPT_TS_INV_ROOT_BC2];
    }
    const volatile rr_u64* vrow = row;
    const volatile double* vw = w;
#pragma unroll 1
    for (rr_u64 e = b.task.start + threadIdx.x; e < b.task.end; e += RR_THREADS) {
        S* p = reinterpret_cast<S*>((rr_u64)vrow[RR_OPT_PARAM]);
        const S* gp = reinterpret_cast<const S*>((rr_u64)vrow[RR_OPT_GRAD]);
        float* m_buf = reinterpret_cast<float*>((rr_u64)vrow[RR_OPT_S0]);
        float* v_buf = reinterpret_cast<float*>((rr_u64)vrow[RR_OPT_S1]);
        const double x0 = E::load(p[e]);
        const double g = rr_opt_grad<E>(b, vrow, vw, e, x0, E::load(gp[e]));
        const double x = __dmul_rn(x0, decay_mul);
        const double m = __dadd_rn(__dmul_rn(beta1, (double)m_buf[e]), __dmul_rn(one_minus_beta1, g));
        const double v = __dadd_rn(__dmul_rn(beta2, (double)v_buf[e]),
                                   __dmul_rn(__dmul_rn(one_minus_beta2, g), g));
        m_buf[e] = (float)m;
        v_buf[e] = (float)v;
        const double denom = __dadd_rn(__dmul_rn(__dsqrt_rn(v), inv_root_bc2), eps);
        p[e] = E::store(__dsub_rn(x, __ddiv_rn(__dmul_rn(step_size, m), denom)));
    }
}

#define RR_OPTIM_SGD(NAME, E)                                                                 \
    extern "C" __global__ void __launch_bounds__(RR_THREADS) optim_sgd_##NAME(                \
        const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ ptrs, int flags,         \
        double lr, double momentum, double one_minus_damp, double weight_decay,               \
        const double* __restrict__ coef, rr_u64 corr_first, rr_u64 corr_count, int k,        \
        const double* __restrict__ beta_seg, double beta_scalar,                              \
        const double* __restrict__ tstep) {                                                   \
        rr_optim_sgd<E>(tasks, ptrs, flags, lr, momentum, one_minus_damp, weight_decay, coef, \
                        corr_first, corr_count, k, beta_seg, beta_scalar, tstep);             \
    }

#define RR_OPTIM_ADAMW(NAME, E)                                                               \
    extern "C" __global__ void __launch_bounds__(RR_THREADS) optim_adamw_##NAME(              \
        const rr_u64* __restrict__ tasks, const rr_u64* __restrict__ ptrs, double decay_mul,  \
        double beta1, double one_minus_beta1, double beta2, double one_minus_beta2,           \
        double step_size, double inv_root_bc2, double eps, const double* __restrict__ coef,   \
        rr_u64 corr_first, rr_u64 corr_count, int k, const double* __restrict__ beta_seg,     \
        double beta_scalar, const double* __restrict__ tstep) {                               \
        rr_optim_adamw<E>(tasks, ptrs, decay_mul, beta1, one_minus_beta1, beta2,              \
                          one_minus_beta2, step_size, inv_root_bc2, eps, coef, corr_first,    \
                          corr_count, k, beta_seg, beta_scalar, tstep);                       \
    }

RR_OPTIM_SGD(f32, rr_f32)
RR_OPTIM_SGD(f16, rr_f16)
RR_OPTIM_SGD(bf16, rr_bf16)
RR_OPTIM_ADAMW(f32, rr_f32)
RR_OPTIM_ADAMW(f16, rr_f16)
RR_OPTIM_ADAMW(bf16, rr_bf16)
