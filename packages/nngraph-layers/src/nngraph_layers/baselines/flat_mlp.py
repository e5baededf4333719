"""MLP on the flattened, normalised weights -- the weakest baseline."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

import nngraph_core as ngc

from ._common import Baseline, batch_params, relu_mlp
from ._normalize import ParamNormalizer

__all__ = ["FlatMLP"]


class FlatMLP(Baseline):
    r"""An MLP on the flat parameter vector, $\hat y = \mathrm{MLP}(\tilde\theta)$, with
    $\tilde\theta$ standardised per layer (`ParamNormalizer`).

    It ignores the hidden-neuron permutation symmetry: the same function written with permuted
    neurons gets a different prediction, so it must learn the symmetry from data and fails to on
    the INR benchmarks (MNIST INRs: ~18% vs ~95% for graph models, DESIGN §3). It is the
    comparison table's "MLP" row.

    Args:
        spec: the architecture.
        num_outputs: classes / targets.
        hidden: widths of the hidden layers.
        dropout: dropout after each hidden activation.

    Shapes:
        - input: [`GraphBatch`][nngraph_core.GraphBatch] of `B` networks of `spec`
        - output: `[B, num_outputs]`
    """

    def __init__(
        self,
        spec: ngc.NetworkSpec,
        num_outputs: int,
        *,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.normalizer = ParamNormalizer(spec)
        self.mlp = nn.Sequential(*relu_mlp(spec.num_params, hidden, num_outputs, dropout))

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        x = self.normalizer(batch_params(batch, self.spec, "FlatMLP"))
        out: Tensor = self.mlp(x)
        return out
