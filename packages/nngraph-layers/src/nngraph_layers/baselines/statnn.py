"""StatNN: an MLP on per-tensor statistics of the weights (Unterthiner et al., 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from .._graph import ACTIVATION_KINDS, node_activation_kind
from ._common import Baseline, batch_params, relu_mlp

__all__ = ["StatNN", "weight_statistics"]

#: The quantile levels of [`weight_statistics`][nngraph_layers.baselines.weight_statistics].
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Statistics per parameter tensor: mean, variance and the five quantiles.
NUM_STATS = 2 + len(QUANTILES)


def weight_statistics(params: Tensor, spec: ngc.NetworkSpec) -> Tensor:
    r"""Seven statistics of every parameter tensor of `spec`: mean, variance (population, i.e.
    divided by $n$) and the quantiles $0, 25, 50, 75, 100\%$ (linear interpolation, as
    `numpy.quantile`), in state-dict order (`weight`, `bias` of the first layer, then the next).

    Args:
        params: flat parameters `[B, P]` in the layout of `spec`.
        spec: the architecture.

    Returns:
        `[B, 7 * len(spec.param_shapes)]`; the seven statistics of each tensor are adjacent.

    Example:
        ```python
        net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        t = ngc.GraphTemplate.from_module(net)
        weight_statistics(t.flatten(net)[None], t.spec).shape  # (1, 28): 4 tensors x 7
        ```
    """
    if params.dim() != 2 or params.shape[1] != spec.num_params:
        raise ngc.ShapeMismatchError(
            f"weight_statistics needs flat parameters [B, {spec.num_params}], got "
            f"{tuple(params.shape)}"
        )
    q = torch.tensor(QUANTILES, dtype=params.dtype, device=params.device)
    out = []
    start = 0
    for shape in spec.param_shapes:
        n = int(torch.Size(shape).numel())
        block = params[:, start : start + n]
        start += n
        mean = block.mean(1, keepdim=True)
        var = (block - mean).square().mean(1, keepdim=True)
        quant = torch.quantile(block, q, dim=1).T  # [B, 5]
        out.append(torch.cat([mean, var, quant], 1))
    return torch.cat(out, 1)


class StatNN(Baseline):
    r"""StatNN (Unterthiner et al., 2020, "Predicting Neural Network Accuracy from Weights"): an
    MLP on hand-made statistics of the weights,
    $\hat y = \mathrm{MLP}\big((s(\theta) - \mu_s) / \sigma_s\big)$, where $s(\theta)$ holds,
    for each parameter tensor (every layer's weight and bias), its mean, variance and quantiles
    $0, 25, 50, 75, 100\%$ ([`weight_statistics`][nngraph_layers.baselines.weight_statistics]),
    and $\mu_s, \sigma_s$ are their means and standard deviations on the training networks
    (`fit_normalization`; identity before it).

    The statistics of a tensor do not depend on the order of its entries, so StatNN is invariant
    to hidden-neuron permutations -- and to any reordering inside a tensor, coupled or not, even
    of the output neurons: a coarse but strong baseline for predicting generalisation (the paper's
    Kendall $\tau$ on the Small CNN Zoo, CIFAR10-GS: 0.915).

    Args:
        spec: the architecture.
        num_outputs: targets.
        hidden: widths of the MLP's hidden layers.
        dropout: dropout after each hidden activation.
        kind_features: also read the network's activation: the fraction of its nodes of each
            [`ACTIVATION_KINDS`][nngraph_layers.ACTIVATION_KINDS] entry (read from
            `batch.specs`, as the graph models' `kind_embeddings`), appended to the statistics.
            The paper's StatNN reads the weights only (default `False`).

    Shapes:
        - input: [`GraphBatch`][nngraph_core.GraphBatch] of `B` networks of `spec`
        - output: `[B, num_outputs]`
    """

    feature_mean: Tensor
    feature_std: Tensor

    def __init__(
        self,
        spec: ngc.NetworkSpec,
        num_outputs: int,
        *,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        kind_features: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.kind_features = kind_features
        self.num_features = NUM_STATS * len(spec.param_shapes)
        self.register_buffer("feature_mean", torch.zeros(self.num_features))
        self.register_buffer("feature_std", torch.ones(self.num_features))
        width = self.num_features + (len(ACTIVATION_KINDS) if kind_features else 0)
        self.mlp = nn.Sequential(*relu_mlp(width, hidden, num_outputs, dropout))

    def features(self, params: Tensor) -> Tensor:
        """Standardised statistics `[B, 7 * tensors]` of flat parameters `[B, P]`."""
        s = weight_statistics(params, self.spec)
        return (s - self.feature_mean.to(s.dtype)) / self.feature_std.to(s.dtype)

    @torch.no_grad()
    def fit_normalization(self, params: Tensor, *, eps: float = 1e-8) -> StatNN:
        """Mean and standard deviation of each statistic over training parameters `[B, P]`."""
        s = weight_statistics(params.detach().to(self.feature_mean.dtype), self.spec)
        self.feature_mean.copy_(s.mean(0))
        self.feature_std.copy_(s.std(0, unbiased=False).clamp_min(eps))
        return self

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        feats = self.features(batch_params(batch, self.spec, "StatNN"))
        if self.kind_features:
            kinds = nn.functional.one_hot(node_activation_kind(batch), len(ACTIVATION_KINDS))
            counts = torch.zeros(batch.num_graphs, len(ACTIVATION_KINDS), device=feats.device)
            counts.index_add_(0, batch.batch, kinds.to(counts.dtype))
            frac = counts / counts.sum(1, keepdim=True)
            feats = torch.cat([feats, frac.to(feats.dtype)], 1)
        out: Tensor = self.mlp(feats)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.spec.param_shapes)} tensors x {NUM_STATS} "
            f"statistics -> {self.mlp})"
        )
