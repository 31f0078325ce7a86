#!/usr/bin/env bash
# Writes DIR/redreg_abi.cuh, the kernels' ABI header, for the tools that compile
# kernels/*.cu outside cargo (tests/emu/build.sh, scripts/check-kernels.sh): put DIR on the
# include path beside kernels/.
#
#   scripts/abi-header.sh DIR
#
# Not a second generator: scripts/abi-header.rs includes src/abi.rs and prints its
# cuda_header(), the function build.rs writes $OUT_DIR/redreg_abi.cuh with (plain rustc,
# no dependencies, about a second). The file is rewritten only when its text changes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:?usage: scripts/abi-header.sh DIR}"
mkdir -p "$DIR"
tool="$DIR/abi-header"
if [ ! -x "$tool" ] || [ "$ROOT/src/abi.rs" -nt "$tool" ] || [ "$ROOT/scripts/abi-header.rs" -nt "$tool" ]; then
    "${RUSTC:-rustc}" --edition 2021 --crate-name redreg_abi_header -o "$tool" "$ROOT/scripts/abi-header.rs"
fi
"$tool" >"$DIR/redreg_abi.cuh.tmp"
if cmp -s "$DIR/redreg_abi.cuh.tmp" "$DIR/redreg_abi.cuh"; then
    rm -f "$DIR/redreg_abi.cuh.tmp"
else
    mv "$DIR/redreg_abi.cuh.tmp" "$DIR/redreg_abi.cuh"
fi
