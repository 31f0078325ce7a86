#!/usr/bin/env bash
# The one script for a GPU machine: a thin entry point to the xtask (issue #22), where the
# flow, its budget, verdicts and summary live (`cargo xtask help`; xtask/src/gpu_bundle.rs,
# gpu_run.rs).
#
#   scripts/gpu-check.sh bundle   HERE (no GPU): `cargo xtask gpu-bundle`: builds the GPU test
#                                 binaries with kernels for sm_90 (CUDA_COMPUTE_CAP, default
#                                 90) and REDREG_REQUIRE_NVCC=1, strips and xz-packs them into
#                                 ./gpu-bundle/ (gitignored; must stay < 64 MiB), with the
#                                 xtask binary itself.
#   scripts/gpu-check.sh [run]    THERE (GPU, $OUT set; no cargo): `gpu-bundle/xtask gpu-run`:
#                                 nvidia-smi, every bundled test binary with
#                                 REDREG_REQUIRE_GPU=1 (default test threads), the
#                                 kernel-loading path (default, then NVRTC forced), and
#                                 compute-sanitizer (memcheck, racecheck, initcheck,
#                                 synccheck) over gpu_kernels (every projection kernel),
#                                 stats and optim (their CUDA tests), one log and one verdict
#                                 per (tool, binary): a run killed by its limit or without an
#                                 ERROR SUMMARY is NO-VERDICT, never CLEAN; logs and summary.txt
#                                 under $OUT. The summary keeps test failures, sanitizer
#                                 findings and the kernel path apart. The whole run fits in
#                                 REDREG_GPU_BUDGET_S (default 540 s; a lent GPU allows 600 s
#                                 per command): steps that would not fit say SKIP.
#
# REDREG_BUNDLE_CANDLE=1 also bundles tests/gpu_candle.rs and the balance example built with
# feature candle-cuda (slow: candle's own kernels; linked against scripts/cuda-link-stubs.sh).
# Benches: REDREG_BUNDLE_BENCHES (default "gpu") names the `cargo bench` targets bundled;
# `run` executes every gpu-bundle/bench-* (table in $OUT/gpu-bench.md) and then the PyTorch
# anchor benches/anchors/redreg_torch.py on the same GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
    bundle) exec cargo xtask gpu-bundle ;;
    run) exec gpu-bundle/xtask gpu-run ;;
    *) echo "usage: $0 [bundle|run]" >&2; exit 2 ;;
esac
