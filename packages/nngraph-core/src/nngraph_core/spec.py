"""Architecture descriptions: which layers a network has, and where their parameters live.

A [`NetworkSpec`][nngraph_core.NetworkSpec] is read off a module once
([`network_spec`][nngraph_core.network_spec]) and then serves every network of that architecture: it
knows the state-dict keys in order, the widths of every layer, the largest kernel, and the
parameter-free modules (activations, pooling, flatten) between the layers, so the network can also
be run functionally from flat parameters.

Supported: `nn.Linear` and `nn.Conv2d` (any kernel, stride, padding, dilation; `groups=1`),
each with or without bias, and any *parameter-free* module between them (activations including
user-defined ones such as [`Sine`][nngraph_core.Sine], dropout, pooling, flatten). Layers are
read in `named_modules()` order; a module whose `forward` does something else can declare
its computation with a method `nngraph_layers(self) -> list[nn.Module]`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .errors import ArchitectureError, UnsupportedLayerError
from .structure import (
    EdgeBlock,
    EdgeType,
    HiddenSet,
    NodeGroup,
    NodeRole,
    NodeType,
    hidden_sets,
    node_depths,
    op_name,
)

__all__ = ["LayerSpec", "NetworkSpec", "network_spec"]

LayerKind = Literal["linear", "conv2d"]

# Parameter-free modules that reorder or mix neurons: they break the layer-wise node identity.
_MIXING_MODULES: tuple[type[nn.Module], ...] = (
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Unflatten,
    nn.Fold,
    nn.Unfold,
)
# Modules that change nothing about the computation at evaluation time.
_IGNORED_NAMES = {"Identity", "Flatten", "Dropout", "Dropout1d", "Dropout2d", "AlphaDropout"}
_SPATIAL_REDUCERS: tuple[type[nn.Module], ...] = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = tuple(v)
    return (int(a), int(b))


def _op_name(m: nn.Module) -> str:
    return op_name(m)


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One parameterised layer of a network.

    Args:
        kind: `"linear"` or `"conv2d"`.
        in_features: input neurons (channels for a conv; for a linear layer fed by a flattened
            feature map, the number of *channels* of that map).
        out_features: output neurons / channels.
        weight_key: state-dict key of the weight.
        bias_key: state-dict key of the bias, or `None` for a layer without bias.
        weight_shape: the weight's shape as stored.
        kernel_size: `(kh, kw)`; `(1, 1)` for a linear layer; for a linear layer fed by a
            flattened `[C, h, w]` map it is `(h, w)`: each channel -> neuron edge carries the
            `h * w` weights that connect that channel to that neuron.
        stride: conv stride (unused for linear).
        padding: conv padding, a pair or `"same"` / `"valid"` (unused for linear).
        dilation: conv dilation (unused for linear).
        padding_mode: conv padding mode (unused for linear).
        ops_after: the parameter-free modules applied to this layer's output, in order.
    """

    kind: LayerKind
    in_features: int
    out_features: int
    weight_key: str
    bias_key: str | None
    weight_shape: tuple[int, ...]
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"
    ops_after: tuple[nn.Module, ...] = field(default=(), repr=False)

    @property
    def flattened(self) -> bool:
        """True for a linear layer fed by a flattened (not pooled) feature map."""
        return self.kind == "linear" and self.kernel_size != (1, 1)

    @property
    def activation(self) -> str:
        """Readable name of the parameter-free modules after this layer (`"identity"` if none)."""
        names = [_op_name(m) for m in self.ops_after if type(m).__name__ not in _IGNORED_NAMES]
        return "+".join(names) if names else "identity"

    def signature(self) -> tuple[object, ...]:
        return (
            self.kind,
            self.in_features,
            self.out_features,
            self.weight_key,
            self.bias_key,
            self.weight_shape,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.padding_mode,
            self.activation,
        )


@dataclass(frozen=True, eq=False)
class NetworkSpec:
    """The architecture of a network: its layers and the layout of its state dict.

    Two specs are equal when they describe the same architecture with the same keys (the
    parameter-free modules are compared by name). Flat parameter vectors follow
    `param_keys` order, each tensor flattened row-major.
    """

    layers: tuple[LayerSpec, ...]
    param_keys: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    input_ops: tuple[nn.Module, ...] = field(default=(), repr=False)
    input_shape: tuple[int, ...] | None = None
    #: general networks (read by tracing): the node groups and edge blocks; empty for a chain
    groups: tuple[NodeGroup, ...] = field(default=(), repr=False)
    blocks: tuple[EdgeBlock, ...] = field(default=(), repr=False)
    #: non-floating state-dict entries (``num_batches_tracked``): ``(key, shape, dtype)``
    buffers: tuple[tuple[str, tuple[int, ...], torch.dtype], ...] = ()
    #: every state-dict key in order (empty: ``param_keys``)
    state_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.layers and not self.groups:
            raise ArchitectureError("a network needs at least one Linear or Conv2d layer")

    # -- general structure ------------------------------------------------------------------
    @property
    def is_chain(self) -> bool:
        """True for a layer chain (``layers``); False for a network read as node groups."""
        return not self.groups

    @functools.cached_property
    def structure(self) -> tuple[tuple[NodeGroup, ...], tuple[EdgeBlock, ...]]:
        """``(groups, blocks)``; for a chain, one group per node layer and one dense block per
        layer."""
        if self.groups:
            return self.groups, self.blocks
        groups = [NodeGroup("input", NodeType.INPUT, self.widths[0], NodeRole.INPUT)]
        blocks = []
        last = len(self.layers) - 1
        for idx, layer in enumerate(self.layers):
            conv = layer.kind == "conv2d"
            groups.append(
                NodeGroup(
                    layer.weight_key.rpartition(".")[0] or layer.weight_key,
                    NodeType.CONV if conv else NodeType.LINEAR,
                    layer.out_features,
                    NodeRole.OUTPUT if idx == last else NodeRole.HIDDEN,
                    (layer.bias_key, 0) if layer.bias_key is not None else None,
                    ops=layer.ops_after,
                )
            )
            blocks.append(
                EdgeBlock(
                    idx,
                    idx + 1,
                    EdgeType.CONV if conv else EdgeType.LINEAR,
                    "dense",
                    weight=(layer.weight_key, 0),
                    kernel=layer.kernel_size,
                )
            )
        return tuple(groups), tuple(blocks)

    @functools.cached_property
    def hidden_sets(self) -> tuple[HiddenSet, ...]:
        """The permutable node sets, one permutation each (for a chain: the hidden layers)."""
        return hidden_sets(*self.structure)

    @functools.cached_property
    def group_depths(self) -> tuple[int, ...]:
        """Depth (``node_layer``) of every node group."""
        return tuple(node_depths(*self.structure))

    @property
    def node_dim(self) -> int:
        """Node feature width: 3 when BatchNorm running statistics are carried, else 1."""
        groups, _ = self.structure
        return 3 if any(g.stats is not None for g in groups) else 1

    # -- sizes ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of parameterised layers `L` (the graph has `L + 1` node layers)."""
        if not self.is_chain:
            return max(self.group_depths)
        return len(self.layers)

    @property
    def widths(self) -> tuple[int, ...]:
        """Nodes per node layer: `(n_0, n_1, ..., n_L)`."""
        if not self.is_chain:
            raise ArchitectureError(
                "this network is not a chain of layers, so it has no layer widths; use "
                "spec.groups / spec.hidden_sets"
            )
        return (self.layers[0].in_features, *(layer.out_features for layer in self.layers))

    @property
    def num_nodes(self) -> int:
        if not self.is_chain:
            return sum(g.size for g in self.groups)
        return sum(self.widths)

    @property
    def num_edges(self) -> int:
        if not self.is_chain:
            return sum(b.num_edges(self.groups) for b in self.blocks)
        return sum(layer.in_features * layer.out_features for layer in self.layers)

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes)

    @property
    def kernel_shape(self) -> tuple[int, int]:
        """The largest kernel `(Kh, Kw)`; every edge feature is a kernel padded to this size."""
        if not self.is_chain:
            return (
                max(b.kernel[0] for b in self.blocks),
                max(b.kernel[1] for b in self.blocks),
            )
        return (
            max(layer.kernel_size[0] for layer in self.layers),
            max(layer.kernel_size[1] for layer in self.layers),
        )

    @property
    def edge_dim(self) -> int:
        kh, kw = self.kernel_shape
        return kh * kw

    @property
    def is_cnn(self) -> bool:
        if not self.is_chain:
            return any(g.type == NodeType.CONV for g in self.groups)
        return any(layer.kind == "conv2d" for layer in self.layers)

    @property
    def activation_names(self) -> tuple[str, ...]:
        """Distinct activation names; node `node_activation` values index this tuple."""
        names: list[str] = ["identity"]
        if not self.is_chain:
            for g in self.groups:
                if g.activation not in names:
                    names.append(g.activation)
            return tuple(names)
        for layer in self.layers:
            if layer.activation not in names:
                names.append(layer.activation)
        return tuple(names)

    def param_offsets(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """`key -> (offset in the flat vector, shape)`."""
        out: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for key, shape in zip(self.param_keys, self.param_shapes, strict=True):
            out[key] = (offset, shape)
            offset += math.prod(shape)
        return out

    def signature(self) -> tuple[object, ...]:
        if not self.is_chain:
            return (
                tuple(g.signature() for g in self.groups),
                tuple(b.signature() for b in self.blocks),
                self.param_keys,
                self.param_shapes,
                self.buffers,
                self.state_keys,
            )
        return (
            tuple(layer.signature() for layer in self.layers),
            self.param_keys,
            self.param_shapes,
            tuple(_op_name(m) for m in self.input_ops),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NetworkSpec):
            return NotImplemented
        return self.signature() == other.signature()

    def __hash__(self) -> int:
        return hash(self.signature())

    def describe(self) -> str:
        """One line: `linear 2->32 sine(w0=30.0) | linear 32->32 ... `."""
        if not self.is_chain:
            return f"{len(self.groups)} node groups, {len(self.blocks)} edge blocks"
        parts = []
        for layer in self.layers:
            k = (
                ""
                if layer.kernel_size == (1, 1)
                else f" k{layer.kernel_size[0]}x{layer.kernel_size[1]}"
            )
            parts.append(
                f"{layer.kind} {layer.in_features}->{layer.out_features}{k} {layer.activation}"
            )
        return " | ".join(parts)


# ---------------------------------------------------------------------------------------------
# Reading a spec off a module
# ---------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """A parameterised layer found while tracing, with the parameter-free modules after it."""

    module: nn.Linear | nn.Conv2d
    label: str
    ops: list[nn.Module] = field(default_factory=list)

    def param_ids(self) -> set[int]:
        return {id(p) for p in self.module.parameters()}


def _ordered_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The computation order: `nngraph_layers()` if defined, else leaves in registration order."""
    names = {id(m): n for n, m in module.named_modules()}
    custom = getattr(module, "nngraph_layers", None)
    if callable(custom):
        out = []
        for i, m in enumerate(custom()):
            if not isinstance(m, nn.Module):
                raise ArchitectureError(
                    f"{type(module).__name__}.nngraph_layers() item {i} is {type(m).__name__}, "
                    "not an nn.Module"
                )
            out.append((names.get(id(m), f"<nngraph_layers[{i}]>"), m))
        return out
    return [(n, m) for n, m in module.named_modules() if not list(m.children())]


def _has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=True)) or any(
        True for _ in m.buffers(recurse=True)
    )


def network_spec(module: nn.Module, input_shape: Sequence[int] | None = None) -> NetworkSpec:
    """Read the architecture of `module`.

    Three ways, tried in order:

    1. a module with a method `nngraph_layers(self) -> list[nn.Module]` (the escape hatch):
       the listed `Linear` / `Conv2d` layers and parameter-free modules, in that order;
    2. an `nn.Sequential` (nested or not) of `Linear` / `Conv2d` layers and parameter-free
       modules, or a single `Linear` / `Conv2d`: read in registration order;
    3. anything else: its forward is traced with `torch.fx` and read operation by operation
       (residual adds, BatchNorm / LayerNorm / GroupNorm, `MultiheadAttention`,
       `TransformerEncoderLayer`, embeddings, activations, pooling; see the "Bring your own
       network" page). A traced network that turns out to be a plain layer chain gets the
       same kind of spec as in 2.

    Args:
        module: the network.
        input_shape: the shape of one input without the batch dimension, e.g. `(1, 28, 28)`.
            Needed for a conv map flattened (not pooled) into a linear layer, and for a traced
            network whose input shape cannot be read off its first layer (images are tried at
            32x32, token sequences at length 4), e.g. a ViT with positional embeddings.

    Raises:
        UnsupportedLayerError: a module with parameters that is not supported, a grouped conv,
            a neuron-mixing module; [`UnsupportedOperationError`][nngraph_core.UnsupportedOperationError]
            (a subclass) names an unsupported traced operation and the module it runs in.
        ArchitectureError: layers that do not chain, shared weights, or a flattened map of
            unknown size.
    """
    if callable(getattr(module, "nngraph_layers", None)) or _is_plain_chain(module):
        return _chain_spec(module, input_shape)
    from .trace import trace_module

    return _traced_spec(module, trace_module(module, input_shape), input_shape)


def _is_plain_chain(module: nn.Module) -> bool:
    """A `Linear`, a `Conv2d`, or an `nn.Sequential` of those and parameter-free leaf modules."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return True
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return False
    for child in module.children():
        if isinstance(child, nn.Sequential):
            if not _is_plain_chain(child):
                return False
        elif not _is_chain_leaf(child):
            return False
    return True


def _is_chain_leaf(m: nn.Module) -> bool:
    if isinstance(m, nn.Conv2d):
        return m.groups == 1
    return isinstance(m, nn.Linear) or not (_has_state(m) or list(m.children()))


def _traced_spec(
    module: nn.Module, found: object, input_shape: Sequence[int] | None
) -> NetworkSpec:
    from .trace import TraceResult

    assert isinstance(found, TraceResult)
    sd = module.state_dict()
    keys = tuple(k for k, v in sd.items() if v.is_floating_point())
    shapes = tuple(tuple(sd[k].shape) for k in keys)
    buffers = tuple(
        (k, tuple(v.shape), v.dtype) for k, v in sd.items() if not v.is_floating_point()
    )
    given = tuple(input_shape) if input_shape is not None else None
    groups, blocks = found.groups, found.blocks
    chain = (
        not buffers
        and groups[0].type == NodeType.INPUT
        and all(g.type in (NodeType.LINEAR, NodeType.CONV) for g in groups[1:])
        and all(g.stats is None for g in groups)
        and len(blocks) == len(groups) - 1
        and all(
            b.src == i and b.dst == i + 1 and b.pattern == "dense" and b.layout == "out_in"
            for i, b in enumerate(blocks)
        )
        and groups[-1].role == NodeRole.OUTPUT
    )
    kinds = [g.type for g in groups[1:]]
    if chain and NodeType.CONV in kinds and NodeType.LINEAR in kinds:
        chain = kinds.index(NodeType.LINEAR) > max(
            i for i, k in enumerate(kinds) if k == NodeType.CONV
        )
    if not chain:
        return NetworkSpec(
            layers=(),
            param_keys=keys,
            param_shapes=shapes,
            input_shape=given,
            groups=groups,
            blocks=blocks,
            buffers=buffers,
            state_keys=tuple(sd),
        )
    layers = []
    for i, (g, b) in enumerate(zip(groups[1:], blocks)):
        m = found.layers[i + 1][0]
        assert b.weight is not None
        wkey = b.weight[0]
        bkey = g.bias[0] if g.bias is not None else None
        if isinstance(m, nn.Conv2d):
            padding: tuple[int, int] | str = (
                m.padding if isinstance(m.padding, str) else _pair(m.padding)
            )
            layers.append(
                LayerSpec(
                    kind="conv2d",
                    in_features=groups[b.src].size,
                    out_features=g.size,
                    weight_key=wkey,
                    bias_key=bkey,
                    weight_shape=tuple(sd[wkey].shape),
                    kernel_size=b.kernel,
                    stride=_pair(m.stride),
                    padding=padding,
                    dilation=_pair(m.dilation),
                    padding_mode=m.padding_mode,
                    ops_after=g.ops,
                )
            )
        else:
            layers.append(
                LayerSpec(
                    kind="linear",
                    in_features=groups[b.src].size,
                    out_features=g.size,
                    weight_key=wkey,
                    bias_key=bkey,
                    weight_shape=tuple(sd[wkey].shape),
                    kernel_size=b.kernel,
                    ops_after=g.ops,
                )
            )
    return NetworkSpec(
        layers=tuple(layers),
        param_keys=keys,
        param_shapes=shapes,
        input_ops=groups[0].ops,
        input_shape=given,
    )


def _chain_spec(module: nn.Module, input_shape: Sequence[int] | None = None) -> NetworkSpec:
    """Read the architecture of `module`.

    Args:
        module: the network. `nn.Sequential` (nested or not), or any module whose layers run
            in registration order, or one that defines `nngraph_layers()`.
        input_shape: the shape of one input without the batch dimension, e.g. `(1, 28, 28)`.
            Needed only when a conv feature map is flattened (not pooled) into a linear layer
            and its spatial size cannot be read off an adaptive pooling layer.

    Raises:
        UnsupportedLayerError: a module with parameters that is not `Linear` / `Conv2d`
            (e.g. `BatchNorm2d`), a grouped conv, or a neuron-mixing module.
        ArchitectureError: layers that do not chain, or a flattened map of unknown size.
    """
    param_names: dict[int, str] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        if id(p) in param_names:
            raise ArchitectureError(
                f"{param_names[id(p)]!r} and {n!r} are the same tensor (a layer used twice); "
                "shared weights are not supported"
            )
        param_names[id(p)] = n
    seen_layers: set[int] = set()
    layers: list[_Entry] = []
    input_ops: list[nn.Module] = []
    for name, m in _ordered_modules(module):
        label = name or type(m).__name__
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if id(m) in seen_layers:
                raise ArchitectureError(
                    f"layer {label!r} is used twice; shared weights are not supported"
                )
            seen_layers.add(id(m))
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise UnsupportedLayerError(
                    f"{label!r}: grouped convolution (groups={m.groups}) is not supported"
                )
            if id(m.weight) not in param_names:
                raise ArchitectureError(
                    f"{label!r} is not a submodule of the network, so its keys are unknown"
                )
            layers.append(_Entry(m, label))
        elif isinstance(m, _MIXING_MODULES):
            raise UnsupportedLayerError(
                f"{label!r} ({type(m).__name__}) mixes neurons and has no neural-graph form"
            )
        elif _has_state(m):
            raise UnsupportedLayerError(
                f"{label!r} ({type(m).__name__}) has parameters or buffers; only Linear and Conv2d "
                "layers and parameter-free modules can be converted"
            )
        elif layers:
            layers[-1].ops.append(m)
        else:
            input_ops.append(m)
    if not layers:
        raise ArchitectureError(f"{type(module).__name__} has no Linear or Conv2d layer")
    leftover = {
        n for i, n in param_names.items() if not any(i in entry.param_ids() for entry in layers)
    }
    if leftover:
        raise UnsupportedLayerError(f"parameters outside Linear/Conv2d layers: {sorted(leftover)}")

    shapes = _spatial_shapes(module, layers, input_ops, input_shape)
    specs: list[LayerSpec] = []
    prev_out: int | None = None
    prev_kind: str | None = None
    for idx, entry in enumerate(layers):
        m, label, ops = entry.module, entry.label, tuple(entry.ops)
        wkey = param_names[id(m.weight)]
        bkey = param_names[id(m.bias)] if m.bias is not None else None
        if isinstance(m, nn.Conv2d):
            if prev_kind == "linear":
                raise ArchitectureError(
                    f"{label!r}: a Conv2d after a Linear layer is not supported"
                )
            if prev_out is not None and m.in_channels != prev_out:
                raise ArchitectureError(
                    f"{label!r} expects {m.in_channels} channels but receives {prev_out}"
                )
            padding: tuple[int, int] | str = (
                m.padding if isinstance(m.padding, str) else _pair(m.padding)
            )
            specs.append(
                LayerSpec(
                    kind="conv2d",
                    in_features=m.in_channels,
                    out_features=m.out_channels,
                    weight_key=wkey,
                    bias_key=bkey,
                    weight_shape=tuple(m.weight.shape),
                    kernel_size=_pair(m.kernel_size),
                    stride=_pair(m.stride),
                    padding=padding,
                    dilation=_pair(m.dilation),
                    padding_mode=m.padding_mode,
                    ops_after=ops,
                )
            )
        else:
            kernel = (1, 1)
            in_nodes = m.in_features
            if prev_kind == "conv2d":
                assert prev_out is not None
                if m.in_features != prev_out:
                    hw = shapes[idx - 1]
                    if hw is None:
                        raise ArchitectureError(
                            f"{label!r} takes {m.in_features} features from a flattened map of "
                            f"{prev_out} channels; pass input_shape=(C, H, W) so its spatial size is known"
                        )
                    if prev_out * hw[0] * hw[1] != m.in_features:
                        raise ArchitectureError(
                            f"{label!r} expects {m.in_features} features but the flattened map is "
                            f"{prev_out}x{hw[0]}x{hw[1]}"
                        )
                    kernel = hw
                in_nodes = prev_out
            elif prev_out is not None and m.in_features != prev_out:
                raise ArchitectureError(
                    f"{label!r} expects {m.in_features} features but receives {prev_out}"
                )
            specs.append(
                LayerSpec(
                    kind="linear",
                    in_features=in_nodes,
                    out_features=m.out_features,
                    weight_key=wkey,
                    bias_key=bkey,
                    weight_shape=tuple(m.weight.shape),
                    kernel_size=kernel,
                    ops_after=ops,
                )
            )
        prev_out = specs[-1].out_features
        prev_kind = specs[-1].kind

    sd = module.state_dict()
    layer_keys = {k for s in specs for k in (s.weight_key, s.bias_key) if k is not None}
    extra = [k for k in sd if k not in layer_keys]
    if extra:
        raise UnsupportedLayerError(f"state-dict entries outside Linear/Conv2d layers: {extra}")
    keys = tuple(k for k in sd if k in layer_keys)
    return NetworkSpec(
        layers=tuple(specs),
        param_keys=keys,
        param_shapes=tuple(tuple(sd[k].shape) for k in keys),
        input_ops=tuple(input_ops),
        input_shape=tuple(input_shape) if input_shape is not None else None,
    )


def _spatial_shapes(
    module: nn.Module,
    layers: list[_Entry],
    input_ops: Iterable[nn.Module],
    input_shape: Sequence[int] | None,
) -> list[tuple[int, int] | None]:
    """Spatial size `(h, w)` after each layer's ops (`None` where unknown or not spatial)."""
    out: list[tuple[int, int] | None] = []
    if input_shape is not None:
        p = next(module.parameters())
        x = torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for op in input_ops:
                    x = op(x)
                for entry in layers:
                    y = entry.module(x)
                    hw = (int(y.shape[-2]), int(y.shape[-1])) if y.dim() == 4 else None
                    for op in entry.ops:
                        y = op(y)
                        if y.dim() == 4:
                            hw = (int(y.shape[-2]), int(y.shape[-1]))
                    out.append(hw)
                    x = y
        except RuntimeError as exc:
            raise ArchitectureError(
                f"running the network on input_shape={tuple(input_shape)} failed: {exc}"
            ) from exc
        finally:
            module.train(was_training)
        return out
    for entry in layers:
        hw = None
        for op in entry.ops:
            if isinstance(op, _SPATIAL_REDUCERS):
                size = op.output_size
                pair = (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[arg-type]
                hw = (int(pair[0]), int(pair[1])) if None not in pair else None
        out.append(hw)
    return out
