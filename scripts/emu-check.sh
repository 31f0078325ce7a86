#!/usr/bin/env bash
# Runs the crate's real CUDA kernels on the CPU, through the crate's own cudarc wrappers,
# on the emulated CUDA driver of tests/emu (no GPU, no CUDA driver needed).
#
#   scripts/emu-check.sh [STEP ...]     steps (default: all of them, in this order)
#     selftest   f16 host conversions vs the compiler's IEEE binary16 (all 2^32 f32 values)
#     negative   broken kernels each mode must catch (tests/emu/negative/run.sh)
#     plain      every GPU test binary, REDREG_REQUIRE_GPU=1, default test threads, 2 devices;
#                the NVRTC path (REDREG_FORCE_NVRTC=1) for the stats binary's CUDA tests;
#                the GPU bench in smoke mode
#     address    AddressSanitizer over the kernels (exact-size allocations, 0xA5 fill)
#     race       ThreadSanitizer over the kernels (each CUDA thread a TSan fiber)
#     mutation   the REAL kernels, deliberately broken (tests/emu/mutate.py): a barrier removed
#                must fail the race mode, an off-by-one loop bound the address mode
#     candle     the candle adapter's CUDA path (feature candle-cuda, tests/gpu_candle_list.rs)
#                in the three modes; builds candle-kernels with nvcc (~12 min on 2 cores) and
#                links against scripts/cuda-link-stubs.sh's stand-ins
#
# Sizes: REDREG_GPU_QUICK=1 (the tests' quick layouts) in every mode; the race mode runs a
# subset (TSan costs ~50x) that still launches every kernel. EMU_FULL=1 runs the plain mode
# at full size. Each mode fails unless every kernel of kernels/*.cu was launched.
# Results: target/emu/results.md (a table) and target/emu/logs/*.log.
# Emulated is not real: these runs prove kernel logic, launch geometry, argument passing,
# bounds, barriers and the wrappers end to end; their timings mean nothing.
#
# The work is done by `cargo xtask emu-check` (xtask/src/emu_check.rs; `cargo xtask help`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo xtask emu-check "$@"
