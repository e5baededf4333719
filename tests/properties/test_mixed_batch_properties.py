"""Graph models on mixed-architecture batches (CNNs of different depths, kernels, activations,
with and without residual connections; kind embeddings on, general paths):

1. Invariance: every network of the batch permuted by its own hidden permutation (drawn by
   Hypothesis; residual-coupled channels together) leaves NG-GNN's and NG-T's outputs unchanged,
   in float32 and float64 — and the permuted networks compute the same functions.
2. Sensitivity: moving one network's incoming kernels of two channels of its last conv layer
   without their outgoing weights (not a symmetry) changes that network's output, and only
   that one.
3. Batch independence: a network's output does not depend on the other networks of its batch.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nngraph_core as ngc
from nngraph_datasets import wild_cnn
from nngraph_layers import NGGNN, NGTransformer
from nngraph_testing import assert_same_function, hidden_permutations

#: a depth-2 relu CNN, a depth-4 residual tanh CNN with 5x5 kernels, a depth-3 gelu CNN
ARCHS = [
    wild_cnn(2, 4, 3, "relu"),
    wild_cnn(4, 3, 5, "tanh", residual=True),
    wild_cnn(3, 4, 3, "gelu"),
]
INPUT = (1, 12, 12)
TOL = {
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
}


def _networks(seed: int, dtype: torch.dtype) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [a.module().to(dtype).eval() for a in ARCHS]


def _model(kind: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    if kind == "ngnn":
        model: nn.Module = NGGNN(
            edge_dim=25, widths=(1, 4, 4, 4, 4, 4, 4, 10), num_outputs=2, hidden_channels=8,
            num_layers=3, dropout=0.0, kind_embeddings=True,
        )  # fmt: skip
    else:
        model = NGTransformer(
            25, 1, 10, 6, 2, node_dim=16, edge_channels=8, attention_dim=16, node_hidden_dim=16,
            edge_hidden_dim=8, num_layers=2, heads=2, out_hidden_dim=16, dropout=0.0,
            kind_embeddings=True,
        )  # fmt: skip
    return model.to(dtype).eval()


def _batch(nets: list[nn.Module]) -> ngc.GraphBatch:
    return ngc.batch([ngc.from_module(n, input_shape=INPUT) for n in nets], kernel_shape=(5, 5))


@pytest.mark.parametrize("kind", ["ngnn", "ngt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@settings(max_examples=50, deadline=None)  # three CNN graphs and two models per example
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_mixed_batch_is_invariant_to_each_networks_permutations(
    kind: str, dtype: torch.dtype, data: st.DataObject, seed: int
) -> None:
    nets = _networks(seed, dtype)
    permuted = []
    for i, net in enumerate(nets):
        spec = ngc.network_spec(net, input_shape=INPUT)
        perm = data.draw(hidden_permutations(spec), label=f"permutation {i}")
        other = ngc.permute_hidden(net, perm, spec=spec)
        assert isinstance(other, nn.Module)
        permuted.append(other)
    x = torch.randn(3, *INPUT, dtype=dtype)
    for a, b in zip(nets, permuted, strict=True):
        assert_same_function(a, b, x)
    model = _model(kind, dtype)
    with torch.no_grad():
        out, out_p = model(_batch(nets)), model(_batch(permuted))
    torch.testing.assert_close(out_p, out, **TOL[dtype])


@pytest.mark.parametrize("kind", ["ngnn", "ngt"])
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), which=st.integers(0, len(ARCHS) - 1))
def test_an_illegal_permutation_changes_only_its_network(kind: str, seed: int, which: int) -> None:
    dtype = torch.float64
    nets = _networks(seed, dtype)
    broken = [n for n in nets]
    net = nets[which]
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    # the last conv layer (within reach of the readout): incoming kernels only, not a symmetry
    w = sd[f"layers.{ARCHS[which].depth - 1}.weight"]
    w[[0, 1]] = w[[1, 0]]
    other = ARCHS[which].module().to(dtype).eval()
    other.load_state_dict(sd)
    broken[which] = other
    model = _model(kind, dtype)
    with torch.no_grad():
        out, out_b = model(_batch(nets)), model(_batch(broken))
    changed = (out_b - out).abs().amax(1)
    assert changed[which] > 1e-6
    keep = [i for i in range(len(nets)) if i != which]
    torch.testing.assert_close(out_b[keep], out[keep], **TOL[dtype])


@pytest.mark.parametrize("kind", ["ngnn", "ngt"])
def test_a_networks_output_does_not_depend_on_its_batch(kind: str) -> None:
    dtype = torch.float64
    nets = _networks(3, dtype)
    model = _model(kind, dtype)
    with torch.no_grad():
        together = model(_batch(nets))
        alone = torch.cat([model(_batch([n])) for n in nets])
    torch.testing.assert_close(together, alone, **TOL[dtype])
