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
#
# The work is done by `cargo xtask mpi-check` (xtask/src/mpi_check.rs; `cargo xtask help`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo xtask mpi-check "$@"
