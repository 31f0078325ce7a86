// redreg emulated CUDA: the block executor (runtime.cpp), as used by the driver (driver.cpp).
#pragma once

#include <string>

#include "shim.h"

namespace emu {

struct LaunchResult {
    bool ok;
    std::string error;  // what went wrong, with kernel name, block and thread
};

// Runs every block of one launch on the calling OS thread, one block at a time, each
// thread of a block as a fiber. `bound` holds the unpacked arguments (KernelDesc::bind).
LaunchResult run_launch(const KernelDesc& k, const void* bound, dim3 grid, dim3 block);

// Modes and checks, from the environment (read once):
//   EMU_THREAD_ORDER=reverse  schedule the threads of a block in reverse order (a kernel
//                             whose result depends on the scheduling order differs)
//   EMU_BLOCK_ORDER=reverse   run the blocks of a launch last to first
struct Counters {
    unsigned long long launches, blocks, threads, switches;
};
Counters counters();

}  // namespace emu
