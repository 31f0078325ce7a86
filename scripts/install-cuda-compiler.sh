#!/usr/bin/env bash
# Installs nvcc + NVRTC 13.0.x from PyPI into a cached virtual environment (no GPU needed).
# All packages pinned to 13.0.* — nvcc's own dependencies are unpinned, and a newer
# nvidia-nvvm emits PTX that nvcc 13.0's ptxas rejects ("Unsupported .version 9.5").
# 13.0 matches the test GPUs' driver 580.
#
# Usage: scripts/install-cuda-compiler.sh            (venv: ${REDREG_CUDA_VENV:-$HOME/.cache/redreg-cuda-venv})
# Writes  <venv>/redreg-cuda-env.sh  exporting NVCC, REDREG_NVRTC_LIB_DIR and LD_LIBRARY_PATH
# (with a libnvrtc.so link, as cudarc looks for libnvrtc.so / .so.12); CI sources it.
# Idempotent: quick when already installed.
set -euo pipefail
VENV="${REDREG_CUDA_VENV:-$HOME/.cache/redreg-cuda-venv}"
PKGS=(nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-crt nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-nvrtc)
PIN="==13.0.*"

find_nvcc() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1; }

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
need=0
for p in "${PKGS[@]}"; do
    v=$("$VENV/bin/python" -m pip show "$p" 2>/dev/null | sed -n 's/^Version: //p' || true)
    case "$v" in 13.0.*) ;; *) need=1 ;; esac
done
if [ "$need" = 1 ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        $(for p in "${PKGS[@]}"; do printf '%s%s ' "$p" "$PIN"; done)
fi
NVCC="$(find_nvcc)"
if [ -z "$NVCC" ]; then
    echo "install-cuda-compiler: nvcc not found under $VENV after install" >&2
    exit 1
fi
LIBDIR="$(dirname "$(dirname "$NVCC")")/lib"
LINKDIR="$VENV/redreg-nvrtc-link"
mkdir -p "$LINKDIR"
ln -sf "$LIBDIR/libnvrtc.so.13" "$LINKDIR/libnvrtc.so"
cat > "$VENV/redreg-cuda-env.sh" <<ENV
export NVCC="$NVCC"
export REDREG_NVRTC_LIB_DIR="$LINKDIR:$LIBDIR"
export LD_LIBRARY_PATH="$LINKDIR:$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
"$NVCC" --version | tail -n2
echo "export NVCC=$NVCC"
echo "env file: $VENV/redreg-cuda-env.sh   (source it: NVCC, LD_LIBRARY_PATH for NVRTC)"
