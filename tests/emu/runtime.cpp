// redreg emulated CUDA: the block executor.
//
// Each CUDA thread of a block is a fiber with its own stack; a minimal context switch
// (callee-saved registers, MXCSR and the x87 control word) moves between them on ONE OS
// thread. A fiber runs until it waits at a barrier (__syncthreads, a warp shuffle,
// __syncwarp) or exits; it then switches directly to the next runnable thread of the block.
// Rules enforced (violations fail the launch with the kernel, block, thread and source line):
//   - __syncthreads: every thread of the block arrives at the SAME call site; a thread that
//     exits while others wait, or threads waiting at different sites, is an error;
//   - warp shuffles / __syncwarp / ballots: every lane named in the mask arrives, with the
//     same mask; the calling lane is in its mask; a lane named in the mask exists;
//   - nothing runnable while threads still wait: deadlock, reported with each waiting site.
// Sanitizers: AddressSanitizer is told about every fiber switch (so stacks are tracked);
// ThreadSanitizer sees each CUDA thread as a fiber, switched WITHOUT synchronisation, with
// happens-before edges only where the hardware has them (barriers, shuffles, block start/end).
#include "runtime.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                                size_t* size_old);
extern "C" void __asan_unpoison_memory_region(const volatile void* addr, size_t size);
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif
// The scheduler itself is built WITHOUT -fsanitize=thread (its bookkeeping is shared by all
// fibers by design); EMU_TSAN_ANNOTATE turns on the annotations that tell TSan about fibers.
#if defined(__SANITIZE_THREAD__) || defined(EMU_TSAN_ANNOTATE)
extern "C" void* __tsan_get_current_fiber(void);
extern "C" void* __tsan_create_fiber(unsigned flags);
extern "C" void __tsan_switch_to_fiber(void* fiber, unsigned flags);
extern "C" void __tsan_set_fiber_name(void* fiber, const char* name);
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#define EMU_TSAN 1
#define TSAN_ACQUIRE(p) __tsan_acquire((void*)(p))
#define TSAN_RELEASE(p) __tsan_release((void*)(p))
#else
#define EMU_TSAN 0
#define TSAN_ACQUIRE(p) ((void)0)
#define TSAN_RELEASE(p) ((void)0)
#endif

extern "C" void emu_ctx_switch(void** save_sp, void* new_sp);
extern "C" void emu_fiber_start();
// save_sp <- current stack pointer (after pushing the callee-saved state); continue at new_sp.
asm(R"(
    .text
    .globl emu_ctx_switch
    .type emu_ctx_switch,@function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch
    .globl emu_fiber_start
    .type emu_fiber_start,@function
emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");

namespace emu {

thread_local Thread* cur_thread = nullptr;
thread_local Launch* cur_launch = nullptr;

namespace {

enum State { READY, WAIT_BAR, WAIT_WARP, EXITED };

// Fiber stacks: generous (sanitizers enlarge frames), with a guard page below.
const size_t STACK = (EMU_ASAN || EMU_TSAN) ? 512 * 1024 : 128 * 1024;
const size_t GUARD = 4096;

struct Fiber {
    void* sp = nullptr;
    char* mem = nullptr;  // mapping: guard page + stack
    const void* stack_lo = nullptr;
    size_t stack_size = 0;
    void* fake = nullptr;  // ASan fake stack of this context
    void* tsan = nullptr;
    Thread t{};
    int state = READY;
    unsigned wait_gen = 0;
    const char* wait_file = "";
    int wait_line = 0;
};

struct Warp {
    unsigned arrived = 0;  // bitmask of lanes at the pending exchange
    unsigned mask = 0;     // the mask of the pending exchange
    unsigned gen = 0;
    int nlanes = 32;
    const char* file = "";
    int line = 0;
    uint64_t slot[2][32];
    char sync[2];  // TSan happens-before objects, one per generation parity
};

struct Exec {
    Fiber main;
    std::vector<Fiber*> fibers;
    int n = 0;    // threads in the block
    int cur = -1;  // running fiber, -1 = main
    int exited = 0;
    bool reverse = false;
    // block barrier
    int bar_arrived = 0;
    unsigned bar_gen = 0;
    const char* bar_file = "";
    int bar_line = 0;
    char bar_sync[2];
    char block_start, block_end;
    Warp warps[32];
    const KernelDesc* k = nullptr;
    const void* bound = nullptr;
    Launch launch{};
    bool failed = false;
    std::string err;
    unsigned long long switches = 0;
};

thread_local Exec* g_exec = nullptr;

std::mutex g_count_mu;
Counters g_count{};

bool env_is(const char* name, const char* value) {
    const char* v = getenv(name);
    return v && strcmp(v, value) == 0;
}

void fiber_entry(Fiber* f);

Fiber* new_fiber() {
    Fiber* f = new Fiber();
    f->mem = (char*)mmap(nullptr, STACK + GUARD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
    if (f->mem == MAP_FAILED) {
        perror("emulated CUDA: fiber stack mmap");
        abort();
    }
    mprotect(f->mem, GUARD, PROT_NONE);
    f->stack_lo = f->mem + GUARD;
    f->stack_size = STACK;
#if EMU_TSAN
    f->tsan = __tsan_create_fiber(0);
#endif
    return f;
}

// A fresh frame that "returns" into emu_fiber_start, which calls fiber_entry(f).
void reset_fiber(Fiber* f) {
    uintptr_t top = ((uintptr_t)f->stack_lo + f->stack_size) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 64 - 16);
    uint32_t csr[2];
    __asm__ volatile("stmxcsr %0" : "=m"(csr[0]));
    uint16_t cw;
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    csr[1] = cw;
    memcpy(&sp[0], csr, 8);
    sp[1] = 0;                         // r15
    sp[2] = 0;                         // r14
    sp[3] = (uint64_t)&fiber_entry;    // r13: function
    sp[4] = (uint64_t)f;               // r12: argument
    sp[5] = 0;                         // rbx
    sp[6] = 0;                         // rbp
    sp[7] = (uint64_t)&emu_fiber_start;  // return address
    f->sp = sp;
    f->fake = nullptr;
}

// Switches from `from` to `to`. `exiting`: `from` will never be resumed in this incarnation.
void switch_to(Exec& e, Fiber* from, Fiber* to, bool exiting) {
    e.switches++;
    cur_thread = to == &e.main ? nullptr : &to->t;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : &from->fake, to->stack_lo, to->stack_size);
#else
    (void)exiting;
#endif
#if EMU_TSAN
    __tsan_switch_to_fiber(to->tsan, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
    emu_ctx_switch(&from->sp, to->sp);
    // Resumed (only non-exiting contexts get here).
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(from->fake, nullptr, nullptr);
#endif
    cur_thread = g_exec && g_exec->cur >= 0 ? &g_exec->fibers[g_exec->cur]->t : nullptr;
}

Fiber* current(Exec& e) { return e.cur < 0 ? &e.main : e.fibers[e.cur]; }

void go_main(Exec& e, bool exiting) {
    Fiber* from = current(e);
    e.cur = -1;
    switch_to(e, from, &e.main, exiting);
}

std::string where(Exec& e, int tid) {
    char buf[256];
    const Launch& l = e.launch;
    const Thread& t = e.fibers[tid]->t;
    snprintf(buf, sizeof buf, "kernel %s (module %s), block (%u,%u,%u), thread (%u,%u,%u)", e.k->name,
             e.k->module, l.block_idx.x, l.block_idx.y, l.block_idx.z, t.idx.x, t.idx.y, t.idx.z);
    return buf;
}

[[noreturn]] void fail(Exec& e, const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!e.failed) {
        e.failed = true;
        e.err = (e.cur >= 0 ? where(e, e.cur) + ": " : std::string()) + buf;
    }
    go_main(e, true);
    abort();  // never resumed
}

bool runnable(Exec& e, int j) {
    const Fiber* f = e.fibers[j];
    switch (f->state) {
        case READY: return true;
        case WAIT_BAR: return e.bar_gen != f->wait_gen;
        case WAIT_WARP: return e.warps[f->t.warp].gen != f->wait_gen;
        default: return false;
    }
}

std::string deadlock_report(Exec& e) {
    std::string s;
    int shown = 0;
    for (int j = 0; j < e.n && shown < 6; ++j) {
        const Fiber* f = e.fibers[j];
        if (f->state == WAIT_BAR || f->state == WAIT_WARP) {
            char buf[256];
            snprintf(buf, sizeof buf, "; thread %d waits at %s %s:%d", j,
                     f->state == WAIT_BAR ? "__syncthreads" : "a warp exchange", f->wait_file, f->wait_line);
            s += buf;
            shown++;
        }
    }
    char buf[128];
    snprintf(buf, sizeof buf, "; %d of %d threads have exited", e.exited, e.n);
    return s + buf;
}

// Leaves the current fiber (waiting or exited) for the next runnable one, or main.
void schedule(Exec& e, bool exiting) {
    Fiber* from = current(e);
    for (int i = 1; i <= e.n; ++i) {
        int j = e.reverse ? ((e.cur - i) % e.n + e.n) % e.n : (e.cur + i) % e.n;
        if (runnable(e, j)) {
            if (j == e.cur) return;  // (cannot happen for a waiting or exited fiber)
            e.cur = j;
            switch_to(e, from, e.fibers[j], exiting);
            return;
        }
    }
    if (e.exited == e.n) {
        go_main(e, exiting);
        return;
    }
    fail(e, "deadlock: no thread can proceed%s", deadlock_report(e).c_str());
}

void fiber_entry(Fiber* f) {
    Exec& e = *g_exec;
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    cur_thread = &f->t;
    TSAN_ACQUIRE(&e.block_start);
    e.k->run(e.bound);
    TSAN_RELEASE(&e.block_end);
    f->state = EXITED;
    e.exited++;
    // A thread leaving while others wait for it at a barrier: the hardware's behaviour is
    // undefined (a hang or worse); report it at once.
    if (e.bar_arrived > 0)
        fail(e, "exited while %d thread(s) wait at __syncthreads %s:%d (divergent barrier)", e.bar_arrived,
             e.bar_file, e.bar_line);
    const Warp& w = e.warps[f->t.warp];
    if (w.arrived && (w.mask >> f->t.lane & 1u))
        fail(e, "exited while lanes %#x wait for it in a warp exchange with mask %#x at %s:%d", w.arrived, w.mask,
             w.file, w.line);
    schedule(e, true);
    abort();
}

Exec& exec_for_thread() {
    if (!g_exec) {
        g_exec = new Exec();  // one per OS thread, kept (fiber stacks are reused)
        g_exec->reverse = env_is("EMU_THREAD_ORDER", "reverse");
#if EMU_ASAN
        pthread_attr_t a;
        void* lo = nullptr;
        size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &a) == 0) {
            pthread_attr_getstack(&a, &lo, &size);
            pthread_attr_destroy(&a);
        }
        g_exec->main.stack_lo = lo;
        g_exec->main.stack_size = size;
#endif
    }
#if EMU_TSAN
    g_exec->main.tsan = __tsan_get_current_fiber();
#endif
    return *g_exec;
}

Exec& running() {
    Exec* e = g_exec;
    if (!e || e->cur < 0) {
        fprintf(stderr, "emulated CUDA: a device built-in was called outside a kernel\n");
        abort();
    }
    return *e;
}

}  // namespace

void syncthreads(const char* file, int line) {
    Exec& e = running();
    Fiber* f = e.fibers[e.cur];
    if (e.bar_arrived == 0) {
        e.bar_file = file;
        e.bar_line = line;
    } else if (line != e.bar_line || strcmp(file, e.bar_file) != 0) {
        fail(e, "__syncthreads at %s:%d while %d thread(s) wait at %s:%d (divergent barrier)", file, line,
             e.bar_arrived, e.bar_file, e.bar_line);
    }
    const unsigned gen = e.bar_gen;
    TSAN_RELEASE(&e.bar_sync[gen & 1]);
    if (++e.bar_arrived == e.n) {
        e.bar_arrived = 0;
        e.bar_gen++;
        TSAN_ACQUIRE(&e.bar_sync[gen & 1]);
        return;
    }
    f->state = WAIT_BAR;
    f->wait_gen = gen;
    f->wait_file = file;
    f->wait_line = line;
    schedule(e, false);
    f->state = READY;
    TSAN_ACQUIRE(&e.bar_sync[gen & 1]);
}

// Arrival at a warp exchange: returns the generation whose slots hold the lanes' values.
static unsigned warp_arrive(Exec& e, unsigned mask, uint64_t mine, const char* file, int line, const char* what) {
    Fiber* f = e.fibers[e.cur];
    Warp& w = e.warps[f->t.warp];
    const int lane = f->t.lane;
    if (!(mask >> lane & 1u)) fail(e, "%s at %s:%d with mask %#x that does not name the calling lane %d", what, file, line, mask, lane);
    if (w.nlanes < 32 && (mask >> w.nlanes) != 0u)
        fail(e, "%s at %s:%d with mask %#x naming lanes beyond the %d lanes of this warp", what, file, line, mask, w.nlanes);
    if (w.arrived == 0) {
        w.mask = mask;
        w.file = file;
        w.line = line;
    } else if (w.mask != mask) {
        fail(e, "%s at %s:%d with mask %#x while lanes %#x wait with mask %#x at %s:%d", what, file, line, mask,
             w.arrived, w.mask, w.file, w.line);
    }
    const unsigned gen = w.gen;
    w.slot[gen & 1][lane] = mine;
    TSAN_RELEASE(&w.sync[gen & 1]);
    w.arrived |= 1u << lane;
    if (w.arrived == w.mask) {
        w.arrived = 0;
        w.gen++;
        TSAN_ACQUIRE(&w.sync[gen & 1]);
        return gen;
    }
    f->state = WAIT_WARP;
    f->wait_gen = gen;
    f->wait_file = file;
    f->wait_line = line;
    schedule(e, false);
    f->state = READY;
    TSAN_ACQUIRE(&w.sync[gen & 1]);
    return gen;
}

uint64_t shfl(unsigned mask, uint64_t mine, int src, const char* file, int line) {
    Exec& e = running();
    const unsigned gen = warp_arrive(e, mask, mine, file, line, "shuffle");
    Warp& w = e.warps[e.fibers[e.cur]->t.warp];
    if (!(mask >> src & 1u))
        fail(e, "shuffle at %s:%d reads lane %d, which mask %#x does not name (undefined)", file, line, src, mask);
    return w.slot[gen & 1][src];
}

void syncwarp(unsigned mask, const char* file, int line) {
    Exec& e = running();
    warp_arrive(e, mask, 0, file, line, "__syncwarp");
}

unsigned ballot(unsigned mask, bool pred, const char* file, int line) {
    Exec& e = running();
    const unsigned gen = warp_arrive(e, mask, pred ? 1 : 0, file, line, "ballot");
    Warp& w = e.warps[e.fibers[e.cur]->t.warp];
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && w.slot[gen & 1][l]) r |= 1u << l;
    return r;
}

void threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

LaunchResult run_launch(const KernelDesc& k, const void* bound, dim3 grid, dim3 block) {
    Exec& e = exec_for_thread();
    const int n = (int)(block.x * block.y * block.z);
    while ((int)e.fibers.size() < n) e.fibers.push_back(new_fiber());
    e.n = n;
    e.k = &k;
    e.bound = bound;
    e.failed = false;
    e.err.clear();
    e.switches = 0;
    e.launch.block_dim = block;
    e.launch.grid_dim = grid;
    Launch* saved_launch = cur_launch;
    cur_launch = &e.launch;
    const bool rev_blocks = env_is("EMU_BLOCK_ORDER", "reverse");
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    for (unsigned long long bi = 0; bi < nblocks && !e.failed; ++bi) {
        const unsigned long long b = rev_blocks ? nblocks - 1 - bi : bi;
        e.launch.block_idx = dim3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                                  (unsigned)(b / ((unsigned long long)grid.x * grid.y))};
        e.bar_arrived = 0;
        e.exited = 0;
        for (int w = 0; w < 32; ++w) {
            e.warps[w].arrived = 0;
            e.warps[w].nlanes = n - 32 * w >= 32 ? 32 : (n - 32 * w > 0 ? n - 32 * w : 0);
        }
        for (int i = 0; i < n; ++i) {
            Fiber* f = e.fibers[i];
            reset_fiber(f);
            f->state = READY;
            f->t.idx = dim3{(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                            (unsigned)(i / (block.x * block.y))};
            f->t.lane = i & 31;
            f->t.warp = i >> 5;
        }
        TSAN_RELEASE(&e.block_start);
        e.cur = e.reverse ? n - 1 : 0;
        switch_to(e, &e.main, e.fibers[e.cur], false);
        TSAN_ACQUIRE(&e.block_end);
    }
    cur_launch = saved_launch;
#if EMU_ASAN
    // Abandoned fibers (a failed launch) leave poisoned frames on their stacks.
    if (e.failed)
        for (Fiber* f : e.fibers) __asan_unpoison_memory_region(f->stack_lo, f->stack_size);
#endif
    {
        std::lock_guard<std::mutex> g(g_count_mu);
        g_count.launches++;
        g_count.blocks += nblocks;
        g_count.threads += nblocks * (unsigned long long)n;
        g_count.switches += e.switches;
    }
    return LaunchResult{!e.failed, e.err};
}

Counters counters() {
    std::lock_guard<std::mutex> g(g_count_mu);
    return g_count;
}

}  // namespace emu
