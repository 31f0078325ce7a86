#!/usr/bin/env bash
# The one script for a GPU machine.
#
#   scripts/gpu-check.sh bundle   HERE (no GPU): builds the GPU test binaries with kernels
#                                 for sm_90 (CUDA_COMPUTE_CAP, default 90) and
#                                 REDREG_REQUIRE_NVCC=1, strips and xz-packs them into ./gpu-bundle/
#                                 (gitignored; must stay < 64 MiB).
#   scripts/gpu-check.sh [run]    THERE (GPU, $OUT set): nvidia-smi, every bundled test binary
#                                 with REDREG_REQUIRE_GPU=1 (default test threads), the
#                                 kernel-loading path (default, then NVRTC forced), and
#                                 compute-sanitizer (memcheck, racecheck, initcheck,
#                                 synccheck) over gpu_kernels (every projection kernel) and
#                                 stats (its CUDA tests); logs and summary.txt under $OUT. The summary
#                                 keeps test failures, sanitizer findings (each tool's ERROR
#                                 SUMMARY) and the kernel path apart. The whole run fits in
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
MODE="${1:-run}"
BUNDLE="gpu-bundle"

# collect NAME CARGO_ARGS...: builds with `cargo CARGO_ARGS` and copies each executable the
# build made (cargo's JSON, read by `cargo xtask artifacts`) into the bundle as
# <kind>-<target> (kind: test, bench or example), or as NAME when NAME is not empty.
collect() {
    local as=$1 out name kind path
    shift
    out=$(cargo xtask artifacts -- "$@") || return 1
    while read -r name kind path; do
        cp "$path" "$BUNDLE/${as:-$kind-$name}" && echo "bundled $BUNDLE/${as:-$kind-$name}"
    done <<<"$out"
}

bundle() {
    set -e
    local venv="${REDREG_CUDA_VENV:-$HOME/.cache/redreg-cuda-venv}"
    if [ -z "${NVCC:-}" ] && [ -f "$venv/redreg-cuda-env.sh" ]; then . "$venv/redreg-cuda-env.sh"; fi
    export NVCC REDREG_REQUIRE_NVCC=1 CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
    local tests="${REDREG_BUNDLE_TESTS:-project gpu_kernels stats controller gpu_reliability gpu_isolation gpu_launches tensor_list optim nccl_dist}"
    local args=()
    for t in $tests; do args+=(--test "$t"); done
    # nccl: the NCCL adapter test (tests/nccl_dist.rs; libnccl is loaded at run time only).
    collect "" test --features cuda,nccl --no-run "${args[@]}"
    local benches="${REDREG_BUNDLE_BENCHES-gpu}"
    if [ -n "$benches" ]; then
        local bargs=()
        for b in $benches; do bargs+=(--bench "$b"); done
        collect "" bench --features cuda --no-run "${bargs[@]}"
    fi
    if [ "${REDREG_BUNDLE_MUTANTS:-1}" = 1 ]; then
        # The sanitizers' own check (a checker counts only once a planted bug makes it fail):
        # gpu_kernels built against the real kernels deliberately broken by
        # tests/emu/mutate.py, as the emulated driver's mutation step does. `run` requires
        # memcheck to report `oob` and racecheck to report `barrier`.
        local m src target="${CARGO_TARGET_DIR:-$PWD/target}"
        for m in oob barrier; do
            src="${TMPDIR:-/tmp}/redreg-mutant-$m"
            rm -rf "$src" && mkdir -p "$src"
            git ls-files -z | xargs -0 cp --parents -t "$src"
            python3 tests/emu/mutate.py kernels "$src/kernels.mut" "$m"
            rm -rf "$src/kernels" && mv "$src/kernels.mut" "$src/kernels"
            CARGO_TARGET_DIR="$target" collect "mutant-$m" test --manifest-path "$src/Cargo.toml" \
                --features cuda --no-run --test gpu_kernels
            rm -rf "$src"
        done
    fi
    if [ "${REDREG_BUNDLE_CANDLE:-0}" = 1 ]; then
        # candle CUDA tensors (feature candle-cuda): candle-kernels takes ~12 min to build on
        # 2 cores; libcuda/cuBLAS/cuRAND are linked against stubs (real ones load there).
        eval "$(scripts/cuda-link-stubs.sh)"
        export PATH="$(dirname "$NVCC"):$PATH"
        export CUDAFORGE_THREADS="$(nproc)" # candle-kernels' builder: half the cores by default
        collect "" test --features candle-cuda --no-run --test gpu_candle
        collect "" build --release --features candle-cuda --example balance
    fi
    # Stripped, the binaries are ~10 MB each (~55 MB with candle's PTX and kernels): xz
    # brings them to ~2.5 MB (~8 MB) and the bundle under the 64 MiB carry; `run` unpacks.
    local f
    for f in "$BUNDLE"/test-* "$BUNDLE"/bench-* "$BUNDLE"/mutant-* "$BUNDLE"/example-*; do
        if [ -f "$f" ] && [ "${f%.xz}" = "$f" ]; then strip "$f" && xz -T2 -6 -f "$f"; fi
    done
    # The xtask, uncompressed: on the GPU machine (no cargo) it unpacks the binaries and finds
    # the lib folders of NVIDIA's Python wheels.
    cargo build --quiet --package xtask
    cp "${CARGO_TARGET_DIR:-target}/debug/xtask" "$BUNDLE/xtask" && strip "$BUNDLE/xtask"
    git rev-parse HEAD >"$BUNDLE/COMMIT" 2>/dev/null || true
    local size
    size=$(du -sm "$BUNDLE" | cut -f1)
    ls -la "$BUNDLE"
    echo "bundle: ${size} MiB"
    if [ "$size" -ge 64 ]; then echo "ERROR: bundle >= 64 MiB" >&2; exit 1; fi
}

# The whole run stays inside REDREG_GPU_BUDGET_S seconds (default 540: a lent GPU gives
# 10 minutes per command). Each step gets min(its own timeout, what is left - a reserve for
# the summary); a step that cannot get its minimum is skipped and says so.
RUN_T0=$SECONDS
# A compute-sanitizer log's verdict: the sum of its "ERROR SUMMARY: N errors" lines and, for
# racecheck (which prints "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"
# instead), of its hazards; empty when the log holds no summary at all.
sanitizer_errors() {
    grep -oE "ERROR SUMMARY: [0-9]+ error|RACECHECK SUMMARY: [0-9]+ hazard" "$1" |
        grep -oE "[0-9]+" | awk '{ s += $1; n++ } END { if (n) print s }'
}
# racecheck's default report missed the planted barrier race (tests/emu/mutate.py barrier:
# "0 hazards displayed" on the first H200 run, 2026-12-04) that `--racecheck-report all`
# reports (3,584 errors), with 0 hazards on the unbroken kernels.
racecheck_flags() { [ "$1" = racecheck ] && echo "--racecheck-report all"; }
budget_for() { # budget_for WANT MIN -> prints seconds to allow (0: skip)
    local left=$(( ${REDREG_GPU_BUDGET_S:-540} - (SECONDS - RUN_T0) - 15 ))
    local want=$1 min=$2
    [ "$left" -lt "$want" ] && want=$left
    [ "$want" -lt "$min" ] && want=0
    echo "$want"
}
tmo() { # tmo WANT MIN -> a `timeout` duration (never 0, which would mean no limit)
    local b; b=$(budget_for "$1" "$2")
    [ "$b" = 0 ] && b=1
    echo "$b"
}

run() {
    : "${OUT:?OUT must be set (output folder)}"
    RUN_T0=$SECONDS
    mkdir -p "$OUT"
    local summary="$OUT/summary.txt"
    : >"$summary"
    local status=0
    echo "commit: $(cat "$BUNDLE/COMMIT" 2>/dev/null || echo unknown)" | tee -a "$summary"
    echo "date: $(date -u +%FT%TZ)" | tee -a "$summary"
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$summary"
    # Binaries built with candle-cuda link libcublas.so.13, libcublasLt.so.13, libcurand.so.10
    # and libcudart.so.13 dynamically: find them in the toolkit or in pip's nvidia wheels.
    local d
    # (the lib folders of NVIDIA's Python wheels: `xtask nvidia-lib-dirs`, from the bundle)
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        $("$BUNDLE/xtask" nvidia-lib-dirs); do
        [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    # cudarc's loader looks for libnccl.so, the nvidia-nccl wheels ship libnccl.so.2 only:
    # link it for tests/nccl_dist.rs (docs/distributed.md).
    for d in ${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH//:/ }}; do
        if [ -f "$d/libnccl.so.2" ] && [ ! -e "$d/libnccl.so" ]; then
            mkdir -p "${TMPDIR:-/tmp}/redreg-nccl"
            ln -sf "$d/libnccl.so.2" "${TMPDIR:-/tmp}/redreg-nccl/libnccl.so"
            LD_LIBRARY_PATH="${TMPDIR:-/tmp}/redreg-nccl:$LD_LIBRARY_PATH"
            break
        fi
    done
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
    "$BUNDLE/xtask" unxz "$BUNDLE"/*.xz || status=1
    # --- tests: the default (parallel) test-thread count; each call owns its results.
    local test_failures=0
    echo "== tests ==" | tee -a "$summary"
    for t in "$BUNDLE"/test-*; do
        [ -x "$t" ] || continue
        local n; n=$(basename "$t")
        local tb; tb=$(budget_for "${REDREG_TEST_TIMEOUT:-200}" 20)
        if [ "$tb" = 0 ]; then
            echo "SKIP $n (time budget spent)" | tee -a "$summary"; status=1; continue
        fi
        # Files of backend_tests! bodies (tests/common/backends.rs): their CUDA tests only
        # (`cuda::…`, `cuda_only::…`); the optimizer's binary: its `cuda::` module.
        local filter=()
        case "$n" in
            test-tensor_list | test-controller | test-stats) filter=(cuda) ;;
            # (its NVRTC compile of every module is check-kernels.sh's in CI and the forced
            # loads' below; NVRTC took over 100 s of the budget on the first H200 run)
            test-project) filter=(cuda --skip nvrtc_compiles_embedded_sources) ;;
            test-optim) filter=(cuda::) ;;
        esac
        if REDREG_REQUIRE_GPU=1 timeout "$tb" "$t" "${filter[@]}" --nocapture >"$OUT/$n.log" 2>&1; then
            echo "PASS $n" | tee -a "$summary"
        else
            echo "FAIL $n (see $n.log)" | tee -a "$summary"; status=1
            test_failures=$((test_failures + 1))
        fi
        grep -E "^test result|SKIP|panicked|borderline" "$OUT/$n.log" | head -20 >>"$summary"
    done
    # --- kernel loading: which path each module took (fatbin / nvrtc-cubin / nvrtc-ptx),
    # printed by project's every_kernel_symbol_loads; then the NVRTC fallback forced.
    echo "== kernel loading ==" | tee -a "$summary"
    local kpath
    kpath=$(grep -ho "KERNEL-PATH: .*" "$OUT"/test-project.log 2>/dev/null | head -1)
    echo "default: ${kpath:-unknown (test-project did not report it)}" | tee -a "$summary"
    if [ -x "$BUNDLE/test-project" ]; then
        local force
        for force in 1 ptx; do
            local flog="$OUT/kernel-path-force-$force.log"
            # (NVRTC compiles all 127 kernels: over 60 s to cubin on the first H200 run.)
            REDREG_FORCE_NVRTC=$force REDREG_REQUIRE_GPU=1 timeout "$(tmo 180 10)" "$BUNDLE/test-project" \
                every_kernel_symbol_loads --nocapture >"$flog" 2>&1
            local frc=$?
            local fpath; fpath=$(grep -ho "KERNEL-PATH: .*" "$flog" | head -1)
            if [ $frc = 0 ]; then
                echo "REDREG_FORCE_NVRTC=$force: PASS ${fpath}" | tee -a "$summary"
            elif grep -q "NVRTC library" "$flog"; then
                echo "REDREG_FORCE_NVRTC=$force: SKIP (no libnvrtc on this machine)" | tee -a "$summary"
            else
                echo "REDREG_FORCE_NVRTC=$force: FAIL (see $(basename "$flog"))" | tee -a "$summary"
                grep -m3 -E "panicked|could not be loaded" "$flog" >>"$summary"
                status=1; test_failures=$((test_failures + 1))
            fi
        done
    fi
    # --- sanitizers: each tool's own verdict ("ERROR SUMMARY: N errors") apart from the
    # verdict of the tests it ran (a test can fail without a memory error and vice versa).
    echo "== sanitizers ==" | tee -a "$summary"
    local sanitizer_findings=0 sanitizer_no_verdict=0 sanitizer_test_failures=0
    local cs
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
    # gpu_kernels launches every projection kernel (each dtype x k) on a small layout,
    # stats's CUDA tests the statistics kernel and optim's the optimizer kernels: every
    # kernel under every tool, in seconds.
    local target="$BUNDLE/test-gpu_kernels"
    if [ -n "$cs" ] && [ -x "$target" ]; then
        for tool in memcheck racecheck initcheck synccheck; do
            local slog="$OUT/sanitizer-$tool.log"
            local sb; sb=$(budget_for "${REDREG_SANITIZER_TIMEOUT:-90}" 20)
            if [ "$sb" = 0 ]; then
                echo "$tool: SKIP (time budget spent)" | tee -a "$summary"; status=1; continue
            fi
            local tool_flags=()
            read -ra tool_flags <<<"$(racecheck_flags "$tool")"
            # One test thread: the tools serialise anyway.
            {
                REDREG_REQUIRE_GPU=1 REDREG_GPU_QUICK=1 timeout "$sb" \
                    "$cs" --tool "$tool" "${tool_flags[@]}" "$target" --test-threads=1
                [ -x "$BUNDLE/test-stats" ] && REDREG_REQUIRE_GPU=1 REDREG_GPU_QUICK=1 \
                    timeout "$(tmo 60 10)" "$cs" --tool "$tool" "${tool_flags[@]}" "$BUNDLE/test-stats" cuda --test-threads=1
                [ -x "$BUNDLE/test-optim" ] && REDREG_REQUIRE_GPU=1 REDREG_GPU_QUICK=1 \
                    timeout "$(tmo 60 10)" "$cs" --tool "$tool" "${tool_flags[@]}" "$BUNDLE/test-optim" cuda:: --test-threads=1
            } >"$slog" 2>&1
            local rc=$?
            local errs
            errs=$(sanitizer_errors "$slog")
            local sverdict tverdict
            if [ -z "$errs" ]; then
                sverdict="NO-VERDICT (rc $rc$([ $rc = 124 ] && echo ', timed out'); no ERROR SUMMARY)"
                sanitizer_no_verdict=$((sanitizer_no_verdict + 1)); status=1
            elif [ "$errs" = 0 ]; then
                sverdict="CLEAN (0 errors)"
            else
                sverdict="FINDINGS ($errs errors)"
                sanitizer_findings=$((sanitizer_findings + errs)); status=1
            fi
            if grep -q "^test result: ok" "$slog" && ! grep -q "^test result: FAILED" "$slog"; then
                tverdict="tests PASS"
            else
                tverdict="tests FAIL"
                sanitizer_test_failures=$((sanitizer_test_failures + 1)); status=1
            fi
            echo "$tool: sanitizer $sverdict; $tverdict (see sanitizer-$tool.log)" | tee -a "$summary"
            grep -E "^test result|panicked" "$slog" | head -5 >>"$summary"
        done
    else
        echo "SKIP compute-sanitizer (not found or no test-gpu_kernels)" | tee -a "$summary"
    fi
    # --- the sanitizers' self-check: each planted bug must be reported by its tool, or the
    # CLEAN verdicts above mean nothing.
    echo "== sanitizer self-check (planted bugs, must be reported) ==" | tee -a "$summary"
    local mt
    for mt in oob:memcheck barrier:racecheck; do
        local mut=${mt%%:*} tool=${mt#*:}
        local mbin="$BUNDLE/mutant-$mut"
        if [ -z "$cs" ] || [ ! -x "$mbin" ]; then
            echo "mutant-$mut: SKIP (no compute-sanitizer or no mutant-$mut in the bundle)" | tee -a "$summary"; continue
        fi
        local mb; mb=$(budget_for 60 15)
        if [ "$mb" = 0 ]; then
            echo "mutant-$mut: SKIP (time budget spent)" | tee -a "$summary"; status=1; continue
        fi
        local mlog="$OUT/mutant-$mut-$tool.log"
        REDREG_REQUIRE_GPU=1 REDREG_GPU_QUICK=1 timeout "$mb" "$cs" --tool "$tool" $(racecheck_flags "$tool") "$mbin" --test-threads=1 >"$mlog" 2>&1
        local merrs
        merrs=$(sanitizer_errors "$mlog")
        merrs=${merrs:-0}
        if [ "$merrs" -gt 0 ]; then
            echo "mutant-$mut: caught by $tool ($merrs errors), as it must be" | tee -a "$summary"
        else
            echo "mutant-$mut: NOT caught by $tool (see $(basename "$mlog"))" | tee -a "$summary"; status=1
        fi
        grep -m2 -E "Invalid __global__|Race reported|hazard" "$mlog" >>"$summary"
    done
    echo "== totals ==" | tee -a "$summary"
    echo "test failures: $test_failures (binaries or forced-NVRTC loads)" | tee -a "$summary"
    echo "sanitizer findings: $sanitizer_findings errors; sanitizer runs without a verdict: $sanitizer_no_verdict; runs whose tests failed under a sanitizer: $sanitizer_test_failures" | tee -a "$summary"
    echo "kernel path: ${kpath#KERNEL-PATH: }" | tee -a "$summary"
    for bnch in "$BUNDLE"/bench-*; do
        [ -x "$bnch" ] || continue
        local n; n=$(basename "$bnch")
        local bb; bb=$(budget_for "${REDREG_BENCH_TIMEOUT:-180}" 60)
        if [ "$bb" = 0 ]; then echo "SKIP $n (time budget spent)" | tee -a "$summary"; continue; fi
        REDREG_REQUIRE_GPU=1 REDREG_BENCH_OUT="$OUT" timeout "$bb" "$bnch" --bench \
            >"$OUT/$n.log" 2>&1 && echo "RAN $n" | tee -a "$summary" \
            || { echo "FAIL $n" | tee -a "$summary"; status=1; }
    done
    [ -f "$OUT/gpu-bench.md" ] && cat "$OUT/gpu-bench.md" >>"$summary"
    if [ -x "$BUNDLE/example-balance" ]; then
        # The main job on the GPU (candle CUDA tensors, CudaBackend on candle's stream).
        if timeout "$(tmo "${REDREG_EXAMPLE_TIMEOUT:-120}" 30)" "$BUNDLE/example-balance" --seeds 1 \
            --out "$OUT/balance-gpu.svg" >"$OUT/example-balance.log" 2>&1; then
            echo "RAN example-balance" | tee -a "$summary"
        else
            echo "FAIL example-balance (see example-balance.log)" | tee -a "$summary"; status=1
        fi
        grep -E "^device|time per training step|final" "$OUT/example-balance.log" >>"$summary"
        # On the GPU machine the example must have trained on the GPU, not fallen back.
        if ! grep "^device: CUDA" "$OUT/example-balance.log" >/dev/null; then
            echo "FAIL example-balance did not run on the GPU (see its device line)" | tee -a "$summary"; status=1
        fi
    fi
    # The anchor: what users would otherwise run (PyTorch, same GPU, same layout).
    # (exit status 3: no PyTorch, or none with CUDA)
    timeout "$(tmo "${REDREG_ANCHOR_TIMEOUT:-90}" 30)" python3 benches/anchors/redreg_torch.py --device cuda \
        >"$OUT/anchor-torch.log" 2>&1
    case $? in
        0) echo "RAN anchor (PyTorch)" | tee -a "$summary" ;;
        3) echo "SKIP anchor: $(grep -m1 '^SKIP' "$OUT/anchor-torch.log")" | tee -a "$summary" ;;
        *) echo "FAIL anchor (PyTorch), see anchor-torch.log" | tee -a "$summary" ;;
    esac
    tail -n 12 "$OUT/anchor-torch.log" >>"$summary"
    echo "elapsed: $((SECONDS - RUN_T0)) s of a ${REDREG_GPU_BUDGET_S:-540} s budget" | tee -a "$summary"
    echo "overall: $([ $status = 0 ] && echo PASS || echo FAIL)" | tee -a "$summary"
    # A lent machine returns at most 8 files: summary.txt, gpu-bench.md, the example's plot
    # and one archive of every log.
    # (Written outside $OUT first: tar fails on a folder that changes while it reads it.)
    local tgz="${TMPDIR:-/tmp}/redreg-gpu-logs.tar.gz"
    (cd "$OUT" && tar czf "$tgz" --exclude=summary.txt --exclude=gpu-bench.md --exclude='*.svg' . &&
        mv "$tgz" logs.tar.gz &&
        find . -type f ! -name logs.tar.gz ! -name summary.txt ! -name gpu-bench.md ! -name '*.svg' -delete)
    return $status
}

case "$MODE" in
    bundle) bundle ;;
    run) run ;;
    *) echo "usage: $0 [bundle|run]" >&2; exit 2 ;;
esac
