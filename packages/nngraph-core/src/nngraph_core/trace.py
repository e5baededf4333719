"""Reading any network by tracing its forward with `torch.fx`.

The forward of a module is traced symbolically (`torch.fx`), and the traced operations are read
one by one, in execution order, on a small example input (so every tensor's shape is known).
Every activation tensor is tracked by the *node group* its channel axis belongs to; each
operation either creates nodes and edges, or changes only where the channel axis sits:

| operation | nodes and edges |
|---|---|
| `Linear`, `Conv2d` (`groups=1`) | a group of neurons / channels; one dense block of weights / kernels |
| `BatchNorm1d/2d` | a group of normalised neurons (shift $\\beta$ as bias, running mean and variance in node slots 1-2); a one-to-one block carrying the scale $\\gamma$ |
| `LayerNorm`, `GroupNorm` | the same, plus one statistics node per normalization group with membership edges |
| `MultiheadAttention` | query, key and value groups (per-head edges from the input), one node per head, query-key pairing and head-membership edges, the output projection |
| `TransformerEncoderLayer`, `TransformerEncoder` | read as their attention, feed-forward, residual and normalization parts |
| `a + b` of two activations | identity edges (a residual connection) into the operand computed last, or into new nodes |
| `x + p`, `torch.cat([p, x])` with a parameter `p` | embedding nodes (one per position / token) with edges carrying `p` |
| activations, pooling, softmax | recorded on the nodes they act on |
| flatten, view, reshape, transpose, indexing, dropout | nothing (the channel axis is followed) |

Anything else raises [`UnsupportedOperationError`][nngraph_core.UnsupportedOperationError]
naming the operation and the module it runs in.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ArchitectureError, UnsupportedLayerError, UnsupportedOperationError
from .structure import EdgeBlock, EdgeType, NodeGroup, NodeRole, NodeType, ParamSlice

__all__ = ["fold_batchnorm"]

# ---------------------------------------------------------------------------------------------
# Operation tables
# ---------------------------------------------------------------------------------------------

_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "is_nested"}
_META_METHODS = {"size", "dim", "numel", "ndimension", "get_device", "is_floating_point"}

#: functions applied elementwise (or symmetrically over the channels) to their first argument
_ELEMENTWISE_FUNCS: set[Callable[..., Any]] = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.sin,
    torch.cos,
    torch.exp,
    torch.abs,
    torch.neg,
    operator.neg,
    torch.square,
    torch.erf,
    torch.clamp,
    torch.clip,
    torch.softmax,
    torch.log_softmax,
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.elu,
    F.selu,
    F.celu,
    F.leaky_relu,
    F.softplus,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
    F.mish,
    F.sigmoid,
    F.tanh,
    F.logsigmoid,
    F.softsign,
    F.tanhshrink,
    F.softmax,
    F.log_softmax,
    F.normalize,
}
_ELEMENTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "sin",
    "cos",
    "exp",
    "abs",
    "neg",
    "clamp",
    "clip",
    "square",
    "erf",
    "softmax",
    "log_softmax",
}
#: operations that change nothing about the values (at evaluation time)
_NOOP_FUNCS: set[Callable[..., Any]] = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.alpha_dropout,
    torch.clone,
}
_NOOP_METHODS = {"contiguous", "clone", "detach", "float", "double", "to", "type"}
#: operations that move or merge axes (the channel axis is followed through them)
_LAYOUT_FUNCS: set[Callable[..., Any]] = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.movedim,
    torch.swapaxes,
    operator.getitem,
}
_LAYOUT_METHODS = {
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "transpose",
    "permute",
    "movedim",
    "swapaxes",
    "expand",
    "expand_as",
    "repeat",
}
_REDUCE_FUNCS: set[Callable[..., Any]] = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_SPATIAL_FUNCS: set[Callable[..., Any]] = {
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.interpolate,
}
_SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
_NOOP_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
)
_LAYOUT_MODULES: tuple[type[nn.Module], ...] = (nn.Flatten,)
# Parameter-free modules that reorder or mix neurons: they break the node identity.
_MIXING_MODULES: tuple[type[nn.Module], ...] = (
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Unflatten,
    nn.Fold,
    nn.Unfold,
)
_BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
#: modules read as a whole (never traced into)
_HANDLED: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    *_BATCHNORMS,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerEncoder,
)
_ADDS: set[Any] = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_SCALAR_FUNCS: dict[Any, str] = {
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
    operator.itruediv: "div",
    torch.div: "div",
    operator.sub: "sub",
    operator.isub: "sub",
    torch.sub: "sub",
    operator.pow: "pow",
    torch.pow: "pow",
}
_SCALAR_METHODS = {"mul": "mul", "div": "div", "sub": "sub", "pow": "pow", "mul_": "mul"}


def _has(m: nn.Module, name: str) -> bool:
    """Whether ``m`` has the (optional) parameter ``name``."""
    return getattr(m, name, None) is not None


def _has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters()) or any(True for _ in m.buffers())


class _Tracer(fx.Tracer):
    """Keeps the layers read as a whole, and every parameter-free leaf module, opaque."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _HANDLED):
            return True
        if not _has_state(m) and not list(m.children()):
            return True
        return bool(super().is_leaf_module(m, module_qualified_name))


# ---------------------------------------------------------------------------------------------
# Recorded parameter-free operations (kept as modules so a layer chain can be run from them)
# ---------------------------------------------------------------------------------------------


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return repr(v) if isinstance(v, str) else str(v)


class TracedOp(nn.Module):
    """A traced function or tensor method applied to one tensor: `fn(x, *args, **kwargs)`.

    Recorded on the nodes it acts on, so a layer chain read by tracing can also be run from its
    spec. Named like the function: `gelu`, `mul(30.0)`, `mean(dim=(2, 3))`.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | str,
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
        *,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        self.fn = fn
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.reverse = reverse
        self.nngraph_op_kind = fn if isinstance(fn, str) else getattr(fn, "__name__", "op")

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.fn, str):
            out = getattr(x, self.fn)(*self.args, **self.kwargs)
        elif self.reverse:
            out = self.fn(*self.args, x, **self.kwargs)
        else:
            out = self.fn(x, *self.args, **self.kwargs)
        assert isinstance(out, Tensor)
        return out

    def nngraph_op_name(self) -> str:
        name = str(self.nngraph_op_kind).lstrip("_").rstrip("_")
        parts = [_fmt(a) for a in self.args]
        parts += [f"{k}={_fmt(v)}" for k, v in self.kwargs.items()]
        return f"{name}({', '.join(parts)})" if parts else name


# ---------------------------------------------------------------------------------------------
# Abstract values
# ---------------------------------------------------------------------------------------------


@dataclass
class _Val:
    """An activation whose axis ``axis`` is indexed by the nodes of group ``group``.

    ``axis is None``: the network input, whose channel axis is not known yet (the first layer
    that reads it decides). ``kernel``: the channels were flattened together with the spatial
    axes after them (only a ``Linear`` may read such a value).
    """

    group: int
    axis: int | None
    shape: tuple[int, ...]
    kernel: tuple[int, int] | None = None


@dataclass
class _ParamVal:
    """A parameter or buffer (``key``); ``index``: its entries' flat positions, in the shape of
    the current value (after ``expand``, ``view``, indexing ...)."""

    key: str
    index: Tensor


@dataclass
class _TupleVal:
    items: tuple[object, ...]


@dataclass
class _AttnWeights:
    where: str


@dataclass
class _Group:
    name: str
    type: NodeType
    size: int
    bias: ParamSlice | None = None
    stats: tuple[ParamSlice, ParamSlice] | None = None
    ops: list[nn.Module] = field(default_factory=list)
    config: str = ""
    layer: nn.Module | None = None
    layer_path: str = ""
    uses: int = 0


@dataclass
class TraceResult:
    """What the tracer read: the structure, the state layout and the foldable BatchNorms."""

    groups: tuple[NodeGroup, ...]
    blocks: tuple[EdgeBlock, ...]
    layers: tuple[tuple[nn.Module | None, str], ...]
    folds: tuple[tuple[str, str], ...]
    input_shape: tuple[int, ...]


class _Reader:
    def __init__(self, module: nn.Module, input_shape: Sequence[int] | None) -> None:
        self.root = module
        self.sd = module.state_dict()
        self.module_paths: dict[int, str] = {id(m): n for n, m in module.named_modules()}
        self.groups: list[_Group] = []
        self.blocks: list[EdgeBlock] = []
        #: per key: how often it was used whole, and the positions of partial uses
        self.consumed: dict[str, list[Tensor | None]] = {}
        self.used_layers: dict[int, str] = {}
        self.folds: list[tuple[str, str]] = []
        self.input_group: int | None = None
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.where = type(module).__name__

    # -- errors -----------------------------------------------------------------------------
    def unsupported(self, op: str, why: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(op, self.where, why)

    # -- groups and blocks --------------------------------------------------------------------
    def new_group(self, name: str, type_: NodeType, size: int, **kw: Any) -> int:
        self.groups.append(_Group(name, type_, size, **kw))
        return len(self.groups) - 1

    def block(self, src: int, dst: int, type_: EdgeType, pattern: str, **kw: Any) -> None:
        self.blocks.append(EdgeBlock(src, dst, type_, pattern, **kw))  # type: ignore[arg-type]

    def consume(self, key: str, positions: Tensor | None) -> None:
        """Record a use of entries ``positions`` of ``key`` (``None``: all of them)."""
        if key not in self.sd:
            raise self.unsupported(key, "is not in the state dict (a non-persistent buffer?)")
        self.consumed.setdefault(key, []).append(None if positions is None else positions.flatten())

    def consume_all(self, key: str) -> ParamSlice:
        self.consume(key, None)
        return (key, 0)

    def key_of(self, module: nn.Module, attr: str) -> str:
        path = self.module_paths[id(module)]
        return f"{path}.{attr}" if path else attr

    def use_layer(self, module: nn.Module) -> str:
        path = self.module_paths.get(id(module))
        if path is None:
            raise ArchitectureError(
                f"{type(module).__name__} is not a submodule of the network, so its keys are unknown"
            )
        if id(module) in self.used_layers:
            raise ArchitectureError(
                f"layer {path or type(module).__name__!r} is used twice; shared weights are not "
                "supported"
            )
        self.used_layers[id(module)] = path
        return path

    def exclusive(self, v: _Val) -> bool:
        """Whether ``v`` is the only use of its group's current value (so the group's nodes may
        take on what is done to it)."""
        return self.groups[v.group].uses == 1

    def resolve(self, v: _Val, axis: int) -> _Val:
        """Fix the channel axis of the network input at ``axis``."""
        if v.axis is not None:
            return v
        axis = axis % len(v.shape)
        g = self.groups[v.group]
        size = v.shape[axis]
        if g.size and g.size != size:
            raise self.unsupported(
                "input", f"is read with {size} channels here and {g.size} elsewhere"
            )
        g.size = size
        return _Val(v.group, axis, v.shape)

    # -- parameter-free operations --------------------------------------------------------------
    def record(self, v: _Val, op: nn.Module, out_shape: tuple[int, ...], axis: int | None) -> _Val:
        """Apply an elementwise / spatial operation to the nodes of ``v``."""
        g = self.groups[v.group]
        if v.axis is not None and out_shape[axis if axis is not None else 0] != g.size:
            raise self.unsupported(op_label(op), "changes the number of channels")
        if self.exclusive(v):  # the nodes take the operation on
            g.ops.append(op)
            return _Val(v.group, axis, out_shape, v.kernel)
        if v.axis is None:
            raise self.unsupported(
                op_label(op), "acts on an input that is also used unchanged elsewhere"
            )
        # the value is also used unchanged: the result gets nodes of its own
        alias = self.new_group(
            f"{self.where}:{op_label(op)}", NodeType.ACTIVATION, g.size, ops=[op]
        )
        self.block(v.group, alias, EdgeType.IDENTITY, "diag", const=1.0)
        return _Val(alias, axis, out_shape, v.kernel)

    def layout(self, v: _Val, fn: Callable[[Tensor], Tensor], what: str) -> _Val:
        """Follow the channel axis of ``v`` through a pure layout operation ``fn``."""
        if v.axis is None:
            return _Val(v.group, None, tuple(fn(torch.empty(v.shape, device="meta")).shape))
        shape = v.shape
        numel = math.prod(shape)
        a = v.axis
        flat = torch.arange(numel).view(shape)
        out = fn(flat)
        c = shape[a]
        stride_a = math.prod(shape[a + 1 :])
        chan = torch.div(out, stride_a, rounding_mode="floor") % c
        outer = math.prod(shape[:a])
        found: list[tuple[int, int]] = []
        for b in range(out.dim()):
            n = out.shape[b]
            if n % c:
                continue
            k = n // c
            line = torch.arange(c).repeat_interleave(k)
            view = [1] * out.dim()
            view[b] = n
            if torch.equal(chan, line.view(view).expand(out.shape)):
                found.append((b, k))
        if v.kernel is not None:
            found = [(b, k) for b, k in found if k == 1 and out.shape == torch.Size(shape)]
        if not found:
            raise self.unsupported(what, f"mixes or selects the channels of {self.gname(v)}")
        if len(found) > 1:
            primary = [(b, k) for b, k in found if math.prod(out.shape[:b]) == outer]
            found = primary or found
        b, k = found[0]
        kernel = v.kernel
        if k > 1:
            rest = shape[a + 1 :]
            merged = 2 if len(rest) >= 2 and rest[0] * rest[1] == k else 1
            if merged == 2:
                kernel = (rest[0], rest[1])
            elif len(rest) >= 1 and rest[0] == k:
                kernel = (1, rest[0])
            else:
                raise self.unsupported(what, f"merges the channels of {self.gname(v)} oddly")
            inner = math.prod(shape[a + 1 + merged :])
            expect = (
                torch.arange(c).view(c, 1) * stride_a + torch.arange(k).view(1, k) * inner
            ).flatten()
            index: list[int | slice] = [0] * out.dim()
            index[b] = slice(None)
            line_vals = out[tuple(index)]
            if not torch.equal(line_vals - line_vals[0], expect):
                raise self.unsupported(what, f"merges the channels of {self.gname(v)} oddly")
        return _Val(v.group, b, tuple(out.shape), kernel)

    def gname(self, v: _Val) -> str:
        return repr(self.groups[v.group].name)

    # -- layers ---------------------------------------------------------------------------------
    def linear(self, v: _Val, m: nn.Linear, path: str | None = None) -> _Val:
        path = self.use_layer(m) if path is None else path
        v = self.resolve(v, -1)
        if v.axis != len(v.shape) - 1:
            raise self.unsupported(path, "reads an axis that is not the channel axis")
        g = self.groups[v.group]
        kernel = v.kernel or (1, 1)
        if g.size * kernel[0] * kernel[1] != m.in_features:
            raise ArchitectureError(
                f"{path!r} expects {m.in_features} features but receives {g.size}"
                + (f"x{kernel[0]}x{kernel[1]}" if v.kernel else "")
            )
        wkey = self.key_of(m, "weight")
        bias = self.consume_all(self.key_of(m, "bias")) if _has(m, "bias") else None
        out = self.new_group(
            path, NodeType.LINEAR, m.out_features, bias=bias, layer=m, layer_path=path
        )
        self.block(
            v.group,
            out,
            EdgeType.LINEAR,
            "dense",
            weight=self.consume_all(wkey),
            kernel=kernel,
        )
        return _Val(out, v.axis, (*v.shape[:-1], m.out_features))

    def conv(self, v: _Val, m: nn.Conv2d, path: str, out_shape: tuple[int, ...]) -> _Val:
        if m.groups != 1:
            raise UnsupportedOperationError(
                path, path, f"grouped convolution (groups={m.groups}) is not supported"
            )
        v = self.resolve(v, 1)
        if v.axis != 1 or len(v.shape) != 4 or v.kernel is not None:
            raise self.unsupported(path, "does not read the channel axis of a [B, C, H, W] map")
        if self.groups[v.group].size != m.in_channels:
            raise ArchitectureError(
                f"{path!r} expects {m.in_channels} channels but receives "
                f"{self.groups[v.group].size}"
            )
        bias = self.consume_all(self.key_of(m, "bias")) if _has(m, "bias") else None
        config = m.extra_repr()
        out = self.new_group(
            path,
            NodeType.CONV,
            m.out_channels,
            bias=bias,
            config=config,
            layer=m,
            layer_path=path,
        )
        kh, kw = m.kernel_size
        self.block(
            v.group,
            out,
            EdgeType.CONV,
            "dense",
            weight=self.consume_all(self.key_of(m, "weight")),
            kernel=(kh, kw),
            config=config,
        )
        return _Val(out, 1, out_shape)

    def batchnorm(self, v: _Val, m: nn.Module, path: str) -> _Val:
        assert isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
        v = self.resolve(v, 1)
        if v.axis != 1 or v.kernel is not None:
            raise self.unsupported(path, "does not normalise the channel axis")
        g = self.groups[v.group]
        if g.size != m.num_features:
            raise ArchitectureError(
                f"{path!r} expects {m.num_features} channels but receives {g.size}"
            )
        foldable = (
            g.type in (NodeType.LINEAR, NodeType.CONV)
            and self.exclusive(v)
            and not g.ops
            and sum(1 for b in self.blocks if b.dst == v.group) == 1
            and m.track_running_stats
        )
        if foldable:
            self.folds.append((g.layer_path, path))
        bias = self.consume_all(self.key_of(m, "bias")) if m.affine else None
        stats = None
        if m.track_running_stats and m.running_mean is not None:
            stats = (
                self.consume_all(self.key_of(m, "running_mean")),
                self.consume_all(self.key_of(m, "running_var")),
            )
        out = self.new_group(
            path, NodeType.NORM, g.size, bias=bias, stats=stats, config=m.extra_repr()
        )
        if m.affine:
            self.block(
                v.group,
                out,
                EdgeType.NORM,
                "diag",
                weight=self.consume_all(self.key_of(m, "weight")),
            )
        else:
            self.block(v.group, out, EdgeType.NORM, "diag", const=1.0)
        return _Val(out, v.axis, v.shape)

    def group_norm(self, v: _Val, m: nn.Module, path: str, n_groups: int) -> _Val:
        """LayerNorm (one group over the last axis) and GroupNorm (``n_groups`` over axis 1)."""
        g = self.groups[v.group]
        out_stats = self.new_group(
            f"{path}.groups", NodeType.NORM_GROUP, n_groups, config=m.extra_repr()
        )
        weight = getattr(m, "weight", None)
        bias_p = getattr(m, "bias", None)
        bias = self.consume_all(self.key_of(m, "bias")) if bias_p is not None else None
        out = self.new_group(path, NodeType.NORM, g.size, bias=bias, config=m.extra_repr())
        self.block(v.group, out_stats, EdgeType.NORM_GROUP, "member")
        self.block(out_stats, out, EdgeType.NORM_GROUP, "member")
        if weight is not None:
            self.block(
                v.group,
                out,
                EdgeType.NORM,
                "diag",
                weight=self.consume_all(self.key_of(m, "weight")),
            )
        else:
            self.block(v.group, out, EdgeType.NORM, "diag", const=1.0)
        return _Val(out, v.axis, v.shape)

    def layer_norm(self, v: _Val, m: nn.LayerNorm, path: str) -> _Val:
        v = self.resolve(v, -1)
        if len(m.normalized_shape) != 1 or v.axis != len(v.shape) - 1 or v.kernel is not None:
            raise self.unsupported(path, "normalises more than the channel axis")
        if m.normalized_shape[0] != self.groups[v.group].size:
            raise ArchitectureError(
                f"{path!r} expects {m.normalized_shape[0]} channels but receives "
                f"{self.groups[v.group].size}"
            )
        return self.group_norm(v, m, path, 1)

    def gn(self, v: _Val, m: nn.GroupNorm, path: str) -> _Val:
        v = self.resolve(v, 1)
        if v.axis != 1 or v.kernel is not None:
            raise self.unsupported(path, "does not normalise the channel axis")
        if m.num_channels != self.groups[v.group].size:
            raise ArchitectureError(
                f"{path!r} expects {m.num_channels} channels but receives "
                f"{self.groups[v.group].size}"
            )
        return self.group_norm(v, m, path, m.num_groups)

    def attention(self, v: _Val, m: nn.MultiheadAttention, path: str) -> _Val:
        v = self.resolve(v, -1)
        if v.axis != len(v.shape) - 1 or v.kernel is not None:
            raise self.unsupported(path, "does not attend over the channel axis")
        if not m._qkv_same_embed_dim:
            raise self.unsupported(path, "has separate key / value sizes (kdim, vdim)")
        if m.bias_k is not None or m.add_zero_attn:
            raise self.unsupported(path, "has add_bias_kv / add_zero_attn")
        e, h = m.embed_dim, m.num_heads
        base = path or "attention"
        if self.groups[v.group].size != e:
            raise ArchitectureError(
                f"{path!r} expects {e} channels but receives {self.groups[v.group].size}"
            )
        wkey = self.key_of(m, "in_proj_weight")
        self.consume_all(wkey)
        bkey = self.key_of(m, "in_proj_bias") if _has(m, "in_proj_bias") else None
        if bkey is not None:
            self.consume_all(bkey)
        parts = []
        for i, (name, nt, et) in enumerate(
            [
                ("q", NodeType.QUERY, EdgeType.QUERY),
                ("k", NodeType.KEY, EdgeType.KEY),
                ("v", NodeType.VALUE, EdgeType.VALUE),
            ]
        ):
            bias = (bkey, i * e) if bkey is not None else None
            grp = self.new_group(f"{base}.{name}", nt, e, bias=bias, config=f"heads={h}")
            self.block(v.group, grp, et, "dense", weight=(wkey, i * e * e))
            parts.append(grp)
        q, k, val = parts
        heads = self.new_group(f"{base}.heads", NodeType.HEAD, h, config=f"heads={h}")
        self.block(q, k, EdgeType.QK, "diag")
        self.block(q, heads, EdgeType.HEAD, "member")
        self.block(k, heads, EdgeType.HEAD, "member")
        self.block(heads, val, EdgeType.HEAD, "member")
        op = m.out_proj
        opath = self.module_paths[id(op)]
        self.used_layers[id(op)] = opath
        obias = self.consume_all(self.key_of(op, "bias")) if _has(op, "bias") else None
        out = self.new_group(
            f"{base}.out_proj", NodeType.LINEAR, e, bias=obias, layer=op, layer_path=opath
        )
        self.block(
            val, out, EdgeType.LINEAR, "dense", weight=self.consume_all(self.key_of(op, "weight"))
        )
        return _Val(out, v.axis, v.shape)

    def hold(self, v: _Val, uses: int) -> _Val:
        """Mark ``v`` (a fresh value inside a block read as a whole) as used ``uses`` times."""
        self.groups[v.group].uses = uses
        return v

    def encoder_layer(self, v: _Val, m: nn.TransformerEncoderLayer, path: str) -> _Val:
        self.use_layer(m)
        v = self.resolve(v, -1)
        act = m.activation
        act_op: nn.Module = act if isinstance(act, nn.Module) else TracedOp(act)
        used = [m.self_attn, m.linear1, m.linear2, m.norm1, m.norm2]
        for sub in used:
            self.used_layers[id(sub)] = self.module_paths[id(sub)]

        def sa(x: _Val) -> _Val:
            return self.hold(self.attention(x, m.self_attn, f"{path}.self_attn"), 1)

        def ff(x: _Val) -> _Val:
            h = self.hold(self.linear(x, m.linear1, f"{path}.linear1"), 1)
            h = self.hold(self.record(h, act_op, h.shape, h.axis), 1)
            return self.hold(self.linear(h, m.linear2, f"{path}.linear2"), 1)

        def ln(x: _Val, norm: nn.LayerNorm, name: str, uses: int) -> _Val:
            return self.hold(self.layer_norm(x, norm, f"{path}.{name}"), uses)

        # the input is read twice inside the block (attention or norm, and the residual add)
        self.groups[v.group].uses += 1
        if m.norm_first:
            x = self.hold(self.add(v, sa(ln(v, m.norm1, "norm1", 1))), 2)
            out = self.add(x, ff(ln(x, m.norm2, "norm2", 1)))
        else:
            x = ln(self.hold(self.add(v, sa(v)), 1), m.norm1, "norm1", 2)
            out = self.add(x, ff(x))
            out = self.layer_norm(self.hold(out, 1), m.norm2, f"{path}.norm2")
        self.groups[v.group].uses -= 1
        return out

    # -- adds and concatenations ----------------------------------------------------------------
    def _merge_target(self, sources: list[int], candidates: list[_Val]) -> int | None:
        for c in sorted(candidates, key=lambda x: -x.group):
            g = self.groups[c.group]
            others = [s for s in sources if s != c.group]
            if (
                self.exclusive(c)
                and not g.ops
                and c.axis is not None
                and g.type not in (NodeType.INPUT, NodeType.EMBEDDING)
                and not any(b.dst == c.group and b.src in others for b in self.blocks)
            ):
                return c.group
        return None

    def join(
        self,
        vals: list[_Val],
        embeds: list[tuple[int, str, Tensor]],
        kind: EdgeType,
        what: str,
    ) -> _Val:
        """Sum / concatenate activations ``vals`` and embedding tables ``embeds``
        (``(embedding group, key, [T, C] positions)``) along the channels."""
        groups = [v.group for v in vals]
        if len(set(groups)) != len(groups):
            raise self.unsupported(what, "combines a value with itself")
        if any(v.kernel is not None for v in vals):
            raise self.unsupported(what, "combines flattened feature maps")
        sources = groups + [e for e, _, _ in embeds]
        target = self._merge_target(sources, vals)
        ref = vals[0]
        if target is None:
            size = self.groups[ref.group].size
            target = self.new_group(f"{self.where}:{what}", NodeType.SUM, size)
        for v in vals:
            if v.group != target:
                self.block(v.group, target, kind, "diag", const=1.0)
        for emb, key, pos in embeds:
            t, c = pos.shape
            base = int(pos.min())
            if torch.equal(pos, base + torch.arange(t * c).view(t, c)):
                layout = "in_out"
            elif torch.equal(pos, base + torch.arange(t * c).view(c, t).T):
                layout = "out_in"
            else:
                raise self.unsupported(what, f"reads parameter {key!r} in an unsupported order")
            self.consume(key, pos)
            self.block(emb, target, EdgeType.EMBEDDING, "dense", weight=(key, base), layout=layout)
        shape = max((v.shape for v in vals), key=len)
        axis = next(v.axis for v in vals if v.shape == shape)
        return _Val(target, axis, shape)

    def embedding(
        self, p: _ParamVal, like: _Val, shape: tuple[int, ...], what: str
    ) -> tuple[int, str, Tensor]:
        """The embedding group of parameter ``p`` broadcast to ``shape`` along ``like``'s channels."""
        if like.axis is None:
            raise self.unsupported(
                what, "adds a parameter to an input whose channel axis is unknown"
            )
        c = self.groups[like.group].size
        try:
            idx = torch.broadcast_to(p.index, shape)
        except RuntimeError as exc:
            raise self.unsupported(what, f"cannot align parameter {p.key!r}: {exc}") from None
        rows = idx.movedim(like.axis, -1).reshape(-1, c)
        uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
        first = torch.full((uniq.shape[0],), rows.shape[0], dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0]), reduce="amin")
        table = uniq[torch.argsort(first)]
        if torch.unique(table).numel() != table.numel():
            raise self.unsupported(
                what, f"uses entries of parameter {p.key!r} for several channels"
            )
        grp = self.new_group(p.key, NodeType.EMBEDDING, table.shape[0])
        return grp, p.key, table

    def add(self, a: _Val, b: _Val) -> _Val:
        if a.shape != b.shape or a.axis != b.axis:
            raise self.unsupported("add", "adds activations of different shapes")
        return self.join([a, b], [], EdgeType.RESIDUAL, "add")

    # -- folding -------------------------------------------------------------------------------
    def result(self, out: object) -> TraceResult:
        if isinstance(out, _TupleVal) and len(out.items) == 1:
            out = out.items[0]
        if not isinstance(out, _Val):
            raise self.unsupported("output", "is not one activation tensor")
        if out.axis is None or out.kernel is not None:
            raise self.unsupported("output", "has no channel axis")
        if self.groups[out.group].type in (NodeType.INPUT, NodeType.EMBEDDING):
            raise self.unsupported("output", "is the input itself")
        self._check_coverage()
        groups = []
        for i, g in enumerate(self.groups):
            role = NodeRole.HIDDEN
            if g.type in (NodeType.INPUT, NodeType.EMBEDDING):
                role = NodeRole.INPUT
            elif i == out.group:
                role = NodeRole.OUTPUT
            if g.size == 0:
                raise self.unsupported("input", "is never read by a layer")
            groups.append(
                NodeGroup(g.name, g.type, g.size, role, g.bias, g.stats, tuple(g.ops), g.config)
            )
        assert self.input_shape is not None
        return TraceResult(
            tuple(groups),
            tuple(self.blocks),
            tuple((g.layer, g.layer_path) for g in self.groups),
            tuple(self.folds),
            self.input_shape,
        )

    def _check_coverage(self) -> None:
        unused, twice = [], []
        for key, t in self.sd.items():
            if not t.is_floating_point():
                if t.numel() != 1:
                    raise UnsupportedLayerError(
                        f"state-dict entry {key!r} ({t.dtype}, shape {tuple(t.shape)}) is neither "
                        "a floating parameter nor a scalar counter"
                    )
                continue
            parts = self.consumed.get(key)
            if not parts:
                unused.append(key)
                continue
            if parts == [None]:
                continue
            full = torch.arange(t.numel())
            counts = torch.bincount(
                torch.cat([full if p is None else p for p in parts]), minlength=t.numel()
            )
            if bool((counts == 0).any()):
                unused.append(key)
            if bool((counts > 1).any()):
                twice.append(key)
        if twice:
            raise ArchitectureError(
                f"parameters used more than once (shared weights are not supported): {twice}"
            )
        if unused:
            raise UnsupportedLayerError(
                f"state-dict entries the forward does not use (or uses through unsupported "
                f"operations): {unused}"
            )


def op_label(op: nn.Module) -> str:
    from .structure import op_name

    return op_name(op)


# ---------------------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------------------


def _where(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return str(node.target) or type(root).__name__
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return str(path)
    return f"{type(root).__name__}.forward"


def _op_label(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_function":
        mod = getattr(t, "__module__", "") or ""
        name = getattr(t, "__name__", str(t))
        if mod.startswith("torch.nn.functional"):
            return f"F.{name}"
        if mod.startswith("_operator") or mod == "operator":
            return f"operator.{name}"
        return f"torch.{name}" if "torch" in mod or mod == "" else f"{mod}.{name}"
    return str(t)


def _data_users(node: fx.Node) -> int:
    n = 0
    for u in node.users:
        if u.op == "call_function" and u.target is getattr and u.args[1] in _META_ATTRS:
            continue
        if u.op == "call_method" and u.target in _META_METHODS:
            continue
        n += 1
    return n


def _graph_of(module: nn.Module) -> fx.Graph:
    if isinstance(module, _HANDLED) or (
        _has_state(module)
        and not list(module.children())
        and type(module).__module__.startswith("torch.nn")
    ):
        graph = fx.Graph()
        x = graph.placeholder("x")
        if isinstance(module, nn.MultiheadAttention):
            y = graph.call_module("", (x, x, x), {"need_weights": False})
            graph.output(graph.call_function(operator.getitem, (y, 0)))
        else:
            graph.output(graph.call_module("", (x,)))
        return graph
    try:
        return _Tracer().trace(module)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        raise UnsupportedOperationError(
            "forward",
            type(module).__name__,
            f"cannot be traced with torch.fx ({type(exc).__name__}: {exc}); give the module an "
            "nngraph_layers() method listing its layers in order, or make its forward traceable",
        ) from exc


def _example_shape(module: nn.Module, graph: fx.Graph) -> tuple[int, ...]:
    """A plausible input shape, read off the first layer (images are taken 32x32)."""
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        m = module.get_submodule(str(node.target))
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, nn.Conv2d):
            return (m.in_channels, 32, 32)
        if isinstance(m, nn.BatchNorm2d):
            return (m.num_features, 32, 32)
        if isinstance(m, nn.BatchNorm1d):
            return (m.num_features,)
        if isinstance(m, nn.GroupNorm):
            return (m.num_channels, 32, 32)
        if isinstance(m, nn.LayerNorm):
            return (4, *m.normalized_shape)
        if isinstance(m, nn.MultiheadAttention):
            return (4, m.embed_dim)
        if isinstance(m, nn.TransformerEncoderLayer):
            return (4, m.linear1.in_features)
        if isinstance(m, nn.TransformerEncoder):
            return (4, m.layers[0].linear1.in_features)
        if _has_state(m):
            break
    raise ArchitectureError(
        f"cannot tell the input shape of {type(module).__name__}; pass input_shape=(...) "
        "(one input without the batch dimension)"
    )


def trace_module(module: nn.Module, input_shape: Sequence[int] | None = None) -> TraceResult:
    """Read ``module``'s structure by tracing its forward (see the module docstring)."""
    seen: dict[int, str] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            raise ArchitectureError(
                f"{seen[id(p)]!r} and {n!r} are the same tensor (a layer used twice); "
                "shared weights are not supported"
            )
        seen[id(p)] = n
    graph = _graph_of(module)
    for node in graph.nodes:
        if node.op == "call_module":
            target = str(node.target)
            m = module if target == "" else module.get_submodule(target)
            if _has_state(m) and not isinstance(m, _HANDLED):
                label = f"{type(m).__name__} {target!r}" if target else type(m).__name__
                raise UnsupportedOperationError(
                    label,
                    _where(node, module),
                    "has parameters or buffers and is not a supported layer",
                )
    reader = _Reader(module, input_shape)
    if reader.input_shape is None:
        reader.input_shape = _example_shape(module, graph)
    param = next(iter(module.parameters()), None)
    if param is None:
        raise ArchitectureError(f"{type(module).__name__} has no parameters")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = _Interpreter(reader, graph, param).run()
    except RuntimeError as exc:
        raise ArchitectureError(
            f"running {type(module).__name__} on an example input of shape "
            f"{(2, *reader.input_shape)} failed at {reader.where!r}: {exc}; pass "
            "input_shape=(...) (one input without the batch dimension)"
        ) from exc
    finally:
        module.train(was_training)
    return reader.result(out)


class _Interpreter:
    def __init__(self, reader: _Reader, graph: fx.Graph, param: Tensor) -> None:
        self.r = reader
        self.graph = graph
        self.param = param
        self.concrete: dict[fx.Node, Any] = {}
        self.vals: dict[fx.Node, object] = {}

    def run(self) -> object:
        r = self.r
        assert r.input_shape is not None
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((2, *r.input_shape), generator=gen, dtype=torch.float64)
        x = x.to(dtype=self.param.dtype, device=self.param.device)
        seen_input = False
        for node in self.graph.nodes:
            r.where = _where(node, r.root)
            if node.op == "placeholder":
                if not seen_input:
                    seen_input = True
                    r.input_group = r.new_group("input", NodeType.INPUT, 0)
                    r.groups[r.input_group].uses = _data_users(node)
                    self.concrete[node] = x
                    self.vals[node] = _Val(r.input_group, None, tuple(x.shape))
                elif node.args:
                    self.concrete[node] = node.args[0]
                    self.vals[node] = None
                else:
                    raise r.unsupported(str(node.target), "is a second input of forward")
                continue
            if node.op == "output":
                return self.vals.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            cargs = fx.node.map_arg(node.args, lambda n: self.concrete[n])
            ckwargs = fx.node.map_arg(node.kwargs, lambda n: self.concrete[n])
            if node.op == "get_attr":
                value = _fetch(r.root, str(node.target))
                self.concrete[node] = value
                key = str(node.target)
                if isinstance(value, Tensor) and key in r.sd and value.is_floating_point():
                    self.vals[node] = _ParamVal(key, torch.arange(value.numel()).view(value.shape))
                else:
                    self.vals[node] = None
                continue
            if node.op == "call_module":
                target = str(node.target)
                mod = r.root if target == "" else r.root.get_submodule(target)
                result = mod(*cargs, **ckwargs)
            elif node.op == "call_function":
                result = node.target(*cargs, **ckwargs)
            else:
                self_, *rest = cargs
                result = getattr(self_, str(node.target))(*rest, **ckwargs)
            self.concrete[node] = result
            val, fresh = self.interpret(node, result)
            self.vals[node] = val
            if isinstance(val, _Val):
                g = r.groups[val.group]
                uses = _data_users(node)
                g.uses = uses if fresh else g.uses + uses - 1
            elif isinstance(val, _TupleVal) and fresh:
                for item in val.items:
                    if isinstance(item, _Val):
                        r.groups[item.group].uses = 1
        raise AssertionError("graph without output")  # pragma: no cover

    # -- helpers ------------------------------------------------------------------------------------
    def interpret(self, node: fx.Node, result: Any) -> tuple[object, bool]:
        r = self.r
        args = node.args
        vals = [self.vals.get(a) if isinstance(a, fx.Node) else None for a in args]
        kw_vals = {
            k: self.vals.get(a) if isinstance(a, fx.Node) else None for k, a in node.kwargs.items()
        }
        channel_vals = [
            v for v in [*vals, *kw_vals.values()] if isinstance(v, (_Val, _ParamVal, _TupleVal))
        ]
        label = _op_label(node)
        out_shape = tuple(result.shape) if isinstance(result, Tensor) else ()

        if node.op == "call_module":
            return self.module_call(node, result)

        target = node.target
        is_method = node.op == "call_method"
        first = vals[0] if vals else None
        if (target is getattr and args[1] in _META_ATTRS) or (
            is_method and target in _META_METHODS
        ):
            return None, False

        # tuples (attention outputs) and indexing into them
        if target is operator.getitem and isinstance(first, _TupleVal):
            item = first.items[args[1]]  # type: ignore[index]
            if isinstance(item, _AttnWeights):
                if _data_users(node):
                    raise r.unsupported(label, f"reads the attention weights of {item.where!r}")
                return None, False
            return item, False

        if self.is_join(node):
            return self.join(node, vals, result), True

        if not channel_vals:
            return None, False

        # layout changes on parameters (class tokens, positional embeddings)
        if isinstance(first, _ParamVal):
            if (is_method and (target in _LAYOUT_METHODS or target in _NOOP_METHODS)) or (
                not is_method and (target in _LAYOUT_FUNCS or target in _NOOP_FUNCS)
            ):
                rest = fx.node.map_arg(args[1:], lambda n: self.concrete[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: self.concrete[n])
                if is_method:
                    if target in _NOOP_METHODS:
                        return first, False
                    idx = getattr(first.index, str(target))(*rest, **kwargs)
                elif target in _NOOP_FUNCS:
                    return first, False
                else:
                    idx = target(first.index, *rest, **kwargs)  # type: ignore[operator]
                return _ParamVal(first.key, idx), False
            raise r.unsupported(label, f"computes with parameter {first.key!r} directly")

        if not isinstance(first, _Val):
            raise r.unsupported(label, "is applied to an unsupported value")
        v = first
        others = [x for x in [*vals[1:], *kw_vals.values()] if x is not None]
        for o in others:
            if isinstance(o, _ParamVal):
                raise r.unsupported(label, f"computes with parameter {o.key!r} directly")
            raise r.unsupported(label, "combines two activations (only adds are supported)")

        def concrete_rest() -> tuple[tuple[Any, ...], dict[str, Any]]:
            return (
                tuple(fx.node.map_arg(args[1:], lambda n: self.concrete[n])),
                dict(fx.node.map_arg(node.kwargs, lambda n: self.concrete[n])),
            )

        # no-ops and layout
        if (is_method and target in _NOOP_METHODS) or (not is_method and target in _NOOP_FUNCS):
            if out_shape != v.shape:
                raise r.unsupported(label, "changes the shape")
            return v, False
        if (is_method and target in _LAYOUT_METHODS) or (not is_method and target in _LAYOUT_FUNCS):
            rest, kwargs = concrete_rest()
            if is_method:
                name = str(target)

                def fn(t: Tensor) -> Tensor:
                    if name == "expand_as":
                        like = rest[0]
                        assert isinstance(like, Tensor)
                        return t.expand(like.shape)
                    out: Tensor = getattr(t, name)(*rest, **kwargs)
                    return out
            else:

                def fn(t: Tensor) -> Tensor:
                    out: Tensor = target(t, *rest, **kwargs)  # type: ignore[operator]
                    return out

            return r.layout(v, fn, label), False

        # elementwise, spatial and reducing operations
        scalar = self.scalar_op(node)
        if scalar is not None:
            return r.record(v, scalar, out_shape, v.axis), True
        rest, kwargs = concrete_rest()
        if (is_method and target in _ELEMENTWISE_METHODS) or (
            not is_method and target in _ELEMENTWISE_FUNCS
        ):
            if out_shape != v.shape:
                raise r.unsupported(label, "changes the shape")
            op = TracedOp(str(target) if is_method else target, rest, kwargs)  # type: ignore[arg-type]
            return r.record(v, op, out_shape, v.axis), True
        if not is_method and target in _SPATIAL_FUNCS:
            op = TracedOp(target, rest, kwargs)  # type: ignore[arg-type]
            if v.axis is not None and (len(out_shape) != len(v.shape) or v.kernel):
                raise r.unsupported(label, "changes the rank")
            return r.record(v, op, out_shape, v.axis), True
        if (is_method and target in _REDUCE_METHODS) or (not is_method and target in _REDUCE_FUNCS):
            return self.reduce(node, v, rest, kwargs, out_shape, label), True
        raise r.unsupported(label, "is not a supported operation")

    def is_join(self, node: fx.Node) -> bool:
        t = node.target
        if (node.op == "call_method" and t in _ADD_METHODS) or (
            node.op == "call_function" and t in _ADDS
        ):
            return (
                len(node.args) == 2
                and "alpha" not in node.kwargs
                and all(
                    isinstance(a, fx.Node) and isinstance(self.vals.get(a), (_Val, _ParamVal))
                    for a in node.args
                )
            )
        return node.op == "call_function" and t in (torch.cat, torch.concat)

    def join(self, node: fx.Node, vals: list[object], result: Tensor) -> _Val:
        r = self.r
        label = _op_label(node)
        shape = tuple(result.shape)
        if node.target in (torch.cat, torch.concat):
            parts = node.args[0]
            assert isinstance(parts, (list, tuple))
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            items = [self.vals.get(p) if isinstance(p, fx.Node) else None for p in parts]
            acts = [x for x in items if isinstance(x, _Val)]
            if not acts or any(x is None for x in items):
                raise r.unsupported(label, "concatenates values that are not activations")
            ref = acts[0]
            assert isinstance(dim, int)
            if ref.axis is None:
                raise r.unsupported(label, "concatenates inputs whose channel axis is unknown")
            if dim % len(shape) == ref.axis:
                raise r.unsupported(label, "concatenates along the channel axis")
            if any(a.axis != ref.axis or len(a.shape) != len(shape) for a in acts):
                raise r.unsupported(label, "concatenates values with different channel axes")
            embeds = []
            for p, item in zip(parts, items):
                if isinstance(item, _ParamVal):
                    assert isinstance(p, fx.Node)
                    embeds.append(r.embedding(item, ref, tuple(self.concrete[p].shape), label))
            joined = r.join(acts, embeds, EdgeType.IDENTITY, "cat")
            return _Val(joined.group, ref.axis, shape)
        a, b = (self.vals.get(x) if isinstance(x, fx.Node) else None for x in node.args[:2])
        if isinstance(a, _Val) and isinstance(b, _Val):
            return r.add(a, b)
        act, par = (a, b) if isinstance(a, _Val) else (b, a)
        if not isinstance(act, _Val) or not isinstance(par, _ParamVal):
            raise r.unsupported(label, "adds values that are not activations or parameters")
        emb = r.embedding(par, act, shape, label)
        joined = r.join([act], [emb], EdgeType.RESIDUAL, "add")
        return _Val(joined.group, act.axis, shape)

    def scalar_op(self, node: fx.Node) -> nn.Module | None:
        """``x * 30``, ``x / 2``, ``1 - x``, ... with a Python number: an elementwise op."""
        t = node.target
        name = _SCALAR_METHODS.get(str(t)) if node.op == "call_method" else _SCALAR_FUNCS.get(t)
        if name is None and node.op == "call_function" and t in _ADDS:
            name = "add"
        if name is None and node.op == "call_method" and t in _ADD_METHODS:
            name = "add"
        if name is None or len(node.args) != 2:
            return None
        a, b = node.args
        if isinstance(a, fx.Node) and isinstance(b, (int, float)):
            return TracedOp(getattr(operator, name if name != "div" else "truediv"), (b,))
        if isinstance(b, fx.Node) and isinstance(a, (int, float)):
            fn = getattr(operator, name if name != "div" else "truediv")
            op = TracedOp(fn, (a,), reverse=True)
            op.nngraph_op_kind = f"r{name}" if name in ("sub", "div", "pow") else name
            return op
        return None

    def reduce(
        self,
        node: fx.Node,
        v: _Val,
        rest: tuple[Any, ...],
        kwargs: dict[str, Any],
        out_shape: tuple[int, ...],
        label: str,
    ) -> _Val:
        r = self.r
        dims = kwargs.get("dim", rest[0] if rest else None)
        keep = bool(kwargs.get("keepdim", rest[1] if len(rest) > 1 else False))
        if dims is None or v.axis is None or v.kernel is not None:
            raise r.unsupported(label, "reduces over the channels")
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        nd = len(v.shape)
        dims = tuple(d % nd for d in dims)
        if v.axis in dims:
            raise r.unsupported(label, "reduces over the channels")
        axis = v.axis if keep else v.axis - sum(1 for d in dims if d < v.axis)
        fn = str(node.target) if node.op == "call_method" else node.target
        op = TracedOp(fn, (), {"dim": dims, "keepdim": keep})
        return r.record(v, op, out_shape, axis)

    def module_call(self, node: fx.Node, result: Any) -> tuple[object, bool]:
        r = self.r
        target = str(node.target)
        m = r.root if target == "" else r.root.get_submodule(target)
        path = target
        vals = [self.vals.get(a) if isinstance(a, fx.Node) else None for a in node.args]
        kw = {
            k: self.vals.get(a) if isinstance(a, fx.Node) else None for k, a in node.kwargs.items()
        }
        label = f"{type(m).__name__} {path!r}" if path else type(m).__name__
        x = vals[0] if vals else kw.get("input", kw.get("query", kw.get("src")))
        if isinstance(x, _ParamVal):
            raise r.unsupported(label, f"is applied to parameter {x.key!r} directly")
        if not isinstance(x, _Val):
            if isinstance(m, _MIXING_MODULES) or _has_state(m):
                raise r.unsupported(label, "is not applied to an activation")
            return None, False
        out_shape = tuple(result.shape) if isinstance(result, Tensor) else ()
        if isinstance(m, nn.Linear):
            return r.linear(x, m), True
        if isinstance(m, nn.Conv2d):
            return r.conv(x, m, r.use_layer(m), out_shape), True
        if isinstance(m, _BATCHNORMS):
            return r.batchnorm(x, m, r.use_layer(m)), True
        if isinstance(m, nn.LayerNorm):
            return r.layer_norm(x, m, r.use_layer(m)), True
        if isinstance(m, nn.GroupNorm):
            return r.gn(x, m, r.use_layer(m)), True
        if isinstance(m, nn.MultiheadAttention):
            return self.mha_call(node, m, x, vals, kw, label), True
        if isinstance(m, nn.TransformerEncoderLayer):
            return r.encoder_layer(x, m, path), True
        if isinstance(m, nn.TransformerEncoder):
            r.use_layer(m)
            v = x
            for i, layer in enumerate(m.layers):
                if i:
                    r.hold(v, 1)
                v = r.encoder_layer(v, layer, f"{path}.layers.{i}" if path else f"layers.{i}")
            if m.norm is not None:
                assert isinstance(m.norm, nn.LayerNorm)
                r.hold(v, 1)
                v = r.layer_norm(v, m.norm, r.use_layer(m.norm))
            return v, True
        if isinstance(m, _MIXING_MODULES):
            raise r.unsupported(label, "mixes neurons and has no neural-graph form")
        if _has_state(m):
            raise r.unsupported(label, "has parameters or buffers and is not a supported layer")
        if isinstance(m, _NOOP_MODULES):
            return x, False
        if isinstance(m, _LAYOUT_MODULES):
            cargs = fx.node.map_arg(node.args[1:], lambda n: self.concrete[n])
            return r.layout(x, lambda t: m(t, *cargs), label), False
        if isinstance(m, _SPATIAL_MODULES):
            if x.axis is not None and (len(out_shape) != len(x.shape) or x.kernel):
                raise r.unsupported(label, "changes the rank")
            return r.record(x, m, out_shape, x.axis), True
        if len(vals) + len(kw) > 1:
            raise r.unsupported(label, "takes more than one input")
        if out_shape != x.shape:
            raise r.unsupported(label, "changes the shape of its input (not elementwise)")
        return r.record(x, m, out_shape, x.axis), True

    def mha_call(
        self,
        node: fx.Node,
        m: nn.MultiheadAttention,
        x: _Val,
        vals: list[object],
        kw: dict[str, object],
        label: str,
    ) -> _TupleVal:
        r = self.r
        srcs = list(node.args[:3])
        for name in ("query", "key", "value")[len(srcs) :]:
            if name in node.kwargs:
                srcs.append(node.kwargs[name])
        if len(srcs) != 3 or len({id(s) for s in srcs}) != 1:
            raise r.unsupported(label, "is not self-attention (query, key and value differ)")
        path = r.use_layer(m)
        out = r.attention(x, m, path)
        return _TupleVal((out, _AttnWeights(path)))


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# Folding BatchNorm into the layer before it
# ---------------------------------------------------------------------------------------------


def fold_batchnorm(module: nn.Module, *, input_shape: Sequence[int] | None = None) -> nn.Module:
    """A copy of `module` with every eval-mode BatchNorm folded into the `Conv2d` / `Linear`
    right before it.

    A BatchNorm that directly follows a layer whose output nothing else reads computes, in
    evaluation mode, $y = \\gamma (W x + b - \\mu) / \\sqrt{\\sigma^2 + \\epsilon} + \\beta$: the
    same as that layer with weight $s W$ and bias $s (b - \\mu) + \\beta$, where
    $s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}$. The copy has those weights (a layer without bias
    gets one), and the BatchNorm is replaced by `nn.Identity`; it computes the same function in
    evaluation mode, up to rounding. Other BatchNorms (after an add or an activation) stay.

    Args:
        module: the network (read by tracing, like [`from_module`][nngraph_core.from_module]).
        input_shape: one input's shape without batch, if it cannot be read off the first layer.

    Returns:
        The folded copy (`module` is not changed).

    Example:
        ```python
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        folded = ngc.fold_batchnorm(net.eval())
        list(folded.state_dict())  # ['0.weight', '0.bias']
        ```
    """
    found = trace_module(module, input_shape)
    out = copy.deepcopy(module)
    for layer_path, bn_path in found.folds:
        layer = out.get_submodule(layer_path)
        bn = out.get_submodule(bn_path)
        assert isinstance(layer, (nn.Conv2d, nn.Linear))
        assert isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                scale = bn.weight * scale
            shift = -bn.running_mean * scale
            if bn.affine:
                shift = shift + bn.bias
            w = layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
            b = shift if layer.bias is None else layer.bias * scale + shift
            layer.weight.copy_(w)
            if layer.bias is None:
                layer.bias = nn.Parameter(b.to(layer.weight.dtype))
            else:
                layer.bias.copy_(b)
        parent_path, _, name = bn_path.rpartition(".")
        parent = out.get_submodule(parent_path)
        setattr(parent, name, nn.Identity())
    return out
