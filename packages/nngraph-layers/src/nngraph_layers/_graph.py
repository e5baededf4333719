"""Structure helpers shared by the layers: per-node / per-edge layer indices of a GraphBatch.

For a batch built by [`GraphTemplate.batch`][nngraph_core.GraphTemplate.batch] the
per-graph vectors are computed once per template (cached) and broadcast over the batch; for
mixed batches (`batch.template is None`) they are derived from the batch's structure.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor

import nngraph_core as ngc

__all__ = [
    "edge_layer",
    "edge_valid_mask",
    "hidden_layer_slot",
    "node_index_in_layer",
    "template_edge_layer",
    "template_layer_sizes",
    "template_node_index_in_layer",
]

_CACHE: weakref.WeakKeyDictionary[ngc.GraphTemplate, dict[str, Tensor]] = (
    weakref.WeakKeyDictionary()
)


def _cached(template: ngc.GraphTemplate, name: str, build: Callable[[], Tensor]) -> Tensor:
    entry = _CACHE.setdefault(template, {})
    out = entry.get(name)
    if out is None:
        out = entry[name] = build()
    return out


def template_edge_layer(template: ngc.GraphTemplate) -> Tensor:
    """`[E]` parameterised-layer index of every edge (= the node layer of its source)."""
    return _cached(template, "edge_layer", lambda: template.node_layer[template.edge_index[0]])


def template_node_index_in_layer(template: ngc.GraphTemplate) -> Tensor:
    """`[N]` position of every node inside its node layer."""

    def build() -> Tensor:
        starts = torch.tensor(template.node_offsets[:-1], dtype=torch.long)
        return torch.arange(template.num_nodes) - starts[template.node_layer]

    return _cached(template, "index_in_layer", build)


def template_layer_sizes(template: ngc.GraphTemplate) -> Tensor:
    """`[L + 1]` number of nodes in every node layer (CPU)."""
    return _cached(template, "layer_sizes", lambda: torch.bincount(template.node_layer))


def edge_layer(batch: ngc.GraphBatch) -> Tensor:
    """`[sum E]` parameterised-layer index of every edge of `batch`."""
    if batch.template is not None:
        base = template_edge_layer(batch.template).to(batch.edge_features.device)
        return base.repeat(batch.num_graphs)
    return batch.node_layer[batch.edge_index[0]]


def edge_valid_mask(batch: ngc.GraphBatch) -> Tensor:
    """`[sum E, d_edge]` boolean mask of the real kernel entries (`False`: padding)."""
    if batch.template is not None:
        base = batch.template.edge_param >= 0
        return base.to(batch.edge_features.device).repeat(batch.num_graphs, 1)
    return batch.edge_param >= 0


def node_index_in_layer(batch: ngc.GraphBatch) -> Tensor:
    """`[sum N]` position of every node inside its (graph, node layer)."""
    if batch.template is not None:
        base = template_node_index_in_layer(batch.template).to(batch.node_features.device)
        return base.repeat(batch.num_graphs)
    layer = batch.node_layer
    graph = batch.batch
    # Nodes are stored graph by graph, layer by layer: runs of equal (graph, layer) keys.
    key = graph * (int(layer.max()) + 1) + layer
    _, counts = torch.unique_consecutive(key, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(key.numel(), device=key.device) - starts.repeat_interleave(counts)


def hidden_layer_slot(layer: Tensor, role: Tensor, num_node_layers: int) -> Tensor:
    """Map node layers to `0 .. num_node_layers - 1`: inputs -> 0, outputs -> last, hidden
    layers clamped to `1 .. num_node_layers - 2` (so per-layer modules built for one
    architecture also accept deeper or shallower graphs in a mixed batch)."""
    last = num_node_layers - 1
    hidden = layer.clamp(min=1, max=max(last - 1, 1))
    out = torch.where(role == int(ngc.NodeRole.INPUT), torch.zeros_like(layer), hidden)
    return torch.where(role == int(ngc.NodeRole.OUTPUT), torch.full_like(layer, last), out)


ACTIVATION_KINDS: tuple[str, ...] = (
    "identity",
    "relu",
    "leakyrelu",
    "gelu",
    "silu",
    "elu",
    "tanh",
    "sigmoid",
    "sine",
    "softplus",
    "other",
)
"""Activation kinds the encoders tell apart (index = embedding row). Names are matched on the
operation's base name (`sine(w0=30.0)` -> `sine`); a nonlinearity that is none of these is
`other`."""
_KIND_ALIASES = {"sin": "sine", "swish": "silu", "relu6": "relu", "leaky_relu": "leakyrelu"}
#: operations that do not change which nonlinearity a node has (pooling, reshapes)
_NEUTRAL_OPS = {
    "identity",
    "flatten",
    "unflatten",
    "adaptiveavgpool2d",
    "avgpool2d",
    "maxpool2d",
    "adaptivemaxpool2d",
    "dropout",
    "dropout2d",
    "mean",
    "sum",
}


def activation_kind(name: str) -> int:
    """Index in [`ACTIVATION_KINDS`][nngraph_layers.ACTIVATION_KINDS] of an activation name as
    [`NetworkSpec.activation_names`][nngraph_core.NetworkSpec.activation_names] writes it
    (`"relu"`, `"sine(w0=30.0)"`, `"maxpool2d+relu"`): the first part that is a known
    nonlinearity; `identity` when every part is neutral (pooling, flatten); else `other`."""
    for part in name.split("+"):
        base = part.split("(", 1)[0].strip().lower()
        base = _KIND_ALIASES.get(base, base)
        if base in _NEUTRAL_OPS:
            continue
        if base in ACTIVATION_KINDS:
            return ACTIVATION_KINDS.index(base)
        return ACTIVATION_KINDS.index("other")
    return 0


_SPEC_KINDS: weakref.WeakKeyDictionary[ngc.NetworkSpec, Tensor] = weakref.WeakKeyDictionary()


def _spec_kinds(spec: ngc.NetworkSpec) -> Tensor:
    """`[len(spec.activation_names)]` kind index of each of the spec's activation names."""
    out = _SPEC_KINDS.get(spec)
    if out is None:
        out = torch.tensor([activation_kind(n) for n in spec.activation_names], dtype=torch.long)
        _SPEC_KINDS[spec] = out
    return out


def node_activation_kind(batch: ngc.GraphBatch) -> Tensor:
    """`[sum N]` [`ACTIVATION_KINDS`][nngraph_layers.ACTIVATION_KINDS] index of every node.

    Node activation codes index each graph's own `spec.activation_names`, so they mean
    different things in different graphs of a mixed batch: they are translated graph by graph
    (one lookup table per distinct spec, no loop over graphs). A template batch may carry one
    spec per graph in `batch.specs` (variants of the template that differ only in their
    activations, e.g. a zoo of relu and tanh CNNs of one architecture): each graph is read
    with its own spec.
    """
    dev = batch.node_features.device
    specs = batch.specs or ((batch.template.spec,) if batch.template is not None else ())
    distinct: dict[int, int] = {}
    tables: list[Tensor] = []
    graph_spec = []
    for s in specs:
        key = id(s)
        if key not in distinct:
            distinct[key] = len(tables)
            tables.append(_spec_kinds(s))
        graph_spec.append(distinct[key])
    width = max(len(t) for t in tables)
    table = torch.zeros(len(tables), width, dtype=torch.long)
    for i, t in enumerate(tables):
        table[i, : len(t)] = t
    table = table.to(dev)
    if batch.template is not None:
        t = batch.template
        local = t.node_activation.to(dev)
        if len(tables) == 1:
            return table[0][local].repeat(batch.num_graphs)
        idx = torch.tensor(graph_spec, dtype=torch.long, device=dev)
        if len(idx) != batch.num_graphs:
            raise ngc.ShapeMismatchError(
                f"the batch has {batch.num_graphs} graphs but {len(idx)} specs"
            )
        return table[idx[:, None], local[None, :]].reshape(-1)
    idx = torch.tensor(graph_spec, dtype=torch.long, device=dev)
    return table[idx[batch.batch], batch.node_activation]
