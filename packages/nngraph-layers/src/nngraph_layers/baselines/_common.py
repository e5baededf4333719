"""Helpers shared by the baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from torch import Tensor, nn

import nngraph_core as ngc

from ..dropout import Dropout

if TYPE_CHECKING:
    from ._normalize import ParamNormalizer

__all__ = ["Baseline", "batch_params", "relu_mlp"]

B = TypeVar("B", bound="Baseline")


def relu_mlp(
    width: int, hidden: Sequence[int], num_outputs: int, dropout: float
) -> list[nn.Module]:
    """`[Linear, ReLU, (Dropout)] * len(hidden) + [Linear]` from `width` to `num_outputs`."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_outputs))
    return layers


class Baseline(nn.Module):
    """What the baselines share: built for one architecture, per-layer input normalisation."""

    spec: ngc.NetworkSpec
    normalizer: ParamNormalizer

    @classmethod
    def for_graphs(
        cls: type[B],
        template: ngc.GraphTemplate | ngc.NetworkSpec,
        num_outputs: int = 10,
        **kwargs: object,
    ) -> B:
        """A model for graphs of `template` (keyword arguments as in the constructor)."""
        spec = template.spec if isinstance(template, ngc.GraphTemplate) else template
        return cls(spec, num_outputs, **kwargs)  # type: ignore[call-arg]

    def fit_normalization(self: B, params: Tensor) -> B:
        """Per-layer statistics from training parameters `[B, P]`."""
        self.normalizer.fit(params)
        return self


def batch_params(batch: ngc.GraphBatch, spec: ngc.NetworkSpec, model: str) -> Tensor:
    """Flat parameters `[B, P]` of a batch of one architecture `spec` (one scatter)."""
    if batch.template is None or batch.template.spec != spec:
        raise ngc.ShapeMismatchError(
            f"{model} needs a batch of its own architecture built by GraphTemplate.batch "
            f"({spec.describe()})"
        )
    return batch.params()
