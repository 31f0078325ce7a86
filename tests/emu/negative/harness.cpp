// Launches one broken (or fixed) kernel of negative/broken.cu through the emulated driver's
// API, the way cudarc does (kernelParams = pointers to the argument values).
//   harness CASE   exit 0: launched and the result is right; 1: the launch returned an
//                  error; 2: the result is wrong; the sanitizers exit with their own codes.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
extern "C" {
CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(void**, int);
CUresult cuCtxSetCurrent(void*);
CUresult cuMemAlloc_v2(CUdeviceptr*, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void*, size_t);
CUresult cuMemcpyDtoH_v2(void*, CUdeviceptr, size_t);
CUresult cuModuleLoadData(void**, const void*);
CUresult cuModuleGetFunction(void**, void*, const char*);
CUresult cuLaunchKernel(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**,
                        void**);
}

#define CK(x)                                                           \
    do {                                                                \
        CUresult r_ = (x);                                              \
        if (r_) {                                                       \
            fprintf(stderr, "harness: %s failed with %d\n", #x, r_);    \
            exit(3);                                                    \
        }                                                               \
    } while (0)

int main(int argc, char** argv) {
    if (argc != 2) return 4;
    const char* c = argv[1];
    CK(cuInit(0));
    void* ctx;
    CK(cuDevicePrimaryCtxRetain(&ctx, 0));
    CK(cuCtxSetCurrent(ctx));
    void* mod;
    static const char image[] = "not executed";
    CK(cuModuleLoadData(&mod, image));
    const unsigned long long n = 512;
    float h_in[512], h_out[512];
    for (unsigned i = 0; i < n; ++i) h_in[i] = (float)(i % 7) - 3.0f;
    CUdeviceptr in, out;
    CK(cuMemAlloc_v2(&in, n * sizeof(float)));
    CK(cuMemAlloc_v2(&out, n * sizeof(float)));
    CK(cuMemcpyHtoD_v2(in, h_in, sizeof h_in));
    CK(cuMemcpyHtoD_v2(out, h_in, sizeof h_in));
    // "neg_argcount_full": the same kernel launched with all of its arguments.
    const bool full = !strcmp(c, "neg_argcount_full");
    void* f;
    CK(cuModuleGetFunction(&f, mod, full ? "neg_argcount" : c));
    // kernelParams as cudarc builds them (a heap array of exactly the pushed count).
    unsigned long long nn = n;
    void** args = (void**)calloc(4, sizeof(void*));
    unsigned grid = 2, block = 256;
    bool two_d = strstr(c, "barrier") && !strstr(c, "divergent");
    if (!strcmp(c, "neg_argcount")) {  // one argument short: (in, n)
        args[0] = &in;
        args[1] = &nn;
    } else if (strstr(c, "oob") || full) {
        args[0] = &in;
        args[1] = &out;
        args[2] = &nn;
    } else {
        args[0] = &in;
        args[1] = &out;
        if (!two_d) grid = 1;
    }
    CUresult r = cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, nullptr, args, nullptr);
    if (r) {
        fprintf(stderr, "harness: %s: launch returned %d\n", c, r);
        return 1;
    }
    CK(cuMemcpyDtoH_v2(h_out, out, sizeof h_out));
    bool ok = true;
    if (two_d) {
        for (unsigned b = 0; b < 2; ++b) {
            float s = 0.0f;
            for (unsigned i = 0; i < 256; ++i) s += h_in[b * 256 + i];
            ok = ok && h_out[b] == s;
        }
    } else if (strstr(c, "shuffle")) {
        for (unsigned i = 0; i < 256; ++i) ok = ok && h_out[i] == ((i & 31) < 16 ? h_in[i + 1] : h_in[i]);
    } else {
        for (unsigned i = 0; i < 256; ++i) ok = ok && h_out[i] == h_in[i];
    }
    printf("harness: %s: %s\n", c, ok ? "result right" : "result WRONG");
    CK(cuMemFree_v2(in));
    CK(cuMemFree_v2(out));
    free(args);
    return ok ? 0 : 2;
}
