#!/usr/bin/env bash
# CI check of the CUDA kernels, no GPU needed:
#  1. cargo build with REDREG_REQUIRE_NVCC=1 (a kernel that does not compile fails the build);
#     with .ci/run's environment and features it reuses the README test build;
#  2. ptxas -v resource usage of every kernel for every target arch; fails on any spill;
#  3. the embedded sources compiled through NVRTC by the crate's own NVRTC path
#     (test nvrtc_compiles_embedded_sources with REDREG_REQUIRE_NVRTC=1).
# Needs nvcc + NVRTC: run scripts/install-cuda-compiler.sh first (this script sources its
# env file when NVCC is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REDREG_CUDA_VENV:-$HOME/.cache/redreg-cuda-venv}"
if [ -f "$VENV/redreg-cuda-env.sh" ]; then
    # NVCC (when unset: the same path .ci/run exports) and NVRTC's library path.
    keep_nvcc="${NVCC:-}"
    # shellcheck disable=SC1091
    . "$VENV/redreg-cuda-env.sh"
    NVCC="${keep_nvcc:-$NVCC}"
fi
: "${NVCC:?NVCC not set: run scripts/install-cuda-compiler.sh}"
export NVCC
CAPS="${REDREG_CHECK_CAPS:-75,80,86,89,90}"

# The cargo build proves the build.rs pipeline (fatbin embedded, cfg set) for one arch;
# step 2 compiles every kernel for every arch and checks spills, two nvcc jobs at a time.
# The feature set and environment are .ci/run's (the README's `--features candle`, sm_90,
# REDREG_REQUIRE_NVCC=1): after its test build, steps 1 and 3 compile nothing new.
BUILD_CAP="${CUDA_COMPUTE_CAP:-90}"
export REDREG_REQUIRE_NVCC=1 CUDA_COMPUTE_CAP="$BUILD_CAP"
echo "== 1. cargo build with REDREG_REQUIRE_NVCC=1 (CUDA_COMPUTE_CAP=$BUILD_CAP): the crate and step 3's test"
cargo test --features candle --no-run --test project

tmp="$(mktemp -d)"
nvrtc_pid=""
# (`|| true`: under set -e a failing kill, of a step 3 that already ended, would end the
# trap, and the script, with status 1)
trap 'if [ -n "$nvrtc_pid" ]; then kill "$nvrtc_pid" 2>/dev/null || true; fi; rm -rf "$tmp"' EXIT
export tmp

# Step 3 (one NVRTC thread, nothing left to build after step 1) runs beside step 2 (two nvcc
# jobs, unevenly long: the project module's dominate), so both cores stay busy; its output
# is printed after step 2.
REDREG_REQUIRE_NVRTC=1 cargo test --features candle --test project nvrtc_compiles_embedded_sources \
    -- --nocapture >"$tmp/nvrtc.log" 2>&1 &
nvrtc_pid=$!

echo "== 2. ptxas resource usage ($CAPS)"
# The generated ABI header (redreg_abi.cuh, from src/abi.rs; the text build.rs gives nvcc).
bash scripts/abi-header.sh "$tmp/abi"
compile_one() { # $1 = kernels/x.cu, $2 = cap
    local log="$tmp/$(basename "$1" .cu)_sm$2.txt"
    if ! "$NVCC" --cubin -O3 -std=c++17 -I kernels -I "$tmp/abi" -arch="sm_$2" -Xptxas -v \
        -o "$tmp/$(basename "$1" .cu)_sm$2.cubin" "$1" >"$log" 2>&1; then
        cat "$log"
        return 1
    fi
}
export -f compile_one
jobs=()
for cu in kernels/*.cu; do
    for cap in ${CAPS//,/ }; do jobs+=("$cu $cap"); done
done
printf '%s\n' "${jobs[@]}" | xargs -P "${REDREG_NVCC_JOBS:-2}" -L 1 bash -c 'compile_one "$0" "$1"' || exit 1
fail=0
for cu in kernels/*.cu; do
    for cap in ${CAPS//,/ }; do
        # One line per kernel: name, registers, spills.
        awk -v cap="$cap" '
            /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART+1, RLENGTH-2) }
            /spill stores/ { st = $0; sub(/.*stack frame, /, "", st); spill = st }
            /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); printf "sm_%s %-32s %-18s %s\n", cap, fn, substr($0, RSTART, RLENGTH), spill }
        ' "$tmp/$(basename "$cu" .cu)_sm$cap.txt" | tee -a "$tmp/summary.txt"
    done
done
if grep -Ev " 0 bytes spill stores, 0 bytes spill loads" "$tmp/summary.txt" >/dev/null; then
    echo "ERROR: register spills:" >&2
    grep -Ev " 0 bytes spill stores, 0 bytes spill loads" "$tmp/summary.txt" >&2
    fail=1
fi
[ "$fail" = 0 ] || exit 1
echo "no spills in $(wc -l <"$tmp/summary.txt") kernel compilations"

echo "== 3. NVRTC compile of the embedded sources (ran beside step 2)"
nvrtc_rc=0
wait "$nvrtc_pid" || nvrtc_rc=$?
cat "$tmp/nvrtc.log"
[ "$nvrtc_rc" = 0 ] || { echo "check-kernels: the NVRTC compile failed" >&2; exit 1; }
echo "check-kernels: OK"
