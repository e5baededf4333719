"""ProbeFeatures: node order, equivariance, fixed vs learned probes, CNNs, mixed batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nngraph_core as ngc
import nngraph_testing as ngt
from nngraph_probe import ProbeFeatures, coordinate_grid

recipes = st.one_of(
    ngt.network_recipes("mlp", max_width=6, max_layers=4),
    ngt.network_recipes("cnn", max_channels=4, max_conv=2, max_linear=2, max_kernel=3),
)


def _zoo(recipe: ngt.NetworkRecipe, seed: int, b: int, dtype: torch.dtype = torch.float64):
    nets = [recipe.build(seed + i, torch.float64) for i in range(b)]
    template = ngc.GraphTemplate.from_module(nets[0], input_shape=recipe.input_shape)
    return nets, template, torch.stack([template.flatten(m) for m in nets]).to(dtype)


@given(
    recipe=ngt.network_recipes("mlp", max_width=6, max_layers=4, min_hidden_width=2),
    seed=ngt.seeds,
    data=st.data(),
    dtype=ngt.dtypes,
    learned=st.booleans(),
)
def test_equivariant_to_hidden_permutations_mlp(
    recipe: ngt.NetworkRecipe, seed: int, data: st.DataObject, dtype: torch.dtype, learned: bool
) -> None:
    _check_equivariance(recipe, seed, data, dtype, learned)


@given(
    recipe=ngt.network_recipes("cnn", max_channels=4, max_conv=2, max_kernel=3, min_hidden_width=2),
    seed=ngt.seeds,
    data=st.data(),
    dtype=ngt.dtypes,
    learned=st.booleans(),
)
def test_equivariant_to_hidden_permutations_cnn(
    recipe: ngt.NetworkRecipe, seed: int, data: st.DataObject, dtype: torch.dtype, learned: bool
) -> None:
    _check_equivariance(recipe, seed, data, dtype, learned)


def _check_equivariance(
    recipe: ngt.NetworkRecipe, seed: int, data: st.DataObject, dtype: torch.dtype, learned: bool
) -> None:
    """Probe features of the permuted networks = probe features permuted by the node map."""
    _, template, params = _zoo(recipe, seed, 3, dtype)
    if template.spec.num_layers < 2:
        return
    perm = data.draw(ngt.hidden_permutations(template.spec), label="permutation")
    probe = ProbeFeatures.for_graphs(template, num_probes=5, learned=learned, seed=seed).to(dtype)
    sigma = template.node_permutation(perm)
    with torch.no_grad():
        ngt.assert_equivariant(
            lambda p: probe.dense(template, p),
            params,
            lambda p: template.permute(p, perm),
            lambda f: f[:, sigma],
        )
        # the flat [B*N, K] layout of a batch follows the same order
        flat = probe(template.batch(template.permute(params, perm)))
        ngt.assert_close_by_dtype(flat, probe.dense(template, params)[:, sigma].reshape(-1, 5))


@given(recipe=recipes, seed=ngt.seeds, k=st.integers(1, 4))
def test_node_values(recipe: ngt.NetworkRecipe, seed: int, k: int) -> None:
    """Input nodes carry the probes (channel means of probe images), output nodes the outputs."""
    nets, template, params = _zoo(recipe, seed, 2)
    probe = ProbeFeatures.for_graphs(template, num_probes=k, seed=seed).double()
    feats = probe(template.batch(params)).view(2, template.num_nodes, k)
    x = probe.probes
    inputs = x.flatten(2).mean(-1) if x.dim() > 2 else x  # [K, n_0]
    for b, net in enumerate(nets):
        torch.testing.assert_close(feats[b, template.layer_nodes(0)], inputs.T, rtol=0, atol=0)
        with torch.no_grad():
            y = net(x)
        torch.testing.assert_close(
            feats[b, template.layer_nodes(template.spec.num_layers)], y.T, rtol=1e-12, atol=1e-12
        )


def test_hidden_values_by_hand() -> None:
    """2-3-1 tanh MLP: hidden node j on probe k is tanh(W_0 x_k + b_0)_j."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    template = ngc.GraphTemplate.from_module(net)
    probe = ProbeFeatures((2,), 7, seed=3).double()
    feats = probe(template.flatten(net)[None], template)
    x = probe.probes
    hidden = torch.tanh(x @ net[0].weight.T + net[0].bias)  # [K, 3]
    torch.testing.assert_close(feats[2:5], hidden.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(feats[5:], net(x).T, rtol=1e-12, atol=1e-12)


def test_cnn_channel_means_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 4)
    ).double()
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    template = ngc.GraphTemplate.from_module(net, input_shape=(1, 6, 6))
    probe = ProbeFeatures.for_graphs(template, num_probes=4).double()
    assert probe.init == "normal"
    feats = probe(template.flatten(net)[None], template)
    x = probe.probes
    h1 = net[1](net[0](x))
    h2 = net[3](net[2](h1))
    torch.testing.assert_close(feats[0:1], x.mean((2, 3)).T)
    torch.testing.assert_close(feats[1:4], h1.mean((2, 3)).T)
    torch.testing.assert_close(feats[4:6], h2.mean((2, 3)).T)
    torch.testing.assert_close(feats[6:], net(x).T)


@given(seed=ngt.seeds, dtype=ngt.dtypes)
def test_learned_probes_get_gradients(seed: int, dtype: torch.dtype) -> None:
    recipe = ngt.NetworkRecipe("mlp", (2, 4, 3, 1), ("sine", "tanh"), (True, False, True))
    _, template, params = _zoo(recipe, seed, 2, dtype)
    learned = ProbeFeatures.for_graphs(template, 6, learned=True, seed=seed).to(dtype)
    assert isinstance(learned.probes, nn.Parameter)
    assert [n for n, _ in learned.named_parameters()] == ["probes"]
    learned(template.batch(params)).square().sum().backward()
    assert learned.probes.grad is not None
    assert learned.probes.grad.shape == (6, 2)
    assert bool(learned.probes.grad.abs().sum() > 0)

    fixed = ProbeFeatures.for_graphs(template, 6, learned=False, seed=seed).to(dtype)
    assert not list(fixed.parameters())
    assert "probes" in dict(fixed.named_buffers())
    torch.testing.assert_close(fixed.probes, learned.probes.detach())  # same seed, same init
    out = fixed(template.batch(params.clone().requires_grad_(True)))
    assert out.requires_grad  # gradients still reach the network parameters


def test_inits_and_reproducibility() -> None:
    a = ProbeFeatures((2,), 64, seed=5)
    b = ProbeFeatures((2,), 64, seed=5)
    assert torch.equal(a.probes, b.probes)
    assert a.probes.shape == (64, 2) and a.num_probes == 64
    assert float(a.probes.min()) >= -1.0 and float(a.probes.max()) <= 1.0
    assert not torch.equal(a.probes, ProbeFeatures((2,), 64, seed=6).probes)
    g = ProbeFeatures((2,), init="grid")
    assert g.num_probes == 784
    torch.testing.assert_close(g.probes, coordinate_grid((28, 28)))
    # x along the columns, y along the rows, both from -1 to 1
    assert g.probes[1].tolist() == pytest.approx([-1 + 2 / 27, -1.0])
    assert g.probes[28].tolist() == pytest.approx([-1.0, -1 + 2 / 27])
    assert ProbeFeatures((1,), init="grid", grid_size=(5,)).probes.flatten().tolist() == (
        pytest.approx([-1, -0.5, 0, 0.5, 1])
    )
    with pytest.raises(ValueError):
        ProbeFeatures((1, 4, 4), init="grid")
    with pytest.raises(ValueError):
        ProbeFeatures((2,), init="sobol")  # type: ignore[arg-type]
    explicit = ProbeFeatures((2,), probes=torch.zeros(3, 2), learned=True)
    assert explicit.num_probes == 3
    with pytest.raises(ngc.ShapeMismatchError):
        ProbeFeatures((2,), probes=torch.zeros(3, 3))


def test_probe_shape_must_fit() -> None:
    recipe = ngt.NetworkRecipe("mlp", (3, 4, 1), ("tanh",), (True, True))
    _, template, params = _zoo(recipe, 0, 2)
    with pytest.raises(ngc.ShapeMismatchError):
        ProbeFeatures((2,), 4).double()(template.batch(params))
    with pytest.raises(TypeError):
        ProbeFeatures((3,), 4).double()(params)


def test_attach() -> None:
    recipe = ngt.NetworkRecipe("mlp", (2, 4, 1), ("sine",), (True, True))
    _, template, params = _zoo(recipe, 0, 3)
    probe = ProbeFeatures.for_graphs(template, 8).double()
    batch = template.batch(params)
    assert batch.probe_features is None
    assert probe.attach(batch) is batch
    assert batch.probe_features is not None and batch.probe_features.shape == (3 * 7, 8)
    moved = batch.to(dtype=torch.float32)
    assert moved.probe_features is not None and moved.probe_features.dtype == torch.float32


@given(seed=ngt.seeds, data=st.data())
def test_mixed_batch_matches_per_architecture(seed: int, data: st.DataObject) -> None:
    """A mixed batch (any node order per graph) gets each graph's features in its node order,
    with one forward per architecture."""
    recipe_a = data.draw(ngt.network_recipes("mlp", max_width=5, max_layers=3), label="a")
    recipe_b = data.draw(ngt.network_recipes("mlp", max_width=5, max_layers=3), label="b")
    # the same input width for both
    recipe_b = ngt.NetworkRecipe(
        "mlp", (recipe_a.widths[0], *recipe_b.widths[1:]), recipe_b.activations, recipe_b.bias
    )
    nets = [recipe_a.build(seed), recipe_b.build(seed + 1), recipe_a.build(seed + 2)]
    graphs = [ngc.from_module(m) for m in nets]
    # relabel the nodes of one graph (any relabelling is the same network)
    gen = torch.Generator().manual_seed(seed)
    graphs[2] = graphs[2].permute_nodes(torch.randperm(graphs[2].num_nodes, generator=gen))
    batch = ngc.batch(graphs)
    probe = ProbeFeatures((recipe_a.widths[0],), 4, seed=seed).double()
    feats = probe(batch)
    assert feats.shape == (batch.num_nodes, 4)
    offsets = batch.node_ptr.tolist()
    for i, (net, g) in enumerate(zip(nets, graphs)):
        template = ngc.GraphTemplate.from_module(net)
        dense = probe.dense(template, template.flatten(net)[None])[0]
        expected = dense[_canonical_of(g, ngc.from_module(net))]
        torch.testing.assert_close(
            feats[offsets[i] : offsets[i + 1]], expected, rtol=1e-12, atol=1e-12
        )


def _canonical_of(g: ngc.NeuralGraph, canonical: ngc.NeuralGraph) -> torch.Tensor:
    """For every node of ``g``, the canonical node it is (edge order is shared by both)."""
    out = torch.full((g.num_nodes,), -1, dtype=torch.long)
    out[g.edge_index[0]] = canonical.edge_index[0]
    out[g.edge_index[1]] = canonical.edge_index[1]
    assert bool((out >= 0).all())
    return out


def test_mixed_batch_outputs_and_dtype() -> None:
    a = ngt.NetworkRecipe("mlp", (2, 3, 2), ("tanh",), (True, True)).build(0)
    b = ngt.NetworkRecipe("mlp", (2, 5, 4, 2), ("sine", "silu"), (True, False, True)).build(1)
    batch = ngc.batch([ngc.from_module(m) for m in (a, b, a)])
    probe = ProbeFeatures((2,), 6).double()
    outs = probe.outputs(batch)
    assert outs.shape == (3, 2, 6)
    with torch.no_grad():
        torch.testing.assert_close(outs[1], b(probe.probes).T)
        torch.testing.assert_close(outs[2], a(probe.probes).T)
    c = ngt.NetworkRecipe("mlp", (2, 3, 3), ("tanh",), (True, True)).build(0)
    with pytest.raises(ngc.ShapeMismatchError):
        probe.outputs(ngc.batch([ngc.from_module(m) for m in (a, c)]))


def test_generated_probes_are_a_deep_linear_map_of_latent_codes() -> None:
    gen = ProbeFeatures((2,), 48, generator_latent=16, generator_hidden=8, seed=3)
    assert gen.generated and gen.learned and gen.num_probes == 48
    assert "probes" not in dict(gen.named_parameters()) | dict(gen.named_buffers())
    x = gen.probes
    assert x.shape == (48, 2)
    # exactly G(z) = W2 (W1 z + b1) + b2: no activation between the two layers
    w1, b1 = gen.generator[0].weight, gen.generator[0].bias
    w2, b2 = gen.generator[1].weight, gen.generator[1].bias
    torch.testing.assert_close(x, (gen.latent @ w1.T + b1) @ w2.T + b2)
    # the initial draw's statistics (uniform in [-1, 1]: mean 0, std 0.577) per coordinate
    ref = ProbeFeatures((2,), 48, seed=3).probes
    torch.testing.assert_close(x.detach().mean(0), ref.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.detach().std(0), ref.std(0), atol=1e-5, rtol=1e-5)
    # same seed, same probes; another seed, other probes
    assert torch.equal(
        ProbeFeatures((2,), 48, generator_latent=16, generator_hidden=8, seed=3).probes, x
    )
    assert not torch.equal(ProbeFeatures((2,), 48, generator_latent=16, seed=4).probes, x)


def test_generated_probes_train_through_the_generator() -> None:
    net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3))
    template = ngc.GraphTemplate.from_module(net)
    gen = ProbeFeatures.for_graphs(template, 12, generator_latent=4)
    params = template.flatten(net).unsqueeze(0).repeat(2, 1)
    gen(params, template).square().sum().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    state = gen.state_dict()
    assert set(state) == {"latent", "generator.0.weight", "generator.0.bias",
                          "generator.1.weight", "generator.1.bias"}  # fmt: skip
    again = ProbeFeatures.for_graphs(template, 12, generator_latent=4, seed=9)
    again.load_state_dict(state)
    assert torch.equal(again.probes, gen.probes)
    with pytest.raises(ValueError, match="generator sizes"):
        ProbeFeatures((2,), 4, generator_latent=0)
