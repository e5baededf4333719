"""Fit many INRs at once.

The fast path writes the forward AND backward pass of the 3-layer sine MLP by hand and fuses Adam
on a flat `[B, P]` parameter buffer, so one training step of a whole batch is a handful of
batched matmuls plus elementwise work, with no autograd graph. Three kernels run that step:

- `"fused"` (preferred; float32, width 32): a C kernel (`_siren_kernel.c`, compiled on first
  use with the system C compiler, see `nngraph_datasets._fused`) that runs many steps per
  call, each INR on one thread with its activations in pixel tiles that stay in L1;
- `"compiled"`: `siren_step` `torch.compile`-d (needs a C++ compiler; inductor fuses
  the sine/cosine and the elementwise backward). Activations are channel-major
  (`[B, hidden, pixels]`) so the elementwise work vectorises over the pixels;
- `"eager"`: `siren_step` as it is.

[`fit_inrs_autograd`][nngraph_datasets.fit_inrs_autograd] computes the same thing with autograd and
is the reference the tests compare against.

Math, per INR with pixels `x_n` (coordinates) and targets `t_n`, `N` pixels:

```text
a0 = w0 (W0 x + b0),  h0 = sin a0            (hidden, N)
a1 = w0 (W1 h0 + b1), h1 = sin a1
y  = W2 h1 + b2 + 0.5,  L = mean_n (y - t)^2
dy = 2 (y - t) / N
g1 = cos(a1) * (W2^T dy)          -> dW2 = dy h1^T, db2 = sum dy
dW1 = w0 g1 h0^T, db1 = w0 sum_n g1
g0 = cos(a0) * (w0 W1^T g1)       -> dW0 = w0 g0 x^T, db0 = w0 sum_n g0
```
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from . import _fused
from .inr import BENCHMARK, InrRecipe, grid, init_params, inr_seed, num_params, psnr

__all__ = [
    "KERNELS",
    "FitResult",
    "Kernel",
    "fit_inrs",
    "fit_inrs_autograd",
    "init_batch",
    "siren_step",
]

Kernel = Literal["auto", "fused", "compiled", "eager"]
#: the step kernels `fit_inrs` can run (`"auto"` picks the first that works)
KERNELS: tuple[str, ...] = ("auto", "fused", "compiled", "eager")


@dataclasses.dataclass
class FitResult:
    """What [`fit_inrs`][nngraph_datasets.fit_inrs] returns.

    Attributes:
        params: `[n, P]` float32 flat parameters (state-dict order).
        steps: `[n]` int32 Adam steps taken (`< recipe.steps` if the INR stopped early).
        psnr: `[n]` float32 final PSNR in dB.
        snapshots: for each step count `k` asked for with `fit_inrs(..., snapshots=[k])`, the
            [`FitResult`][nngraph_datasets.FitResult] after `k` steps (identical to fitting with
            `steps=k`).
        kernel: `"fused"`, `"compiled"` or `"eager"`: the step kernel that ran.
    """

    params: Tensor
    steps: Tensor
    psnr: Tensor
    snapshots: dict[int, FitResult] = dataclasses.field(default_factory=dict)
    kernel: str = "eager"


def siren_step(
    params: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    active: Tensor,
    target: Tensor,
    coords_t: Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    stop_mse: float,
    w0: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One masked Adam step of a batch of INRs, forward and backward by hand.

    Args:
        params, exp_avg, exp_avg_sq: `[B, P]` flat parameters and Adam moments.
        step: `[B]` Adam steps taken so far (float).
        active: `[B]` bool; inactive INRs are left untouched.
        target: `[B, N]` pixels.
        coords_t: `[2, N]` coordinates (transposed grid).

    Returns:
        `(params, exp_avg, exp_avg_sq, step, active, mse)` after the step, where `mse` is the
        loss at the parameters BEFORE the step, and `active` already excludes the INRs whose
        `mse <= stop_mse` (they were not updated).
    """
    b, p = params.shape
    h = round((-5 + math.sqrt(25 - 4 * (1 - p))) / 2)
    n = target.shape[1]
    o0, o1, o2, o3, o4 = 2 * h, 3 * h, 3 * h + h * h, 4 * h + h * h, 5 * h + h * h
    w_0 = params[:, :o0].view(b, h, 2)
    b_0 = params[:, o0:o1]
    w_1 = params[:, o1:o2].view(b, h, h)
    b_1 = params[:, o2:o3]
    w_2 = params[:, o3:o4]
    b_2 = params[:, o4:]
    # forward (channel-major: [B, h, N])
    a0 = w0 * (w_0[:, :, 0:1] * coords_t[0] + w_0[:, :, 1:2] * coords_t[1] + b_0[:, :, None])
    h0 = torch.sin(a0)
    c0 = torch.cos(a0)
    a1 = w0 * (torch.bmm(w_1, h0) + b_1[:, :, None])
    h1 = torch.sin(a1)
    c1 = torch.cos(a1)
    # as a bmm, h1 is stored once instead of its sine being recomputed by the backward
    y = torch.bmm(w_2[:, None, :], h1)[:, 0] + b_2 + 0.5
    r = y - target
    mse = (r * r).mean(1)
    act = active & (mse > stop_mse)
    # backward
    dy = r * (2.0 / n)
    dw_2 = (h1 * dy[:, None, :]).sum(2)
    db_2 = dy.sum(1, keepdim=True)
    g1 = c1 * dy[:, None, :] * w_2[:, :, None]
    dw_1 = w0 * torch.bmm(g1, h0.transpose(1, 2))
    db_1 = w0 * g1.sum(2)
    g0 = (w0 * torch.bmm(w_1.transpose(1, 2), g1)) * c0
    dw_0 = w0 * torch.stack([(g0 * coords_t[0]).sum(2), (g0 * coords_t[1]).sum(2)], dim=-1)
    db_0 = w0 * g0.sum(2)
    grad = torch.cat(
        [dw_0.reshape(b, 2 * h), db_0, dw_1.reshape(b, h * h), db_1, dw_2, db_2], dim=1
    )
    new_params, new_avg, new_sq, new_step = masked_adam(
        params, grad, exp_avg, exp_avg_sq, step, act, lr, beta1, beta2, eps
    )
    return new_params, new_avg, new_sq, new_step, act, mse


def masked_adam(
    params: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    active: Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`torch.optim.Adam`'s update on flat `[B, P]` buffers, applied only where `active`."""
    a = active[:, None]
    new_step = step + active.to(step.dtype)
    new_avg = torch.where(a, exp_avg + (grad - exp_avg) * (1 - beta1), exp_avg)
    new_sq = torch.where(a, exp_avg_sq * beta2 + grad * grad * (1 - beta2), exp_avg_sq)
    bc1 = 1 - beta1**new_step
    bc2 = 1 - beta2**new_step
    denom = new_sq.sqrt() / bc2.sqrt()[:, None] + eps
    new_params = torch.where(a, params - (lr / bc1)[:, None] * new_avg / denom, params)
    return new_params, new_avg, new_sq, new_step


_COMPILED: dict[str, Callable[..., Any]] = {}
#: the error that made `torch.compile` unusable in this process (then every fit runs eagerly)
_COMPILE_ERROR: list[Exception] = []


def _have_compiler() -> bool:
    return sys.platform.startswith("linux") and any(
        shutil.which(c) for c in ("g++", "c++", "clang++")
    )


def _warn_once(errors: list[Exception], err: Exception, message: str) -> None:
    """Remember `err` in `errors` (a kernel's failure record); warn with `message` (which
    may use `{msg}`, the error's first line) only the first time."""
    first = not errors
    errors.append(err)
    if first:
        msg = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]
        warnings.warn(message.format(msg=msg), RuntimeWarning, stacklevel=5)


def _warn_fallback(err: Exception) -> None:
    """Remember that compiling failed and say so once; later fits go straight to eager."""
    _warn_once(
        _COMPILE_ERROR,
        err,
        "torch.compile of the INR fitting step failed ({msg}); fitting with the eager step "
        "instead (same math, about 3x slower; results differ from compiled ones in float32 "
        "rounding and the zoo manifest records kernel 'eager'). Install a C++ compiler "
        "(g++) for the compiled step, or pass compile=False / --compile no to skip it.",
    )


def _guarded(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """`compiled`, falling back to `siren_step` (with a warning) if it raises."""

    def step(*args: Any) -> Any:
        if not _COMPILE_ERROR:
            try:
                return compiled(*args)
            except Exception as err:  # inductor / C++ toolchain errors have no common base class
                _warn_fallback(err)
        return siren_step(*args)

    return step


def _step_fn(
    compile: bool | str, example: tuple[Any, ...] | None = None
) -> tuple[Callable[..., Any], bool]:
    """The step function and whether it is compiled.

    With `example` (the step's arguments, or dummies of the same shapes and dtypes), the compiled
    step is run on it once, so that compilation happens (or fails and falls back to eager) here,
    before any INR is fitted: a fit then uses one kernel throughout and the caller knows which.
    """
    if compile == "auto":
        compile = _have_compiler()
    if not compile or _COMPILE_ERROR:
        return siren_step, False
    if "step" not in _COMPILED:
        try:
            _COMPILED["step"] = torch.compile(siren_step, dynamic=False)
        except Exception as err:
            _warn_fallback(err)
            return siren_step, False
    fn = _guarded(_COMPILED["step"])
    if example is not None:
        fn(*example)
        if _COMPILE_ERROR:
            return siren_step, False
    return fn, True


def _example_args(
    batch_size: int, grid_hw: tuple[int, int], recipe: InrRecipe, dtype: torch.dtype
) -> tuple[Any, ...]:
    """Arguments of `siren_step` with the shapes a fit uses (to compile ahead)."""
    p = num_params(recipe.hidden)
    n = grid_hw[0] * grid_hw[1]
    params = torch.zeros(batch_size, p, dtype=dtype)
    return (
        params, torch.zeros_like(params), torch.zeros_like(params),
        torch.zeros(batch_size, dtype=dtype), torch.zeros(batch_size, dtype=torch.bool),
        torch.zeros(batch_size, n, dtype=dtype), grid(*grid_hw, dtype=dtype).t().contiguous(),
        recipe.lr, recipe.betas[0], recipe.betas[1], recipe.eps,
        10.0 ** (-recipe.stop_psnr / 10.0), recipe.w0,
    )  # fmt: skip


#: the error that made the fused C kernel unusable in this process (then fits use the others)
_FUSED_ERROR: list[Exception] = []


def _warn_fused_fallback(err: Exception) -> None:
    """Remember that the fused kernel failed and say so once; later fits skip it silently."""
    _warn_once(
        _FUSED_ERROR,
        err,
        "the fused C kernel of the INR fitting step could not be built or loaded ({msg}); "
        "fitting with the torch.compile-d step instead, or the eager one without a C++ "
        "compiler (same math, 2-5x slower; results differ from fused ones in float32 "
        "rounding and the zoo manifest records the kernel that ran). Install a C compiler "
        "(gcc or clang, with OpenMP for several threads; $CC picks one), or pass "
        "kernel='compiled' / --kernel compiled to skip it.",
    )


def _fused_supported(dtype: torch.dtype, hidden: int) -> bool:
    return dtype == torch.float32 and hidden == _fused.HIDDEN


def _resolve_kernel(
    kernel: str,
    compile: bool | str,
    dtype: torch.dtype,
    hidden: int,
    example: Callable[[], tuple[Any, ...]] | None = None,
) -> tuple[Kernel, Callable[..., Any] | None]:
    """The kernel a fit runs (`"fused"`, `"compiled"` or `"eager"`) and, unless fused, its
    step function.

    `compile` is the older switch: `True` / `False` mean `kernel="compiled"` /
    `"eager"`. The fused kernel is built (or the compiled step compiled on `example()`) here,
    before any INR is fitted, so a failure falls back with one warning and a fit never mixes
    kernels.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if compile not in ("auto", True, False):
        raise ValueError(f"compile must be 'auto', True or False, got {compile!r}")
    if compile != "auto":
        if kernel not in ("auto", "compiled" if compile else "eager"):
            raise ValueError(
                f"kernel={kernel!r} contradicts compile={compile!r}; pass only kernel="
            )
        kernel = "compiled" if compile else "eager"
    if kernel in ("auto", "fused"):
        if not _fused_supported(dtype, hidden):
            if kernel == "fused":
                raise ValueError(
                    f"the fused kernel fits float32 INRs of width 32, not {dtype} / width "
                    f"{hidden}; use kernel='auto' (it picks the compiled or eager step)"
                )
        elif not _FUSED_ERROR and (kernel == "fused" or _fused.compiler() is not None):
            try:
                _fused.load()
                return "fused", None
            except Exception as err:  # compiler / loader errors have no common base class
                _warn_fused_fallback(err)
        compile = "auto"
    else:
        compile = kernel == "compiled"
    fn, compiled = _step_fn(compile, None if example is None else example())
    ran: Kernel = "compiled" if compiled else "eager"
    return ran, fn


def init_batch(
    indices: Sequence[int], seed: int, recipe: InrRecipe, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Initial parameters `[len(indices), P]`; INR `i` uses the generator `inr_seed(seed, i)`."""
    rows = [
        init_params(
            torch.Generator().manual_seed(inr_seed(seed, int(i))),
            hidden=recipe.hidden,
            w0=recipe.w0,
            first_layer_init=recipe.first_layer_init,
            dtype=dtype,
        )
        for i in indices
    ]
    return torch.stack(rows) if rows else torch.zeros(0, num_params(recipe.hidden), dtype=dtype)


def _prepare(images: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    if images.dim() != 3:
        raise ValueError(f"images must be [n, H, W], got shape {tuple(images.shape)}")
    n, height, width = images.shape
    return images.reshape(n, height * width).to(dtype), grid(height, width, dtype=dtype)


def fit_inrs(
    images: Tensor,
    recipe: InrRecipe = BENCHMARK,
    *,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    compile: bool | str = "auto",
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, Tensor], None] | None = None,
    snapshots: Sequence[int] = (),
    kernel: Kernel = "auto",
) -> FitResult:
    """Fit one INR per image, `batch_size` INRs at a time, with the hand-written fast step.

    Args:
        images: `[n, H, W]` pixels in `[0, 1]`.
        recipe: the fitting recipe ([`BENCHMARK`][nngraph_datasets.BENCHMARK] by default).
        seed: zoo seed; INR `k` is initialised from `inr_seed(seed, indices[k])`.
        indices: the INRs' indices in the zoo (default `range(n)`); they fix the
            initialisation, so a zoo fitted in pieces equals one fitted at once.
        batch_size: INRs fitted together (16: fastest measured for the compiled step with 2
            threads; 8-32 are within a few percent; the fused kernel runs at the same speed
            from 8 to 128 on one thread). Does not change the results beyond float32 rounding (the fused
            kernel's results do not depend on it at all).
        compile: the older switch: `True` / `False` mean `kernel="compiled"` /
            `"eager"`; leave it `"auto"` when passing `kernel`.
        dtype: float32 (default) or float64 (fused: float32 only).
        callback: called after each batch with `(number of INRs done, psnr of the batch)`.
        snapshots: step counts `<= recipe.steps` at which to also record parameters, steps
            and PSNR (`result.snapshots[k]`), e.g. to compare step counts in one run.
        kernel: the step kernel: `"fused"` (a C kernel compiled on first use with the
            system C compiler; float32, width 32), `"compiled"` (`torch.compile`, needs a
            C++ compiler), `"eager"`, or `"auto"`: the first of these that works for the
            dtype and width (fused with a C compiler, else compiled with a C++ compiler, else
            eager). The kernels agree to float32 rounding, not bit for bit. If building the
            fused kernel or compiling the step fails, the fit falls back to the next kernel with
            a `RuntimeWarning`; `result.kernel` says which ran.

    Returns:
        [`FitResult`][nngraph_datasets.FitResult] with float32 parameters, steps taken and final
        PSNR.
    """
    target_all, coords = _prepare(images, dtype)
    n = target_all.shape[0]
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n:
        raise ValueError("indices must have one entry per image")
    grid_hw = (int(images.shape[1]), int(images.shape[2]))
    ran, step_fn = _resolve_kernel(
        kernel, compile, dtype, recipe.hidden,
        (lambda: _example_args(batch_size, grid_hw, recipe, dtype)) if n else None,
    )  # fmt: skip
    coords_t = coords.t().contiguous()
    beta1, beta2 = recipe.betas
    stop_mse = 10.0 ** (-recipe.stop_psnr / 10.0)
    p = num_params(recipe.hidden)
    out_params = torch.empty(n, p, dtype=torch.float32)
    out_steps = torch.empty(n, dtype=torch.int32)
    out_psnr = torch.empty(n, dtype=torch.float32)
    snaps = sorted({int(k) for k in snapshots})
    if snaps and not 0 <= snaps[0] <= snaps[-1] <= recipe.steps:
        raise ValueError(f"snapshots must lie in [0, recipe.steps={recipe.steps}], got {snaps}")
    snap_out = {
        k: FitResult(out_params.clone(), out_steps.clone(), out_psnr.clone()) for k in snaps
    }
    result = FitResult(out_params, out_steps, out_psnr, snap_out, ran)

    def record(res: FitResult, start: int, params: Tensor, step: Tensor, target: Tensor) -> None:
        m = min(len(params), n - start)
        res.params[start : start + m] = params[:m].to(torch.float32)
        res.steps[start : start + m] = step[:m].to(torch.int32)
        mse = _mse(params[:m], target[:m], coords_t, recipe.w0)
        res.psnr[start : start + m] = psnr(mse).to(torch.float32)

    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        m = stop - start
        # pad the last batch to a full one (inactive rows) so a compiled step is reused
        params = torch.zeros(batch_size, p, dtype=dtype)
        params[:m] = init_batch(indices[start:stop], seed, recipe, dtype)
        target = torch.zeros(batch_size, target_all.shape[1], dtype=dtype)
        target[:m] = target_all[start:stop]
        active = torch.zeros(batch_size, dtype=torch.bool)
        active[:m] = True
        exp_avg = torch.zeros_like(params)
        exp_avg_sq = torch.zeros_like(params)
        if step_fn is None:  # fused: many steps per call, up to each snapshot
            step = torch.zeros(batch_size, dtype=torch.int32)
            done = 0
            for k in [*snaps, recipe.steps]:
                if k > done:
                    _fused.fit_steps(
                        params, exp_avg, exp_avg_sq, step, active, target, coords_t, k - done,
                        recipe.lr, beta1, beta2, recipe.eps, stop_mse, recipe.w0,
                    )  # fmt: skip
                    done = k
                if k in snap_out:
                    record(snap_out[k], start, params, step, target)
            record(result, start, params, step, target)
            if callback is not None:
                callback(stop, out_psnr[start:stop])
            continue
        step = torch.zeros(batch_size, dtype=dtype)
        pending = list(snaps)
        for k in range(recipe.steps):
            while pending and pending[0] == k:
                record(snap_out[pending.pop(0)], start, params, step, target)
            params, exp_avg, exp_avg_sq, step, active, _ = step_fn(
                params, exp_avg, exp_avg_sq, step, active, target, coords_t,
                recipe.lr, beta1, beta2, recipe.eps, stop_mse, recipe.w0,
            )  # fmt: skip
            if k % 50 == 49 and not bool(active.any()):
                break
        for k in pending:  # the rest (all INRs stopped early, or k == recipe.steps)
            record(snap_out[k], start, params, step, target)
        record(result, start, params, step, target)
        if callback is not None:
            callback(stop, out_psnr[start:stop])
    return result


def _mse(params: Tensor, target: Tensor, coords_t: Tensor, w0: float) -> Tensor:
    from .inr import param_slices

    b, p = params.shape
    h = round((-5 + math.sqrt(25 - 4 * (1 - p))) / 2)
    s = param_slices(h)
    w_0 = params[:, s["seq.0.weight"]].reshape(b, h, 2)
    h0 = torch.sin(w0 * (torch.matmul(w_0, coords_t) + params[:, s["seq.0.bias"], None]))
    w_1 = params[:, s["seq.1.weight"]].reshape(b, h, h)
    h1 = torch.sin(w0 * (torch.bmm(w_1, h0) + params[:, s["seq.1.bias"], None]))
    y = (h1 * params[:, s["seq.2.weight"], None]).sum(1) + params[:, s["seq.2.bias"]] + 0.5
    return ((y - target) ** 2).mean(1)


def fit_inrs_autograd(
    images: Tensor,
    recipe: InrRecipe = BENCHMARK,
    *,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
) -> FitResult:
    """Reference implementation of [`fit_inrs`][nngraph_datasets.fit_inrs]: autograd gradients, same
    masked Adam.

    Slow (autograd over batched matmuls); used by the tests and as the benchmark baseline.
    """
    target_all, coords = _prepare(images, dtype)
    n = target_all.shape[0]
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    coords_t = coords.t().contiguous()
    beta1, beta2 = recipe.betas
    stop_mse = 10.0 ** (-recipe.stop_psnr / 10.0)
    results = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        params = init_batch(indices[start:stop], seed, recipe, dtype)
        target = target_all[start:stop]
        exp_avg = torch.zeros_like(params)
        exp_avg_sq = torch.zeros_like(params)
        step = torch.zeros(stop - start, dtype=dtype)
        active = torch.ones(stop - start, dtype=torch.bool)
        for _ in range(recipe.steps):
            leaf = params.detach().requires_grad_(True)
            mse = _mse(leaf, target, coords_t, recipe.w0)
            (grad,) = torch.autograd.grad(mse.sum(), leaf)
            active = active & (mse.detach() > stop_mse)
            params, exp_avg, exp_avg_sq, step = masked_adam(
                params, grad, exp_avg, exp_avg_sq, step, active, recipe.lr, beta1, beta2, recipe.eps
            )
        mse = _mse(params, target, coords_t, recipe.w0)
        results.append((params.detach().float(), step.to(torch.int32), psnr(mse).float()))
    if not results:
        p = num_params(recipe.hidden)
        return FitResult(torch.zeros(0, p), torch.zeros(0, dtype=torch.int32), torch.zeros(0))
    params, steps, psnrs = (torch.cat(t) for t in zip(*results))
    return FitResult(params, steps, psnrs)
