"""The symmetry and exactness properties of neural graphs, for random MLPs and CNNs.

1. A hidden permutation leaves the network's function unchanged.
2. The graph of the permuted network is isomorphic to the original's through the induced node
   permutation (node features, edges and edge features carried over exactly).
3. weights -> graph -> weights is bit-exact; ``template.batch`` agrees with ``from_module``.
4. Inputs and outputs are never permuted; uncoupled (illegal) permutations change the function.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nngraph_core as ngc
from nngraph_testing import (
    SMOOTH_ACTIVATIONS,
    assert_differs,
    assert_graphs_isomorphic,
    assert_same_function,
    device_under_test,
    hidden_permutations,
    network_recipes,
    nontrivial_hidden_permutations,
    partial_permutation_index,
    seeds,
)

DEVICE = device_under_test()

KINDS = ["mlp", "cnn"]
DTYPES = [torch.float32, torch.float64]


def _build(data: st.DataObject, kind: str, dtype: torch.dtype, **kwargs: object):
    recipe = data.draw(network_recipes(kind, **kwargs), label="architecture")
    seed = data.draw(seeds, label="seed")
    module = recipe.build(seed, dtype).to(DEVICE)
    return recipe, module, seed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_hidden_permutation_preserves_function(
    kind: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    recipe, module, seed = _build(data, kind, dtype)
    spec = ngc.network_spec(module, input_shape=recipe.input_shape)
    perm = data.draw(hidden_permutations(spec), label="permutation")
    permuted = ngc.permute_hidden(module, perm, spec=spec)
    assert_same_function(module, permuted, recipe.example_input(4, seed, dtype).to(DEVICE))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_permuted_graph_is_isomorphic(kind: str, dtype: torch.dtype, data: st.DataObject) -> None:
    recipe, module, _ = _build(data, kind, dtype)
    spec = ngc.network_spec(module, input_shape=recipe.input_shape)
    perm = data.draw(hidden_permutations(spec), label="permutation")
    graph = ngc.from_module(module, input_shape=recipe.input_shape)
    permuted_graph = ngc.from_module(
        ngc.permute_hidden(module, perm, spec=spec), input_shape=recipe.input_shape
    )
    sigma = ngc.GraphTemplate(spec).node_permutation(perm)
    assert_graphs_isomorphic(permuted_graph, graph, sigma)
    # The graph-level action agrees with permuting the network.
    direct = graph.permute_hidden(perm)
    assert torch.equal(direct.node_features, permuted_graph.node_features)
    assert torch.equal(direct.edge_features, permuted_graph.edge_features)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_roundtrip_is_bit_exact(kind: str, dtype: torch.dtype, data: st.DataObject) -> None:
    recipe, module, seed = _build(data, kind, dtype)
    sd = module.state_dict()
    spec = ngc.network_spec(module, input_shape=recipe.input_shape)
    # Key order must not matter.
    keys = list(sd)
    random.Random(seed).shuffle(keys)
    shuffled = {k: sd[k] for k in keys}
    graph = ngc.from_state_dict(shuffled, spec)
    back = ngc.to_state_dict(graph)
    assert list(back) == list(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        assert torch.equal(back[key], value), key
    # Node features are the biases, edge features hold every weight once (the rest is padding).
    weights = sum(sd[layer.weight_key].numel() for layer in spec.layers)
    assert int((graph.edge_param >= 0).sum()) == weights


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_template_batch_agrees_with_from_module(
    kind: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    recipe = data.draw(network_recipes(kind), label="architecture")
    seed = data.draw(seeds, label="seed")
    size = data.draw(st.integers(1, 4), label="batch size")
    modules = [recipe.build(seed + i, dtype).to(DEVICE) for i in range(size)]
    template = ngc.GraphTemplate.from_module(modules[0], input_shape=recipe.input_shape)
    params = torch.stack([template.flatten(m) for m in modules])
    gb = template.batch(params)
    assert torch.equal(gb.params(), params)
    for i, m in enumerate(modules):
        g = ngc.from_module(m, input_shape=recipe.input_shape)
        n0, n1 = int(gb.node_ptr[i]), int(gb.node_ptr[i + 1])
        e0, e1 = int(gb.edge_ptr[i]), int(gb.edge_ptr[i + 1])
        assert torch.equal(gb.node_features[n0:n1], g.node_features)
        assert torch.equal(gb.edge_features[e0:e1], g.edge_features)
        assert torch.equal(gb.edge_index[:, e0:e1] - n0, g.edge_index)
        assert torch.equal(gb.node_role[n0:n1], g.node_role)
    # A mixed-architecture batch of the same graphs gives them back exactly.
    graphs = [ngc.from_module(m, input_shape=recipe.input_shape) for m in modules]
    for g, back in zip(graphs, ngc.batch(graphs).to_graphs(), strict=True):
        assert torch.equal(back.params(), g.params())


@given(data=st.data())
def test_mixed_architecture_batch_roundtrip(data: st.DataObject) -> None:
    recipes = data.draw(
        st.lists(network_recipes("any"), min_size=1, max_size=4), label="architectures"
    )
    seed = data.draw(seeds, label="seed")
    modules = [r.build(seed + i, torch.float32).to(DEVICE) for i, r in enumerate(recipes)]
    graphs = [
        ngc.from_module(m, input_shape=r.input_shape) for m, r in zip(modules, recipes, strict=True)
    ]
    gb = ngc.batch(graphs)
    # Kernels are re-padded to the largest height and the largest width among the graphs.
    width = max(g.kernel_shape[0] for g in graphs) * max(g.kernel_shape[1] for g in graphs)
    assert gb.edge_features.shape == (sum(g.num_edges for g in graphs), width)
    assert int(gb.batch.max()) == len(graphs) - 1
    for m, back in zip(modules, gb.to_graphs(), strict=True):
        sd = ngc.to_state_dict(back)
        assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_inputs_and_outputs_are_fixed_points(kind: str, data: st.DataObject) -> None:
    recipe, module, _ = _build(data, kind, torch.float64)
    spec = ngc.network_spec(module, input_shape=recipe.input_shape)
    template = ngc.GraphTemplate(spec)
    perm = data.draw(hidden_permutations(spec), label="permutation")
    sigma = template.node_permutation(perm)
    fixed = template.node_role != int(ngc.NodeRole.HIDDEN)
    assert torch.equal(sigma[fixed], torch.arange(template.num_nodes)[fixed])
    assert torch.equal(template.node_layer[sigma], template.node_layer)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_uncoupled_permutation_changes_function(
    kind: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    recipe, module, seed = _build(
        data,
        kind,
        dtype,
        min_hidden_width=2,
        activations=SMOOTH_ACTIVATIONS,
        **({"min_layers": 2} if kind == "mlp" else {}),
    )
    spec = ngc.network_spec(module, input_shape=recipe.input_shape)
    template = ngc.GraphTemplate(spec)
    perm = data.draw(nontrivial_hidden_permutations(spec), label="permutation")
    layer = next(
        i for i, p in enumerate(perm.perms, start=1) if not torch.equal(p, torch.arange(p.numel()))
    )
    which = data.draw(st.sampled_from(["incoming", "outgoing"]), label="coupling broken")
    pi = partial_permutation_index(
        template,
        layer,
        perm.perms[layer - 1],
        incoming=which == "incoming",
        outgoing=which == "outgoing",
    )
    flat = template.flatten(module)
    illegal = ngc.permute_hidden(module, ngc.HiddenPermutation.identity(spec), spec=spec)
    illegal.load_state_dict(template.unflatten(flat[pi]))
    legal = ngc.permute_hidden(module, perm, spec=spec)
    x = recipe.example_input(8, seed, dtype).to(DEVICE)
    with torch.no_grad():
        assert_same_function(module, legal, x)
        assert_differs(
            illegal(x), module(x), f"breaking the {which} coupling did not change the function"
        )


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_permuting_outputs_changes_function(kind: str, data: st.DataObject) -> None:
    recipe, module, seed = _build(data, kind, torch.float64, activations=SMOOTH_ACTIVATIONS)
    n_out = recipe.widths[-1]
    if n_out < 2:
        return
    spec = ngc.network_spec(module, input_shape=recipe.input_shape)
    template = ngc.GraphTemplate(spec)
    swap = torch.arange(n_out)
    swap[[0, 1]] = swap[[1, 0]]
    pi = partial_permutation_index(template, spec.num_layers, swap, incoming=True, outgoing=False)
    other = ngc.permute_hidden(module, ngc.HiddenPermutation.identity(spec), spec=spec)
    other.load_state_dict(template.unflatten(template.flatten(module)[pi]))
    x = recipe.example_input(8, seed, torch.float64).to(DEVICE)
    with torch.no_grad():
        assert_differs(
            other(x), module(x), "swapping two output neurons did not change the function"
        )
        torch.testing.assert_close(other(x)[:, swap], module(x), rtol=0, atol=0)
