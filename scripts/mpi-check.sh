#!/usr/bin/env bash
# Distributed checks on the CPU (issue 17), for CI on a fresh Debian 12 with Rust, gcc and
# Python but no MPI:
#   1. installs OpenMPI 4.1 and libclang (rsmpi's bindgen) from Debian if missing (as root);
#   2. clippy with features mpi and nccl (-D warnings): the MPI and NCCL adapters compile;
#   3. builds tests/mpi_dist.rs and examples/ddp.rs (features mpi, no CUDA);
#   4. runs the test binary at world size 1 (no mpirun), then under mpirun -n 2 and -n 3
#      (uneven shards), and the example under mpirun -n 2 and -n 3.
# Every mpirun is bounded by `timeout` (a hang fails the check instead of blocking CI).
# Usage: scripts/mpi-check.sh            (from anywhere; cargo's usual CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n== mpi-check: %s\n' "$*"; }
T0=$SECONDS

step "MPI and libclang"
missing=()
for p in libopenmpi-dev openmpi-bin libclang-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
mpirun --version | head -1
echo "packages ready after $((SECONDS - T0)) s"

step "clippy with features mpi and nccl"
cargo clippy --all-targets --features mpi,nccl -- -D warnings

step "build: tests/mpi_dist.rs and examples/ddp.rs (features mpi, no CUDA)"
TEST=$(cargo xtask artifacts -- test --no-default-features --features mpi --test mpi_dist --no-run |
    awk '$1 == "mpi_dist" && $2 == "test" { print $3 }')
EXAMPLE=$(cargo xtask artifacts -- build --profile test --no-default-features --features mpi --example ddp |
    awk '$1 == "ddp" && $2 == "example" { print $3 }')
if [ -z "$TEST" ] || [ -z "$EXAMPLE" ]; then
    echo "mpi-check: test binary or example not found in cargo's output" >&2
    exit 1
fi

# OpenMPI refuses root without --allow-run-as-root; --oversubscribe: more ranks than cores.
MPIRUN=(timeout 300 mpirun --allow-run-as-root --oversubscribe)

step "tests at world size 1 (no mpirun)"
timeout 300 "$TEST"
for n in 2 3; do
    step "tests under mpirun -n $n"
    "${MPIRUN[@]}" -n "$n" "$TEST"
done
for n in 2 3; do
    step "example ddp under mpirun -n $n"
    "${MPIRUN[@]}" -n "$n" "$EXAMPLE" --epochs 6
done

step "passed in $((SECONDS - T0)) s"
