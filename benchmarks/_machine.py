"""What machine a benchmark ran on: CPU model, threads, and GEMM rates measured in the same run.

Every benchmark prints :func:`machine_report` so its figures can be read as fractions of what the
machine can do (the processor differs between machines of the same kind).
"""

from __future__ import annotations

import platform
import subprocess
import time

import torch


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0) -> float:
    """Sustained square-matmul rate in GFLOP/s on the current device and thread count."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    elapsed = time.perf_counter() - start
    return 2 * n**3 * reps / elapsed / 1e9


def machine_report() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fp32_gflops": round(gemm_gflops(torch.float32), 1),
        "bf16_gflops": round(gemm_gflops(torch.bfloat16), 1),
    }


def print_machine(report: dict[str, object]) -> None:
    print(
        f"machine: {report['cpu']} | {report['threads']} threads | torch {report['torch']} | "
        f"GEMM fp32 {report['fp32_gflops']} GFLOP/s, bf16 {report['bf16_gflops']} GFLOP/s"
    )
