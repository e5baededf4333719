"""Benchmark CNN probe features (nngraph-probe) on a batch of Small-CNN-Zoo networks.

    python benchmarks/bench_cnn_probe.py [--threads 2] [--batch 128] [--probes 16 32 64]

Small CNN Zoo architecture: Conv2d(1,16,3,s2) act Conv2d(16,16,3,s2) act Conv2d(16,16,3,s2) act
AdaptiveAvgPool2d(1) Flatten Linear(16,10), act relu or tanh per network; 28x28 probe images.
Prints the CPU model and the fp32 GEMM rate measured in the same run (again after each K), then
per K (milliseconds per batch, best of interleaved repetitions; fixed probes under `no_grad`
unless stated):

* `mean, relu`: probe features (spatial means) of a one-activation batch;
* `mean/std/max, relu`: the three statistics;
* `mean/std/max, mixed (grouped)`: half relu, half tanh, one vectorised forward per activation
  group (what `spec_index` does);
* `mean/std/max, mixed (both + where)`: the alternative -- every network run with both
  activations, the right one selected with `torch.where`;
* `outputs, mixed`: the logits only (`dense_outputs`, the probe-only baseline's input);
* `learned, fwd+bwd, mixed`: learned probe images, mean/std/max, forward + backward.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from _machine import cpu_model, gemm_gflops
from torch import nn

import nngraph_core as ngc
from nngraph_probe import ProbeFeatures


def best_ms(
    fns: dict[str, Callable[[], object]], reps: int = 5, inner: int = 3
) -> dict[str, float]:
    """Best per-call milliseconds of each function, interleaved repetitions."""
    for f in fns.values():
        f()
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            best[k] = min(best[k], (time.perf_counter() - t0) / inner * 1e3)
    return best


def small_cnn(act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2), act(),
        nn.Conv2d(16, 16, 3, stride=2), act(),
        nn.Conv2d(16, 16, 3, stride=2), act(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--probes", type=int, nargs="+", default=[16, 32, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}  threads: {torch.get_num_threads()}  torch {torch.__version__}")
    print(f"fp32 GEMM (1024^3): {gemm_gflops(torch.float32):.1f} GFLOP/s")

    templates = [
        ngc.GraphTemplate.from_module(small_cnn(a), input_shape=(1, 28, 28))
        for a in (nn.ReLU, nn.Tanh)
    ]
    b = args.batch
    gen = torch.Generator().manual_seed(0)
    nets = [small_cnn(nn.ReLU) for _ in range(b)]
    params = torch.stack([templates[0].flatten(m) for m in nets]).detach()
    mixed = torch.arange(b) % 2  # half relu, half tanh
    print(f"B = {b} Small-CNN-Zoo networks ({templates[0].num_params} params, "
          f"{templates[0].num_nodes} nodes), 28x28 probe images")  # fmt: skip

    for k in args.probes:
        x = torch.randn(k, 1, 28, 28, generator=gen)
        times = time_probes(x, templates, params, mixed)
        print(f"K = {k}: " + " | ".join(f"{name} {ms:.1f} ms" for name, ms in times.items()))
        # the machine may be shared: the GEMM rate right after each K shows how busy it was
        print(f"  fp32 GEMM after K = {k}: {gemm_gflops(torch.float32, seconds=0.5):.1f} GFLOP/s")


def time_probes(
    x: torch.Tensor, templates: list[ngc.GraphTemplate], params: torch.Tensor, mixed: torch.Tensor
) -> dict[str, float]:
    mean = ProbeFeatures((1, 28, 28), probes=x)
    three = ProbeFeatures((1, 28, 28), probes=x, stats=("mean", "std", "max"))
    learned = ProbeFeatures((1, 28, 28), probes=x, learned=True, stats=("mean", "std", "max"))

    def both_where() -> torch.Tensor:
        relu = three.dense(templates[0], params)
        tanh = three.dense(templates[1], params)
        return torch.where((mixed == 0)[:, None, None], relu, tanh)

    def fwd_bwd() -> None:
        learned.zero_grad()
        learned.dense(templates, params, spec_index=mixed).square().mean().backward()

    with torch.no_grad():
        grouped = three.dense(templates, params, spec_index=mixed)
        assert torch.allclose(grouped, both_where(), rtol=1e-5, atol=1e-6)
        times = best_ms(
            {
                "mean, relu": lambda: mean.dense(templates[0], params),
                "mean/std/max, relu": lambda: three.dense(templates[0], params),
                "mean/std/max, mixed (grouped)": lambda: three.dense(
                    templates, params, spec_index=mixed
                ),
                "mean/std/max, mixed (both + where)": both_where,
                "outputs, mixed": lambda: three.dense_outputs(templates, params, spec_index=mixed),
            }
        )
    return times | best_ms({"learned, fwd+bwd, mixed": fwd_bwd})


if __name__ == "__main__":
    main()
