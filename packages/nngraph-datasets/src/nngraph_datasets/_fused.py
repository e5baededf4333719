"""The fused C kernel of the INR fitting step: build on first use, cache, call through ctypes.

`_siren_kernel.c` (shipped next to this file) runs many masked-Adam steps of a batch of
2-32-32-1 SIRENs in one call, the forward, backward and Adam update of each INR fused over pixel
tiles that stay in L1 (see the comment at its top). It is compiled once per machine with the
system C compiler and cached as `$NNGRAPH_CACHE/kernels/siren-<hash>.so` by
`nngraph_core._native` (atomic writes; one library per source, flags, compiler and CPU).

Everything here raises `FusedKernelError` on failure; `nngraph_datasets.fit` turns that
into a one-time `RuntimeWarning` and a fallback to the `torch.compile`-d or eager step.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch
from torch import Tensor

from nngraph_core._native import NativeBuildError, compiler, open_library

__all__ = ["HIDDEN", "FusedKernelError", "compiler", "fit_steps", "load"]

#: the hidden width the kernel is written for
HIDDEN = 32
_VERSION = 1  # KERNEL_VERSION in the C source
_SOURCE = Path(__file__).with_name("_siren_kernel.c")
_LOCK = threading.Lock()
#: steps per kernel call at most (Ctrl-C is seen between calls; the result does not change)
MAX_STEPS_PER_CALL = 500
_LIB: list[ctypes.CDLL] = []


class FusedKernelError(RuntimeError):
    """The fused kernel could not be compiled, loaded or verified."""


def _declare(lib: ctypes.CDLL) -> None:
    f, i64, i32, d = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    lib.siren_fit.restype = ctypes.c_int
    lib.siren_fit.argtypes = [i64, i64, i64, f, f, f, f, f, f, f, d, d, d, d, d, d, f, i32]
    for name in ("siren_kernel_version", "siren_kernel_hidden", "siren_kernel_openmp"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = []


def _self_check(lib: ctypes.CDLL) -> None:
    """One step on a small grid against the eager hand-written step (guards the build): the
    same loss, and the same gradient (read from the first Adam moment, `0.1 * grad`)."""
    from .fit import init_batch, siren_step
    from .inr import BENCHMARK, grid

    g = torch.Generator().manual_seed(0)
    params = init_batch(range(2), 0, BENCHMARK)
    params += 0.01 * torch.randn(params.shape, generator=g)
    target = torch.rand(2, 35, generator=g)
    xt = grid(5, 7).t().contiguous()
    zeros = torch.zeros_like(params)
    ref = siren_step(params, zeros, zeros, torch.zeros(2), torch.ones(2, dtype=torch.bool),
                     target, xt, 5e-4, 0.9, 0.999, 1e-8, 1e-4, 30.0)  # fmt: skip
    state = (params.clone(), torch.zeros_like(params), torch.zeros_like(params))
    steps = torch.zeros(2, dtype=torch.int32)
    active = torch.ones(2, dtype=torch.bool)
    mse = _call(lib, *state, steps, active, target, xt, 1, 5e-4, 0.9, 0.999, 1e-8, 1e-4, 30.0, 1)
    scale = float(ref[1].abs().max())
    ok = (
        steps.tolist() == [1, 1]
        and torch.allclose(mse, ref[5], rtol=1e-5, atol=0)
        and torch.allclose(state[1], ref[1], rtol=1e-3, atol=1e-4 * scale)
        and bool((state[0] - params).abs().max() <= 2e-3)
    )
    if not ok:
        raise FusedKernelError("the compiled kernel disagrees with the reference step")


def load() -> ctypes.CDLL:
    """The kernel library, compiled and verified on first use (raises `FusedKernelError`)."""
    with _LOCK:
        if _LIB:
            return _LIB[0]
        try:
            lib = open_library(_SOURCE, "siren", compiler())
            _declare(lib)
        except NativeBuildError as e:
            raise FusedKernelError(str(e)) from e
        except AttributeError as e:
            raise FusedKernelError(f"cannot load the library of {_SOURCE.name}: {e}") from e
        if lib.siren_kernel_version() != _VERSION or lib.siren_kernel_hidden() != HIDDEN:
            raise FusedKernelError(f"the library of {_SOURCE.name} is a different kernel version")
        _self_check(lib)
        _LIB.append(lib)
        return lib


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _call(
    lib: ctypes.CDLL,
    params: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: Tensor,
    active: Tensor,
    target: Tensor,
    coords_t: Tensor,
    k: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    stop_mse: float,
    w0: float,
    threads: int,
    out: Tensor | None = None,
) -> Tensor:
    b, p = params.shape
    n = target.shape[1]
    for name, t, dtype, shape in (
        ("params", params, torch.float32, (b, p)),
        ("exp_avg", exp_avg, torch.float32, (b, p)),
        ("exp_avg_sq", exp_avg_sq, torch.float32, (b, p)),
        ("steps", steps, torch.int32, (b,)),
        ("active", active, torch.bool, (b,)),
        ("target", target, torch.float32, (b, n)),
        ("coords_t", coords_t, torch.float32, (2, n)),
    ):
        if t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous() or t.is_cuda:
            raise ValueError(f"{name}: expected a contiguous CPU {dtype} tensor of shape {shape}")
    if p != HIDDEN * HIDDEN + 5 * HIDDEN + 1:
        raise ValueError(f"the fused kernel fits width-{HIDDEN} INRs, got {p} parameters")
    mse = torch.full((b,), float("nan")) if out is None else out
    if mse.dtype != torch.float32 or tuple(mse.shape) != (b,) or not mse.is_contiguous():
        raise ValueError("out: expected a contiguous float32 tensor of shape (B,)")
    rc = lib.siren_fit(
        b, n, k, _ptr(params), _ptr(exp_avg), _ptr(exp_avg_sq), _ptr(steps), _ptr(active),
        _ptr(target), _ptr(coords_t), lr, beta1, beta2, eps, stop_mse, w0, _ptr(mse), threads,
    )  # fmt: skip
    if rc == -2:
        raise MemoryError("siren_fit: out of memory")
    if rc != 0:
        raise ValueError(f"siren_fit rejected its arguments (b={b}, n={n}, k={k})")
    return mse


def fit_steps(
    params: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: Tensor,
    active: Tensor,
    target: Tensor,
    coords_t: Tensor,
    k: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    stop_mse: float,
    w0: float,
    threads: int | None = None,
) -> Tensor:
    """Run `k` masked-Adam steps of `fit.siren_step` on a batch of INRs, in place.

    Args:
        params, exp_avg, exp_avg_sq: `[B, 1185]` contiguous float32, updated in place.
        steps: `[B]` int32 Adam steps taken, updated in place.
        active: `[B]` bool; an INR whose loss before a step is `<= stop_mse` (or NaN) is
            set inactive and never updated again (inactive rows are skipped at no cost).
        target: `[B, N]` pixels; coords_t: `[2, N]` coordinates.
        threads: OpenMP threads over INRs (default `torch.get_num_threads()`); the result does
            not depend on it.

    Returns:
        `[B]` the last loss each INR computed in this call: before its last step, or the one
        that stopped it (NaN if the INR was inactive from the start or `k == 0`).
    """
    lib = load()
    nt = max(1, torch.get_num_threads() if threads is None else int(threads))
    mse = torch.full((params.shape[0],), float("nan"))
    done = 0
    while done < k:  # in pieces, so that Ctrl-C is seen between them
        chunk = min(k - done, MAX_STEPS_PER_CALL)
        _call(lib, params, exp_avg, exp_avg_sq, steps, active, target, coords_t, chunk,
              lr, beta1, beta2, eps, stop_mse, w0, nt, mse)  # fmt: skip
        done += chunk
        if not bool(active.any()):
            break
    return mse
