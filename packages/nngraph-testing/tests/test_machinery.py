"""The test machinery itself: assertions catch what they must, base classes have power."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import nngraph_core as ngc
import nngraph_testing as ngt


def test_tolerances_are_by_dtype_and_tight() -> None:
    assert ngt.tolerance(torch.float64)[0] <= 1e-10
    assert ngt.tolerance(torch.float32)[0] <= 1e-4
    with pytest.raises(ValueError):
        ngt.tolerance(torch.int64)
    x = torch.ones(3, dtype=torch.float32)
    ngt.assert_close_by_dtype(x + 1e-7, x)
    with pytest.raises(AssertionError):
        ngt.assert_close_by_dtype(x + 1e-3, x)
    with pytest.raises(AssertionError):
        ngt.assert_close_by_dtype(x.double() + 1e-8, x.double())


def test_assert_sensitive_and_equivariant() -> None:
    x = torch.arange(6.0, dtype=torch.float64)
    rev = lambda t: t.flip(0)  # noqa: E731
    ngt.assert_equivariant(lambda t: 2 * t, x, rev, rev)
    ngt.assert_invariant(lambda t: t.sum(0, keepdim=True), x, rev)
    ngt.assert_sensitive(lambda t: t, x, rev)
    with pytest.raises(AssertionError, match="did not change"):
        ngt.assert_sensitive(lambda t: t.sum(0, keepdim=True), x, rev)
    with pytest.raises(AssertionError):
        ngt.assert_equivariant(lambda t: t.cumsum(0), x, rev, rev)


def test_isomorphism_assert_catches_a_wrong_map() -> None:
    mlp = ngt.NetworkRecipe("mlp", (2, 4, 1), ("tanh",), (True, True)).build(0)
    spec = ngc.network_spec(mlp)
    perm = ngc.HiddenPermutation.from_lists([[1, 0, 3, 2]])
    g = ngc.from_module(mlp)
    gp = ngc.from_module(ngc.permute_hidden(mlp, perm))
    sigma = ngc.GraphTemplate(spec).node_permutation(perm)
    ngt.assert_graphs_isomorphic(gp, g, sigma)
    with pytest.raises(AssertionError):
        ngt.assert_graphs_isomorphic(gp, g, torch.arange(g.num_nodes))


@given(recipe=ngt.network_recipes("any"), seed=ngt.seeds)
@settings(max_examples=20)
def test_recipes_build_runnable_seeded_networks(recipe: ngt.NetworkRecipe, seed: int) -> None:
    a, b = recipe.build(seed), recipe.build(seed)
    x = recipe.example_input(2, seed)
    assert torch.equal(a(x), b(x))
    spec = ngc.network_spec(a, input_shape=recipe.input_shape)
    assert spec.widths == recipe.widths
    assert 1 <= spec.num_layers <= 5


@given(data=st.data())
@settings(max_examples=30)
def test_partial_permutation_with_both_couplings_is_legal(data: st.DataObject) -> None:
    recipe = data.draw(ngt.mlp_recipes(min_layers=2))
    mlp = recipe.build(0)
    template = ngc.GraphTemplate.from_module(mlp)
    perm = data.draw(ngt.hidden_permutations(template.spec))
    for layer, p in enumerate(perm.perms, start=1):
        single = ngc.HiddenPermutation(
            tuple(
                p if i == layer - 1 else torch.arange(q.numel()) for i, q in enumerate(perm.perms)
            )
        )
        assert torch.equal(
            ngt.partial_permutation_index(template, layer, p), template.param_permutation(single)
        )


# -- the base classes on toy models --------------------------------------------------------------


class SumPool(nn.Module):
    """Invariant toy model: one round of message passing, output-node states concatenated."""

    def __init__(self, template: ngc.GraphTemplate) -> None:
        super().__init__()
        self.template = template
        self.mix = nn.Linear(template.spec.widths[-1] + 2, 3)
        nn.init.normal_(self.mix.weight)

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        t = self.template
        nodes = batch.dense_nodes()[..., 0]
        edges = batch.dense_edges().sum(-1)
        hidden = nodes[:, t.spec.widths[0] : t.node_offsets[-2]]
        # One round of message passing: node state from its bias and incoming edges, then a
        # readout over edges that couples each edge with its source's state.
        src, dst = t.edge_index[0], t.edge_index[1]
        state = torch.zeros_like(nodes).index_add(1, dst, torch.sin(3 * edges))
        state = torch.tanh(state + nodes)
        feats = [
            state[:, t.layer_nodes(t.spec.num_layers)],
            torch.tanh(hidden).sum(1, keepdim=True),
        ]
        feats.append((torch.sin(3 * edges + 0.5) * state[:, src]).sum(1, keepdim=True))
        return self.mix(torch.cat(feats, dim=1))


class Shift(nn.Module):
    """Equivariant toy model: every bias moves by a function of its incoming weights, every weight
    by a function of its source node's state (one round of message passing)."""

    def __init__(self, template: ngc.GraphTemplate) -> None:
        super().__init__()
        self.template = template

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        t = self.template
        nodes = batch.dense_nodes()[..., 0]
        edges = batch.dense_edges()
        src, dst = t.edge_index[0], t.edge_index[1]
        state = torch.tanh(
            torch.zeros_like(nodes).index_add(1, dst, torch.sin(3 * edges.sum(-1))) + nodes
        )
        new_nodes = (nodes + 0.1 * state).unsqueeze(-1)
        new_edges = edges + 0.1 * torch.tanh(3 * state[:, src] + 1).unsqueeze(-1)
        return t.params(new_nodes, new_edges)


class TestSumPoolIsInvariant(ngt.InvariantModelTests):
    kinds = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return SumPool(template).to(dtype)


class TestShiftIsEquivariant(ngt.EquivariantModelTests):
    kinds = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return Shift(template)


class ReadsFirstHidden(SumPool):
    """Broken: reads hidden neuron 0 by position -> not invariant."""

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        out = super().forward(batch)
        return out + batch.dense_nodes()[:, self.template.spec.widths[0], :]


class IgnoresInput(nn.Module):
    """Trivially invariant: must fail the sensitivity test."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.ones(3))

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        return self.bias.expand(batch.num_graphs, 3)


class _Broken(ngt.InvariantModelTests):
    model_cls: type[nn.Module]

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        if self.model_cls is IgnoresInput:
            return IgnoresInput().to(dtype)
        return self.model_cls(template).to(dtype)  # type: ignore[call-arg]


def test_base_class_catches_a_non_invariant_model() -> None:
    suite = type("T", (_Broken,), {"model_cls": ReadsFirstHidden})()
    with pytest.raises(AssertionError, match=r"not invariant|changed under"):
        suite.test_invariant_to_hidden_permutations()


def test_base_class_catches_a_trivially_invariant_model() -> None:
    suite = type("T", (_Broken,), {"model_cls": IgnoresInput})()
    with pytest.raises(AssertionError, match="did not change"):
        suite.test_sensitive_to_uncoupled_permutation()
