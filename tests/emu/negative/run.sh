#!/usr/bin/env bash
# The emulated driver's checkers must be able to fail: each mode is built over the broken
# kernels of broken.cu and must reject each broken kernel it is responsible for, and pass
# the fixed twin. Exits non-zero if a broken kernel passes (or a fixed one fails).
#   tests/emu/negative/run.sh [MODES]      (default: "plain asan tsan"; work dir target/emu/neg-*)
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
MODES="${1:-plain asan tsan}"
fails=0
expect() { # expect MODE CASE fail|pass PATTERN
    local mode=$1 c=$2 want=$3 pat=$4 dir="$ROOT/target/emu/neg-$1" rc
    local log="$dir/$c.log"
    case "$mode" in
        plain) "$dir/harness" "$c" >"$log" 2>&1 ;;
        asan) LD_LIBRARY_PATH="$dir" ASAN_OPTIONS=detect_leaks=0 "$dir/harness" "$c" >"$log" 2>&1 ;;
        tsan) LD_LIBRARY_PATH="$dir" TSAN_OPTIONS="ignore_noninstrumented_modules=1 exitcode=66" \
                  "$dir/harness" "$c" >"$log" 2>&1 ;;
    esac
    rc=$?
    local verdict=pass
    [ $rc -ne 0 ] && verdict=fail
    if [ "$verdict" = "$want" ] && { [ "$want" = pass ] || grep -E "$pat" "$log" >/dev/null; }; then
        printf 'ok    %-5s %-22s %s (rc %d)\n' "$mode" "$c" "$want" "$rc"
    else
        printf 'FAIL  %-5s %-22s expected %s%s, got rc %d:\n' "$mode" "$c" "$want" "${pat:+ matching /$pat/}" "$rc"
        sed 's/^/      /' "$log" | head -20
        fails=$((fails + 1))
    fi
}
for mode in $MODES; do
    dir="$ROOT/target/emu/neg-$mode"
    bash "$HERE/../build.sh" "$mode" "$dir" "$HERE" >"$dir.build.log" 2>&1 || { cat "$dir.build.log"; exit 1; }
    flags=()
    [ "$mode" = asan ] && flags=(-fsanitize=address)
    [ "$mode" = tsan ] && flags=(-fsanitize=thread)
    g++ -O1 -g "${flags[@]}" -o "$dir/harness" "$HERE/harness.cpp" -L"$dir" -l:libcuda.so.1 -Wl,-rpath,"$dir" || exit 1
    # Checks of every mode (the scheduler's rules and the argument validation).
    expect "$mode" neg_divergent_barrier fail 'divergent barrier'
    expect "$mode" neg_partial_shuffle fail 'warp exchange'
    expect "$mode" fix_partial_shuffle pass ''
    expect "$mode" neg_argcount fail 'neither null nor inside a live device allocation'
    expect "$mode" neg_argcount_full pass ''
    case "$mode" in
        asan)
            expect asan neg_oob_read fail 'heap-buffer-overflow.*|neg_oob_read'
            grep -E 'in neg_oob_read' "$dir/neg_oob_read.log" >/dev/null ||
                { echo "FAIL  asan neg_oob_read: the report does not name the kernel"; fails=$((fails + 1)); }
            expect asan fix_oob_read pass '' ;;
        tsan)
            expect tsan neg_missing_barrier fail 'ThreadSanitizer: data race'
            grep -E 'neg_missing_barrier' "$dir/neg_missing_barrier.log" >/dev/null ||
                { echo "FAIL  tsan neg_missing_barrier: the report does not name the kernel"; fails=$((fails + 1)); }
            expect tsan fix_missing_barrier pass '' ;;
    esac
done
if [ $fails -ne 0 ]; then
    echo "negative tests: $fails check(s) FAILED"
    exit 1
fi
echo "negative tests: every broken kernel was caught by its mode; every fixed twin passed"
