#!/usr/bin/env python3
"""NumPy anchor for the CPU drift step (issue 24): the authors' per-tensor loop on the CPU.

What a trainer without a GPU would otherwise run for the RedReg gradient modulation
(../shared/redreg-algorithm.md, section 5), on the ResNet-18 audio-visual pair layout of
src/testing/layouts.rs (the same shapes and order as redreg_torch.py, imported from it),
one tensor at a time as the script does:

    if |g|.sum() == 0: skip
    d = theta - theta0
    d_perp = d - (d.g / (g.g + 1e-12)) g
    g += beta * d_perp

in the parameters' own dtype (float32 or float16: NumPy has no bfloat16), NumPy's own
reductions (pairwise sums / BLAS dot), one thread. `cargo bench --bench project`'s
`drift_step` is the same step on the same layout (with f64 sums and one rounding).

Printed: ms per step (minimum and median of --iters), GB/s over the step's minimal bytes
(7·n·s: theta, theta0 and g read twice, g written once, the crate's accounting), and the
ratio to a NumPy memcpy (np.copyto over the same bytes) measured interleaved with the
steps, round by round, the median of the rounds' ratios (the same method as the crate's
CPU benches).

Usage: python3 benches/anchors/redreg_numpy.py [--dtype float32|float16] [--iters N]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from redreg_torch import resnet18_av_pair  # noqa: E402  (layout only; no torch needed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--beta", type=float, default=1e-3)
    args = ap.parse_args()
    try:
        import numpy as np
    except ImportError:
        print("SKIP: no NumPy (import numpy failed)")
        return

    dt = np.dtype(args.dtype)
    audio, visual = resnet18_av_pair()
    shapes = audio + visual
    rng = np.random.default_rng(1)
    theta = [rng.uniform(-1e-3, 1e-3, s).astype(dt) for s in shapes]
    theta0 = [(t + rng.uniform(-1e-4, 1e-4, t.shape)).astype(dt) for t in theta]
    grads = [rng.uniform(-1e-2, 1e-2, s).astype(dt) for s in shapes]
    n = sum(t.size for t in theta)
    step_bytes = 7 * n * dt.itemsize
    # The memcpy: a source of the step's three operands' size, copied into a second buffer.
    src = np.ones(3 * n * dt.itemsize // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    beta = dt.type(args.beta)
    eps = dt.type(1e-12) if dt == np.float32 else dt.type(0)

    def step():
        for th, th0, g in zip(theta, theta0, grads):
            if np.abs(g).sum() == 0:
                continue
            d = th - th0
            gf, df = g.reshape(-1), d.reshape(-1)
            c = np.dot(df, gf) / (np.dot(gf, gf) + eps)
            d_perp = d - c * g
            g += beta * d_perp

    def copy():
        t = time.perf_counter()
        np.copyto(dst, src)
        return 2 * src.nbytes / (time.perf_counter() - t) / 1e9

    step()
    copy()
    times, ratios, copies = [], [], []
    for _ in range(args.iters):
        gbs_copy = copy()
        t = time.perf_counter()
        step()
        secs = time.perf_counter() - t
        times.append(secs)
        copies.append(gbs_copy)
        ratios.append(step_bytes / secs / 1e9 / gbs_copy)
    times.sort()
    ratios.sort()
    copies.sort()
    mid = len(times) // 2
    print(
        f"numpy {np.__version__}, {args.dtype}, ResNet-18 AV pair ({len(shapes)} tensors, "
        f"{n / 1e6:.2f} M elements), 1 thread"
    )
    print(
        f"  script loop: min {times[0] * 1e3:.3f} ms  median {times[mid] * 1e3:.3f} ms  "
        f"{step_bytes / times[0] / 1e9:.2f} GB/s (7·n·s at the min)  "
        f"interleaved ratio median {ratios[mid]:.2f} (range {ratios[0]:.2f}–{ratios[-1]:.2f}), "
        f"memcpy median {copies[mid]:.2f} GB/s"
    )


if __name__ == "__main__":
    main()
