"""Permutation properties of NG-T (nngraph-testing base classes): sparse and dense attention,
invariant and equivariant heads, with and without probe features, MLP and CNN graphs."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

import nngraph_core as ngc
from nngraph_layers.ngt import NGTransformer
from nngraph_testing import STRUCTURAL_PROBE_DIM as PROBE_DIM
from nngraph_testing import EquivariantModelTests, InvariantModelTests
from nngraph_testing import batch_with_structural_probes as batch_with_probes

# Tiny widths, paper depth (4 layers), the usual 1/sqrt(head width) temperature, Fourier sigma 3
# (as for NG-GNN) and a wider readout: at initialisation this configuration reacts most clearly
# to an uncoupled permutation (the power test), also on networks without biases and with one
# input. 4 layers let information cross the deepest drawn network (3 parameterised layers).
TINY: dict[str, object] = {
    "node_dim": 16,
    "edge_channels": 16,
    "attention_dim": 16,
    "node_hidden_dim": 16,
    "edge_hidden_dim": 16,
    "heads": 2,
    "num_layers": 4,
    "scale": "head",
    "sigma": 3.0,
    "out_hidden_dim": 64,
    "num_frequencies": 8,
    "dropout": 0.0,
}


def tiny_ngt(template: ngc.GraphTemplate, dtype: torch.dtype, **kwargs: object) -> NGTransformer:
    model = NGTransformer.for_graphs(template, num_outputs=3, **{**TINY, **kwargs}).to(dtype)
    if model.head_kind == "equivariant":
        # Deltas at scale 1 instead of 0.01: the edit is far above the equality tolerance, so
        # the sensitivity check is stronger (0.01 would pass too).
        with torch.no_grad():
            model.head.bias_scale.fill_(1.0)  # type: ignore[union-attr]
            model.head.weight_scale.fill_(1.0)  # type: ignore[union-attr]
    return model


class _ProbeRunner:
    def run_model(self, model: nn.Module, template: ngc.GraphTemplate, params: Tensor) -> Tensor:
        out: Tensor = model(batch_with_probes(template, params))
        return out


# Four classes cover both attention modes, both heads and probes on/off (each property runs
# 200 examples under CI): sparse without probes / dense with probes for the invariant head,
# the other two combinations for the equivariant head. Two more cover options of the sparse
# invariant model: kind embeddings and the per-layer readout.


class TestNGTSparseInvariant(InvariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return tiny_ngt(template, dtype, attention="sparse")


class TestNGTSparseInvariantKinds(InvariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return tiny_ngt(template, dtype, attention="sparse", kind_embeddings=True)


class TestNGTSparseInvariantLayersReadout(InvariantModelTests):
    """With the per-layer readout (`pooling="layers"`: layer means + output neurons)."""

    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return tiny_ngt(template, dtype, attention="sparse", pooling="layers")


class TestNGTDenseInvariantProbes(_ProbeRunner, InvariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return tiny_ngt(template, dtype, attention="dense", use_probes=True, probe_dim=PROBE_DIM)


class TestNGTSparseEquivariantProbes(_ProbeRunner, EquivariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return tiny_ngt(
            template,
            dtype,
            attention="sparse",
            head="equivariant",
            use_probes=True,
            probe_dim=PROBE_DIM,
        )


class TestNGTDenseEquivariant(EquivariantModelTests):
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return tiny_ngt(template, dtype, attention="dense", head="equivariant")
