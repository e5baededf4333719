"""DeepSets over the weights: a permutation-invariant set encoder, invariant but coarse."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from ._common import Baseline, batch_params, relu_mlp
from ._normalize import ParamNormalizer

__all__ = ["DeepSets"]


class DeepSets(Baseline):
    r"""DeepSets (Zaheer et al., 2017) over all weights and biases of a network.

    Every edge (a weight, or a conv kernel padded to the largest kernel) and every bias is one set
    element. Its value is embedded together with a learned *type* embedding (which layer, weight
    or bias) and, for the first and last layer, the embedding of its input / output neuron, whose
    identities are fixed:

    $$
    h_s = \phi\big(W_v\, \tilde\theta_s + t_{\mathrm{type}(s)} + u_{\mathrm{in}(s)}
          + o_{\mathrm{out}(s)}\big), \qquad
    \hat y = \rho\Big(\big\Vert_{\tau} \tfrac{1}{|S_\tau|} \textstyle\sum_{s \in S_\tau} h_s\Big),
    $$

    where the sets $S_\tau$ are: the weights of each layer but the last, the biases of
    each hidden layer, and, for every output neuron (whose identity is fixed), its incoming
    weights and its bias. Set means are concatenated, so outputs keep their order (swapping two
    output neurons changes the prediction). The means make the model invariant to every
    permutation of the elements of a hidden layer, a group far larger than the hidden-neuron
    permutations: it also ignores which weights belong to the same neuron (an *uncoupled*
    permutation of one layer's rows leaves it unchanged), so it cannot see how the layers are
    wired. That is what makes it a coarse baseline.

    Args:
        spec: the architecture.
        num_outputs: classes / targets.
        hidden: width of the element embedding and of `phi`.
        phi_layers: hidden layers of `phi` (each `SiLU -> Linear(hidden, hidden)`).
        rho_hidden: hidden widths of `rho`.
        dropout: dropout in `rho`.

    Shapes:
        - input: [`GraphBatch`][nngraph_core.GraphBatch] of `B` networks of `spec`
        - output: `[B, num_outputs]`
    """

    edge_type: Tensor
    edge_in: Tensor
    edge_out: Tensor
    bias_nodes: Tensor
    bias_type: Tensor
    bias_out: Tensor
    groups: Tensor

    def __init__(
        self,
        spec: ngc.NetworkSpec,
        num_outputs: int,
        *,
        hidden: int = 64,
        phi_layers: int = 2,
        rho_hidden: Sequence[int] = (128,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.template = ngc.GraphTemplate(spec)
        t = self.template
        n_layers, n_in, n_out = spec.num_layers, spec.widths[0], spec.widths[-1]
        self.normalizer = ParamNormalizer(spec)

        # Element structure (padding index = the last row of each io table, a zero vector).
        edge_layer = t.node_layer[t.edge_index[0]]
        src_local = t.edge_index[0] - torch.tensor(t.node_offsets)[edge_layer]
        dst_local = t.edge_index[1] - torch.tensor(t.node_offsets)[edge_layer + 1]
        edge_in = torch.where(edge_layer == 0, src_local, torch.full_like(src_local, n_in))
        last = edge_layer == n_layers - 1
        edge_out = torch.where(last, dst_local, torch.full_like(dst_local, n_out))
        bias_nodes = (t.node_param >= 0).nonzero().flatten()
        node_layer = t.node_layer[bias_nodes]
        is_out = node_layer == n_layers
        out_local = bias_nodes - t.node_offsets[n_layers]
        # Pooling sets: weights of layer l < L-1 -> l; biases of hidden layer l -> L-1+(l-1);
        # incoming weights and bias of output neuron o -> 2(L-1) + o.
        first_out = 2 * (n_layers - 1)
        edge_group = torch.where(last, first_out + dst_local, edge_layer)
        bias_group = torch.where(is_out, first_out + out_local, n_layers - 1 + node_layer - 1)
        self.num_groups = first_out + n_out
        self.register_buffer("groups", torch.cat([edge_group, bias_group]), persistent=False)
        self.register_buffer("edge_type", edge_layer, persistent=False)
        self.register_buffer("edge_in", edge_in, persistent=False)
        self.register_buffer("edge_out", edge_out, persistent=False)
        self.register_buffer("bias_nodes", bias_nodes, persistent=False)
        self.register_buffer("bias_type", n_layers + node_layer - 1, persistent=False)
        self.register_buffer(
            "bias_out",
            torch.where(is_out, out_local, torch.full_like(out_local, n_out)),
            persistent=False,
        )

        self.edge_value = nn.Linear(t.edge_dim, hidden)
        self.bias_value = nn.Linear(1, hidden)
        self.type_embedding = nn.Embedding(2 * n_layers, hidden)
        self.input_embedding = nn.Embedding(n_in + 1, hidden, padding_idx=n_in)
        self.output_embedding = nn.Embedding(n_out + 1, hidden, padding_idx=n_out)
        phi: list[nn.Module] = []
        for _ in range(phi_layers):
            # smooth: with a piecewise-linear phi, value x identity interactions vanish wherever
            # the elements stay in one linear region, and the output identities fade
            phi += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.phi = nn.Sequential(*phi)
        self.rho = nn.Sequential(
            *relu_mlp(self.num_groups * hidden, rho_hidden, num_outputs, dropout)
        )

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        params = self.normalizer(batch_params(batch, self.spec, "DeepSets"))
        nodes, edges = self.template.features(params)  # [B, N, 1], [B, E, d]
        e = (
            self.edge_value(edges)
            + self.type_embedding(self.edge_type)
            + self.input_embedding(self.edge_in)
            + self.output_embedding(self.edge_out)
        )
        n = (
            self.bias_value(nodes[:, self.bias_nodes])
            + self.type_embedding(self.bias_type)
            + self.output_embedding(self.bias_out)
        )
        h = self.phi(torch.cat([e, n], dim=1))  # [B, S, hidden]
        sums = h.new_zeros(h.shape[0], self.num_groups, h.shape[2]).index_add_(1, self.groups, h)
        counts = torch.bincount(self.groups, minlength=self.num_groups).clamp_min(1).to(h.dtype)
        pooled = sums / counts[:, None]  # mean per set; empty sets (no bias) give 0
        out: Tensor = self.rho(pooled.flatten(1))
        return out
