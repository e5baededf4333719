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
