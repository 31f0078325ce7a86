// redreg emulated CUDA: the driver API (libcuda.so.1) as cudarc 0.19 uses it.
//
// Devices: EMU_DEVICES (default 1) devices of compute capability 9.0, each with one primary
// context. Streams execute in order and synchronously: every operation is complete when
// its call returns (so cross-stream ordering bugs are invisible here). Events record the
// host time (their elapsed times mean nothing about a GPU). Device memory is host memory:
// every allocation is a separate malloc of exactly the requested size (AddressSanitizer's
// redzones then sit right after the last byte), filled with 0xA5 so that reading memory
// nobody wrote shows. Every pointer a call or a kernel argument passes must lie inside a
// live allocation of the current context's device. Kernels: see registry.h and runtime.cpp.
// Functions of the driver API not implemented here exist (stubs.cpp, generated from
// cudarc's bindings) and return CUDA_ERROR_NOT_SUPPORTED after naming themselves on stderr.
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "runtime.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

namespace {

struct Context {
    int device;
    int retained;
};
struct Stream {
    Context* ctx;
};
struct Event {
    Context* ctx;
    double t_ms;
    bool recorded;
};
struct Module {
    Context* ctx;
    std::string ptx;  // the image when it is PTX text (else empty)
};
struct Function {
    const emu::KernelDesc* k;
    Module* mod;
};
struct Alloc {
    size_t size;
    int device;
    bool host;  // pinned host memory (cuMemHostAlloc)
};

std::mutex g_mu;  // protects everything below
bool g_init = false;
int g_ndev = 1;
Context* g_primary[16];
std::map<uintptr_t, Alloc> g_allocs;  // base address -> allocation
thread_local Context* t_current = nullptr;
// Kernels run under this lock in the sanitizer builds (__shared__ is then plain static).
std::mutex g_kernel_mu;

// Launches per kernel; written to $EMU_COVERAGE_DIR/launches-<pid>.txt at exit (emu-check
// uses it to show that every kernel of kernels/*.cu ran).
struct Coverage {
    std::mutex mu;
    std::map<std::string, unsigned long long> launches;
    ~Coverage() {
        const char* dir = getenv("EMU_COVERAGE_DIR");
        if (!dir || launches.empty()) return;
        char path[4096];
        snprintf(path, sizeof path, "%s/launches-%d.txt", dir, (int)getpid());
        FILE* f = fopen(path, "w");
        if (!f) return;
        for (auto& kv : launches) fprintf(f, "%s %llu\n", kv.first.c_str(), kv.second);
        fclose(f);
    }
};
Coverage g_coverage;

std::unordered_map<std::string, const emu::KernelDesc*>& kernels() {
    static auto* m = new std::unordered_map<std::string, const emu::KernelDesc*>();
    return *m;
}

bool verbose() {
    static int v = -1;
    if (v < 0) v = getenv("EMU_VERBOSE") && strcmp(getenv("EMU_VERBOSE"), "0") != 0;
    return v == 1;
}

void say(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "emulated CUDA: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

double now_ms() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

CUresult need_init() { return g_init ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED; }

// The special handles CU_STREAM_LEGACY (0x1) and CU_STREAM_PER_THREAD (0x2: candle's
// stream, cudarc's `per_thread_stream`) name the current context's default streams, as
// the null stream does; streams run in order here, so all three are the same.
bool is_default_stream(void* s) { return (uintptr_t)s <= 2; }

Context* ctx_of_stream(void* s) {
    if (is_default_stream(s)) return t_current;
    return static_cast<Stream*>(s)->ctx;
}

// The allocation containing [p, p + len) (len may be 0: p may then be one past the end).
const Alloc* find_alloc(uintptr_t p, size_t len, uintptr_t* base_out) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const uintptr_t base = it->first;
    const size_t size = it->second.size;
    if (p < base || p - base > size || len > size - (p - base)) return nullptr;
    if (base_out) *base_out = base;
    return &it->second;
}

// Checks a device range used by a copy or memset.
CUresult check_range(const char* fn, CUdeviceptr p, size_t len, Context* ctx) {
    if (len == 0) return CUDA_SUCCESS;
    std::lock_guard<std::mutex> g(g_mu);
    const Alloc* a = find_alloc((uintptr_t)p, len, nullptr);
    if (!a) {
        say("%s: device range [%#llx, +%zu) is not inside one live allocation", fn, p, len);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!a->host && ctx && a->device != ctx->device) {
        say("%s: address %#llx belongs to device %d, the stream's context is on device %d", fn, p, a->device,
            ctx->device);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult alloc(CUdeviceptr* dptr, size_t size, Context* ctx, bool host) {
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    // Exactly `size` bytes (a unique address for 0 bytes): overflows hit ASan's redzone.
    void* p = malloc(size ? size : 1);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(p, 0xA5, size);
    std::lock_guard<std::mutex> g(g_mu);
    g_allocs[(uintptr_t)p] = Alloc{size, ctx->device, host};
    *dptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult release(const char* fn, CUdeviceptr p) {
    if (p == 0) return CUDA_SUCCESS;
    {
        std::lock_guard<std::mutex> g(g_mu);
        auto it = g_allocs.find((uintptr_t)p);
        if (it == g_allocs.end()) {
            say("%s: %#llx is not the start of a live allocation", fn, p);
            return CUDA_ERROR_INVALID_VALUE;
        }
        g_allocs.erase(it);
    }
    free((void*)(uintptr_t)p);
    return CUDA_SUCCESS;
}

}  // namespace

namespace emu {

void register_kernel(const KernelDesc* k) {
    auto r = kernels().emplace(k->name, k);
    if (!r.second) {
        fprintf(stderr, "emulated CUDA: kernel %s registered twice\n", k->name);
        abort();
    }
}

thread_local std::string t_arg_error;

bool check_ptr_arg(const KernelDesc& k, int index, const void* p) {
    if (!p) return true;
    std::lock_guard<std::mutex> g(g_mu);
    const Alloc* a = find_alloc((uintptr_t)p, 0, nullptr);
    char buf[512];
    if (!a) {
        snprintf(buf, sizeof buf,
                 "%s: argument %d (a %zu-byte pointer) = %p is neither null nor inside a live device "
                 "allocation (wrong argument count, order or type?)",
                 k.name, index, k.params[index].size, p);
        t_arg_error = buf;
        return false;
    }
    if (!a->host && t_current && a->device != t_current->device) {
        snprintf(buf, sizeof buf, "%s: argument %d = %p is memory of device %d; the kernel runs on device %d",
                 k.name, index, p, a->device, t_current->device);
        t_arg_error = buf;
        return false;
    }
    return true;
}

}  // namespace emu

#define API extern "C" __attribute__((visibility("default"))) CUresult

// ---- errors ----------------------------------------------------------------------------
static const char* err_name(CUresult r) {
    switch (r) {
        case CUDA_SUCCESS: return "CUDA_SUCCESS";
        case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
        case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
        case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
        case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
        case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
        case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        default: return "CUDA_ERROR_UNKNOWN";
    }
}
API cuGetErrorName(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = err_name(r);
    return CUDA_SUCCESS;
}
API cuGetErrorString(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = r == CUDA_ERROR_LAUNCH_FAILED ? "emulated kernel failed (see the message on stderr)" : err_name(r);
    return CUDA_SUCCESS;
}

// ---- init, devices -------------------------------------------------------------------
API cuInit(unsigned int) {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_init) {
        const char* d = getenv("EMU_DEVICES");
        g_ndev = d ? atoi(d) : 1;
        if (g_ndev < 0) g_ndev = 0;
        if (g_ndev > 16) g_ndev = 16;
        for (int i = 0; i < g_ndev; ++i) g_primary[i] = new Context{i, 0};
        g_init = true;
        if (verbose()) say("initialised: %d device(s), %zu kernels registered", g_ndev, kernels().size());
    }
    return CUDA_SUCCESS;
}
API cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}
API cuDeviceGetCount(int* n) {
    if (CUresult r = need_init()) return r;
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = g_ndev;
    return CUDA_SUCCESS;
}
API cuDeviceGet(CUdevice* d, int ordinal) {
    if (CUresult r = need_init()) return r;
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= g_ndev) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}
API cuDeviceGetName(char* name, int len, CUdevice d) {
    if (CUresult r = need_init()) return r;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "redreg emulated CUDA device %d (CPU)", d);
    return CUDA_SUCCESS;
}
API cuDeviceTotalMem_v2(size_t* b, CUdevice d) {
    if (!b) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return CUDA_ERROR_INVALID_DEVICE;
    *b = (size_t)16 << 30;
    return CUDA_SUCCESS;
}
API cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    if (free_b) *free_b = (size_t)16 << 30;
    if (total) *total = (size_t)16 << 30;
    return CUDA_SUCCESS;
}
API cuDeviceGetAttribute(int* v, int attrib, CUdevice d) {
    if (CUresult r = need_init()) return r;
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return CUDA_ERROR_INVALID_DEVICE;
    switch (attrib) {  // an sm_90-class device (H100 numbers where a number is needed)
        case 1: *v = 1024; break;                       // MAX_THREADS_PER_BLOCK
        case 2: case 3: *v = attrib == 2 ? 1024 : 1024; break;  // MAX_BLOCK_DIM_X/Y
        case 4: *v = 64; break;                         // MAX_BLOCK_DIM_Z
        case 5: *v = 2147483647; break;                 // MAX_GRID_DIM_X
        case 6: case 7: *v = 65535; break;              // MAX_GRID_DIM_Y/Z
        case 8: *v = 49152; break;                      // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;                        // WARP_SIZE
        case 12: *v = 65536; break;                     // MAX_REGISTERS_PER_BLOCK
        case 16: *v = 132; break;                       // MULTIPROCESSOR_COUNT
        case 38: *v = 50 << 20; break;                  // L2_CACHE_SIZE
        case 39: *v = 2048; break;                      // MAX_THREADS_PER_MULTIPROCESSOR
        case 75: *v = 9; break;                         // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;                         // COMPUTE_CAPABILITY_MINOR
        case 97: *v = 233472; break;                    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: *v = 1; break;                        // MEMORY_POOLS_SUPPORTED
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
API cuDeviceCanAccessPeer(int* v, CUdevice, CUdevice) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 0;
    return CUDA_SUCCESS;
}

// ---- contexts ------------------------------------------------------------------------
API cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    if (CUresult r = need_init()) return r;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> g(g_mu);
    g_primary[d]->retained++;
    *ctx = g_primary[d];
    return CUDA_SUCCESS;
}
API cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (d < 0 || d >= g_ndev) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> g(g_mu);
    if (g_primary[d]->retained > 0) g_primary[d]->retained--;
    return CUDA_SUCCESS;
}
API cuDevicePrimaryCtxGetState(CUdevice d, unsigned* flags, int* active) {
    if (d < 0 || d >= g_ndev) return CUDA_ERROR_INVALID_DEVICE;
    if (flags) *flags = 0;
    if (active) *active = g_primary[d]->retained > 0;
    return CUDA_SUCCESS;
}
API cuCtxGetCurrent(void** ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = t_current;
    return CUDA_SUCCESS;
}
API cuCtxSetCurrent(void* ctx) {
    t_current = static_cast<Context*>(ctx);
    return CUDA_SUCCESS;
}
API cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
API cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = t_current;
    return CUDA_SUCCESS;
}
API cuCtxGetDevice(CUdevice* d) {
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    *d = t_current->device;
    return CUDA_SUCCESS;
}
API cuCtxSynchronize(void) { return t_current ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; }

// ---- streams and events --------------------------------------------------------------
API cuStreamCreate(void** s, unsigned int) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    *s = new Stream{t_current};
    return CUDA_SUCCESS;
}
API cuStreamCreateWithPriority(void** s, unsigned int f, int) { return cuStreamCreate(s, f); }
API cuStreamDestroy_v2(void* s) {
    if (is_default_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    delete static_cast<Stream*>(s);
    return CUDA_SUCCESS;
}
API cuStreamSynchronize(void*) { return CUDA_SUCCESS; }
API cuStreamQuery(void*) { return CUDA_SUCCESS; }
API cuStreamWaitEvent(void*, void*, unsigned int) { return CUDA_SUCCESS; }
API cuStreamGetCtx(void* s, void** ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = ctx_of_stream(s);
    return CUDA_SUCCESS;
}
API cuEventCreate(void** e, unsigned int) {
    if (!e) return CUDA_ERROR_INVALID_VALUE;
    *e = new Event{t_current, 0.0, false};
    return CUDA_SUCCESS;
}
API cuEventRecord(void* e, void*) {
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    static_cast<Event*>(e)->t_ms = now_ms();
    static_cast<Event*>(e)->recorded = true;
    return CUDA_SUCCESS;
}
API cuEventRecordWithFlags(void* e, void* s, unsigned int) { return cuEventRecord(e, s); }
API cuEventSynchronize(void*) { return CUDA_SUCCESS; }
API cuEventQuery(void*) { return CUDA_SUCCESS; }
API cuEventElapsedTime(float* ms, void* a, void* b) {
    if (!ms || !a || !b) return CUDA_ERROR_INVALID_VALUE;
    if (!static_cast<Event*>(a)->recorded || !static_cast<Event*>(b)->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = (float)(static_cast<Event*>(b)->t_ms - static_cast<Event*>(a)->t_ms);
    return CUDA_SUCCESS;
}
API cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }
API cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return CUDA_SUCCESS;
}

// ---- memory --------------------------------------------------------------------------
API cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return alloc(p, n, t_current, false); }
API cuMemAllocAsync(CUdeviceptr* p, size_t n, void* s) { return alloc(p, n, ctx_of_stream(s), false); }
API cuMemFree_v2(CUdeviceptr p) { return release("cuMemFree", p); }
API cuMemFreeAsync(CUdeviceptr p, void*) { return release("cuMemFreeAsync", p); }
API cuMemHostAlloc(void** p, size_t n, unsigned int) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUdeviceptr d;
    CUresult r = alloc(&d, n, t_current, true);
    if (r == CUDA_SUCCESS) *p = (void*)(uintptr_t)d;
    return r;
}
API cuMemAllocHost_v2(void** p, size_t n) { return cuMemHostAlloc(p, n, 0); }
API cuMemFreeHost(void* p) { return release("cuMemFreeHost", (CUdeviceptr)(uintptr_t)p); }
API cuMemHostGetDevicePointer_v2(CUdeviceptr* d, void* p, unsigned int) {
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    *d = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

// Copies by direction (host to device, device to host, device to device), for tests that
// assert how many transfers an operation makes (emu_copy_counters).
static std::atomic<unsigned long long> g_copies[3];

static CUresult copy(const char* fn, void* dst, const void* src, size_t n) {
    if (n) memmove(dst, src, n);
    const int dir = fn[8] == 'H' ? 0 : (fn[11] == 'H' ? 1 : 2);  // cuMemcpy{HtoD,DtoH,DtoD}
    g_copies[dir].fetch_add(1, std::memory_order_relaxed);
    return CUDA_SUCCESS;
}
API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    if (CUresult r = check_range("cuMemcpyHtoDAsync", dst, n, ctx_of_stream(s))) return r;
    if (n && !src) return CUDA_ERROR_INVALID_VALUE;
    return copy("cuMemcpyHtoDAsync", (void*)(uintptr_t)dst, src, n);
}
API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    if (CUresult r = check_range("cuMemcpyDtoHAsync", src, n, ctx_of_stream(s))) return r;
    if (n && !dst) return CUDA_ERROR_INVALID_VALUE;
    return copy("cuMemcpyDtoHAsync", dst, (const void*)(uintptr_t)src, n);
}
API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    if (CUresult r = check_range("cuMemcpyDtoDAsync (destination)", dst, n, ctx_of_stream(s))) return r;
    if (CUresult r = check_range("cuMemcpyDtoDAsync (source)", src, n, ctx_of_stream(s))) return r;
    return copy("cuMemcpyDtoDAsync", (void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
}
API cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) { return cuMemcpyHtoDAsync_v2(dst, src, n, nullptr); }
API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return cuMemcpyDtoHAsync_v2(dst, src, n, nullptr); }
API cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) { return cuMemcpyDtoDAsync_v2(dst, src, n, nullptr); }
API cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* s) {
    if (CUresult r = check_range("cuMemsetD8Async", dst, n, ctx_of_stream(s))) return r;
    if (n) memset((void*)(uintptr_t)dst, v, n);
    return CUDA_SUCCESS;
}
API cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) { return cuMemsetD8Async(dst, v, n, nullptr); }
API cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, void* s) {
    if (CUresult r = check_range("cuMemsetD32Async", dst, n * 4, ctx_of_stream(s))) return r;
    unsigned int* p = (unsigned int*)(uintptr_t)dst;
    for (size_t i = 0; i < n; ++i) p[i] = v;
    return CUDA_SUCCESS;
}
API cuMemsetD32_v2(CUdeviceptr dst, unsigned int v, size_t n) { return cuMemsetD32Async(dst, v, n, nullptr); }
API cuPointerGetAttribute(void* data, int attrib, CUdeviceptr p) {
    if (!data) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    uintptr_t base = 0;
    const Alloc* a = find_alloc((uintptr_t)p, 0, &base);
    if (!a) return CUDA_ERROR_INVALID_VALUE;
    switch (attrib) {
        case 1: *(void**)data = g_primary[a->device]; break;           // CONTEXT
        case 2: *(unsigned*)data = a->host ? 1u : 2u; break;           // MEMORY_TYPE host/device
        case 3: *(CUdeviceptr*)data = p; break;                        // DEVICE_POINTER
        case 9: *(int*)data = a->device; break;                        // DEVICE_ORDINAL
        case 11: *(CUdeviceptr*)data = (CUdeviceptr)base; break;       // RANGE_START_ADDR
        case 12: *(size_t*)data = a->size; break;                      // RANGE_SIZE
        default: say("cuPointerGetAttribute: attribute %d is not implemented", attrib); return CUDA_ERROR_NOT_SUPPORTED;
    }
    return CUDA_SUCCESS;
}

// ---- modules and kernels -------------------------------------------------------------
// The image (fatbin, cubin or PTX) is not executed: the module's kernels are the host-compiled
// kernels/*.cu registered in this library, found by name. When the image is PTX text (the
// crate's NVRTC path), a function must also be an `.entry` of that PTX.
API cuModuleLoadData(void** m, const void* image) {
    if (!m || !image) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    Module* mod = new Module{t_current, std::string()};
    const char* s = static_cast<const char*>(image);
    // PTX is NUL-terminated text with a .version directive near the top.
    const char* nul = static_cast<const char*>(memchr(s, 0, 1 << 26));
    if (nul && memmem(s, (size_t)(nul - s) < 4096 ? (size_t)(nul - s) : 4096, ".version", 8)) mod->ptx.assign(s, nul);
    if (verbose()) say("module loaded (%s image)", mod->ptx.empty() ? "binary" : "PTX");
    *m = mod;
    return CUDA_SUCCESS;
}
API cuModuleLoadDataEx(void** m, const void* image, unsigned int, void*, void**) { return cuModuleLoadData(m, image); }
API cuModuleUnload(void* m) {
    delete static_cast<Module*>(m);
    return CUDA_SUCCESS;
}
API cuModuleGetFunction(void** f, void* m, const char* name) {
    if (!f || !m || !name) return CUDA_ERROR_INVALID_VALUE;
    Module* mod = static_cast<Module*>(m);
    auto it = kernels().find(name);
    if (it == kernels().end()) {
        say("cuModuleGetFunction: no kernel named %s is built into the emulator (tests/emu/build.sh "
            "registers every extern \"C\" __global__ of kernels/*.cu)", name);
        return CUDA_ERROR_NOT_FOUND;
    }
    if (!mod->ptx.empty()) {
        std::string entry = std::string(".entry ") + name + "(";
        if (mod->ptx.find(entry) == std::string::npos) {
            say("cuModuleGetFunction: %s is not an .entry of the loaded PTX", name);
            return CUDA_ERROR_NOT_FOUND;
        }
    }
    *f = new Function{it->second, mod};
    return CUDA_SUCCESS;
}
API cuFuncGetAttribute(int* v, int attrib, void* f) {
    if (!v || !f) return CUDA_ERROR_INVALID_VALUE;
    switch (attrib) {
        case 0: *v = 1024; break;  // MAX_THREADS_PER_BLOCK
        case 4: *v = 32; break;    // NUM_REGS
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
API cuFuncSetAttribute(void*, int, int) { return CUDA_SUCCESS; }
API cuFuncSetCacheConfig(void*, int) { return CUDA_SUCCESS; }
API cuFuncGetParamInfo(void* f, size_t i, size_t* off, size_t* size) {
    if (!f) return CUDA_ERROR_INVALID_VALUE;
    const emu::KernelDesc* k = static_cast<Function*>(f)->k;
    if (i >= (size_t)k->n_params) return CUDA_ERROR_INVALID_VALUE;
    if (off) *off = k->params[i].offset;
    if (size) *size = k->params[i].size;
    return CUDA_SUCCESS;
}

API cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shmem, void* stream, void** params, void** extra) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    const emu::KernelDesc& k = *static_cast<Function*>(f)->k;
    Context* ctx = ctx_of_stream(stream);
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (extra) {
        say("cuLaunchKernel %s: the `extra` argument form is not supported", k.name);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (shmem) {
        say("cuLaunchKernel %s: dynamic shared memory (%u bytes) is not supported", k.name, shmem);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || threads == 0 || threads > 1024 || bz > 64 || gy > 65535 || gz > 65535 ||
        gx > 2147483647u) {
        say("cuLaunchKernel %s: invalid geometry grid (%u,%u,%u) block (%u,%u,%u)", k.name, gx, gy, gz, bx, by, bz);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (k.n_params > 0 && !params) {
        say("cuLaunchKernel %s: %d parameters declared, kernelParams is null", k.name, k.n_params);
        return CUDA_ERROR_INVALID_VALUE;
    }
    // Pointer parameters, in order, each read only after the previous ones checked out.
    for (int i = 0; i < k.n_params; ++i) {
        if (!params[i]) {
            say("cuLaunchKernel %s: kernelParams[%d] is null (fewer arguments than the %d declared?)", k.name, i,
                k.n_params);
            return CUDA_ERROR_INVALID_VALUE;
        }
        if (k.params[i].is_ptr) {
            Context* saved = t_current;
            t_current = ctx;
            const bool ok = emu::check_ptr_arg(k, i, *static_cast<void* const*>(params[i]));
            t_current = saved;
            if (!ok) {
                say("cuLaunchKernel %s", emu::t_arg_error.c_str());
                return CUDA_ERROR_INVALID_VALUE;
            }
        }
    }
    void* bound = k.bind(params);
    emu::LaunchResult r;
    {
#ifdef EMU_SHARED_THREAD_LOCAL
        r = emu::run_launch(k, bound, emu::dim3{gx, gy, gz}, emu::dim3{bx, by, bz});
#else
        std::lock_guard<std::mutex> g(g_kernel_mu);
        r = emu::run_launch(k, bound, emu::dim3{gx, gy, gz}, emu::dim3{bx, by, bz});
#endif
    }
    k.release(bound);
    if (!r.ok) {
        say("launch failed: %s", r.error.c_str());
        if (getenv("EMU_ABORT_ON_ERROR")) abort();
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    {
        std::lock_guard<std::mutex> g(g_coverage.mu);
        g_coverage.launches[k.name]++;
    }
    if (verbose()) say("launched %s grid (%u,%u,%u) block (%u,%u,%u)", k.name, gx, gy, gz, bx, by, bz);
    return CUDA_SUCCESS;
}

// Copies made so far: host to device, device to host, device to device.
extern "C" __attribute__((visibility("default"))) void emu_copy_counters(unsigned long long out[3]) {
    for (int i = 0; i < 3; ++i) out[i] = g_copies[i].load(std::memory_order_relaxed);
}

// Counters for tests of the emulator itself (launches, blocks, threads, fiber switches).
extern "C" __attribute__((visibility("default"))) void emu_counters(unsigned long long out[4]) {
    emu::Counters c = emu::counters();
    out[0] = c.launches;
    out[1] = c.blocks;
    out[2] = c.threads;
    out[3] = c.switches;
}
