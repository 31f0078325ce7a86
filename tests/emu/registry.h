// redreg emulated CUDA: kernel registration. Each kernel of kernels/<module>.cu is listed
// (by a file generated from the module's own source, see gen-registry.py) as
//     EMU_KERNEL(module, name)
// which records the kernel's parameter list, deduced by the compiler from the kernel's own
// declaration, and a trampoline that unpacks cuLaunchKernel's `void**` accordingly: no ABI
// guessing, and a launch whose arguments do not fit the declaration is rejected.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <tuple>
#include <type_traits>
#include <utility>

namespace emu {

struct ParamInfo {
    size_t size;    // bytes of the parameter (sizeof its type)
    size_t offset;  // offset in the packed parameter buffer (aligned as the type)
    bool is_ptr;    // a device pointer: validated against the live allocations
};

enum { MAX_PARAMS = 64 };

struct KernelDesc {
    const char* module;
    const char* name;
    int n_params;
    ParamInfo params[MAX_PARAMS];
    // Copies the arguments out of kernelParams into a new tuple (after validation).
    void* (*bind)(void* const* kernel_params);
    // Runs the kernel body for the current (fiber) thread with the bound arguments.
    void (*run)(const void* bound);
    void (*release)(void* bound);
};

// Validates one pointer argument (driver.cpp): returns false and records the reason when
// `p` is neither null nor inside a live allocation of the current context.
bool check_ptr_arg(const KernelDesc& k, int index, const void* p);

void register_kernel(const KernelDesc* k);

template <class T>
constexpr bool is_dev_ptr() {
    return std::is_pointer<T>::value;
}

template <class... A>
struct Kernel {
    using Tup = std::tuple<typename std::decay<A>::type...>;

    template <size_t... I>
    static void* bind_impl(void* const* p, std::index_sequence<I...>) {
        return new Tup(*static_cast<const typename std::decay<A>::type*>(p[I])...);
    }
    static void* bind(void* const* p) { return bind_impl(p, std::index_sequence_for<A...>{}); }

    template <size_t... I>
    static void run_impl(void (*f)(A...), const Tup& t, std::index_sequence<I...>) {
        f(std::get<I>(t)...);
    }
    static void release(void* b) { delete static_cast<Tup*>(b); }

    static KernelDesc describe(const char* module, const char* name, void* (*bind_fn)(void* const*),
                               void (*run_fn)(const void*)) {
        KernelDesc d{};
        d.module = module;
        d.name = name;
        d.n_params = (int)sizeof...(A);
        static_assert(sizeof...(A) <= MAX_PARAMS, "too many kernel parameters");
        size_t sizes[] = {sizeof(typename std::decay<A>::type)..., 0};
        size_t aligns[] = {alignof(typename std::decay<A>::type)..., 1};
        bool ptrs[] = {is_dev_ptr<typename std::decay<A>::type>()..., false};
        size_t off = 0;
        for (int i = 0; i < d.n_params; ++i) {
            off = (off + aligns[i] - 1) / aligns[i] * aligns[i];
            d.params[i] = ParamInfo{sizes[i], off, ptrs[i]};
            off += sizes[i];
        }
        d.bind = bind_fn;
        d.run = run_fn;
        d.release = &release;
        return d;
    }
};

template <class... A>
Kernel<A...> kernel_of(void (*)(A...));

}  // namespace emu

// One registration: a static object whose constructor adds the kernel to the table.
#define EMU_KERNEL(MODULE, NAME)                                                                 \
    namespace emu_reg_##NAME {                                                                   \
    using K = decltype(emu::kernel_of(&NAME));                                                   \
    static void run(const void* b) {                                                             \
        K::run_impl(&NAME, *static_cast<const K::Tup*>(b),                                      \
                    std::make_index_sequence<std::tuple_size<K::Tup>::value>{});                 \
    }                                                                                            \
    static const emu::KernelDesc desc = K::describe(MODULE, #NAME, &K::bind, &run);              \
    static const struct Reg {                                                                    \
        Reg() { emu::register_kernel(&desc); }                                                   \
    } reg;                                                                                       \
    }
