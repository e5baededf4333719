"""Per-tensor standardisation of flat parameter vectors (statistics from a training split)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import nngraph_core as ngc

__all__ = ["ParamNormalizer"]


class ParamNormalizer(nn.Module):
    r"""Standardise each parameter tensor of an architecture (each layer's weight and bias):
    $\tilde\theta_i = (\theta_i - \mu_{k(i)}) / \sigma_{k(i)}$ with one mean and standard
    deviation per state-dict key $k$. Starts as the identity; `fit` sets the
    statistics from training parameters. Per-tensor statistics are shared by all neurons of a
    layer, so the map commutes with hidden-neuron permutations.

    Args:
        spec: the architecture.

    Shapes:
        - input: `[B, P]`
        - output: `[B, P]`
    """

    key_index: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, spec: ngc.NetworkSpec) -> None:
        super().__init__()
        sizes = [int(torch.Size(s).numel()) for s in spec.param_shapes]
        index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.register_buffer("key_index", index, persistent=False)
        self.register_buffer("mean", torch.zeros(len(sizes)))
        self.register_buffer("std", torch.ones(len(sizes)))

    @torch.no_grad()
    def fit(self, params: Tensor, *, eps: float = 1e-8) -> ParamNormalizer:
        """Set the per-tensor mean and standard deviation from training parameters `[B, P]`."""
        p = params.detach().to(self.mean.dtype)
        n = self.mean.numel()
        count = torch.bincount(self.key_index, minlength=n).to(p.dtype) * p.shape[0]
        total = torch.zeros(n, dtype=p.dtype, device=p.device).index_add_(
            0, self.key_index, p.sum(0)
        )
        mean = total / count
        sq = torch.zeros(n, dtype=p.dtype, device=p.device).index_add_(
            0, self.key_index, (p - mean[self.key_index]).square().sum(0)
        )
        self.mean.copy_(mean)
        self.std.copy_((sq / count).sqrt().clamp_min(eps))
        return self

    def forward(self, params: Tensor) -> Tensor:
        idx = self.key_index
        return (params - self.mean[idx].to(params.dtype)) / self.std[idx].to(params.dtype)
