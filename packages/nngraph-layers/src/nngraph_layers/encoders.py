r"""Input encoders for neural graphs: per-layer normalisation, Fourier features, probe projection.

These follow Kofinas et al., ICLR 2024 ("Graph Neural Networks for Learning Equivariant
Representations of Neural Networks"), §3 and appendix: weights and biases are normalised per
layer, every scalar is lifted by random Fourier features and a linear map, and probe features
(activations of each neuron on K probe inputs) are projected per layer and added.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from . import _native
from ._graph import edge_layer, edge_valid_mask, hidden_layer_slot

__all__ = ["FourierFeatures", "ProbeProjection", "WeightNormalizer"]


class WeightNormalizer(nn.Module):
    r"""Per-layer standardisation of weights and biases.

    For parameterised layer $k$ (edges from node layer $k$ to $k+1$, biases of
    node layer $k+1$), with statistics computed once on a training split,

    $$
    \hat w = \frac{w - \mu^W_k}{\sigma^W_k}, \qquad
    \hat b = \frac{b - \mu^B_k}{\sigma^B_k}.
    $$

    The statistics are scalars per *layer* (over all networks, all neurons and all kernel
    entries of the layer), so a hidden-neuron permutation commutes with the map: permutation
    equivariance is kept exactly. Input nodes (no bias) and kernel padding stay 0. An unfitted
    normaliser (`num_layers=0`) is the identity.

    For mixed batches the statistics of layer $k$ are used for layer
    $\min(k, L-1)$ of a deeper network (a pragmatic choice: fit on one architecture).

    Args:
        weight_mean: `[L]` mean of each parameterised layer's weights (`None`: identity).
        weight_std: `[L]` std of each layer's weights (`None`: identity).
        bias_mean: `[L]` mean of each layer's biases (`None`: identity).
        bias_std: `[L]` std of each layer's biases (`None`: identity).

    Shapes:
        - **input:** [`GraphBatch`][nngraph_core.GraphBatch] with node features `[sum N, 1]` and
          edge features `[sum E, d_edge]`
        - **output:** `(nodes [sum N, 1], edges [sum E, d_edge])` normalised features
    """

    weight_mean: Tensor
    weight_std: Tensor
    bias_mean: Tensor
    bias_std: Tensor

    def __init__(
        self,
        weight_mean: Tensor | None = None,
        weight_std: Tensor | None = None,
        bias_mean: Tensor | None = None,
        bias_std: Tensor | None = None,
    ) -> None:
        super().__init__()
        empty = torch.zeros(0)
        self.register_buffer("weight_mean", _vec(weight_mean, empty))
        self.register_buffer("weight_std", _vec(weight_std, empty))
        self.register_buffer("bias_mean", _vec(bias_mean, empty))
        self.register_buffer("bias_std", _vec(bias_std, empty))

    @property
    def num_layers(self) -> int:
        """Number of parameterised layers with statistics (0: identity)."""
        return int(self.weight_mean.numel())

    @classmethod
    def fit(
        cls, template: ngc.GraphTemplate, params: Tensor, *, eps: float = 1e-8
    ) -> WeightNormalizer:
        """Statistics of a training split `params [n, P]` of `template`'s architecture.

        Computed in float64; a layer whose values are all equal gets std 1. Layers without a
        bias get mean 0 / std 1 for their (absent) biases.
        """
        template._check_params(params)
        flat = params.reshape(-1, template.num_params).double()
        offsets = template.spec.param_offsets()
        stats: dict[str, list[float]] = {"wm": [], "ws": [], "bm": [], "bs": []}
        for layer in template.spec.layers:
            for key, m, s in ((layer.weight_key, "wm", "ws"), (layer.bias_key, "bm", "bs")):
                if key is None:
                    stats[m].append(0.0)
                    stats[s].append(1.0)
                    continue
                start, shape = offsets[key]
                values = flat[:, start : start + math.prod(shape)]
                std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
                stats[m].append(float(values.mean()))
                stats[s].append(std if std > eps else 1.0)
        as_t = {k: torch.tensor(v, dtype=torch.float32) for k, v in stats.items()}
        return cls(as_t["wm"], as_t["ws"], as_t["bm"], as_t["bs"])

    def forward(self, batch: ngc.GraphBatch) -> tuple[Tensor, Tensor]:
        nodes, edges = batch.node_features, batch.edge_features
        n_layers = self.num_layers
        if n_layers == 0:
            return nodes, edges
        dt = nodes.dtype
        if batch.template is not None:
            # One architecture: [N] / [E] statistics broadcast over the batch (no tiling).
            t = batch.template
            n_layer = hidden_layer_slot(t.node_layer, t.node_role, n_layers + 1).to(nodes.device)
            e_layer = (t.node_layer[t.edge_index[0]]).clamp(max=n_layers - 1).to(edges.device)
            has_bias = (t.node_param >= 0).to(nodes.device).unsqueeze(-1)
            valid = (t.edge_param >= 0).to(edges.device)
            b, n, e = batch.num_graphs, t.num_nodes, t.num_edges
            nodes = nodes.view(b, n, 1)
            edges = edges.view(b, e, -1)
        else:
            n_layer = hidden_layer_slot(batch.node_layer, batch.node_role, n_layers + 1)
            e_layer = edge_layer(batch).clamp(max=n_layers - 1)
            has_bias = (batch.node_role != int(ngc.NodeRole.INPUT)).unsqueeze(-1)
            valid = edge_valid_mask(batch)
        bias_idx = (n_layer - 1).clamp(min=0)
        bm = self.bias_mean.to(dt)[bias_idx].unsqueeze(-1)
        bs = self.bias_std.to(dt)[bias_idx].unsqueeze(-1)
        wm = self.weight_mean.to(dt)[e_layer].unsqueeze(-1)
        ws = self.weight_std.to(dt)[e_layer].unsqueeze(-1)
        nodes_n = torch.where(has_bias, (nodes - bm) / bs, torch.zeros_like(nodes))
        edges_n = torch.where(valid, (edges - wm) / ws, torch.zeros_like(edges))
        return nodes_n.reshape(-1, 1), edges_n.reshape(-1, edges_n.shape[-1])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_layers={self.num_layers})"


def _vec(value: Tensor | None, default: Tensor) -> Tensor:
    return (
        default.clone() if value is None else torch.as_tensor(value, dtype=torch.float32).flatten()
    )


def _fourier(x: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """`sin`, `cos` of `2 pi x B`: the C kernel for float32 CPU tensors (one range
    reduction for both, ~4x faster than torch's two calls), else torch."""
    if _native.use_native("auto", [x, freqs]):
        return _native.fourier_sincos(x, freqs)
    proj = (2 * math.pi) * (x @ freqs)
    return proj.sin(), proj.cos()


class _FourierLinear(torch.autograd.Function):
    """`Linear([sin(2 pi x B), cos(2 pi x B)])` that saves `x` instead of the features (and
    multiplies the sines and the cosines by their halves of the weight: no concatenation)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, freqs: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        sin, cos = _fourier(x, freqs)
        w_sin, w_cos = weight.chunk(2, dim=1)
        out = nn.functional.linear(sin, w_sin, bias)
        out.view(-1, out.shape[-1]).addmm_(cos.view(-1, cos.shape[-1]), w_cos.t())
        ctx.save_for_backward(x, freqs, weight)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        x, freqs, weight = ctx.saved_tensors
        sin, cos = _fourier(x, freqs)
        f = sin.shape[-1]
        d2 = dout.reshape(-1, dout.shape[-1])
        dweight = torch.cat([d2.t() @ sin.reshape(-1, f), d2.t() @ cos.reshape(-1, f)], dim=1)
        dbias = d2.sum(0)
        dx = None
        if ctx.needs_input_grad[0]:
            w_sin, w_cos = weight.chunk(2, dim=1)
            dproj = (dout @ w_sin) * cos - (dout @ w_cos) * sin
            dx = (2 * math.pi) * (dproj @ freqs.t())
        return dx, None, dweight, dbias


class FourierFeatures(nn.Module):
    r"""Gaussian random Fourier features followed by a linear map (Tancik et al., 2020).

    $$
    \gamma(\mathbf{x}) = \big[\sin(2\pi \mathbf{B}\mathbf{x}),\ \cos(2\pi \mathbf{B}\mathbf{x})\big],
    \qquad \mathbf{B}_{fi} \sim \mathcal{N}(0, \sigma^2), \qquad
    \mathbf{h} = \mathbf{W}\gamma(\mathbf{x}) + \mathbf{c}
    $$

    With `in_channels=1` each scalar (a bias, a weight) gets $2F$ features. For conv
    kernels (`in_channels = kh * kw`) the frequencies act on the whole kernel vector. The
    frequency matrix $\mathbf{B}$ is a fixed buffer drawn at construction.

    Args:
        in_channels (int): size of the encoded vector (1 for scalars).
        out_channels (int): width $d$ after the linear map.
        num_frequencies (int, optional): $F$ (default: `128` -> 256 features).
        sigma (float, optional): standard deviation of the frequencies (default: `1.0`;
            the paper uses 3 for NG-GNN and 1 for NG-T).

    The features are not kept for the backward pass: it recomputes them from $\mathbf x$
    (for a batch of 128 MNIST INRs that saves the 147 MB of `[sum E, 256]` features per
    step, for a few ms of sines and cosines).

    Shapes:
        - **input:** `[*, in_channels]`
        - **output:** `[*, out_channels]`
    """

    frequencies: Tensor

    def __init__(
        self, in_channels: int, out_channels: int, num_frequencies: int = 128, sigma: float = 1.0
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_frequencies = num_frequencies
        self.sigma = sigma
        self.register_buffer("frequencies", torch.randn(in_channels, num_frequencies) * sigma)
        self.lin = nn.Linear(2 * num_frequencies, out_channels)

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = _FourierLinear.apply(
            x, self.frequencies.to(x.dtype), self.lin.weight, self.lin.bias
        )
        return out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"num_frequencies={self.num_frequencies}, sigma={self.sigma})"
        )


class ProbeProjection(nn.Module):
    r"""Per-node-layer projection of probe features, added to the node features.

    For node $i$ in node layer $l$ with probe activations
    $\mathbf{p}_i \in \mathbb{R}^K$,

    $$
    \mathbf{x}_i \leftarrow \mathbf{x}_i + \mathrm{LayerNorm}_l(\mathbf{W}_l \mathbf{p}_i + \mathbf{c}_l).
    $$

    One `Linear(K, d) + LayerNorm(d)` per node layer (inputs, each hidden layer, outputs), so
    all neurons of a layer share the map and permutation equivariance is kept. In a mixed batch
    hidden layers deeper than the ones built for are mapped to the last hidden map.

    Args:
        num_node_layers (int): $L + 1$ (number of node layers).
        probe_dim (int): $K$.
        out_channels (int): $d$.

    Shapes:
        - **input:** probe features `[sum N, K]`, the [`GraphBatch`][nngraph_core.GraphBatch]
        - **output:** `[sum N, d]` (to be added to the node features)
    """

    def __init__(self, num_node_layers: int, probe_dim: int, out_channels: int) -> None:
        super().__init__()
        self.num_node_layers = num_node_layers
        self.probe_dim = probe_dim
        self.out_channels = out_channels
        self.lins = nn.ModuleList(
            nn.Linear(probe_dim, out_channels) for _ in range(num_node_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(out_channels) for _ in range(num_node_layers))

    def reset_parameters(self) -> None:
        for lin, norm in zip(self.lins, self.norms):
            lin.reset_parameters()
            norm.reset_parameters()

    def forward(self, probe: Tensor, batch: ngc.GraphBatch) -> Tensor:
        if probe.shape[-1] != self.probe_dim:
            raise ngc.ShapeMismatchError(
                f"probe features have K={probe.shape[-1]}, the projection expects {self.probe_dim}"
            )
        t = batch.template
        if t is not None and t.spec.num_layers + 1 == self.num_node_layers:
            # One architecture: contiguous node slices of the dense [B, N, K] view.
            dense = probe.view(batch.num_graphs, t.num_nodes, self.probe_dim)
            parts = [
                norm(lin(dense[:, t.layer_nodes(layer)]))
                for layer, (lin, norm) in enumerate(zip(self.lins, self.norms))
            ]
            return torch.cat(parts, dim=1).reshape(-1, self.out_channels)
        slot = hidden_layer_slot(batch.node_layer, batch.node_role, self.num_node_layers)
        out = probe.new_zeros(probe.shape[0], self.out_channels)
        for layer, (lin, norm) in enumerate(zip(self.lins, self.norms)):
            idx = (slot == layer).nonzero().flatten()
            if idx.numel():
                out = out.index_copy(0, idx, norm(lin(probe.index_select(0, idx))))
        return out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_node_layers={self.num_node_layers}, "
            f"probe_dim={self.probe_dim}, out_channels={self.out_channels})"
        )
