"""Benchmark INR fitting (nngraph-datasets): speed vs the fp32 limit, and what the recipes give.

    python benchmarks/bench_fit.py            # speed: naive autograd vs hand-written (eager, compiled, fused C)
    python benchmarks/bench_fit.py --threads 1 --batch-sizes 16,32,64   # single thread
    python benchmarks/bench_fit.py --psnr     # + median PSNR at 500/1000 steps, both recipes, 64 mnist-5k digits
    python benchmarks/bench_fit.py --no-speed --psnr --kernels fused,compiled  # PSNR per kernel
    python benchmarks/bench_fit.py --no-speed --fmnist-std 256  # per-layer std vs published at
        1000..5000 steps (--fmnist-steps), ONE 5,000-step fit snapshotted; --mnist-std 256 likewise

Prints the CPU model, the fp32 GEMM rate measured in the same run, and every speed as INR-steps/s
and as a fraction of the limit (GEMM rate / 5.3 MFLOP per INR-step). The machine is shared, so each
variant is timed several times, interleaved, and the best repetition is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch
from _machine import cpu_model, gemm_gflops

from nngraph_datasets import BENCHMARK, SIREN_INIT, _fused, fit_inrs, layer_stats, load_images
from nngraph_datasets.fit import _step_fn, init_batch
from nngraph_datasets.inr import grid
from nngraph_datasets.stats import PUBLISHED_STD

FLOP_PER_INR_STEP = 5.3e6


def naive_autograd(targets: torch.Tensor, steps: int) -> None:
    """The plain approach: batched module forward, autograd, torch.optim.Adam (no masking)."""
    b = targets.shape[0]
    p = init_batch(range(b), 0, BENCHMARK)
    w0 = p[:, :64].reshape(b, 32, 2).clone().requires_grad_()
    b0 = p[:, 64:96].clone().requires_grad_()
    w1 = p[:, 96:1120].reshape(b, 32, 32).clone().requires_grad_()
    b1 = p[:, 1120:1152].clone().requires_grad_()
    w2 = p[:, 1152:1184].reshape(b, 32, 1).clone().requires_grad_()
    b2 = p[:, 1184:].clone().requires_grad_()
    opt = torch.optim.Adam([w0, b0, w1, b1, w2, b2], lr=5e-4)
    x = grid(28)
    for _ in range(steps):
        h = torch.sin(30 * (torch.matmul(x, w0.transpose(1, 2)) + b0[:, None]))
        h = torch.sin(30 * (torch.bmm(h, w1.transpose(1, 2)) + b1[:, None]))
        y = torch.bmm(h, w2)[..., 0] + b2 + 0.5
        loss = ((y - targets) ** 2).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def hand(targets: torch.Tensor, steps: int, compiled: bool) -> None:
    fn, _ = _step_fn(compiled)
    b = targets.shape[0]
    p = init_batch(range(b), 0, BENCHMARK)
    st = (
        p,
        torch.zeros_like(p),
        torch.zeros_like(p),
        torch.zeros(b),
        torch.ones(b, dtype=torch.bool),
    )
    xt = grid(28).t().contiguous()
    for _ in range(steps):
        st = fn(*st, targets, xt, 5e-4, 0.9, 0.999, 1e-8, 1e-4, 30.0)[:5]


def fused(targets: torch.Tensor, steps: int) -> None:
    """The fused C kernel: all ``steps`` of the batch in one call."""
    b = targets.shape[0]
    p = init_batch(range(b), 0, BENCHMARK)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    n_steps, active = torch.zeros(b, dtype=torch.int32), torch.ones(b, dtype=torch.bool)
    xt = grid(28).t().contiguous()
    _fused.fit_steps(
        p, m, v, n_steps, active, targets, xt, steps, 5e-4, 0.9, 0.999, 1e-8, 1e-4, 30.0
    )


def speed(batch_sizes: list[int], steps: int, reps: int) -> None:
    images, _, _ = load_images("mnist-5k")
    rows = []
    gemm = 0.0
    for bs in batch_sizes:
        t = images[:bs].reshape(bs, -1).float().contiguous()
        variants = {
            "naive autograd + torch.optim.Adam": lambda t=t: naive_autograd(t, steps),
            "hand-written fwd/bwd + fused Adam, eager": lambda t=t: hand(t, steps, False),
            "hand-written fwd/bwd + fused Adam, torch.compile": lambda t=t: hand(t, steps, True),
            "fused C kernel (fwd/bwd/Adam, all steps in 1 call)": lambda t=t: fused(t, steps),
        }
        for f in variants.values():  # warm-up (compiles)
            f()
        best = dict.fromkeys(variants, 0.0)
        for _ in range(reps):
            gemm = max(gemm, gemm_gflops())
            for name, f in variants.items():
                t0 = time.perf_counter()
                f()
                best[name] = max(best[name], bs * steps / (time.perf_counter() - t0))
        rows += [(bs, name, v) for name, v in best.items()]
    limit = gemm * 1e9 / FLOP_PER_INR_STEP
    print(
        f"fp32 GEMM (1024^2, best of {reps}): {gemm:.0f} GFLOP/s -> limit {limit:,.0f} INR-steps/s"
    )
    print(f"{'batch':>5}  {'variant':<52} {'INR-steps/s':>12} {'% of limit':>10}")
    for bs, name, v in rows:
        print(f"{bs:>5}  {name:<52} {v:>12,.0f} {100 * v / limit:>9.1f}%")


def psnr_table(n: int, kernels: list[str]) -> None:
    images, _, _ = load_images("mnist-5k")
    idx = torch.arange(0, 5000, 5000 // n)[:n]  # spread over the classes
    imgs = images[idx]
    print(f"median PSNR on {n} mnist-5k digits (dB; 500 steps = snapshot of the 1,000-step fit):")
    for kernel in kernels:
        for recipe in (BENCHMARK, SIREN_INIT):
            t0 = time.perf_counter()
            r = fit_inrs(imgs, dataclasses.replace(recipe, steps=1000), batch_size=32,
                         kernel=kernel, snapshots=[500])  # type: ignore[arg-type]  # fmt: skip
            dt = time.perf_counter() - t0
            out = [
                f"{steps} steps {s.psnr.median():.2f} (stopped early: {(s.steps < steps).sum().item()})"
                for steps, s in ((500, r.snapshots[500]), (1000, r))
            ]
            print(f"  {r.kernel:<8} {recipe.name:<10} " + " | ".join(out) + f" | {dt:.0f} s")


STD_KEYS = ("w0", "w1", "w2", "b0", "b1")


def std_table(source: str, published: str, n: int, step_counts: list[int]) -> None:
    """Fit ``n`` INRs of ``source`` ONCE for ``max(step_counts)`` steps, snapshotting the others."""
    split = "all" if source == "mnist-5k" else "train"
    images, _, _ = load_images(source, split)
    g = torch.Generator().manual_seed(0)
    imgs = images[torch.randperm(len(images), generator=g)[:n]]
    ref = PUBLISHED_STD[published]
    print(
        f"{source}, {n} INRs (random training images, seed 0), benchmark recipe, per-layer std "
        f"(published {published}: " + " ".join(f"{k} {ref[k]:.3f}" for k in STD_KEYS) + ")"
    )
    t0 = time.perf_counter()
    recipe = dataclasses.replace(BENCHMARK, steps=max(step_counts))
    r = fit_inrs(imgs, recipe, snapshots=step_counts)
    dt = time.perf_counter() - t0
    print(f"  {'steps':>5}  " + "  ".join(f"{k:>5}" for k in STD_KEYS)
          + "  median PSNR  stopped  max rel. err  mean rel. err")  # fmt: skip
    for steps in sorted(step_counts):
        snap = r.snapshots[steps]
        s = layer_stats(snap.params)
        rel = [abs(s[k]["std"] - ref[k]) / ref[k] for k in STD_KEYS]
        print(
            f"  {steps:>5}  "
            + "  ".join(f"{s[k]['std']:.3f}" for k in STD_KEYS)
            + f"  {float(snap.psnr.median()):>8.1f} dB  {int((snap.steps < steps).sum()):>7}"
            + f"  {100 * max(rel):>11.0f}%  {100 * sum(rel) / len(rel):>12.0f}%"
        )
    print(f"  ({n * max(step_counts):,} INR-steps, {r.kernel} kernel, {dt:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--psnr", action="store_true")
    ap.add_argument("--psnr-n", type=int, default=64)
    ap.add_argument(
        "--kernels", default="auto", help="kernels of the PSNR table (auto,fused,compiled,eager)"
    )
    ap.add_argument("--threads", type=int, help="torch (and fused kernel) threads")
    ap.add_argument(
        "--mnist-std",
        type=int,
        default=0,
        metavar="N",
        help="per-layer std of N mnist-5k INRs at --mnist-steps (one run)",
    )
    ap.add_argument("--mnist-steps", default="500,1000")
    ap.add_argument(
        "--fmnist-std",
        type=int,
        default=0,
        metavar="N",
        help="per-layer std of N Fashion-MNIST INRs at --fmnist-steps (one run)",
    )
    ap.add_argument("--fmnist-steps", default="1000,2000,3000,4000,5000")
    ap.add_argument("--no-speed", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(
        f"fp32 GEMM {gemm_gflops():.0f} GFLOP/s, bf16 GEMM {gemm_gflops(torch.bfloat16):.0f} GFLOP/s (1024^2)"
    )
    if not a.no_speed:
        speed([int(b) for b in a.batch_sizes.split(",")], a.steps, a.reps)
    if a.psnr:
        psnr_table(a.psnr_n, a.kernels.split(","))
    if a.mnist_std:
        std_table("mnist-5k", "mnist", a.mnist_std, [int(s) for s in a.mnist_steps.split(",")])
    if a.fmnist_std:
        std_table(
            "fashion-mnist",
            "fashion-mnist",
            a.fmnist_std,
            [int(s) for s in a.fmnist_steps.split(",")],
        )


if __name__ == "__main__":
    main()
