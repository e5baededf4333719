"""Training-step speed and memory of the graph models on MNIST-INR graphs (2-32-32-1 SIREN).

Usage: ``python benchmarks/bench_models.py [--models ngnn,ngnn-sparse,...] [--batch 128]
[--steps 5] [--threads 2] [--device cpu]``

One training step = build the batch from flat parameters, forward, cross-entropy, backward,
AdamW (amsgrad). Random parameters (the speed does not depend on the values). Each model runs
in its own subprocess so its peak resident memory (``ru_maxrss``) is its own; the table shows
the peak and the peak minus the process's RSS before the model was built. FLOPs of one step are
counted with ``torch.utils.flop_counter.FlopCounterMode`` (on the torch code of models with C
kernels: the counter cannot see inside them); "of fp32" is the achieved FLOP rate as a fraction
of the square-GEMM fp32 rate measured in the same run. ``--no-flops`` skips the counting step
(which alone raises the peak RSS of the larger models).

Registry: ``MODELS`` maps a name to ``(builder, options)``; a builder takes the template and
returns an ``nn.Module`` whose forward takes a ``GraphBatch`` and returns ``[B, 10]`` logits.
Options: ``compile`` (``torch.compile`` the model), ``bf16`` (``torch.autocast`` bfloat16).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _machine import machine_report, print_machine
from torch import nn

import nngraph_core as ngc

Builder = Callable[[ngc.GraphTemplate], nn.Module]


def siren() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, 32), ngc.Sine(30.0), nn.Linear(32, 32), ngc.Sine(30.0), nn.Linear(32, 1)
    )


def _ngnn(fast: bool, **kwargs: Any) -> Builder:
    def build(template: ngc.GraphTemplate) -> nn.Module:
        from nngraph_layers import NGGNN

        return NGGNN.for_graphs(template, num_outputs=10, fast=fast, **kwargs)  # paper sizes

    return build


def _ngt(attention: str = "sparse", **kwargs: Any) -> Builder:
    """NG-T at paper sizes (d_node 64, d_edge 32, attention 128, 4 layers, 8 heads)."""

    def build(template: ngc.GraphTemplate) -> nn.Module:
        from nngraph_layers.ngt import NGTransformer

        return NGTransformer.for_graphs(template, num_outputs=10, attention=attention, **kwargs)

    return build


# NG-T: "ckpt" = activation checkpointing per layer on chunks of 16 graphs (memory).
_NGT_CKPT = {"checkpoint_layers": True, "chunk_size": 16}


#: name -> (builder, options). Other models add their own entries here.
MODELS: dict[str, tuple[Builder, dict[str, Any]]] = {
    "ngnn": (_ngnn(fast=True), {}),
    "ngnn-torch": (_ngnn(fast=True, kernel="torch"), {}),
    "ngnn-torch-chunk16": (_ngnn(fast=True, kernel="torch", chunk_size=16), {}),
    "ngnn-unchunked": (_ngnn(fast=True, chunk_size=None), {}),
    "ngnn-sparse": (_ngnn(fast=False), {}),
    "ngnn-bf16": (_ngnn(fast=True), {"bf16": True}),
    "ngnn-compile": (_ngnn(fast=True), {"compile": True}),
    "ngnn-compile-bf16": (_ngnn(fast=True), {"compile": True, "bf16": True}),
    "ngt": (_ngt("sparse"), {}),
    "ngt-torch": (_ngt("sparse", kernel="torch"), {}),
    "ngt-unchunked": (_ngt("sparse", chunk_size=None), {}),
    "ngt-torch-unchunked": (_ngt("sparse", kernel="torch", chunk_size=None), {}),
    "ngt-bf16": (_ngt("sparse"), {"bf16": True}),
    "ngt-ckpt": (_ngt("sparse", **_NGT_CKPT), {}),
    "ngt-ckpt8": (_ngt("sparse", checkpoint_layers=True), {}),
    "ngt-ckpt-edges": (_ngt("sparse", checkpoint_edges=True), {}),
    "ngt-chunk8": (_ngt("sparse", chunk_size=8), {}),
    "ngt-chunk16": (_ngt("sparse", chunk_size=16), {}),
    "ngt-chunk64": (_ngt("sparse", chunk_size=64), {}),
    "ngt-ckpt-edges-chunk16": (_ngt("sparse", checkpoint_edges=True, chunk_size=16), {}),
    "ngt-ckpt-bf16": (_ngt("sparse", **_NGT_CKPT), {"bf16": True}),
    "ngt-compile": (_ngt("sparse"), {"compile": True}),
    "ngt-dense": (_ngt("dense"), {}),
    "ngt-dense-bf16": (_ngt("dense"), {"bf16": True}),
    "ngt-dense-ckpt-bf16": (_ngt("dense", **_NGT_CKPT), {"bf16": True}),
}


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_worker(
    name: str, batch: int, steps: int, device: str, count_flops: bool = True
) -> dict[str, Any]:
    builder, options = MODELS[name]
    template = ngc.GraphTemplate.from_module(siren())
    gen = torch.Generator().manual_seed(0)
    params = (torch.randn(batch, template.num_params, generator=gen) * 0.1).to(device)
    labels = torch.randint(0, 10, (batch,), generator=gen).to(device)
    rss_before = _current_rss_mb()
    torch.manual_seed(0)
    model = builder(template).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, amsgrad=True)
    fwd = torch.compile(model) if options.get("compile") else model
    use_bf16 = bool(options.get("bf16"))

    def step() -> None:
        g = template.batch(params)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            out = fwd(g)
        loss = nn.functional.cross_entropy(out.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    from torch.utils.flop_counter import FlopCounterMode

    flops = 0
    if count_flops:
        # The counter sees only torch operations, not the work inside the C kernels: count the
        # same model on its torch code (the same function) by switching every ``kernel``.
        native = [
            (m, m.kernel) for m in model.modules() if isinstance(getattr(m, "kernel", None), str)
        ]
        for m, _ in native:
            m.kernel = "torch"
        counter = FlopCounterMode(display=False)
        with counter:
            step()  # also the first warm-up (compilation happens here)
        flops = counter.get_total_flops()
        for m, kernel in native:
            m.kernel = kernel
    step()  # warm-up (the first use of a C kernel compiles or loads it)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    t = sorted(times)[len(times) // 2]  # median
    out = {
        "model": name,
        "options": options,
        "batch": batch,
        "s_per_step": t,
        "inrs_per_s": batch / t,
        "gflop_per_inr": flops / batch / 1e9,
        "achieved_gflops": flops / t / 1e9,
        "peak_rss_mb": _rss_mb(),
        "model_rss_mb": _rss_mb() - rss_before,
    }
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ngnn,ngnn-sparse,ngnn-bf16,ngnn-compile")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-flops",
        action="store_true",
        help="skip the FLOP-counting step (it alone raises the peak RSS of the larger models)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        result = run_worker(args.worker, args.batch, args.steps, args.device, not args.no_flops)
        print(json.dumps(result))
        return

    report = machine_report()
    print_machine(report)
    fp32 = float(report["fp32_gflops"])  # type: ignore[arg-type]
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch)]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
        cmd += ["--no-flops"] if args.no_flops else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            print(f"{name}: failed ({tail[0]})", file=sys.stderr)
            rows.append({"model": name, "error": tail[0]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print()
    print(
        f"| model | options | batch | s/step | INRs/s | GFLOP/INR | GFLOP/s | of fp32 "
        f"({fp32:.0f} GFLOP/s) | peak RSS (model) MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | failed: {r['error'][:60]} | | | | | | | |")
            continue
        opts = ",".join(k for k, v in r["options"].items() if v) or "eager fp32"
        mem = f"{r['peak_rss_mb']:.0f} ({r['model_rss_mb']:.0f})"
        if "peak_cuda_mb" in r:
            mem += f", CUDA {r['peak_cuda_mb']:.0f}"
        print(
            f"| {r['model']} | {opts} | {r['batch']} | {r['s_per_step']:.3f} | "
            f"{r['inrs_per_s']:.1f} | {r['gflop_per_inr']:.3f} | {r['achieved_gflops']:.1f} | "
            f"{r['achieved_gflops'] / fp32:.1%} | {mem} |"
        )


if __name__ == "__main__":
    main()
