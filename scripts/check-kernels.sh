#!/usr/bin/env bash
# CI check of the CUDA kernels, no GPU needed:
#  1. cargo build with REDREG_REQUIRE_NVCC=1 (a kernel that does not compile fails the build);
#     with .ci/run's environment and features it reuses the README test build;
#  2. ptxas -v resource usage of every kernel for every target arch; fails on any spill;
#  3. the embedded sources compiled through NVRTC by the crate's own NVRTC path
#     (test nvrtc_compiles_embedded_sources with REDREG_REQUIRE_NVRTC=1).
# Needs nvcc + NVRTC: run scripts/install-cuda-compiler.sh first (this script sources its
# env file when NVCC is unset).
#
# The work is done by `cargo xtask check-kernels` (xtask/src/check_kernels.rs; `cargo xtask help`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo xtask check-kernels "$@"
