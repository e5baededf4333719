r"""The native (C) kernels of the dense NG-GNN layer and of NG-T's block path: build on first
use, verify, autograd.

`_kernels.c` (shipped next to this file) replaces the per-edge work of
[`forward_dense`][nngraph_layers.EdgePNAConv.forward_dense] and of NG-T's block path with one pass
over the per-edge (per-pair) rows each way, the small per-edge GEMMs included (their outputs are
computed a block of rows at a time into cache-resident buffers and never stored; the backward
recomputes them):

- `layer_message_stats`: for all blocks of an NG-GNN layer, the FiLM GEMM and messages
  $m = \beta + \gamma \odot (a_r + b_j)$ of both edge directions, and each node's sum,
  sum of squares, min and max over all its messages (the backward routes the min / max
  gradient through the saved argmin / argmax);
- `layer_edge_update`: NG-GNN's edge update $\mathbf e + \mathbf W_o\,\mathrm{SiLU}(
  \mathbf W_e \mathbf e + v_r + u_j) + \mathbf b_o$ of all blocks of a layer (both GEMMs, bias
  and residual);
- `attention_block`: NG-T's relational attention over one complete bipartite block in
  both directions (pair terms, scores, softmax numerators and denominators, the
  attention-weighted values and pair features per receiver);
- `edge_gelu`: NG-T's edge-update activation
  $\mathrm{GELU}(h_{ij} + h'_{ji} + t_i + t_j)$ of both directions of a weight (the pair
  GEMM's own half, the reverse pair's other half, node terms), without torch's flip and stack;
- `residual_layer_norm`: $\mathrm{LN}(\mathbf r + \mathrm{Dropout}(\mathbf z +
  \mathbf b))$, the end of both halves of NG-T's edge update; the dropout mask is a hash of the
  element's index and a seed drawn from torch's generator, recomputed in the backward.

All are `torch.autograd.Function` s. The library is compiled with the system C compiler and
cached by `nngraph_core._native`; `load` checks every function against its torch
formula (the `reference_*` functions, in float64) before first use and raises
`NativeKernelError` on any failure. float32 CPU tensors only; the layers fall back to
their torch code for everything else.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from nngraph_core._native import NativeBuildError, compiler, open_library

__all__ = [
    "Kernel",
    "NativeKernelError",
    "attention_block",
    "available",
    "available_or_warn",
    "edge_gelu",
    "fourier_sincos",
    "layer_edge_update",
    "layer_message_stats",
    "load",
    "reference_attention_block",
    "reference_edge_activation",
    "reference_edge_gelu",
    "reference_layer_edge_update",
    "reference_layer_message_stats",
    "reference_message_stats",
    "reference_residual_layer_norm",
    "residual_layer_norm",
    "use_native",
]

#: how a layer with a native path runs: `"auto"` (the C kernel for float32 CPU tensors when it
#: builds, else torch), `"native"` (the C kernel or an error) or `"torch"`
Kernel = Literal["auto", "native", "torch"]

_VERSION = 9  # KERNEL_VERSION in the C source
_SOURCE = Path(__file__).with_name("_kernels.c")
_LOCK = threading.Lock()
_LIB: list[ctypes.CDLL] = []
_ERROR: list[str] = []  # why the kernel is unavailable, once known
_WARNED: list[bool] = []


class NativeKernelError(RuntimeError):
    """The native kernel could not be compiled, loaded or verified."""


def reference_message_stats(
    g: Tensor, bias: Tensor, t_o: Tensor, t_i: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The torch formula of `message_stats` (what the kernel is checked against).

    Args:
        g: `[B, 2, n_o, n_i, 2d]` FiLM matmul without its bias, $\gamma$ then
            $\beta$; bias: `[2d]` the FiLM bias.
        t_o: `[B, 2, n_o, d]` per-target terms; t_i: `[B, 2, n_i, d]` per-source terms.

    Returns:
        `(stats_o [B, n_o, 4, d], stats_i [B, n_i, 4, d])`: sum, sum of squares, min and max of
        direction 0 over the sources and of direction 1 over the targets.
    """
    gamma, beta = (g + bias).chunk(2, dim=-1)
    m = torch.addcmul(beta, gamma, t_o.unsqueeze(3) + t_i.unsqueeze(2))
    fwd, bwd = m[:, 0], m[:, 1]

    def stats(v: Tensor, dim: int) -> Tensor:
        return torch.stack([v.sum(dim), (v * v).sum(dim), v.amin(dim), v.amax(dim)], dim=-2)

    return stats(fwd, 2), stats(bwd, 1)


def reference_edge_activation(h: Tensor, t_o: Tensor, t_i: Tensor) -> Tensor:
    """The torch formula of `edge_activation`: `silu(h + (t_o + t_i))` broadcast."""
    return torch.nn.functional.silu(h + (t_o.unsqueeze(3) + t_i.unsqueeze(2)))


def reference_attention_block(
    e: Tensor, w_pair: Tensor, qkv: Tensor, src_off: int, dst_off: int, heads: int, scale: float
) -> tuple[Tensor, ...]:
    r"""The torch formula of `attention_block` (what the kernel is checked against).

    Args:
        e: `[B, 2, n_o, n_i, d_e]` the pair features of one block (direction 0: source
            `i` -> target `o`; 1: the reverse).
        w_pair: `[3A, d_e]` the pair weights: rows of $q_e$, $k_e$, $m_e$.
        qkv: `[B, N, 3A]` the node terms $(q \Vert k \Vert v)$; the block's sources are
            nodes `src_off:src_off + n_i`, its targets `dst_off:dst_off + n_o`.
        heads: `H`; scale: the factor of the scores.

    Returns:
        `(mx, den, num, es)` of the targets (over their sources), then of the sources (over
        their targets): per receiver and head the maximum score `[B, n, H]` and, with
        $p = \exp(\mathrm{score} - \mathrm{mx})$, $\sum p$ `[B, n, H]`,
        $\sum p\, (v \odot m_e)$ `[B, n, A]` and $\sum p\, e$ `[B, n, H, d_e]`.
    """
    pair = torch.nn.functional.linear(e, w_pair)
    no, ni, a3 = pair.shape[2:]
    dh = a3 // 3 // heads
    q, k, v = qkv.unflatten(-1, (3, heads, dh)).unbind(-3)
    qe, ke, me = pair.unflatten(-1, (3, heads, dh)).unbind(-3)
    src, dst = slice(src_off, src_off + ni), slice(dst_off, dst_off + no)
    out: list[Tensor] = []
    for r, (q_r, k_s, v_s, dim) in enumerate(
        (
            (q[:, dst, None], k[:, None, src], v[:, None, src], 2),
            (q[:, None, src], k[:, dst, None], v[:, dst, None], 1),
        )
    ):
        s = ((q_r + qe[:, r]) * (k_s + ke[:, r])).sum(-1) * scale  # [B, no, ni, H]
        mx = s.detach().amax(dim)
        p = torch.exp(s - mx.unsqueeze(dim))
        num = (p.unsqueeze(-1) * (v_s * me[:, r])).sum(dim).flatten(-2)
        spec = "boih,boic->bohc" if dim == 2 else "boih,boic->bihc"
        out += [mx, p.sum(dim), num, torch.einsum(spec, p, e[:, r])]
    return tuple(out)


def reference_edge_gelu(pair: Tensor, t_o: Tensor, t_i: Tensor) -> Tensor:
    """The torch formula of `edge_gelu`.

    Args:
        pair: `[B, 2, n_o, n_i, 2h]`: per pair its own term, then the term it gives its
            reverse pair; t_o: `[B, 2, n_o, h]`; t_i: `[B, 2, n_i, h]`.

    Returns:
        `[B, 2, n_o, n_i, h]`: `gelu(pair[:, r, ..., :h] + pair[:, 1 - r, ..., h:] +
        t_o[:, r, :, None] + t_i[:, r, None])`.
    """
    own, rev = pair.chunk(2, dim=-1)
    return torch.nn.functional.gelu(own + rev.flip(1) + (t_o.unsqueeze(3) + t_i.unsqueeze(2)))


_GOLDEN = 0x9E3779B9
_U32 = 0xFFFFFFFF


def hash_keep_mask(n: int, seed: int, threshold: int) -> Tensor:
    """The dropout keep mask of `residual_layer_norm` for `n` elements, in torch: element
    `k` is kept when `lowbias32((k * 0x9E3779B9 + seed) mod 2^32) >= threshold`."""
    x = (torch.arange(n, dtype=torch.int64) * _GOLDEN + seed) & _U32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _U32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _U32
    x = x ^ (x >> 16)
    return x >= threshold


def _dropout_threshold(p: float) -> tuple[int, float]:
    """`(threshold, scale)` of a 32-bit hash dropout with drop probability `p` (< 1)."""
    threshold = min(round(p * 2**32), 2**32 - 1)
    return threshold, 2**32 / (2**32 - threshold)


def reference_residual_layer_norm(
    z: Tensor,
    bias: Tensor,
    res: Tensor,
    weight: Tensor,
    ln_bias: Tensor,
    eps: float,
    p: float,
    seed: int,
) -> Tensor:
    """The torch formula of `residual_layer_norm` with the same mask (`p` the drop
    probability, `seed` as the kernel gets it)."""
    threshold, scale = _dropout_threshold(p)
    keep = hash_keep_mask(z.numel(), seed, threshold).view(z.shape)
    u = res + (z + bias) * (keep * scale).to(z.dtype)
    return torch.nn.functional.layer_norm(u, (z.shape[-1],), weight, ln_bias, eps)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    sizes: list[Any] = [i32, i64, i64, i64, i64]  # threads, B, n_o, n_i, d
    # threads, B, N, n_o, n_i, src_off, dst_off, A, H, d_e, scale
    attn: list[Any] = [i32, i64, i64, i64, i64, i64, i64, i64, i64, i64, ctypes.c_float]
    lib.ngt_attn_fwd.argtypes = [*attn, *[p] * 12]
    lib.ngt_attn_bwd.argtypes = [*attn, *[p] * 14]
    lib.ngt_attn_fwd.restype = lib.ngt_attn_bwd.restype = ctypes.c_int
    # threads, B, L, widths*, offsets*, N, d, (d_e)
    layer: list[Any] = [i32, i64, i64, p, p, i64, i64]
    lib.ngnn_layer_msg_fwd.argtypes = [*layer, i64, *[p] * 7]
    lib.ngnn_layer_msg_bwd.argtypes = [*layer, i64, *[p] * 13]
    lib.ngnn_layer_edge_fwd.argtypes = [*layer, *[p] * 7]
    lib.ngnn_layer_edge_bwd.argtypes = [*layer, *[p] * 13]
    for name in ("msg_fwd", "msg_bwd", "edge_fwd", "edge_bwd"):
        getattr(lib, f"ngnn_layer_{name}").restype = ctypes.c_int
    lib.ngt_edge_fwd.argtypes = [*sizes, *[p] * 4]
    lib.ngt_edge_bwd.argtypes = [*sizes, *[p] * 7]
    lib.ngt_edge_fwd.restype = lib.ngt_edge_bwd.restype = None
    u32, f32 = ctypes.c_uint32, ctypes.c_float
    # threads, R, C, Z, bias, Res, seed, thresh, scale, gamma, ...
    ln: list[Any] = [i32, i64, i64, p, p, p, u32, u32, f32, p]
    lib.res_ln_fwd.argtypes = [*ln, p, f32, p, p]
    lib.res_ln_bwd.argtypes = [*ln, p, p, p, p, p]
    lib.res_ln_fwd.restype = None
    lib.res_ln_bwd.restype = ctypes.c_int
    lib.fourier_sincos.argtypes = [i32, i64, i64, i64, p, p, p, p]
    lib.fourier_sincos.restype = ctypes.c_int
    for name in ("ngnn_kernel_version", "ngnn_kernel_openmp"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = []


def _self_check() -> None:
    """Every function against its torch formula on small random inputs, values and gradients
    (guards the build: compiler, flags and CPU)."""
    gen = torch.Generator().manual_seed(0)
    b, no, ni, d = 2, 3, 5, 7

    def rnd(*shape: int, grad: bool = True) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).requires_grad_(grad)

    t_o, t_i, h = rnd(b, 2, no, d), rnd(b, 2, ni, d), rnd(b, 2, no, ni, d)
    # NG-GNN layers of widths 2-3-4-1 (the weights enter as constants)
    widths = (2, 3, 4, 1)
    blocks5 = [rnd(b, 2, widths[k + 1], widths[k], 5) for k in range(3)]
    blocks_d = [rnd(b, 2, widths[k + 1], widths[k], d) for k in range(3)]
    wf, bf = rnd(2 * d, 5, grad=False) * 0.5, rnd(2 * d, grad=False)
    we, wo, bo = (rnd(d, d, grad=False) * 0.4, rnd(d, d, grad=False) * 0.4, rnd(d, grad=False))
    # attention: A = 8 over 2 heads, d_e = 3, sources at nodes 1..5, targets at 6..8 of 10
    heads, a, de, n = 2, 8, 3, 10
    w_pair, e, qkv = rnd(3 * a, de), rnd(b, 2, no, ni, de), rnd(b, n, 3 * a)
    attn_w = [rnd(*s, grad=False) for s in ((b, no, heads), (b, no, a), (b, no, heads, de))]
    attn_w += [rnd(*s, grad=False) for s in ((b, ni, heads), (b, ni, a), (b, ni, heads, de))]
    cases: list[tuple[Any, Any, tuple[Tensor, ...], tuple[Any, ...], tuple[Tensor, ...]]] = [
        (lambda a_, b_, *es: layer_message_stats(es, wf, bf, a_, b_, widths),
         lambda a_, b_, *es: reference_layer_message_stats(
             es, wf.to(a_.dtype), bf.to(a_.dtype), a_, b_, widths),
         (rnd(b, sum(widths), d), rnd(b, sum(widths), d), *blocks5), (),
         (rnd(b, sum(widths), 4, d, grad=False),)),
        (lambda u_, v_, *es: tuple(layer_edge_update(es, we, wo, bo, u_, v_, widths)),
         lambda u_, v_, *es: tuple(reference_layer_edge_update(
             es, we.to(u_.dtype), wo.to(u_.dtype), bo.to(u_.dtype), u_, v_, widths)),
         (rnd(b, sum(widths), d), rnd(b, sum(widths), d), *blocks_d), (),
         tuple(rnd(*t.shape, grad=False) for t in blocks_d)),
        (attention_block, reference_attention_block, (e, w_pair, qkv), (1, 6, heads, 0.3),
         (attn_w[0], *attn_w[:3], attn_w[3], *attn_w[3:])),
        (edge_gelu, reference_edge_gelu, (rnd(b, 2, no, ni, 2 * d), t_o, t_i), (),
         (rnd(b, 2, no, ni, d, grad=False),)),
        (_res_ln, reference_residual_layer_norm,
         (h, rnd(d), rnd(b, 2, no, ni, d), rnd(d), rnd(d)), (1e-5, 0.3, 12345),
         (rnd(b, 2, no, ni, d, grad=False),)),
    ]  # fmt: skip
    checks = []
    for fn, ref, args, consts, weights in cases:
        exact = tuple(t.detach().double().requires_grad_() for t in args)
        out, want = _flat(fn(*args, *consts)), _flat(ref(*exact, *consts))
        loss = torch.stack([(o * w).sum() for o, w in zip(out, weights, strict=True)]).sum()
        grads = torch.autograd.grad(loss, args)
        wd = [w.double() for w in weights]
        loss64 = torch.stack([(o * w).sum() for o, w in zip(want, wd, strict=True)]).sum()
        exact_grads = torch.autograd.grad(loss64, exact)
        for x, y in zip([*grads, *out], [*exact_grads, *want], strict=True):
            tol = 1e-4 * (1.0 + float(y.detach().abs().max()))
            checks.append(torch.allclose(x.detach().double(), y.detach(), rtol=1e-4, atol=tol))
    x, freqs = rnd(17, 2, grad=False), rnd(2, 9, grad=False)
    sin, cos = fourier_sincos(x, freqs)
    proj = (2 * torch.pi) * (x.double() @ freqs.double())
    checks += [torch.allclose(sin.double(), proj.sin(), atol=1e-5)]
    checks += [torch.allclose(cos.double(), proj.cos(), atol=1e-5)]
    if not all(checks):
        raise NativeKernelError("the compiled kernel disagrees with the torch formulas")


def _flat(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _identity(t: Tensor) -> Tensor:
    return t


def load() -> ctypes.CDLL:
    """The kernel library, compiled and verified on first use (raises
    `NativeKernelError`; a failure is remembered for the process)."""
    with _LOCK:
        if _LIB:
            return _LIB[0]
        if _ERROR:
            raise NativeKernelError(_ERROR[0])
        try:
            try:
                lib = open_library(_SOURCE, "ngnn", compiler())
                _declare(lib)
            except NativeBuildError as e:
                raise NativeKernelError(str(e)) from e
            except AttributeError as e:
                raise NativeKernelError(f"cannot load the library of {_SOURCE.name}: {e}") from e
            if lib.ngnn_kernel_version() != _VERSION:
                raise NativeKernelError(
                    f"the library of {_SOURCE.name} is a different kernel version"
                )
            _LIB.append(lib)
            try:
                # First use may come inside no_grad / inference_mode (the check needs autograd)
                # or inside a checkpointed forward, whose saved-tensor hooks would recompute
                # that forward during the check's backward and re-enter this lock: identity
                # hooks shadow them.
                with (
                    torch.inference_mode(False),
                    torch.enable_grad(),
                    torch.autograd.graph.saved_tensors_hooks(_identity, _identity),
                ):
                    _self_check()
            except BaseException:
                _LIB.clear()
                raise
        except NativeKernelError as e:
            _ERROR.append(str(e))
            raise
        return lib


def available() -> bool:
    """Whether the kernel can be used (compiles it on the first call)."""
    try:
        load()
    except NativeKernelError:
        return False
    return True


def available_or_warn() -> bool:
    """`available`, with a one-time `RuntimeWarning` that names the reason when not."""
    if available():
        return True
    if not _WARNED:
        _WARNED.append(True)
        warnings.warn(
            f"the native kernel is unavailable ({_ERROR[0]}); using the torch code, "
            "which is several times slower on CPU",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def _lib() -> ctypes.CDLL:
    return _LIB[0] if _LIB else load()


def _check(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if t.dtype != torch.float32 or t.device.type != "cpu" or tuple(t.shape) != shape:
        raise ValueError(
            f"{name}: expected a float32 CPU tensor of shape {shape}, got {t.dtype} "
            f"{tuple(t.shape)} on {t.device}"
        )


class _AttentionBlock(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        e: Tensor,
        w_pair: Tensor,
        qkv: Tensor,
        src_off: int,
        dst_off: int,
        heads: int,
        scale: float,
    ) -> tuple[Tensor, ...]:
        b, _, no, ni, de = e.shape
        a3, n = w_pair.shape[0], qkv.shape[1]
        a = a3 // 3
        if a3 % 3 or a % heads or heads > 64:
            raise ValueError(f"attention_block: bad widths (3A = {a3}, heads = {heads})")
        if not (0 <= src_off <= n - ni and 0 <= dst_off <= n - no):
            raise ValueError(
                f"attention_block: node offsets {src_off}, {dst_off} outside {n} nodes"
            )
        _check("e", e, (b, 2, no, ni, de))
        _check("w_pair", w_pair, (3 * a, de))
        _check("qkv", qkv, (b, n, 3 * a))
        e, w, qkv = e.contiguous(), w_pair.contiguous(), qkv.contiguous()
        wt = w.t().contiguous()
        probs = e.new_empty(b, 2, no, ni, heads)  # each pair's p, for the backward
        outs = []
        for m in (no, ni):
            outs += [e.new_empty(b, m, heads), e.new_empty(b, m, heads)]
            outs += [e.new_empty(b, m, a), e.new_empty(b, m, heads, de)]
        rc = _lib().ngt_attn_fwd(
            torch.get_num_threads(), b, n, no, ni, src_off, dst_off, a, heads, de, scale,
            e.data_ptr(), wt.data_ptr(), qkv.data_ptr(), probs.data_ptr(),
            *[t.data_ptr() for t in outs],
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("attention_block: the kernel could not allocate its scratch memory")
        ctx.save_for_backward(e, w, wt, qkv, probs)
        ctx.meta = (src_off, dst_off, heads, scale)
        ctx.mark_non_differentiable(outs[0], outs[4])
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        e, w, wt, qkv, probs = ctx.saved_tensors
        src_off, dst_off, heads, scale = ctx.meta
        b, _, no, ni, de = e.shape
        g = [t.contiguous() for k, t in enumerate(grads) if k not in (0, 4)]
        d_e, d_qkv = torch.empty_like(e), torch.empty_like(qkv)
        d_w = e.new_empty(b, *w.shape)  # per graph, summed below
        rc = _lib().ngt_attn_bwd(
            torch.get_num_threads(), b, qkv.shape[1], no, ni, src_off, dst_off, w.shape[0] // 3,
            heads, de, scale, e.data_ptr(), w.data_ptr(), wt.data_ptr(), qkv.data_ptr(),
            probs.data_ptr(), *[t.data_ptr() for t in g], d_e.data_ptr(), d_w.data_ptr(),
            d_qkv.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("attention_block: the kernel could not allocate its scratch memory")
        return d_e, d_w.sum(0), d_qkv, None, None, None, None


def attention_block(
    e: Tensor, w_pair: Tensor, qkv: Tensor, src_off: int, dst_off: int, heads: int, scale: float
) -> tuple[Tensor, ...]:
    """`reference_attention_block` by the C kernel (float32 CPU tensors; differentiable in
    `e`, `w_pair` and `qkv`; the maxima are not differentiable, as the merged result does
    not depend on them). The pair terms `W e` are computed a receiver at a time inside the
    kernel and never stored: the backward recomputes them."""
    out: tuple[Tensor, ...] = _AttentionBlock.apply(
        e, w_pair, qkv, src_off, dst_off, heads, float(scale)
    )
    return out


class _EdgeGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pair: Tensor, t_o: Tensor, t_i: Tensor) -> Tensor:
        b, _, no, ni, h2 = pair.shape
        h = h2 // 2
        _check("pair", pair, (b, 2, no, ni, 2 * h))
        _check("t_o", t_o, (b, 2, no, h))
        _check("t_i", t_i, (b, 2, ni, h))
        pair, t_o, t_i = pair.contiguous(), t_o.contiguous(), t_i.contiguous()
        out = pair.new_empty(b, 2, no, ni, h)
        _lib().ngt_edge_fwd(
            torch.get_num_threads(), b, no, ni, h, pair.data_ptr(), t_o.data_ptr(),
            t_i.data_ptr(), out.data_ptr(),
        )  # fmt: skip
        ctx.save_for_backward(pair, t_o, t_i)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pair, t_o, t_i = ctx.saved_tensors
        b, _, no, ni, h2 = pair.shape
        dout = dout.contiguous()
        d_pair, dt_o, dt_i = torch.empty_like(pair), torch.empty_like(t_o), torch.empty_like(t_i)
        _lib().ngt_edge_bwd(
            torch.get_num_threads(), b, no, ni, h2 // 2, pair.data_ptr(), t_o.data_ptr(),
            t_i.data_ptr(), dout.data_ptr(), d_pair.data_ptr(), dt_o.data_ptr(), dt_i.data_ptr(),
        )  # fmt: skip
        return d_pair, dt_o, dt_i


def edge_gelu(pair: Tensor, t_o: Tensor, t_i: Tensor) -> Tensor:
    """`reference_edge_gelu` by the C kernel (float32 CPU tensors; the normal CDF by a
    Chebyshev fit of erfc with fractional error < 1.2e-7 and a polynomial exponential)."""
    out: Tensor = _EdgeGelu.apply(pair, t_o, t_i)
    return out


class _ResidualLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        z: Tensor,
        bias: Tensor,
        res: Tensor,
        weight: Tensor,
        ln_bias: Tensor,
        eps: float,
        p: float,
        seed: int,
    ) -> Tensor:
        c = z.shape[-1]
        _check("z", z, tuple(z.shape))
        for name, t, shape in (
            ("bias", bias, (c,)), ("res", res, tuple(z.shape)), ("weight", weight, (c,)),
            ("ln_bias", ln_bias, (c,)),
        ):  # fmt: skip
            _check(name, t, shape)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"residual_layer_norm: drop probability must be in [0, 1), got {p}")
        threshold, scale = _dropout_threshold(p)
        z, res = z.contiguous(), res.contiguous()
        rows = z.numel() // c
        y, stats = torch.empty_like(z), z.new_empty(rows, 2)
        _lib().res_ln_fwd(
            torch.get_num_threads(), rows, c, z.data_ptr(), bias.contiguous().data_ptr(),
            res.data_ptr(), seed & _U32, threshold, scale, weight.contiguous().data_ptr(),
            ln_bias.contiguous().data_ptr(), eps, y.data_ptr(), stats.data_ptr(),
        )  # fmt: skip
        ctx.save_for_backward(z, bias, res, weight, stats)
        ctx.meta = (seed & _U32, threshold, scale)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        z, bias, res, weight, stats = ctx.saved_tensors
        seed, threshold, scale = ctx.meta
        c = z.shape[-1]
        rows = z.numel() // c
        blocks = (rows + 255) // 256  # RES_LN_BLOCK
        dy = dy.contiguous()
        dz, dres, part = torch.empty_like(z), torch.empty_like(z), z.new_empty(blocks, 3, c)
        rc = _lib().res_ln_bwd(
            torch.get_num_threads(), rows, c, z.data_ptr(), bias.contiguous().data_ptr(),
            res.data_ptr(), seed, threshold, scale, weight.contiguous().data_ptr(),
            stats.data_ptr(), dy.data_ptr(), dz.data_ptr(), dres.data_ptr(), part.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("residual_layer_norm: the kernel could not allocate scratch memory")
        dweight, dln_bias, dbias = part.sum(0).unbind(0)
        return dz, dbias, dres, dweight, dln_bias, None, None, None


def _res_ln(
    z: Tensor, bias: Tensor, res: Tensor, weight: Tensor, ln_bias: Tensor, eps: float, p: float,
    seed: int,
) -> Tensor:  # fmt: skip
    out: Tensor = _ResidualLayerNorm.apply(z, bias, res, weight, ln_bias, eps, p, seed)
    return out


def residual_layer_norm(
    z: Tensor, bias: Tensor, res: Tensor, norm: torch.nn.LayerNorm, p: float = 0.0
) -> Tensor:
    """`norm(res + dropout(z + bias, p))` by the C kernel (float32 CPU tensors, `norm` over
    the last dimension with an affine weight and bias; `p` the drop probability in [0, 1),
    0 when not training). The mask comes from a 32-bit hash of each element's index and a seed
    drawn from torch's default generator (so `torch.manual_seed` reproduces it): a different
    mask than `torch.nn.Dropout` would draw, with the same distribution."""
    if not norm.elementwise_affine or norm.bias is None:
        raise ValueError("residual_layer_norm needs a LayerNorm with an affine weight and bias")
    seed = int(torch.randint(0, 2**32, (1,), dtype=torch.int64)) if p > 0 else 0
    return _res_ln(z, bias, res, norm.weight, norm.bias, norm.eps, p, seed)


def _offsets(widths: Sequence[int]) -> list[int]:
    out = [0]
    for w in widths:
        out.append(out[-1] + w)
    return out


def reference_layer_message_stats(
    edges: Sequence[Tensor], w_film: Tensor, bias: Tensor, a: Tensor, b: Tensor,
    widths: Sequence[int],
) -> Tensor:  # fmt: skip
    """The torch formula of `layer_message_stats`: per block the FiLM GEMM and
    `reference_message_stats` with the node terms of its targets and sources, each node's
    statistics then combined over its (one or two) blocks.

    Args:
        edges: per block `l` the edges `[B, 2, n_{l+1}, n_l, d_e]` (direction 0: source ->
            target); w_film: `[2d, d_e]`; bias: `[2d]`.
        a, b: `[B, N, d]` the receiver and sender terms of every node (a message
            $j \to r$ is $\beta + \\gamma \\odot (a_r + b_j)$).
        widths: the node layers' widths.

    Returns:
        `[B, N, 4, d]`: sum, sum of squares, min and max of each node's messages.
    """
    off = _offsets(widths)
    parts: list[list[Tensor]] = [[] for _ in widths]
    for k, e in enumerate(edges):
        src, dst = slice(off[k], off[k + 1]), slice(off[k + 1], off[k + 2])
        t_o = torch.stack([a[:, dst], b[:, dst]], dim=1)
        t_i = torch.stack([b[:, src], a[:, src]], dim=1)
        g = torch.nn.functional.linear(e, w_film)
        s_o, s_i = reference_message_stats(g, bias, t_o, t_i)
        parts[k + 1].append(s_o)
        parts[k].append(s_i)
    merged = []
    for node_parts in parts:
        st = node_parts[0]
        for other in node_parts[1:]:
            st = torch.cat(
                [st[:, :, :2] + other[:, :, :2], torch.minimum(st[:, :, 2:3], other[:, :, 2:3]),
                 torch.maximum(st[:, :, 3:], other[:, :, 3:])], dim=2,
            )  # fmt: skip
        merged.append(st)
    return torch.cat(merged, dim=1)


def reference_layer_edge_update(
    edges: Sequence[Tensor], w_edge: Tensor, w_out: Tensor, b_out: Tensor, u: Tensor, v: Tensor,
    widths: Sequence[int],
) -> list[Tensor]:  # fmt: skip
    """The torch formula of `layer_edge_update`: per block
    `e + Linear_out(silu(e @ w_edge.T + v[receiver] + u[sender]))` (`u`, `v` `[B, N, d_e]`;
    `v` includes edge_lin's bias)."""
    off = _offsets(widths)
    out = []
    for k, e in enumerate(edges):
        src, dst = slice(off[k], off[k + 1]), slice(off[k + 1], off[k + 2])
        t_o = torch.stack([v[:, dst], u[:, dst]], dim=1)
        t_i = torch.stack([u[:, src], v[:, src]], dim=1)
        act = reference_edge_activation(torch.nn.functional.linear(e, w_edge), t_o, t_i)
        out.append(e + torch.nn.functional.linear(act, w_out, b_out))
    return out


def _layout(widths: Sequence[int]) -> tuple[Any, Any, int]:
    """ctypes arrays of the widths and node offsets, and the node count."""
    off = _offsets(widths)
    n = len(widths)
    return (ctypes.c_int64 * n)(*widths), (ctypes.c_int64 * (n + 1))(*off), off[-1]


def _pointers(tensors: Sequence[Tensor]) -> Any:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _check_edges(edges: Sequence[Tensor], b: int, widths: Sequence[int], de: int) -> None:
    if len(edges) != len(widths) - 1:
        raise ValueError(f"{len(edges)} edge blocks for {len(widths)} node layers")
    for k, e in enumerate(edges):
        _check(f"edges[{k}]", e, (b, 2, widths[k + 1], widths[k], de))


class _LayerMessageStats(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, widths: tuple[int, ...], w_film: Tensor, bias: Tensor, a: Tensor, b: Tensor,
        *edges: Tensor,
    ) -> Tensor:  # fmt: skip
        bsz, n, d = a.shape
        de = w_film.shape[1]
        ws, off, total = _layout(widths)
        if total != n:
            raise ValueError(f"layer_message_stats: widths {widths} do not sum to {n} nodes")
        _check("w_film", w_film, (2 * d, de))
        _check("bias", bias, (2 * d,))
        _check("a", a, (bsz, n, d))
        _check("b", b, (bsz, n, d))
        _check_edges(edges, bsz, widths, de)
        es = [e.contiguous() for e in edges]
        w, bias, a, b = w_film.contiguous(), bias.contiguous(), a.contiguous(), b.contiguous()
        wt = w.t().contiguous()
        stats = a.new_empty(bsz, n, 4, d)
        args = torch.empty(bsz, n, 2, d, dtype=torch.int32)
        rc = _lib().ngnn_layer_msg_fwd(
            torch.get_num_threads(), bsz, len(es), ws, off, n, d, de, _pointers(es),
            wt.data_ptr(), bias.data_ptr(), a.data_ptr(), b.data_ptr(), stats.data_ptr(),
            args.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("layer_message_stats: the kernel could not allocate scratch memory")
        ctx.widths = widths
        ctx.save_for_backward(w, wt, bias, a, b, args, *es)
        return stats

    @staticmethod
    def backward(ctx: Any, d_stats: Tensor) -> tuple[Tensor | None, ...]:
        w, wt, bias, a, b, args, *es = ctx.saved_tensors
        bsz, n, d = a.shape
        de = w.shape[1]
        ws, off, _ = _layout(ctx.widths)
        d_stats = d_stats.contiguous()
        d_es = [torch.empty_like(e) for e in es]
        d_w, d_bias = a.new_empty(bsz, 2 * d, de), a.new_empty(bsz, 2 * d)  # per graph
        d_a, d_b = torch.empty_like(a), torch.empty_like(b)
        rc = _lib().ngnn_layer_msg_bwd(
            torch.get_num_threads(), bsz, len(es), ws, off, n, d, de, _pointers(es),
            w.data_ptr(), wt.data_ptr(), bias.data_ptr(), a.data_ptr(), b.data_ptr(),
            args.data_ptr(), d_stats.data_ptr(), _pointers(d_es), d_w.data_ptr(),
            d_bias.data_ptr(), d_a.data_ptr(), d_b.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("layer_message_stats: the kernel could not allocate scratch memory")
        return (None, d_w.sum(0), d_bias.sum(0), d_a, d_b, *d_es)


def layer_message_stats(
    edges: Sequence[Tensor], w_film: Tensor, bias: Tensor, a: Tensor, b: Tensor,
    widths: Sequence[int],
) -> Tensor:  # fmt: skip
    """`reference_layer_message_stats` by the C kernel, all blocks of a layer in one call:
    the FiLM GEMM inside (its output never stored; the backward recomputes it), each node's
    statistics over both of its blocks gathered directly (the min / max argument is the sending
    node; its gradient goes to the first one). Differentiable in everything but `widths`."""
    out: Tensor = _LayerMessageStats.apply(tuple(widths), w_film, bias, a, b, *edges)
    return out


class _LayerEdgeUpdate(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, widths: tuple[int, ...], w_edge: Tensor, w_out: Tensor, b_out: Tensor,
        u: Tensor, v: Tensor, *edges: Tensor,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        bsz, n, de = u.shape
        ws, off, total = _layout(widths)
        if total != n:
            raise ValueError(f"layer_edge_update: widths {widths} do not sum to {n} nodes")
        for name, t, shape in (
            ("w_edge", w_edge, (de, de)), ("w_out", w_out, (de, de)), ("b_out", b_out, (de,)),
            ("u", u, (bsz, n, de)), ("v", v, (bsz, n, de)),
        ):  # fmt: skip
            _check(name, t, shape)
        _check_edges(edges, bsz, widths, de)
        es = [e.contiguous() for e in edges]
        we, wo, b_out = w_edge.contiguous(), w_out.contiguous(), b_out.contiguous()
        u, v = u.contiguous(), v.contiguous()
        wte, wto = we.t().contiguous(), wo.t().contiguous()
        outs = [torch.empty_like(e) for e in es]
        rc = _lib().ngnn_layer_edge_fwd(
            torch.get_num_threads(), bsz, len(es), ws, off, n, de, _pointers(es), wte.data_ptr(),
            wto.data_ptr(), b_out.data_ptr(), u.data_ptr(), v.data_ptr(), _pointers(outs),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("layer_edge_update: the kernel could not allocate scratch memory")
        ctx.widths = widths
        ctx.save_for_backward(we, wte, wo, u, v, *es)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *d_outs: Tensor) -> tuple[Tensor | None, ...]:
        we, wte, wo, u, v, *es = ctx.saved_tensors
        bsz, n, de = u.shape
        ws, off, _ = _layout(ctx.widths)
        gys = [g.contiguous() for g in d_outs]
        d_es = [torch.empty_like(e) for e in es]
        d_we, d_wo, d_bo = u.new_empty(bsz, de, de), u.new_empty(bsz, de, de), u.new_empty(bsz, de)
        d_u, d_v = torch.empty_like(u), torch.empty_like(v)
        rc = _lib().ngnn_layer_edge_bwd(
            torch.get_num_threads(), bsz, len(es), ws, off, n, de, _pointers(es), we.data_ptr(),
            wte.data_ptr(), wo.data_ptr(), u.data_ptr(), v.data_ptr(), _pointers(gys),
            _pointers(d_es), d_we.data_ptr(), d_wo.data_ptr(), d_bo.data_ptr(), d_u.data_ptr(),
            d_v.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("layer_edge_update: the kernel could not allocate scratch memory")
        return (None, d_we.sum(0), d_wo.sum(0), d_bo.sum(0), d_u, d_v, *d_es)


def layer_edge_update(
    edges: Sequence[Tensor], w_edge: Tensor, w_out: Tensor, b_out: Tensor, u: Tensor, v: Tensor,
    widths: Sequence[int],
) -> list[Tensor]:  # fmt: skip
    """`reference_layer_edge_update` by the C kernel, all blocks of a layer in one call:
    both GEMMs, the activation, the bias and the residual in one pass over the edges (and one
    backward, which recomputes the GEMMs' outputs). Differentiable in everything but
    `widths`."""
    out: tuple[Tensor, ...] = _LayerEdgeUpdate.apply(
        tuple(widths), w_edge, w_out, b_out, u, v, *edges
    )
    return list(out)


def fourier_sincos(x: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """`(sin(2 pi x B), cos(2 pi x B))` for `x [..., K]` and `freqs` `B [K, F]` (float32
    CPU), by the C kernel: one range reduction for both, polynomials, libm for `|t| >= 1e5`;
    absolute error below `1e-7` against the float64 sine of the same float32 argument. Not
    differentiable (the caller does the backward)."""
    k, f = freqs.shape
    if x.shape[-1] != k:
        raise ValueError(f"fourier_sincos: x has {x.shape[-1]} channels, freqs {k}")
    _check("freqs", freqs, (k, f))
    _check("x", x, tuple(x.shape))
    x2, b = x.detach().reshape(-1, k).contiguous(), freqs.detach().contiguous()
    sin, cos = x2.new_empty(x2.shape[0], f), x2.new_empty(x2.shape[0], f)
    rc = _lib().fourier_sincos(
        torch.get_num_threads(), x2.shape[0], k, f, x2.data_ptr(), b.data_ptr(), sin.data_ptr(),
        cos.data_ptr(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("fourier_sincos: the kernel could not allocate scratch memory")
    shape = (*x.shape[:-1], f)
    return sin.view(shape), cos.view(shape)


def use_native(kernel: str, tensors: Sequence[Tensor]) -> bool:
    """Whether a layer with `kernel` setting (`"auto"`, `"native"`, `"torch"`) runs the
    C kernel on `tensors`: float32 CPU tensors without autocast; `"native"` raises where it
    cannot (`ValueError` for the inputs, `NativeKernelError` for the build), `"auto"`
    falls back to torch (with a one-time warning when the build fails)."""
    if kernel == "torch":
        return False
    bad = [t for t in tensors if t.dtype != torch.float32 or t.device.type != "cpu"]
    if bad or torch.is_autocast_enabled(tensors[0].device.type):
        if kernel == "native":
            t = bad[0] if bad else tensors[0]
            raise ValueError(
                f"kernel='native' runs on float32 CPU tensors without autocast, got {t.dtype} "
                f"on {t.device}"
            )
        return False
    if kernel == "native":
        load()  # raises NativeKernelError with the reason
        return True
    return available_or_warn()
