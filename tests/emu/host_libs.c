/* Handle-only stand-ins for cuBLAS and cuRAND, beside the emulated driver, so that a
 * binary linked against them (candle's `cuda` feature links both: candle makes a cuBLAS
 * handle and a cuRAND generator when it opens a CUDA device) starts and opens a device on
 * the emulated driver. Only the handle's life cycle is emulated: create, bind to a stream,
 * seed, destroy. Every other function of cudarc's bindings is a generated stub
 * (tests/emu/build.sh) that names itself and fails, so a test that reaches cuBLAS math or
 * cuRAND sampling fails loudly instead of computing nothing.
 *
 * Built once per library: -DEMU_CUBLAS for libcublas.so.13, -DEMU_CURAND for
 * libcurand.so.10 (libcublasLt.so.13 is stubs only). */
#include <stddef.h>

#define EXPORT __attribute__((visibility("default")))

#ifdef EMU_CUBLAS
/* cublasStatus_t: 0 = CUBLAS_STATUS_SUCCESS, 7 = CUBLAS_STATUS_INVALID_VALUE. */
static int emu_cublas_handle;
EXPORT int cublasCreate_v2(void** handle) {
    if (!handle) return 7;
    *handle = &emu_cublas_handle;
    return 0;
}
EXPORT int cublasDestroy_v2(void* handle) { return handle == &emu_cublas_handle ? 0 : 7; }
EXPORT int cublasSetStream_v2(void* handle, void* stream) {
    (void)stream;
    return handle == &emu_cublas_handle ? 0 : 7;
}
#endif

#ifdef EMU_CURAND
/* curandStatus_t: 0 = CURAND_STATUS_SUCCESS, 101 = CURAND_STATUS_NOT_INITIALIZED. */
static int emu_curand_generator;
EXPORT int curandCreateGenerator(void** generator, int rng_type) {
    (void)rng_type;
    if (!generator) return 101;
    *generator = &emu_curand_generator;
    return 0;
}
EXPORT int curandDestroyGenerator(void* generator) {
    return generator == &emu_curand_generator ? 0 : 101;
}
EXPORT int curandSetStream(void* generator, void* stream) {
    (void)stream;
    return generator == &emu_curand_generator ? 0 : 101;
}
EXPORT int curandSetPseudoRandomGeneratorSeed(void* generator, unsigned long long seed) {
    (void)seed;
    return generator == &emu_curand_generator ? 0 : 101;
}
#endif
