"""CNN probe features: per-channel statistics of feature maps on probe images, per-network
activations (relu / tanh variants of one parameter layout), real probe images, typed errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import nngraph_core as ngc
import nngraph_testing as ngt
from nngraph_probe import (
    ArchitectureVariantError,
    NonFiniteProbeError,
    ProbeFeatures,
    ProbeInputError,
    ProbeMLP,
    ProbeShapeError,
    functional_forward,
    probe_image_index,
    select_probe_images,
)

ALL_STATS = ("mean", "std", "max")
ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh}
stat_selections = st.lists(st.sampled_from(ALL_STATS), min_size=1, max_size=3, unique=True)
# with the mean among them: the std of a dense node is always 0, so a sensitivity check on the
# dense head needs the mean (or max)
stats_with_mean = stat_selections.map(lambda s: s if "mean" in s else [*s, "mean"])


def small_cnn(act: str, seed: int, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The Small CNN Zoo architecture with seeded N(0, 1/fan_in) weights, N(0, 0.1^2) biases."""
    a = ACTS[act]
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2), a(),
        nn.Conv2d(16, 16, 3, stride=2), a(),
        nn.Conv2d(16, 16, 3, stride=2), a(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            std = 1 / math.sqrt(math.prod(p.shape[1:])) if name.endswith("weight") else 0.1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
    return net.to(dtype).eval()


def small_zoo(
    acts: list[str], seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[list[nn.Sequential], list[ngc.GraphTemplate], Tensor, Tensor]:
    """Networks, the `[relu, tanh]` templates, flat params `[B, P]` and the activation index."""
    nets = [small_cnn(a, seed + i, dtype) for i, a in enumerate(acts)]
    templates = [
        ngc.GraphTemplate.from_module(small_cnn(a, 0), input_shape=(1, 28, 28)) for a in ACTS
    ]
    params = torch.stack([templates[0].flatten(m) for m in nets]).to(dtype)
    index = torch.tensor([list(ACTS).index(a) for a in acts])
    return nets, templates, params, index


def images(n: int, seed: int = 0, shape: tuple[int, ...] = (1, 28, 28)) -> Tensor:
    return torch.randn(
        n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _stats(maps: Tensor, stats: tuple[str, ...]) -> Tensor:
    """Reference `[n, S*K]` of maps `[K, n, h, w]` (or values `[K, n]`), plainly."""
    if maps.dim() == 2:
        maps = maps[:, :, None, None]
    flat = maps.flatten(2)
    table = {
        "mean": flat.mean(-1),
        "std": flat.std(-1, correction=0),
        "max": flat.max(-1).values,
    }
    return torch.cat([table[s].T for s in stats], dim=1)


def _hooked_features(net: nn.Sequential, x: Tensor, stats: tuple[str, ...]) -> Tensor:
    """Node features `[N, S*K]` of one network from a module forward with hooks on its
    activation modules: image channels, each conv's post-activation map, the logits."""
    maps: list[Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: maps.append(out))
        for m in net
        if isinstance(m, nn.ReLU | nn.Tanh)
    ]
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(maps) == 3
    return torch.cat([_stats(m, stats) for m in (x, *maps, logits)], dim=0)


# -- exact values ------------------------------------------------------------------------------


@pytest.mark.parametrize("stats", [("mean",), ("mean", "std", "max"), ("max", "std")])
def test_features_equal_hooked_module_forward(stats: tuple[str, ...]) -> None:
    """float64, a relu / tanh batch: every node's statistics equal a per-network nn.Module
    forward with hooks (to 1e-10), in template node order."""
    acts = ["relu", "tanh", "tanh", "relu"]
    nets, templates, params, index = small_zoo(acts)
    x = images(5)
    probe = ProbeFeatures((1, 28, 28), probes=x, stats=stats).double()  # type: ignore[arg-type]
    assert probe.feature_dim == 5 * len(stats)
    feats = probe.dense(templates, params, spec_index=index)
    assert feats.shape == (4, templates[0].num_nodes, 5 * len(stats))
    assert templates[0].num_nodes == 1 + 16 * 3 + 10
    for b, net in enumerate(nets):
        expected = _hooked_features(net, x, stats)
        torch.testing.assert_close(feats[b], expected, rtol=1e-10, atol=1e-10)
    # the flat [B*N, K*S] layout of forward / attach is the same
    flat = probe(params, templates, spec_index=index)
    assert torch.equal(flat, feats.reshape(-1, probe.feature_dim))
    # dense nodes (logits) are 1x1 maps: std 0, max = mean = logit
    if stats == ("mean", "std", "max"):
        out = feats[:, templates[0].layer_nodes(4)]
        assert torch.equal(out[..., 5:10], torch.zeros_like(out[..., 5:10]))
        assert torch.equal(out[..., 10:], out[..., :5])


def test_last_conv_statistics_are_taken_before_global_pooling() -> None:
    """The last conv's map is 2x2 before AdaptiveAvgPool2d(1): its mean is the pooled value,
    its std and max come from the 2x2 map (not from the 1x1 pooled map, where std would be 0)."""
    nets, templates, params, _ = small_zoo(["tanh"])
    x = images(3)
    feats = (
        ProbeFeatures((1, 28, 28), probes=x, stats=("mean", "std", "max"))
        .double()
        .dense(templates[1], params)[0]
    )
    last = feats[templates[1].layer_nodes(3)]
    with torch.no_grad():
        pre_pool = nets[0][:6](x)  # [3, 16, 2, 2]
        pooled = nets[0][:8](x)  # [3, 16]
    assert pre_pool.shape[-2:] == (2, 2)
    torch.testing.assert_close(last[:, :3], pooled.T, rtol=1e-12, atol=1e-12)
    assert bool((last[:, 3:6] > 0).all())
    torch.testing.assert_close(last[:, 6:], pre_pool.flatten(2).amax(-1).T, rtol=0, atol=0)


# -- per-network activations -------------------------------------------------------------------


@given(acts=st.lists(st.sampled_from(list(ACTS)), min_size=2, max_size=5), seed=ngt.seeds,
       dtype=ngt.dtypes)  # fmt: skip
def test_mixed_activations_match_each_network_alone(
    acts: list[str], seed: int, dtype: torch.dtype
) -> None:
    """Every network of a relu/tanh batch gets the features it gets alone, with its own
    activation; running it with the other activation gives other features."""
    _, templates, params, index = small_zoo(acts, seed % 1000, dtype)
    probe = ProbeFeatures((1, 28, 28), probes=images(4, seed), stats=ALL_STATS).to(dtype)  # type: ignore[arg-type]
    with torch.no_grad():
        feats = probe.dense(templates, params, spec_index=index)
        outs = probe.dense_outputs(templates, params, spec_index=index)
        for b, v in enumerate(index.tolist()):
            alone = probe.dense(templates[v], params[b : b + 1])[0]
            ngt.assert_close_by_dtype(feats[b], alone, "mixed batch != alone")
            ngt.assert_close_by_dtype(outs[b], alone[templates[v].layer_nodes(4), :4])
            other = probe.dense(templates[1 - v], params[b : b + 1])[0]
            ngt.assert_differs(other, alone, "the activation variant made no difference")


def test_variant_paths_agree() -> None:
    """spec_index on a template batch == a mixed GraphBatch built from the modules (whose specs
    differ by activation) == functional_forward per group."""
    acts = ["tanh", "relu", "relu", "tanh", "relu"]
    nets, templates, params, index = small_zoo(acts, 3)
    probe = ProbeFeatures((1, 28, 28), probes=images(3, 1), stats=("mean", "max")).double()
    batch = probe.attach(templates[0].batch(params), templates, spec_index=index)
    assert batch.probe_features is not None
    mixed = ngc.batch([ngc.from_module(m, input_shape=(1, 28, 28)) for m in nets])
    assert mixed.template is None and len(set(mixed.specs)) == 2
    torch.testing.assert_close(probe(mixed), batch.probe_features, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        probe.outputs(mixed), probe.outputs(batch, templates, spec_index=index)
    )
    y = functional_forward(templates, params, probe.probes, spec_index=index)
    assert isinstance(y, Tensor)
    with torch.no_grad():
        torch.testing.assert_close(y, torch.stack([m(probe.probes) for m in nets]))
    # one variant only: the single-architecture path
    same = torch.zeros(5, dtype=torch.long)
    torch.testing.assert_close(
        probe.dense(templates, params, spec_index=same), probe.dense(templates[0], params)
    )


def test_variant_errors() -> None:
    _, templates, params, index = small_zoo(["relu", "tanh"])
    probe = ProbeFeatures((1, 28, 28), 2).double()
    other = ngc.GraphTemplate.from_module(
        nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 10)),
        input_shape=(1, 28, 28),
    )  # fmt: skip
    cases: list[tuple[object, Tensor | None, str]] = [
        (templates, None, "need spec_index"),
        (templates[0], index, "sequence of templates"),
        (templates, index[:1], r"\[B=2\]"),
        (templates, torch.tensor([0, 2]), r"in \[0, 2\)"),
        (templates, torch.tensor([0.0, 1.0]), "integers"),
        ([templates[0], other], index, "parameter layout"),
        ([], index, "empty"),
    ]
    for arch, idx, match in cases:
        with pytest.raises(ArchitectureVariantError, match=match):
            probe.dense(arch, params, spec_index=idx)  # type: ignore[arg-type]
    assert issubclass(ArchitectureVariantError, ngc.ArchitectureError)
    with pytest.raises(ArchitectureVariantError, match="template="):
        probe(templates[0].batch(params), spec_index=index)
    with pytest.raises(ArchitectureVariantError, match="parameter layout of the batch"):
        probe(templates[0].batch(params), [other], spec_index=torch.zeros(2, dtype=torch.long))
    mixed = ngc.batch([ngc.from_module(small_cnn(a, 0), input_shape=(1, 28, 28)) for a in ACTS])
    with pytest.raises(ArchitectureVariantError, match="mixed-architecture"):
        probe(mixed, templates, spec_index=index)


# -- equivariance --------------------------------------------------------------------------------


def _cnn_zoo(
    recipe: ngt.NetworkRecipe, seed: int, b: int, dtype: torch.dtype
) -> tuple[ngc.GraphTemplate, Tensor]:
    nets = [recipe.build(seed + i, torch.float64) for i in range(b)]
    template = ngc.GraphTemplate.from_module(nets[0], input_shape=recipe.input_shape)
    return template, torch.stack([template.flatten(m) for m in nets]).to(dtype)


@given(
    recipe=ngt.network_recipes("cnn", max_channels=5, max_conv=3, max_kernel=3, min_hidden_width=2),
    seed=ngt.seeds,
    data=st.data(),
    dtype=ngt.dtypes,
    stats=stat_selections,
    learned=st.booleans(),
)
def test_equivariant_to_hidden_channel_permutations(
    recipe: ngt.NetworkRecipe,
    seed: int,
    data: st.DataObject,
    dtype: torch.dtype,
    stats: list[str],
    learned: bool,
) -> None:
    """Permuting the hidden channels / neurons of the networks permutes the node features by
    the template's node map, for every statistic (Hypothesis-drawn permutations)."""
    template, params = _cnn_zoo(recipe, seed, 3, dtype)
    perm = data.draw(ngt.hidden_permutations(template.spec), label="permutation")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, *recipe.input_shape, generator=gen)
    probe = ProbeFeatures(recipe.input_shape, probes=x, stats=stats, learned=learned).to(dtype)  # type: ignore[arg-type]
    sigma = template.node_permutation(perm)
    with torch.no_grad():
        ngt.assert_equivariant(
            lambda p: probe.dense(template, p),
            params,
            lambda p: template.permute(p, perm),
            lambda f: f[:, sigma],
        )


def _first_moved_layer(perm: ngc.HiddenPermutation) -> int:
    return next(
        i for i, p in enumerate(perm.perms, start=1) if not p.equal(torch.arange(p.numel()))
    )


smooth_cnns = ngt.network_recipes(
    "cnn", max_channels=5, max_conv=2, max_kernel=3, min_hidden_width=2,
    activations=ngt.SMOOTH_ACTIVATIONS,
)  # fmt: skip


@given(recipe=smooth_cnns, seed=ngt.seeds, data=st.data(), stats=stats_with_mean)
def test_uncoupled_permutation_changes_the_features(
    recipe: ngt.NetworkRecipe, seed: int, data: st.DataObject, stats: list[str]
) -> None:
    """Permuting only the incoming side of a hidden layer (not the next layer's weights) is no
    symmetry: the next node layer's features change (a legal permutation leaves them as they
    are), so the equivariance test above has power."""
    template, params = _cnn_zoo(recipe, seed, 2, torch.float64)
    perm = data.draw(ngt.nontrivial_hidden_permutations(template.spec), label="permutation")
    layer = _first_moved_layer(perm)
    probe = ProbeFeatures.for_graphs(template, 4, seed=seed, stats=stats).double()  # type: ignore[arg-type]
    nxt = template.layer_nodes(layer + 1)
    legal = template.permute(params, perm)
    illegal = params[:, ngt.partial_permutation_index(template, layer, perm.perms[layer - 1],
                                                      incoming=True, outgoing=False)]  # fmt: skip
    with torch.no_grad():
        base = probe.dense(template, params)
        moved = template.node_permutation(perm)
        ngt.assert_close_by_dtype(probe.dense(template, legal), base[:, moved])
        ngt.assert_differs(probe.dense(template, illegal)[:, nxt], base[:, nxt])


@given(recipe=smooth_cnns, seed=ngt.seeds, stats=stats_with_mean)
def test_permuting_input_channels_changes_the_features(
    recipe: ngt.NetworkRecipe, seed: int, stats: list[str]
) -> None:
    """Input channels are not a symmetry: permuting them in the first conv's kernels (with the
    probe images unchanged) changes the first hidden layer's features."""
    recipe = dataclasses.replace(recipe, widths=(3, *recipe.widths[1:]))
    template, params = _cnn_zoo(recipe, seed, 2, torch.float64)
    probe = ProbeFeatures.for_graphs(template, 4, seed=seed, stats=stats).double()  # type: ignore[arg-type]
    pi = ngt.partial_permutation_index(template, 0, torch.tensor([1, 2, 0]), incoming=False)
    first = template.layer_nodes(1)
    with torch.no_grad():
        ngt.assert_differs(
            probe.dense(template, params[:, pi])[:, first], probe.dense(template, params)[:, first]
        )


# -- learned probes --------------------------------------------------------------------------------


@given(seed=ngt.seeds, dtype=ngt.dtypes, stats=stat_selections)
def test_learned_probe_images_get_gradients(
    seed: int, dtype: torch.dtype, stats: list[str]
) -> None:
    _, templates, params, index = small_zoo(["relu", "tanh", "relu"], seed % 1000, dtype)
    init = images(6, seed)
    probe = ProbeFeatures((1, 28, 28), probes=init, learned=True, stats=stats).to(dtype)  # type: ignore[arg-type]
    assert isinstance(probe.probes, nn.Parameter)
    ngt.assert_close_by_dtype(probe.probes.detach(), init.to(dtype))  # initialised from images
    probe.dense(templates, params, spec_index=index).square().sum().backward()
    grad = probe.probes.grad
    assert grad is not None and grad.shape == (6, 1, 28, 28)
    assert bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def test_std_of_a_dead_channel_is_zero_with_finite_gradients() -> None:
    """A relu channel that is zero everywhere has std 0; its gradient is 0, not NaN."""
    net = small_cnn("relu", 0)
    with torch.no_grad():
        net[0].bias[0] = -1e3  # channel 0 of the first conv never fires
    template = ngc.GraphTemplate.from_module(net, input_shape=(1, 28, 28))
    probe = ProbeFeatures((1, 28, 28), probes=images(3), learned=True, stats=("std",)).double()
    feats = probe(template.flatten(net)[None], template)
    dead = template.layer_nodes(1).start
    assert torch.equal(feats[dead], torch.zeros(3, dtype=torch.float64))
    feats.sum().backward()
    assert probe.probes.grad is not None and bool(torch.isfinite(probe.probes.grad).all())


# -- bad input -------------------------------------------------------------------------------------


def test_wrong_image_shape_is_a_typed_error_naming_the_problem() -> None:
    _, templates, params, _ = small_zoo(["relu"])
    rgb = ProbeFeatures((3, 28, 28), 2).double()
    with pytest.raises(ProbeShapeError, match="channels 3 != 1") as err:
        rgb.dense(templates[0], params)
    assert isinstance(err.value, ngc.ShapeMismatchError) and isinstance(err.value, ngc.NNGraphError)
    with pytest.raises(ProbeShapeError, match="height 32 != 28, width 32 != 28"):
        ProbeFeatures((1, 32, 32), 2).double().dense(templates[0], params)
    with pytest.raises(ProbeShapeError, match=r"do not match \[K, \*\(1, 28, 28\)\]"):
        ProbeFeatures((1, 28, 28), probes=torch.zeros(4, 28, 28))  # no channel dim
    with pytest.raises(ProbeShapeError, match=r"probes \[K, 784\] do not fit the network's images"):
        ProbeFeatures((784,), 2).double().dense(templates[0].spec, params)


def test_nonfinite_probes_are_a_typed_error() -> None:
    _, templates, params, _ = small_zoo(["tanh"])
    bad = images(4)
    bad[2, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteProbeError, match=r"probe\(s\) \[2\] of 4"):
        ProbeFeatures((1, 28, 28), probes=bad)
    # learned probes that diverge are caught at the next forward
    probe = ProbeFeatures((1, 28, 28), probes=images(4), learned=True).double()
    with torch.no_grad():
        probe.probes[1, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteProbeError, match="NaN or infinite"):
        probe.dense(templates[1], params)
    assert issubclass(NonFiniteProbeError, ProbeInputError)
    assert issubclass(ProbeInputError, ngc.NNGraphError)
    with pytest.raises(ValueError, match="stats"):
        ProbeFeatures((1, 28, 28), 2, stats=("median",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeat"):
        ProbeFeatures((1, 28, 28), 2, stats=("mean", "mean"))


# -- real probe images ------------------------------------------------------------------------------


def test_select_probe_images_is_deterministic_and_class_balanced() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([30, 5, 12, 2, 40])])
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    data = torch.randn(labels.numel(), 28, 28, generator=gen)
    idx = probe_image_index(labels.numel(), 16, labels=labels, seed=3)
    assert idx.unique().numel() == 16
    # rounds: every class once (0..4), then again; class 3 runs out after 2 rounds
    counts = torch.bincount(labels[idx], minlength=5).tolist()
    assert counts == [4, 4, 3, 2, 3]
    assert labels[idx[:5]].tolist() == [0, 1, 2, 3, 4]
    assert labels[idx[5:10]].tolist() == [0, 1, 2, 3, 4]
    assert labels[idx[10:14]].tolist() == [0, 1, 2, 4]  # class 3 has only two images
    assert torch.equal(idx, probe_image_index(labels.numel(), 16, labels=labels, seed=3))
    assert not torch.equal(idx, probe_image_index(labels.numel(), 16, labels=labels, seed=4))
    # any prefix is balanced; the images are those of the indices, with a channel dim added
    picked = select_probe_images(data, 16, labels=labels, seed=3)
    assert picked.shape == (16, 1, 28, 28)
    assert torch.equal(picked[:, 0], data[idx])
    # without labels: the first k of a seeded permutation
    plain = probe_image_index(89, 7, seed=1)
    assert torch.equal(plain, torch.randperm(89, generator=torch.Generator().manual_seed(1))[:7])
    # usable as probes of a CNN zoo
    probe = ProbeFeatures((1, 28, 28), probes=picked.double())
    assert probe.num_probes == 16


def test_select_probe_images_errors() -> None:
    data = torch.rand(10, 1, 8, 8)
    with pytest.raises(ProbeInputError, match="k=11"):
        select_probe_images(data, 11)
    with pytest.raises(ProbeInputError, match="k=0"):
        select_probe_images(data, 0)
    with pytest.raises(ProbeShapeError, match=r"labels must be \[10\]"):
        select_probe_images(data, 2, labels=torch.zeros(9))
    with pytest.raises(ProbeInputError, match="uint8"):
        select_probe_images((data * 255).to(torch.uint8), 2)
    with pytest.raises(ProbeShapeError, match=r"\[N, C, H, W\]"):
        select_probe_images(torch.rand(10, 64), 2)
    bad = data.clone()
    bad[:] = float("nan")
    with pytest.raises(NonFiniteProbeError):
        select_probe_images(bad, 3)


# -- the probe-only baseline on CNNs ---------------------------------------------------------------


def test_probe_mlp_reads_logits_of_real_images_with_per_network_activations() -> None:
    acts = ["relu", "tanh", "tanh", "relu", "tanh"]
    nets, templates, params, index = small_zoo(acts, 7)
    x = images(8, 2)
    model = ProbeMLP.for_graphs(templates[0], num_outputs=1, probes=x, hidden=(16,)).double()
    assert model.probes.num_probes == 8 and torch.equal(model.probes.probes, x)
    batch = templates[0].batch(params)
    out = model(batch, templates, spec_index=index)
    assert out.shape == (5, 1)
    with torch.no_grad():
        logits = torch.stack([m(x).T for m in nets])  # [B, 10, K]
        torch.testing.assert_close(out, model.classify(logits), rtol=1e-12, atol=1e-12)
        # the activation matters: reading every network as relu gives other predictions
        ngt.assert_differs(model(batch), out)


def test_probe_mlp_is_invariant_for_mixed_activations() -> None:
    """Each network permuted by its own hidden permutation: the same predictions."""
    acts = ["relu", "tanh", "relu", "tanh"]
    _, templates, params, index = small_zoo(acts, 11)
    model = ProbeMLP.for_graphs(templates[0], 3, probes=images(6), hidden=(8,)).double()
    gen = torch.Generator().manual_seed(0)
    permuted = torch.stack([
        templates[0].permute(p[None], ngc.HiddenPermutation.from_lists(
            [torch.randperm(16, generator=gen).tolist() for _ in range(3)]))[0]
        for p in params
    ])  # fmt: skip
    with torch.no_grad():
        a = model(templates[0].batch(params), templates, spec_index=index)
        b = model(templates[0].batch(permuted), templates, spec_index=index)
    ngt.assert_close_by_dtype(b, a)
    ngt.assert_differs(permuted, params, "the permutations moved nothing")


def test_probe_mlp_learns_relu_vs_tanh_from_the_function() -> None:
    """The activation of a network is visible in its responses: a few Adam steps of the probe
    MLP separate relu from tanh networks of the zoo (labels = activation)."""
    torch.manual_seed(0)
    acts = ["relu", "tanh"] * 12
    _, templates, params, index = small_zoo(acts, 0, torch.float32)
    model = ProbeMLP.for_graphs(templates[0], 2, probes=images(8).float(), hidden=(32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = templates[0].batch(params)
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(batch, templates, spec_index=index), index)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(batch, templates, spec_index=index).argmax(1)
    assert bool((pred == index).all()), f"loss {float(loss):.3f}"
