// Deliberately broken kernels (and their fixed twins) that each checking mode of the
// emulated driver must catch: tests/emu/negative/run.sh fails if a broken kernel passes.
// NOT part of the crate (kernels/ holds the real ones).
typedef unsigned long long u64;

// Address mode: reads one element past the end of `in` (the fixed twin reads in[i]).
extern "C" __global__ void neg_oob_read(const float* in, float* out, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + 1];
}
extern "C" __global__ void fix_oob_read(const float* in, float* out, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}

// Race mode: thread 0 sums shared memory the other threads write, without the barrier
// between the writes and the reads (the fixed twin has it).
extern "C" __global__ void neg_missing_barrier(const float* in, float* out) {
    __shared__ float sm[256];
    sm[threadIdx.x] = in[blockIdx.x * 256 + threadIdx.x];
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 256; ++i) s += sm[i];
        out[blockIdx.x] = s;
    }
}
extern "C" __global__ void fix_missing_barrier(const float* in, float* out) {
    __shared__ float sm[256];
    sm[threadIdx.x] = in[blockIdx.x * 256 + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 256; ++i) s += sm[i];
        out[blockIdx.x] = s;
    }
    __syncthreads();  // nobody overwrites sm (next launch) before thread 0 has read it
}

// Every mode: a barrier only the first warp reaches.
extern "C" __global__ void neg_divergent_barrier(const float* in, float* out) {
    if (threadIdx.x < 32) __syncthreads();
    out[threadIdx.x] = in[threadIdx.x];
}

// Every mode: a full-mask shuffle that only half of the warp executes.
extern "C" __global__ void neg_partial_shuffle(const float* in, float* out) {
    float x = in[threadIdx.x];
    if ((threadIdx.x & 31) < 16) x = __shfl_down_sync(0xffffffffu, x, 1);
    out[threadIdx.x] = x;
}
extern "C" __global__ void fix_partial_shuffle(const float* in, float* out) {
    float x = in[threadIdx.x];
    float y = __shfl_down_sync(0xffffffffu, x, 1);
    if ((threadIdx.x & 31) < 16) x = y;
    out[threadIdx.x] = x;
}

// Every mode: launched with one argument too few (the harness passes in, n: `out` then
// reads the bytes of n, which are no device address) — what a wrapper that forgot an
// argument does. The fixed twin is launched with all three.
extern "C" __global__ void neg_argcount(const float* in, float* out, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}
