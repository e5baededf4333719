"""Permutation properties of NG-GNN (nngraph-testing base classes), both execution paths."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

import nngraph_core as ngc
from nngraph_layers import NGGNN
from nngraph_testing import STRUCTURAL_PROBE_DIM as PROBE_DIM
from nngraph_testing import EquivariantModelTests, InvariantModelTests
from nngraph_testing import batch_with_structural_probes as batch_with_probes

# 4 message-passing layers (paper depth): information crosses the deepest drawn network (3
# parameterised layers), so the sensitivity tests have power.
SMALL = {"hidden_channels": 16, "num_layers": 4, "num_frequencies": 16, "dropout": 0.0}


class _ProbeRunner:
    def run_model(self, model: nn.Module, template: ngc.GraphTemplate, params: Tensor) -> Tensor:
        out: Tensor = model(batch_with_probes(template, params))
        return out


class TestNGGNNInvariantFast(InvariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return NGGNN.for_graphs(template, num_outputs=3, fast=True, **SMALL).to(dtype)


class TestNGGNNInvariantSparse(InvariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return NGGNN.for_graphs(template, num_outputs=3, fast=False, **SMALL).to(dtype)


class TestNGGNNInvariantProbes(_ProbeRunner, InvariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return NGGNN.for_graphs(
            template, num_outputs=3, use_probes=True, probe_dim=PROBE_DIM, **SMALL
        ).to(dtype)


class TestNGGNNInvariantKinds(InvariantModelTests):
    """With activation / node-type / edge-type embeddings (sparse path: the embeddings are
    read from the batch's per-node attributes)."""

    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return NGGNN.for_graphs(
            template, num_outputs=3, fast=False, kind_embeddings=True, **SMALL
        ).to(dtype)


class TestNGGNNInvariantLayersReadout(InvariantModelTests):
    """With the per-layer readout (`pooling="layers"`: layer means + output neurons)."""

    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return NGGNN.for_graphs(template, num_outputs=3, pooling="layers", **SMALL).to(dtype)


class TestNGGNNEquivariantFast(EquivariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        model = NGGNN.for_graphs(template, head="equivariant", fast=True, **SMALL).to(dtype)
        _visible_deltas(model)
        return model


class TestNGGNNEquivariantSparseProbes(_ProbeRunner, EquivariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        model = NGGNN.for_graphs(
            template, head="equivariant", fast=False, use_probes=True, probe_dim=PROBE_DIM, **SMALL
        ).to(dtype)
        _visible_deltas(model)
        return model


def _visible_deltas(model: NGGNN) -> None:
    """Scale the deltas up to 1 so the edit is far above the equality tolerance (the default
    0.01 would still pass; this makes the sensitivity check stronger)."""
    with torch.no_grad():
        model.head.bias_scale.fill_(1.0)  # type: ignore[union-attr]
        model.head.weight_scale.fill_(1.0)  # type: ignore[union-attr]
