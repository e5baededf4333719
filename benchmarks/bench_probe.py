"""Benchmark nngraph-probe: functional forward and probe features on a SIREN zoo, and the conv
implementation choice (grouped conv vs torch.func.vmap).

    python benchmarks/bench_probe.py [--threads 2]

Prints the CPU model, the fp32 / bf16 GEMM rates measured in the same run, and INRs/s for
2-32-32-1 SIRENs (B=128, K=64 random probes and the 784 grid points): outputs only, probe
features of every node (fixed probes, no grad), and forward + backward with learned probes.
Each variant is timed several times, interleaved, and the best repetition is reported.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _machine import cpu_model, gemm_gflops
from torch import nn

import nngraph_core as ngc
from nngraph_probe import ProbeFeatures, functional_forward


def best_time(
    fns: dict[str, Callable[[], object]], reps: int = 7, inner: int = 10
) -> dict[str, float]:
    """Best per-call seconds of each function, interleaved repetitions."""
    for f in fns.values():
        f()
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            best[k] = min(best[k], (time.perf_counter() - t0) / inner)
    return best


def siren_zoo(b: int, hidden: int = 32) -> tuple[ngc.GraphTemplate, torch.Tensor]:
    net = nn.Sequential(
        nn.Linear(2, hidden),
        ngc.Sine(30.0),
        nn.Linear(hidden, hidden),
        ngc.Sine(30.0),
        nn.Linear(hidden, 1),
    )
    template = ngc.GraphTemplate.from_module(net)
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(b, template.num_params, generator=gen) * 0.05
    return template, params


def cnn_zoo(b: int) -> tuple[ngc.GraphTemplate, torch.Tensor]:
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    template = ngc.GraphTemplate.from_module(net, input_shape=(1, 28, 28))
    params = torch.randn(b, template.num_params, generator=torch.Generator().manual_seed(0)) * 0.1
    return template, params


def vmap_cnn_forward(
    template: ngc.GraphTemplate, params: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """The alternative: torch.func.vmap over a per-network functional forward."""
    spec = template.spec

    def one(p: torch.Tensor) -> torch.Tensor:
        sd = template.unflatten(p)
        h = x
        for layer in spec.layers:
            w, bias = sd[layer.weight_key], sd[layer.bias_key] if layer.bias_key else None
            if layer.kind == "conv2d":
                h = F.conv2d(h, w, bias, layer.stride, layer.padding, layer.dilation)
            else:
                h = F.linear(h.flatten(1), w, bias)
            for op in layer.ops_after:
                h = op(h)
        return h

    return torch.func.vmap(one)(params)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = args.batch
    print(f"CPU: {cpu_model()}  threads: {torch.get_num_threads()}  torch {torch.__version__}")
    print(
        f"GEMM 1024^3: fp32 {gemm_gflops(torch.float32):.0f} GFLOP/s, "
        f"bf16 {gemm_gflops(torch.bfloat16):.0f} GFLOP/s"
    )

    template, params = siren_zoo(b)
    for label, probe in (
        ("K=64 uniform", ProbeFeatures.for_graphs(template, 64)),
        ("K=784 grid", ProbeFeatures.for_graphs(template, init="grid", grid_size=(28, 28))),
    ):
        learned = ProbeFeatures((2,), probes=probe.probes, learned=True)
        batch = template.batch(params)
        p_req = params.clone().requires_grad_(True)

        def outputs(probe: ProbeFeatures = probe) -> object:
            with torch.no_grad():
                return functional_forward(template, params, probe.probes)

        def features(probe: ProbeFeatures = probe, batch: ngc.GraphBatch = batch) -> object:
            with torch.no_grad():
                return probe(batch)

        def learned_fwd_bwd(
            learned: ProbeFeatures = learned, p_req: torch.Tensor = p_req
        ) -> object:
            learned.zero_grad(set_to_none=True)
            learned(template.batch(p_req)).sum().backward()
            return None

        times = best_time(
            {
                "functional_forward": outputs,
                "ProbeFeatures": features,
                "learned fwd+bwd": learned_fwd_bwd,
            }
        )
        k = probe.num_probes
        flop = 2 * k * (2 * 32 + 32 * 32 + 32)  # per INR, outputs only
        gflops = gemm_gflops(torch.float32, seconds=0.3)
        for name, t in times.items():
            rate = b / t
            print(
                f"SIREN 2-32-32-1, B={b}, {label:12s} {name:19s} {t * 1e3:7.2f} ms  "
                f"{rate:9.0f} INRs/s  ({rate * flop / 1e9 / gflops:.1%} of fp32 GEMM rate, fwd FLOP)"
            )

    ctemplate, cparams = cnn_zoo(32)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = functional_forward(ctemplate, cparams, x)
        alt = vmap_cnn_forward(ctemplate, cparams, x)
    torch.testing.assert_close(alt, ref, rtol=1e-4, atol=1e-5)
    xs = x.expand(32, *x.shape).contiguous()
    with torch.no_grad():
        times = best_time(
            {
                "grouped, shared input": lambda: functional_forward(ctemplate, cparams, x),
                "grouped, per-net input": lambda: functional_forward(ctemplate, cparams, xs),
                "vmap(F.conv2d)": lambda: vmap_cnn_forward(ctemplate, cparams, x),
            },
            reps=5,
            inner=3,
        )
    for name, t in times.items():
        print(
            f"CNN 1-16-16-16 (3x3) + linear, B=32, K=16 images 28x28: {name:24s} {t * 1e3:7.2f} ms"
        )


if __name__ == "__main__":
    main()
