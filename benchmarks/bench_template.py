"""``GraphTemplate.batch`` on a zoo of MNIST-INR-sized networks, next to a plain copy.

Usage: ``python benchmarks/bench_template.py [--n 60000] [--repeats 5] [--threads 2]``

The zoo: N flat parameter vectors of the 2-32-32-1 SIREN (1,185 float32 each). Reported for the
gather (nodes + edges, with and without the NaN/Inf check) and for the inverse scatter, next to
``Tensor.clone()`` of the same data: networks/s and GB/s, where GB/s counts bytes read plus
bytes written (the input once, the output once; the NaN/Inf check's extra read is not counted). Goal: the gather at >= 1/3 of the copy's bandwidth.
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import machine_report, print_machine
from torch import nn

import nngraph_core as ngc


def siren() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, 32), ngc.Sine(30.0), nn.Linear(32, 32), ngc.Sine(30.0), nn.Linear(32, 1)
    )


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(machine_report())

    template = ngc.GraphTemplate.from_module(siren())
    params = torch.randn(args.n, template.num_params, generator=torch.Generator().manual_seed(0))
    in_bytes = params.numel() * params.element_size()
    out_elems = args.n * (template.num_nodes + template.num_edges * template.edge_dim)
    out_bytes = out_elems * params.element_size()
    batch = template.batch(params)
    nodes, edges = batch.node_features, batch.edge_features
    assert torch.equal(template.params(nodes, edges), params)

    rows = [
        ("Tensor.clone() (baseline)", lambda: params.clone(), 2 * in_bytes),
        (
            "template.batch (gather + NaN/Inf check)",
            lambda: template.batch(params),
            in_bytes + out_bytes,
        ),
        (
            "template.batch(allow_nonfinite=True) (gather only)",
            lambda: template.batch(params, allow_nonfinite=True),
            in_bytes + out_bytes,
        ),
        (
            "template.params (scatter back)",
            lambda: template.params(nodes, edges),
            out_bytes + in_bytes,
        ),
    ]
    print(
        f"\n{args.n:,} networks x {template.num_params:,} params ({in_bytes / 1e6:.0f} MB float32)\n"
    )
    print("| operation | time (ms) | networks/s | GB/s (read + write) | vs clone |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, fn, moved in rows:
        t = best_time(fn, args.repeats)
        gbs = moved / t / 1e9
        base = base or gbs
        print(f"| {name} | {t * 1e3:.1f} | {args.n / t:,.0f} | {gbs:.1f} | {gbs / base:.2f} |")


if __name__ == "__main__":
    main()
