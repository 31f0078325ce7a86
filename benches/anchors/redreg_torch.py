#!/usr/bin/env python3
"""PyTorch anchor for the redreg benches (issue 6): what a user would otherwise run.

Written from ../shared/redreg-algorithm.md (section 5, the gradient modulation, plus the
per-step statistics of sections 1, 2, 4 and 6), on the ResNet-18 audio-visual encoder pair
layout of src/layouts.rs (same shapes, same order: audio = 1 input channel, visual = 3).

Variants, one table row each (ms per step, CUDA events with timing enabled on a GPU):
  (a) script  - the authors' way: a Python loop over parameter tensors, per tensor
                `if g.abs().sum() == 0` (a host sync), d = theta - theta0,
                d_perp = d - (d.g / (g.g + 1e-12)) g, grad += beta * d_perp,
                plus ~10 `.item()` statistics per step.
  (b) foreach - the best vectorised PyTorch: torch._foreach_* over all tensors, batched
                per-tensor dot products (one small reduction per tensor), no host syncs in
                the projection; statistics reduced on the device and read with one copy.
  (c) optim   - the optimizer step after it, on every tensor: torch.optim.AdamW with
                fused=True, foreach=True and the per-tensor loop; and (b)'s projection
                followed by the fused AdamW (benches/gpu.rs `adamw*` rows compare).

Usage:
  python3 benches/anchors/redreg_torch.py [--device cuda|cpu] [--iters N] [--warmup N]
      [--dtype float32|bfloat16|float16] [--beta-audio B] [--beta-visual B]

`--device cpu` is a smoke run (host timer instead of CUDA events).
"""

import argparse
import time


def resnet18(in_ch):
    """Parameter shapes of a torchvision ResNet-18 encoder (no fc), named_parameters order."""
    shapes = [(64, in_ch, 7, 7), (64,), (64,)]
    inp = 64
    for stage, ch in enumerate([64, 128, 256, 512]):
        for block in range(2):
            cin = inp if block == 0 else ch
            shapes += [(ch, cin, 3, 3), (ch,), (ch,), (ch, ch, 3, 3), (ch,), (ch,)]
            if block == 0 and stage > 0:
                shapes += [(ch, cin, 1, 1), (ch,), (ch,)]
        inp = ch
    return shapes


def resnet18_av_pair():
    return resnet18(1), resnet18(3)


class Timer:
    """CUDA events (timing enabled) on a GPU, perf_counter on the CPU."""

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device.type == "cuda"

    def time_ms(self, fn, iters, warmup):
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(iters):
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        return times[0], times[len(times) // 2]


def make_model(torch, device, dtype, seed=0):
    """theta, theta0, grad per tensor for both encoders, plus the statistics' inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    audio, visual = resnet18_av_pair()

    def rand(shape, scale):
        return (torch.rand(shape, generator=gen) * 2 - 1).mul_(scale).to(device, dtype)

    enc = {}
    for name, shapes in (("audio", audio), ("visual", visual)):
        theta = [rand(s, 1e-1) for s in shapes]
        theta0 = [t - rand(t.shape, 1e-3) for t in theta]
        grad = [rand(s, 1e-2) for s in shapes]
        # A couple of all-zero gradients so the zero check takes both branches.
        grad[1].zero_()
        enc[name] = (theta, theta0, grad)
    batch, classes, feat = 64, 31, 512
    stats_in = {
        "logits": {m: rand((batch, classes), 3.0) for m in ("a", "v", "mm")},
        "labels": torch.randint(0, classes, (batch,), generator=gen).to(device),
        "z": {m: (rand((batch, feat, 7, 7), 1.0), rand((batch, feat, 7, 7), 1.0)) for m in ("a", "v")},
        "x": {m: (rand((batch, 3, 32, 32), 1.0), rand((batch, 3, 32, 32), 1.0)) for m in ("a", "v")},
        "feat": (rand((batch, feat), 1.0), rand((batch, feat), 1.0)),
    }
    return enc, stats_in


def script_step(torch, enc, stats_in, betas, fisher):
    """(a) The script's way: Python loop, per-tensor zero check, ~10 .item() calls."""
    F = torch.nn.functional
    labels = stats_in["labels"]
    items = {}
    # Statistics, each read back to the host with .item() as the script logs them.
    for m in ("a", "v"):
        p = F.softmax(stats_in["logits"][m].float(), dim=1)
        items["p_" + m] = p.gather(1, labels[:, None]).mean().item()
        z1, z2 = stats_in["z"][m]
        x1, x2 = stats_in["x"][m]
        items["red_" + m] = (((z1 - z2) ** 2).mean() / (((x1 - x2) ** 2).mean() + 1e-12)).item()
    fa, fv = stats_in["feat"]
    items["pos_sim"] = F.cosine_similarity(fa.float(), fv.float(), dim=1).mean().item()
    for name, (theta, theta0, grad) in enc.items():
        for i, g in enumerate(grad):
            fisher[name][i] += g * g  # Fisher-trace proxy, accumulated elementwise
        items["gmean_" + name] = sum(g.float().mean() for g in grad).item() / len(grad)
        items["gsq_" + name] = sum((g.float() ** 2).sum() for g in grad).item()
    # The projection, tensor by tensor.
    for name, (theta, theta0, grad) in enc.items():
        beta = betas[name]
        for p, p0, g in zip(theta, theta0, grad):
            d = p - p0
            if g is None or g.abs().sum() == 0:  # host synchronisation per tensor
                d_perp = d
            else:
                coef = (d * g).sum() / ((g * g).sum() + 1e-12)
                d_perp = d - coef * g
            g.add_(d_perp, alpha=beta)
    return items


def foreach_step(torch, enc, stats_in, betas, fisher):
    """(b) Vectorised PyTorch: _foreach_* and batched per-tensor reductions, one readback."""
    F = torch.nn.functional
    labels = stats_in["labels"]
    stats = []
    for m in ("a", "v"):
        p = F.softmax(stats_in["logits"][m].float(), dim=1)
        stats.append(p.gather(1, labels[:, None]).mean())
        z1, z2 = stats_in["z"][m]
        x1, x2 = stats_in["x"][m]
        stats.append(((z1 - z2) ** 2).mean() / (((x1 - x2) ** 2).mean() + 1e-12))
    fa, fv = stats_in["feat"]
    stats.append(F.cosine_similarity(fa.float(), fv.float(), dim=1).mean())
    for name, (theta, theta0, grad) in enc.items():
        torch._foreach_addcmul_(fisher[name], grad, grad)
        stats.append(torch.stack([g.float().mean() for g in grad]).mean())
        stats.append(torch.stack(torch._foreach_norm(grad)).float().pow(2).sum())
    for name, (theta, theta0, grad) in enc.items():
        d = torch._foreach_sub(theta, theta0)
        # Per-tensor sums, one small reduction each, no host sync. (A flat index_add_ into
        # one bin per tensor was 5x slower than the script's loop on an H200: 11 M atomic
        # adds into ~60 addresses.)
        dg = torch.stack([x.float().sum() for x in torch._foreach_mul(d, grad)])
        gg = torch.stack([x.float().sum() for x in torch._foreach_mul(grad, grad)])
        nz = torch.stack(torch._foreach_norm(grad, 1)).float()
        # Zero gradient: coefficient 0, so d_perp = d (no host sync needed).
        coef = torch.where(nz > 0, dg / (gg + 1e-12), torch.zeros_like(dg))
        coefs = [c.to(grad[0].dtype) for c in coef.unbind(0)]
        # d_perp = d - coef * g ; grad += beta * d_perp (0-dim coefficients broadcast; torch
        # takes its per-tensor foreach path for them, still without a host sync)
        scaled = torch._foreach_mul(grad, coefs)
        torch._foreach_sub_(d, scaled)
        torch._foreach_add_(grad, d, alpha=betas[name])
    return torch.stack([s.float() for s in stats]).cpu()  # one device-to-host copy


def optim_rows(torch, enc, timer, iters, warmup):
    """(c) The optimizer after the projection, on every tensor of the pair: PyTorch's AdamW
    (defaults, weight decay 1e-2) in its three implementations, and the (b) projection of
    the visual encoder followed by the fused AdamW. benches/gpu.rs `adamw`, `adamw_redreg`
    and `drift_then_adamw` are the crate's rows to compare with."""
    params = [torch.nn.Parameter(t.clone()) for name in enc for t in enc[name][0]]
    grads = [g for name in enc for g in enc[name][2]]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    rows = []
    for label, kw in (
        ("(c) AdamW(fused=True)", {"fused": True}),
        ("(c) AdamW(foreach=True)", {"foreach": True}),
        ("(c) AdamW(foreach=False): per-tensor loop", {"foreach": False}),
    ):
        try:
            opt = torch.optim.AdamW(params, **kw)
        except (RuntimeError, ValueError) as e:  # fused needs a GPU (or torch >= 2.4 on CPU)
            rows.append((label + f" [unavailable: {e}]", float("nan"), float("nan")))
            continue
        lo, med = timer.time_ms(opt.step, iters, warmup)
        rows.append((label, lo, med))
    try:
        opt = torch.optim.AdamW(params, fused=True)
    except (RuntimeError, ValueError):
        opt = torch.optim.AdamW(params, foreach=True)
    theta, theta0, grad = enc["visual"]

    def project_then_adamw():
        d = torch._foreach_sub(theta, theta0)
        dg = torch.stack([x.float().sum() for x in torch._foreach_mul(d, grad)])
        gg = torch.stack([x.float().sum() for x in torch._foreach_mul(grad, grad)])
        coefs = [c.to(grad[0].dtype) for c in (dg / (gg + 1e-12)).unbind(0)]
        torch._foreach_sub_(d, torch._foreach_mul(grad, coefs))
        torch._foreach_add_(grad, d, alpha=0.5)
        opt.step()

    lo, med = timer.time_ms(project_then_adamw, iters, warmup)
    rows.append(("(c) (b)'s projection of the visual encoder, then AdamW (fused if it can)", lo, med))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--beta-audio", type=float, default=0.0)
    ap.add_argument("--beta-visual", type=float, default=1.5)
    args = ap.parse_args()

    # Exit status 3 says SKIP (scripts/gpu-check.sh reports it as such, not as a failure).
    try:
        import torch
    except ImportError:
        print("SKIP: no PyTorch (import torch failed)")
        raise SystemExit(3)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: --device cuda but torch.cuda.is_available() is False (use --device cpu)")
        raise SystemExit(3)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.device == "cpu" and args.iters == 50:
        args.iters, args.warmup = 3, 1
    enc, stats_in = make_model(torch, device, dtype)
    betas = {"audio": args.beta_audio, "visual": args.beta_visual}
    fisher = {n: [torch.zeros_like(g) for g in enc[n][2]] for n in enc}
    n = sum(t.numel() for name in enc for t in enc[name][0])
    timer = Timer(torch, device)

    # Sanity: both variants give the same update (from the same starting gradients).
    g_save = {nm: [g.clone() for g in enc[nm][2]] for nm in enc}
    script_step(torch, enc, stats_in, betas, fisher)
    g_a = {nm: [g.clone() for g in enc[nm][2]] for nm in enc}
    for nm in enc:
        for g, s in zip(enc[nm][2], g_save[nm]):
            g.copy_(s)
    foreach_step(torch, enc, stats_in, betas, fisher)
    worst = 0.0
    for nm in enc:
        for ga, gb in zip(g_a[nm], enc[nm][2]):
            worst = max(worst, (ga.float() - gb.float()).abs().max().item())
    for nm in enc:
        for g, s in zip(enc[nm][2], g_save[nm]):
            g.copy_(s)

    rows = []
    for label, fn in (
        ("(a) script: python loop + .item()", lambda: script_step(torch, enc, stats_in, betas, fisher)),
        ("(b) vectorised: _foreach + batched", lambda: foreach_step(torch, enc, stats_in, betas, fisher)),
    ):
        lo, med = timer.time_ms(fn, args.iters, args.warmup)
        rows.append((label, lo, med))

    try:
        rows += optim_rows(torch, enc, timer, args.iters, args.warmup)
    except Exception as e:  # keep rows (a) and (b) whatever the optimizer rows hit
        rows.append((f"(c) optimizer rows failed: {type(e).__name__}: {e}", float("nan"), float("nan")))

    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# RedReg step anchor: ResNet-18 AV pair, {n / 1e6:.2f} M params, {args.dtype}, {dev_name}, "
          f"torch {torch.__version__}; max |a - b| = {worst:.3e}")
    print("| variant | min ms/step | median ms/step |")
    print("|---|---|---|")
    for label, lo, med in rows:
        print(f"| {label} | {lo:.3f} | {med:.3f} |")


if __name__ == "__main__":
    main()
