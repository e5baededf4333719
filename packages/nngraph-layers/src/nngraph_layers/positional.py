r"""Positional embeddings that give input and output neurons their identities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from ._graph import hidden_layer_slot, node_index_in_layer, template_node_index_in_layer

__all__ = ["PositionalEmbedding"]


class PositionalEmbedding(nn.Module):
    r"""Learned positional embeddings of a neural graph's nodes (Kofinas et al., ICLR 2024, §3).

    $$
    \begin{aligned}
        \mathbf{p}_i =
        \begin{cases}
            \mathbf{P}^{\mathrm{in}}_{j}  & i \text{ is input neuron } j \\
            \mathbf{P}^{\mathrm{hid}}_{l} & i \text{ is a hidden neuron of layer } l \\
            \mathbf{P}^{\mathrm{out}}_{j} & i \text{ is output neuron } j
        \end{cases}
    \end{aligned}
    $$

    Hidden neurons of one layer share one vector, so hidden-neuron permutations are still a
    symmetry; inputs and outputs are not permutable, and each gets its own vector. For the
    MNIST INR (2-32-32-1) that is 2 + 2 + 1 = 5 vectors. In a mixed batch, input/output indices
    beyond the sizes built for are clamped to the last vector, and deeper hidden layers share
    the last hidden vector.

    Args:
        num_inputs (int): $n_0$, input neurons (or channels).
        num_outputs (int): $n_L$, output neurons.
        num_hidden_layers (int): $L - 1$.
        out_channels (int): embedding width $d$.

    Shapes:
        - **input:** [`GraphBatch`][nngraph_core.GraphBatch]
        - **output:** `[N, d]` for a template batch (broadcast over the graphs), `[sum N, d]`
          for a mixed batch; see [`forward`][nngraph_layers.PositionalEmbedding.forward].
    """

    def __init__(
        self, num_inputs: int, num_outputs: int, num_hidden_layers: int, out_channels: int
    ) -> None:
        super().__init__()
        self.num_inputs = num_inputs
        self.num_outputs = num_outputs
        self.num_hidden_layers = num_hidden_layers
        self.out_channels = out_channels
        self.input_emb = nn.Parameter(torch.empty(num_inputs, out_channels))
        self.hidden_emb = nn.Parameter(torch.empty(max(num_hidden_layers, 1), out_channels))
        self.output_emb = nn.Parameter(torch.empty(num_outputs, out_channels))
        self.reset_parameters()

    @classmethod
    def for_template(cls, template: ngc.GraphTemplate, out_channels: int) -> PositionalEmbedding:
        """Sizes from `template`'s architecture."""
        widths = template.spec.widths
        return cls(widths[0], widths[-1], len(widths) - 2, out_channels)

    def reset_parameters(self) -> None:
        for p in (self.input_emb, self.hidden_emb, self.output_emb):
            nn.init.normal_(p)

    def _table(self) -> Tensor:
        return torch.cat([self.input_emb, self.hidden_emb, self.output_emb])

    def _index(self, layer: Tensor, role: Tensor, pos: Tensor) -> Tensor:
        n_in, n_hid = self.num_inputs, self.hidden_emb.shape[0]
        hid = hidden_layer_slot(layer, role, self.num_hidden_layers + 2).clamp(1, n_hid) - 1
        idx = n_in + hid
        idx = torch.where(role == int(ngc.NodeRole.INPUT), pos.clamp(max=n_in - 1), idx)
        out = n_in + n_hid + pos.clamp(max=self.num_outputs - 1)
        return torch.where(role == int(ngc.NodeRole.OUTPUT), out, idx)

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        """Embedding of every node: `[N, d]` for one architecture (same for every graph, add
        it to a dense `[B, N, d]` view), `[sum N, d]` for a mixed batch."""
        t = batch.template
        if t is not None:
            dev = self.input_emb.device
            idx = self._index(
                t.node_layer.to(dev), t.node_role.to(dev), template_node_index_in_layer(t).to(dev)
            )
        else:
            idx = self._index(batch.node_layer, batch.node_role, node_index_in_layer(batch))
        return self._table()[idx]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(inputs={self.num_inputs}, outputs={self.num_outputs}, "
            f"hidden_layers={self.num_hidden_layers}, out_channels={self.out_channels})"
        )
