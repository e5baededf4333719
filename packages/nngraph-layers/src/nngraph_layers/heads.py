r"""Readouts: an invariant head (network -> vector) and an equivariant head (network -> network)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from ._graph import edge_layer, edge_valid_mask, hidden_layer_slot, template_layer_sizes
from .dropout import Dropout

__all__ = ["EquivariantHead", "InvariantHead", "mlp"]

Pooling = Literal["cat", "mean", "sum", "max", "layers"]


def mlp(
    in_channels: int, hidden_channels: int, out_channels: int, dropout: float = 0.0
) -> nn.Sequential:
    """`Linear -> SiLU -> Dropout -> Linear`."""
    return nn.Sequential(
        nn.Linear(in_channels, hidden_channels),
        nn.SiLU(),
        Dropout(dropout),
        nn.Linear(hidden_channels, out_channels),
    )


class InvariantHead(nn.Module):
    r"""Permutation-invariant readout of a neural graph.

    `pooling="cat"` (paper default) concatenates the final features of the output neurons,
    which have fixed identities, so the readout is invariant to hidden permutations and keeps
    the outputs' order:

    $$
    \mathbf{y} = \mathrm{MLP}\big([\mathbf{x}_{o_1} \,\|\, \cdots \,\|\, \mathbf{x}_{o_{n_L}}]\big)
    $$

    `pooling="layers"` adds the mean of every node layer (depth $0, \dots, L$) to the output
    neurons' features, so the readout sees a summary of each layer directly instead of only
    through the messages that reach the outputs (as StatNN reads per-layer statistics):

    $$
    \mathbf{y} = \mathrm{MLP}\big([\bar{\mathbf{x}}^{(0)} \,\|\, \cdots \,\|\,
    \bar{\mathbf{x}}^{(L)} \,\|\, \mathbf{x}_{o_1} \,\|\, \cdots \,\|\,
    \mathbf{x}_{o_{n_L}}]\big), \qquad
    \bar{\mathbf{x}}^{(l)} = \frac{1}{|V_l|} \sum_{i \in V_l} \mathbf{x}_i .
    $$

    A permutation moves neurons only within their layer, so the layer means are invariant. Every
    graph of a batch needs `num_node_layers` depths (mixed batches of one depth are fine).

    The alternatives pool over all nodes of a graph: $\mathbf{y} =
    \mathrm{MLP}(\bigoplus_i \mathbf{x}_i)$ with $\bigoplus \in \{\mathrm{mean},
    \mathrm{sum}, \max\}$ (these also accept mixed batches with different output counts).

    Args:
        in_channels (int): node width $d$.
        out_channels (int): number of predicted values.
        num_output_nodes (int): $n_L$ (used by `"cat"` and `"layers"`).
        hidden_channels (int, optional): MLP width (default: the MLP's input width:
            `in_channels * num_output_nodes` for `"cat"`, `in_channels * (num_node_layers +
            num_output_nodes)` for `"layers"`, else `in_channels`; at least 32).
        pooling (str, optional): `"cat"`, `"layers"`, `"mean"`, `"sum"` or `"max"`.
        dropout (float, optional): dropout inside the MLP.
        num_node_layers (int, optional): node layers $L + 1$ of the graphs (`"layers"` only).

    Shapes:
        - **input:** node features `[sum N, d]`, the [`GraphBatch`][nngraph_core.GraphBatch]
        - **output:** `[B, out_channels]`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_output_nodes: int,
        hidden_channels: int | None = None,
        pooling: Pooling = "cat",
        dropout: float = 0.0,
        num_node_layers: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("cat", "mean", "sum", "max", "layers"):
            raise ValueError(f"unknown pooling {pooling!r}")
        if pooling == "layers" and (num_node_layers is None or num_node_layers < 2):
            raise ValueError(
                f"pooling='layers' needs num_node_layers >= 2 (the graphs' depths), got "
                f"{num_node_layers!r}"
            )
        self.pooling = pooling
        self.num_output_nodes = num_output_nodes
        self.num_node_layers = num_node_layers
        width = {
            "cat": in_channels * num_output_nodes,
            "layers": in_channels * (num_output_nodes + (num_node_layers or 0)),
        }.get(pooling, in_channels)
        hidden = hidden_channels if hidden_channels is not None else max(width, 32)
        self.mlp = mlp(width, hidden, out_channels, dropout)

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, x: Tensor, batch: ngc.GraphBatch) -> Tensor:
        b = batch.num_graphs
        t = batch.template
        if self.pooling == "cat":
            return self.mlp(self._outputs(x, batch))
        if self.pooling == "layers":
            return self.mlp(torch.cat([self._layer_means(x, batch), self._outputs(x, batch)], -1))
        if t is not None:
            dense = x.view(b, t.num_nodes, -1)
            if self.pooling == "max":
                return self.mlp(dense.amax(dim=1))
            pooled = dense.sum(dim=1)
            return self.mlp(pooled / t.num_nodes if self.pooling == "mean" else pooled)
        index = batch.batch
        reduce = {"mean": "mean", "sum": "sum", "max": "amax"}[str(self.pooling)]
        out = x.new_zeros(b, x.shape[-1])
        idx = index.unsqueeze(-1).expand_as(x)
        return self.mlp(out.scatter_reduce(0, idx, x, reduce=reduce, include_self=False))

    def _outputs(self, x: Tensor, batch: ngc.GraphBatch) -> Tensor:
        """The output neurons' features, concatenated: `[B, n_L * d]`."""
        b, t = batch.num_graphs, batch.template
        if t is not None:
            pooled = x.view(b, t.num_nodes, -1)[:, t.layer_nodes(t.spec.num_layers)]
        else:
            pooled = x[batch.node_role == int(ngc.NodeRole.OUTPUT)]
        if pooled.numel() != b * self.num_output_nodes * x.shape[-1]:
            raise ngc.ShapeMismatchError(
                f"{self.pooling!r} readout built for {self.num_output_nodes} output nodes per "
                "graph; use pooling='mean' for batches with other output counts"
            )
        return pooled.reshape(b, -1)

    def _layer_means(self, x: Tensor, batch: ngc.GraphBatch) -> Tensor:
        """The mean feature of every node layer, concatenated: `[B, (L + 1) * d]`."""
        b, t, d = batch.num_graphs, batch.template, x.shape[-1]
        n_layers = int(self.num_node_layers or 0)
        if t is not None:
            # the template's layer sizes live on the CPU: the depth check needs no device sync
            sizes = template_layer_sizes(t)
            self._check_depth([len(sizes)], n_layers)
            layer_t = t.node_layer.to(x.device)
            sums = x.new_zeros(b, n_layers, d).index_add_(1, layer_t, x.view(b, t.num_nodes, d))
            counts = sizes.to(x.device, x.dtype)
            return (sums / counts.clamp(min=1).unsqueeze(-1)).reshape(b, -1)
        layer = batch.node_layer.to(x.device)
        graph = batch.batch.to(x.device)
        deepest = layer.new_full((b,), -1).scatter_reduce(0, graph, layer, reduce="amax")
        self._check_depth((deepest + 1).tolist(), n_layers)
        key = graph * n_layers + layer
        sums = x.new_zeros(b * n_layers, d).index_add_(0, key, x)
        counts = torch.bincount(key, minlength=b * n_layers).to(x.dtype)
        return (sums / counts.clamp(min=1).unsqueeze(-1)).reshape(b, -1)

    @staticmethod
    def _check_depth(depths: list[int], n_layers: int) -> None:
        """`ShapeMismatchError` unless every graph has `n_layers` node layers."""
        if any(depth != n_layers for depth in depths):
            raise ngc.ShapeMismatchError(
                f"'layers' readout built for graphs with {n_layers} node layers; this batch has "
                f"graphs with {sorted(set(depths))}"
            )


class EquivariantHead(nn.Module):
    r"""Permutation-equivariant editing head: new parameters = input parameters + small deltas.

    $$
    b'_i = b_i + s^B_{l(i)} \, \mathrm{MLP}_n(\mathbf{x}_i), \qquad
    \mathbf{w}'_{ij} = \mathbf{w}_{ij} + s^W_{l(ij)} \, \mathrm{MLP}_e(\mathbf{e}_{ij})
    $$

    with learnable per-layer scales $s^B_k, s^W_k$ initialised at `init_scale` (0.01),
    so the untrained head is close to the identity on networks. Deltas are added to the
    *unnormalised* input parameters. Input neurons (no bias) and kernel padding are left as
    they are; the template maps the result back to flat parameters.

    Args:
        node_channels (int): node width.
        edge_channels (int): edge width of the features given to `forward`.
        edge_dim (int): kernel entries per edge (1 for MLPs).
        num_layers (int): parameterised layers $L$ (one scale each).
        hidden_channels (int, optional): MLP width (default: `node_channels`).
        init_scale (float, optional): initial per-layer scale (default: `0.01`).

    Shapes:
        - **input:** node features `[sum N, d_n]`, edge features `[sum E, d_e]` (one per
          weight, in the batch's edge order), the [`GraphBatch`][nngraph_core.GraphBatch]
        - **output:** flat parameters `[B, P]` for a template batch; for a mixed batch a new
          [`GraphBatch`][nngraph_core.GraphBatch] with the edited features.
    """

    def __init__(
        self,
        node_channels: int,
        edge_channels: int,
        edge_dim: int,
        num_layers: int,
        hidden_channels: int | None = None,
        init_scale: float = 0.01,
    ) -> None:
        super().__init__()
        hidden = hidden_channels or node_channels
        self.num_layers = num_layers
        self.init_scale = init_scale
        self.node_mlp = mlp(node_channels, hidden, 1)
        self.edge_mlp = mlp(edge_channels, hidden, edge_dim)
        self.bias_scale = nn.Parameter(torch.full((num_layers,), init_scale))
        self.weight_scale = nn.Parameter(torch.full((num_layers,), init_scale))

    def reset_parameters(self) -> None:
        for m in (*self.node_mlp, *self.edge_mlp):
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        nn.init.constant_(self.bias_scale, self.init_scale)
        nn.init.constant_(self.weight_scale, self.init_scale)

    def deltas(self, x: Tensor, e: Tensor, batch: ngc.GraphBatch) -> tuple[Tensor, Tensor]:
        """Scaled deltas `([sum N, 1], [sum E, d_edge])` (zero on inputs and kernel padding)."""
        dn = self.node_mlp(x)
        de = self.edge_mlp(e)
        L = self.num_layers
        t = batch.template
        if t is not None:
            b = batch.num_graphs
            dev = x.device
            slot = hidden_layer_slot(t.node_layer, t.node_role, L + 1).to(dev)
            n_scale = torch.where(
                t.node_param.to(dev) >= 0, self.bias_scale[(slot - 1).clamp(min=0)], 0.0
            )
            e_scale = self.weight_scale[t.node_layer[t.edge_index[0]].clamp(max=L - 1).to(dev)]
            dn = dn.view(b, t.num_nodes, 1) * n_scale.unsqueeze(-1)
            de = de.view(b, t.num_edges, -1) * e_scale.unsqueeze(-1)
            de = de * (t.edge_param >= 0).to(dev)
            return dn.reshape(-1, 1), de.reshape(-1, de.shape[-1])
        slot = hidden_layer_slot(batch.node_layer, batch.node_role, L + 1)
        has_bias = batch.node_role != int(ngc.NodeRole.INPUT)
        n_scale = torch.where(has_bias, self.bias_scale[(slot - 1).clamp(min=0)], 0.0)
        e_scale = self.weight_scale[edge_layer(batch).clamp(max=L - 1)]
        de = de * e_scale.unsqueeze(-1) * edge_valid_mask(batch)
        return dn * n_scale.unsqueeze(-1), de

    def forward(self, x: Tensor, e: Tensor, batch: ngc.GraphBatch) -> Tensor | ngc.GraphBatch:
        dn, de = self.deltas(x, e, batch)
        nodes = batch.node_features + dn
        edges = batch.edge_features + de
        if batch.template is not None:
            return batch.template.params(nodes, edges)
        return batch.with_features(nodes, edges)
