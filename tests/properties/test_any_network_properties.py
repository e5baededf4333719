"""Symmetry and exactness properties of traced networks: residual blocks, normalization layers,
attention blocks (float64, small random networks).

1. A random symmetry of the family — hidden permutations of every coupled node set: channels
   joined by a residual add permute together, a layer with its normalization, attention heads
   as blocks and dimensions inside each head — leaves the function unchanged, and applying it
   through the graph gives the same network as applying it to the weights.
2. The graph of the permuted network is isomorphic to the original's through the induced node
   permutation (features, types, edges carried over exactly); fixed nodes stay fixed.
3. weights -> graph -> weights is bit-exact (buffers such as running statistics and
   ``num_batches_tracked`` included); ``template.batch`` agrees with ``from_module``; mixed
   batches give the graphs back exactly.
4. Sensitivity: breaking a coupling changes the function — one side of a residual add
   permuted alone, a normalization's parameters permuted without its layer, channels moved
   across normalization groups, query dimensions permuted without their keys, value
   dimensions moved across heads.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import nngraph_core as ngc
from nngraph_testing import (
    FamilyRecipe,
    assert_differs,
    assert_graphs_isomorphic,
    assert_same_function,
    attention_recipes,
    device_under_test,
    family_recipes,
    hidden_permutations,
    seeds,
)

DEVICE = device_under_test()
DTYPE = torch.float64
#: (family, strategy arguments): residual blocks with and without a projection shortcut
CASES = [
    ("resnet", {"projection": True}),
    ("resnet", {"projection": False}),
    ("norm", {}),
    ("attention", {}),
]
CASE_IDS = ["resnet-projection", "resnet-identity", "norm", "attention"]


def _draw(
    data: st.DataObject, family: str, **kwargs: object
) -> tuple[FamilyRecipe, nn.Module, int]:
    recipe = data.draw(family_recipes(family, **kwargs), label="architecture")
    seed = data.draw(seeds, label="seed")
    return recipe, recipe.build(seed, DTYPE).to(DEVICE), seed


def _spec(recipe: FamilyRecipe, module: nn.Module) -> ngc.NetworkSpec:
    return ngc.network_spec(module, input_shape=recipe.input_shape)


def _loaded(module: nn.Module, template: ngc.GraphTemplate, params: torch.Tensor) -> nn.Module:
    other = copy.deepcopy(module)
    other.load_state_dict(template.state_dict(params, module.state_dict()))
    return other


@pytest.mark.parametrize(("family", "kwargs"), CASES, ids=CASE_IDS)
@given(data=st.data())
def test_symmetry_preserves_function(
    family: str, kwargs: dict[str, object], data: st.DataObject
) -> None:
    recipe, module, seed = _draw(data, family, **kwargs)
    spec = _spec(recipe, module)
    perm = data.draw(hidden_permutations(spec), label="permutation")
    permuted = ngc.permute_hidden(module, perm, spec=spec)
    assert isinstance(permuted, nn.Module)
    assert_same_function(module, permuted, recipe.example_input(3, seed, DTYPE).to(DEVICE))
    # The same symmetry applied through the graph gives the same network, bit for bit.
    graph = ngc.from_module(module, input_shape=recipe.input_shape)
    through_graph = ngc.to_state_dict(graph.permute_hidden(perm))
    for key, value in permuted.state_dict().items():
        assert torch.equal(through_graph[key], value), key


@pytest.mark.parametrize(("family", "kwargs"), CASES, ids=CASE_IDS)
@given(data=st.data())
def test_permuted_graph_is_isomorphic(
    family: str, kwargs: dict[str, object], data: st.DataObject
) -> None:
    recipe, module, _ = _draw(data, family, **kwargs)
    spec = _spec(recipe, module)
    perm = data.draw(hidden_permutations(spec), label="permutation")
    graph = ngc.from_module(module, input_shape=recipe.input_shape)
    permuted = ngc.permute_hidden(module, perm, spec=spec)
    assert isinstance(permuted, nn.Module)
    permuted_graph = ngc.from_module(permuted, input_shape=recipe.input_shape)
    template = ngc.GraphTemplate(spec)
    sigma = template.node_permutation(perm)
    assert_graphs_isomorphic(permuted_graph, graph, sigma)
    # Inputs, outputs and embeddings (and every node outside a hidden set) are fixed points.
    fixed = template.node_set < 0
    assert torch.equal(sigma[fixed], torch.arange(template.num_nodes)[fixed])
    assert bool((template.node_role[~fixed] == int(ngc.NodeRole.HIDDEN)).all())


@pytest.mark.parametrize(("family", "kwargs"), CASES, ids=CASE_IDS)
@given(data=st.data())
def test_roundtrip_is_bit_exact(
    family: str, kwargs: dict[str, object], data: st.DataObject
) -> None:
    recipe, module, seed = _draw(data, family, **kwargs)
    sd = module.state_dict()
    graph = ngc.from_module(module, input_shape=recipe.input_shape)
    back = ngc.to_state_dict(graph)
    assert list(back) == list(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key
    assert graph.node_type is not None and graph.edge_type is not None
    assert graph.node_features.shape == (graph.num_nodes, graph.spec.node_dim)
    # One gather for a zoo of this architecture agrees with converting one by one.
    others = [recipe.build(seed + i, DTYPE).to(DEVICE) for i in range(1, 3)]
    template = ngc.GraphTemplate(graph.spec)
    params = torch.stack([template.flatten(m) for m in [module, *others]])
    gb = template.batch(params)
    assert torch.equal(gb.params(), params)
    n, e = template.num_nodes, template.num_edges
    assert torch.equal(gb.node_features[:n], graph.node_features)
    assert torch.equal(gb.edge_features[:e], graph.edge_features)
    assert torch.equal(gb.edge_type[:e], graph.edge_type)
    # A mixed batch with a plain MLP gives every graph back exactly.
    mlp = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(DTYPE)
    mixed = ngc.batch([graph, ngc.from_module(mlp)])
    g_back, mlp_back = mixed.to_graphs()
    assert torch.equal(g_back.params(), graph.params())
    assert torch.equal(mlp_back.params(), ngc.from_module(mlp).params())


# -- sensitivity ------------------------------------------------------------------------------------


def _swap(n: int, i: int, j: int) -> torch.Tensor:
    p = torch.arange(n)
    p[i], p[j] = j, i
    return p


def _relabel(template: ngc.GraphTemplate, moves: dict[int, torch.Tensor]) -> torch.Tensor:
    """Node relabelling moving only the groups in ``moves`` (group -> permutation)."""
    sigma = torch.arange(template.num_nodes)
    for g, p in moves.items():
        lo = template.node_offsets[g]
        sigma[lo : lo + p.numel()] = lo + p
    return sigma


def _changes(
    recipe: FamilyRecipe, module: nn.Module, seed: int, pi: torch.Tensor, what: str
) -> None:
    template = ngc.GraphTemplate(_spec(recipe, module))
    flat = template.flatten(module)
    illegal = _loaded(module, template, flat[pi])
    x = recipe.example_input(6, seed, DTYPE).to(DEVICE)
    with torch.no_grad():
        assert_differs(illegal(x), module(x), f"{what} did not change the function")


@given(data=st.data())
def test_one_side_of_a_residual_add_is_not_a_symmetry(data: st.DataObject) -> None:
    recipe, module, seed = _draw(data, "resnet", max_channels=4)
    # A normalization over a 1x1 map outputs its shift whatever the channel holds (GroupNorm
    # with one channel per group, say): no sensitivity to test there.
    size = min(recipe.input_shape[1:])
    for stride in dict(recipe.config).get("strides", ()):
        size = -(-size // stride)
    assume(size >= 2)
    spec = _spec(recipe, module)
    template = ngc.GraphTemplate(spec)
    groups, blocks = spec.structure
    residual = [b for b in blocks if b.type == ngc.EdgeType.RESIDUAL]
    candidates = [b for b in residual if groups[b.dst].size >= 2]
    assume(candidates)
    add = data.draw(st.sampled_from(candidates), label="residual add")
    # The branch that ends in the add's target: the target and the groups coupled to it one to
    # one by normalizations (not by residual connections).
    side = {add.dst}
    changed = True
    while changed:
        changed = False
        for b in blocks:
            if (
                b.pattern == "diag"
                and b.type == ngc.EdgeType.NORM
                and (b.src in side) != (b.dst in side)
            ):
                side |= {b.src, b.dst}
                changed = True
    n = groups[add.dst].size
    i = data.draw(st.integers(0, n - 2), label="swapped channel")
    pi = template.relabel_index(_relabel(template, dict.fromkeys(side, _swap(n, i, i + 1))))
    _changes(recipe, module, seed, pi, "permuting one side of a residual add")


@given(data=st.data())
def test_normalization_without_its_layer_is_not_a_symmetry(data: st.DataObject) -> None:
    # (a LayerNorm over one or two channels keeps only a constant or a sign: no sensitivity)
    norms = ("batch", "batch_plain", "layer", "none")
    recipe, module, seed = _draw(data, "norm", min_hidden_width=3, max_width=4, norms=norms)
    spec = _spec(recipe, module)
    template = ngc.GraphTemplate(spec)
    groups, blocks = spec.structure
    norms = [i for i, g in enumerate(groups) if g.type == ngc.NodeType.NORM and g.size >= 2]
    assume(norms)
    g = data.draw(st.sampled_from(norms), label="normalization")
    n = groups[g].size
    i = data.draw(st.integers(0, n - 2), label="swapped channel")
    p = _swap(n, i, i + 1)
    # Move the normalization's own parameters (shift, running statistics, scale) only.
    pi = torch.arange(template.num_params)
    lo = template.node_offsets[g]
    node_param = template.node_param.view(template.num_nodes, -1)[lo : lo + n]
    valid = node_param >= 0
    pi[node_param[valid]] = node_param[p][valid]
    e0 = next(
        template.edge_offsets[k]
        for k, b in enumerate(blocks)
        if b.dst == g and b.type == ngc.EdgeType.NORM
    )
    edge_param = template.edge_param[e0 : e0 + n]
    valid_e = edge_param >= 0
    pi[edge_param[valid_e]] = edge_param[p][valid_e]
    assume(not torch.equal(pi, torch.arange(template.num_params)))
    _changes(recipe, module, seed, pi, "permuting a normalization without its layer")


@given(data=st.data())
def test_channels_across_normalization_groups_are_not_a_symmetry(data: st.DataObject) -> None:
    # GroupNorms of two groups of two channels
    recipe, module, seed = _draw(data, "norm", min_hidden_width=4, max_width=4, norms=("group",))
    spec = _spec(recipe, module)
    template = ngc.GraphTemplate(spec)
    groups, blocks = spec.structure
    # GroupNorms with two or more groups: the channels they normalise (member edges into the
    # statistics nodes) and the hidden set those channels belong to.
    grouped = [
        b.src
        for b in blocks
        if b.type == ngc.NodeType.NORM_GROUP
        and groups[b.dst].type == ngc.NodeType.NORM_GROUP
        and groups[b.dst].size >= 2
    ]
    # (groups of one channel each are per-channel statistics: any permutation is legal then)
    sets = [
        hs
        for hs in spec.hidden_sets
        if any(g in hs.groups for g in grouped) and hs.parent is not None and hs.size > hs.block > 1
    ]
    assume(sets)
    hs = data.draw(st.sampled_from(sets), label="grouped channels")
    # Swap the last channel of the first group with the first channel of the second group.
    p = _swap(hs.size, hs.block - 1, hs.block)
    with pytest.raises(ngc.ShapeMismatchError, match="blocks"):
        ngc.HiddenPermutation(
            tuple(
                p if k == spec.hidden_sets.index(hs) else q
                for k, q in enumerate(ngc.HiddenPermutation.identity(spec).perms)
            )
        ).check(spec)
    pi = template.relabel_index(_relabel(template, dict.fromkeys(hs.groups, p)))
    _changes(recipe, module, seed, pi, "moving channels across normalization groups")


@pytest.mark.parametrize("broken", ["query without key", "value across heads"])
@given(data=st.data())
def test_attention_couplings_are_not_symmetries(broken: str, data: st.DataObject) -> None:
    # one token attends only to itself, and a LayerNorm over two channels keeps only a sign
    recipe = data.draw(
        attention_recipes(min_head_dim=2, min_dim=3, min_tokens=2), label="architecture"
    )
    seed = data.draw(seeds, label="seed")
    module = recipe.build(seed, DTYPE).to(DEVICE)
    spec = _spec(recipe, module)
    template = ngc.GraphTemplate(spec)
    groups = spec.groups
    kind = ngc.NodeType.QUERY if broken == "query without key" else ngc.NodeType.VALUE
    g = data.draw(
        st.sampled_from([i for i, grp in enumerate(groups) if grp.type == kind]), label="block"
    )
    heads = int(dict(recipe.config)["heads"])  # type: ignore[call-overload]
    dim = groups[g].size
    head_dim = dim // heads
    if broken == "query without key":
        p = _swap(dim, 0, 1)  # two dimensions of the first head, its keys left in place
    else:
        assume(heads >= 2)
        p = _swap(dim, 0, head_dim)  # a value dimension of head 0 into head 1
    pi = template.relabel_index(_relabel(template, {g: p}))
    _changes(recipe, module, seed, pi, f"moving a {broken}")


@given(data=st.data())
def test_head_permutations_move_whole_heads(data: st.DataObject) -> None:
    recipe = data.draw(attention_recipes(), label="architecture")
    module = recipe.build(data.draw(seeds, label="seed"), DTYPE)
    spec = _spec(recipe, module)
    perm = data.draw(hidden_permutations(spec), label="permutation")
    perm.check(spec)
    heads = int(dict(recipe.config)["heads"])  # type: ignore[call-overload]
    groups = spec.groups
    for k, (hs, p) in enumerate(zip(spec.hidden_sets, perm.perms, strict=True)):
        if hs.parent is None or hs.parent < 0:
            continue
        if groups[spec.hidden_sets[hs.parent].groups[0]].type != ngc.NodeType.HEAD:
            continue
        # Query / key / value dimensions move with their head, in blocks of one head.
        owners = torch.div(p, hs.block, rounding_mode="floor").view(-1, hs.block)
        assert bool((owners == owners[:, :1]).all())
        assert torch.equal(owners[:, 0], perm.perms[hs.parent])
        if heads > 1 and hs.block > 1:
            bad = list(perm.perms)
            bad[k] = torch.roll(p, 1)  # one dimension leaves its head
            with pytest.raises(ngc.ShapeMismatchError, match="blocks"):
                ngc.HiddenPermutation(tuple(bad)).check(spec)
