"""``from_module`` on ResNet-18 (torchvision's module layout) and a small ViT: conversion time.

Usage: ``python benchmarks/bench_convert.py [--repeats 3] [--threads 2] [--classes 1000]``

Reported per network: the first conversion in the process ("cold": tracing with ``torch.fx``, the
example forward pass, and building the graph structure) and the best of ``--repeats`` later
ones ("warm": the structure comes from the template cache), wall-clock and process CPU seconds,
plus the way back (``to_state_dict``, checked bit-identical) and one hidden permutation applied
through the graph. Goal: ResNet-18 (11.7 M parameters, 1.9 M edges with 7x7 windows) converts
in <= 2 s on the 2-core machine. CPU time is printed beside wall time because the machines are
shared: a busy machine stretches wall time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from _machine import machine_report, print_machine
from torch import nn

import nngraph_core as ngc
from nngraph_core import template as template_module
from nngraph_testing import SmallViT, randomize_, resnet18


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, net: nn.Module, input_shape: tuple[int, ...] | None, repeats: int) -> None:
    template_module._STRUCTURE_CACHE.clear()
    graph, wall, cpu = timed(lambda: ngc.from_module(net, input_shape=input_shape))
    assert isinstance(graph, ngc.NeuralGraph)
    print(
        f"{name}: {sum(p.numel() for p in net.parameters()):,} parameters -> {graph.num_nodes:,} "
        f"nodes, {graph.num_edges:,} edges x {graph.edge_features.shape[1]} "
        f"({len(graph.spec.groups)} node groups, {len(graph.spec.blocks)} edge blocks)"
    )
    print(f"  from_module, cold: {wall:6.2f} s wall  {cpu:6.2f} s CPU")
    best = min(
        (timed(lambda: ngc.from_module(net, input_shape=input_shape)) for _ in range(repeats)),
        key=lambda r: r[1],
    )
    print(f"  from_module, warm: {best[1]:6.2f} s wall  {best[2]:6.2f} s CPU")
    state, wall, cpu = timed(lambda: ngc.to_state_dict(graph))
    assert isinstance(state, dict)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    print(f"  to_state_dict:     {wall:6.2f} s wall  {cpu:6.2f} s CPU  (bit-identical)")
    perm = ngc.random_hidden_permutation(graph.spec, torch.Generator().manual_seed(0))
    _, wall, cpu = timed(lambda: graph.permute_hidden(perm))
    print(f"  permute_hidden:    {wall:6.2f} s wall  {cpu:6.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(machine_report())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    bench("ResNet-18", randomize_(resnet18(args.classes), 0, torch.float32), None, args.repeats)
    vit = randomize_(SmallViT(dim=64, depth=2, heads=4, mlp_dim=128), 0, torch.float32)
    bench("ViT (dim 64, 2 blocks, 4 heads)", vit, vit.input_shape, args.repeats)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
