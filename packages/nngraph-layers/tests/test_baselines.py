"""Baselines: FlatMLP is NOT invariant, DeepSets and NFN are (DeepSets coarsely)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nngraph_core as ngc
import nngraph_testing as ngt
from nngraph_layers.baselines import (
    DeepSets,
    FlatMLP,
    NFNBaseline,
    ParamNormalizer,
    StatNN,
    weight_statistics,
)
from nngraph_layers.baselines.nfn_baseline import to_weight_space_features

recipes = st.one_of(
    ngt.network_recipes("mlp", max_width=5, max_layers=3, min_layers=2, min_hidden_width=2),
    ngt.network_recipes(
        "cnn", max_channels=4, max_conv=2, max_linear=1, max_kernel=3, min_hidden_width=2
    ),
)


def _zoo(recipe: ngt.NetworkRecipe, seed: int, b: int, dtype: torch.dtype):
    nets = [recipe.build(seed + i, torch.float64) for i in range(b)]
    template = ngc.GraphTemplate.from_module(nets[0], input_shape=recipe.input_shape)
    return template, torch.stack([template.flatten(m) for m in nets]).to(dtype)


# -- FlatMLP ------------------------------------------------------------------------------------


@given(recipe=recipes, seed=ngt.seeds, data=st.data(), dtype=ngt.dtypes)
def test_flat_mlp_is_not_invariant(
    recipe: ngt.NetworkRecipe, seed: int, data: st.DataObject, dtype: torch.dtype
) -> None:
    """A legal hidden permutation (same functions) changes FlatMLP's output: it has to learn the
    symmetry from data -- why it is a weak baseline."""
    template, params = _zoo(recipe, seed, 3, dtype)
    perm = data.draw(ngt.nontrivial_hidden_permutations(template.spec), label="permutation")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FlatMLP.for_graphs(template, num_outputs=3, hidden=(32,)).to(dtype).eval()
    model.fit_normalization(params)
    with torch.no_grad():
        ngt.assert_sensitive(
            lambda p: model(template.batch(p)), params, lambda p: template.permute(p, perm)
        )


# -- DeepSets -----------------------------------------------------------------------------------


class TestDeepSets(ngt.InvariantModelTests):
    kinds = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return DeepSets.for_graphs(template, num_outputs=3, hidden=16, rho_hidden=(16,)).to(dtype)

    @given(data=st.data())
    def test_sensitive_to_uncoupled_permutation(self, data: st.DataObject) -> None:
        """Overrides the base test on purpose: DeepSets is invariant to an UNCOUPLED permutation
        too (it cannot tell which weights share a neuron) -- the coarseness of this baseline."""
        template, params, dtype, mode = self._draw_setup(data)
        perm = data.draw(ngt.nontrivial_hidden_permutations(template.spec), label="permutation")
        layer = next(
            i for i, p in enumerate(perm.perms, start=1) if not p.equal(torch.arange(p.numel()))
        )
        pi = ngt.partial_permutation_index(
            template, layer, perm.perms[layer - 1], incoming=True, outgoing=False
        )
        model = self._model(template, dtype, mode, data.draw(ngt.seeds))
        with torch.no_grad():
            ngt.assert_invariant(
                lambda p: self.run_model(model, template, p),
                params,
                lambda p: p[..., pi],
                scale=self.scale,
            )


# -- NFN ----------------------------------------------------------------------------------------


# The base suites run NFN in float64 only: the layers couple a neuron's incoming and outgoing
# weights additively, so after a ReLU an uncoupled (or, for NP, an output) permutation changes the
# output of a freshly initialised model on these tiny networks by ~1e-4, sometimes below float32's
# test resolution (10x its tolerance). Invariance in float32 is checked by the test below.
class TestNFNHNP(ngt.InvariantModelTests):
    # MLPs only: HNP's layers grow with n_in * n_out * kh * kw, which is large for the drawn CNNs
    # that flatten a feature map; CNNs with pooling are covered below.
    kinds = ("mlp",)
    dtypes = (torch.float64,)

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return NFNBaseline.for_graphs(
            template, num_outputs=3, hidden=8, num_layers=2, head_hidden=(16,)
        ).to(dtype)


class TestNFNNP(ngt.InvariantModelTests):
    # NP layers are equivariant to input/output permutations too; only the learned io embeddings
    # of the first layer tell those neurons apart.
    kinds = ("mlp",)
    dtypes = (torch.float64,)

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return NFNBaseline.for_graphs(
            template, num_outputs=3, mode="np", hidden=8, num_layers=2, head_hidden=(16,)
        ).to(dtype)


@given(
    recipe=st.one_of(
        ngt.network_recipes("mlp", max_width=5, max_layers=3, min_layers=2, min_hidden_width=2),
        ngt.network_recipes(
            "cnn", max_channels=4, max_conv=2, max_linear=2, max_kernel=3, min_hidden_width=2
        ).filter(lambda r: r.pooling == "avg"),
    ),
    mode=st.sampled_from(["hnp", "np"]),
    seed=ngt.seeds,
    data=st.data(),
    dtype=ngt.dtypes,
)
def test_nfn_invariant(
    recipe: ngt.NetworkRecipe, mode: str, seed: int, data: st.DataObject, dtype: torch.dtype
) -> None:
    """NFN is invariant to hidden permutations, MLPs and CNNs, float32 and float64."""
    template, params = _zoo(recipe, seed, 2, dtype)
    perm = data.draw(ngt.nontrivial_hidden_permutations(template.spec), label="permutation")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NFNBaseline.for_graphs(
            template, 3, mode=mode, hidden=4, num_layers=2, head_hidden=(8,)
        )
    model = model.to(dtype).eval()
    with torch.no_grad():
        ngt.assert_invariant(
            lambda p: model(template.batch(p)),
            params,
            lambda p: template.permute(p, perm),
            scale=10.0,
        )


def test_weight_space_features_layout() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3, bias=False), nn.Flatten(), nn.Linear(8, 4)
    ).double()
    template = ngc.GraphTemplate.from_module(net, input_shape=(1, 6, 6))
    ws = to_weight_space_features(template.spec, template.flatten(net)[None])
    assert torch.equal(ws.weights[0][0, 0], net[0].weight)
    assert torch.equal(ws.weights[1][0, 0], net[2].weight)
    assert torch.equal(ws.weights[2][0, 0], net[4].weight.view(4, 2, 2, 2))
    assert torch.equal(ws.biases[1], torch.zeros(1, 1, 2, dtype=torch.float64))
    assert torch.equal(ws.biases[2][0, 0], net[4].bias)


def test_nfn_needs_two_layers() -> None:
    template = ngc.GraphTemplate.from_module(nn.Linear(3, 2))
    for mode in ("hnp", "np"):
        with pytest.raises(ngc.ArchitectureError):
            NFNBaseline.for_graphs(template, 2, mode=mode)
    with pytest.raises(ValueError):
        NFNBaseline.for_graphs(template, 2, mode="hnpp")


# -- shared -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_cls", [FlatMLP, DeepSets, NFNBaseline, StatNN])
def test_interface_and_errors(model_cls: type) -> None:
    recipe = ngt.NetworkRecipe("mlp", (2, 4, 3, 1), ("sine", "sine"), (True, True, True))
    template, params = _zoo(recipe, 0, 4, torch.float32)
    model = model_cls.for_graphs(template, num_outputs=10)
    assert model.fit_normalization(params) is model
    assert model(template.batch(params)).shape == (4, 10)
    other = ngc.GraphTemplate.from_module(
        nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    )
    with pytest.raises(ngc.ShapeMismatchError):
        model(other.batch(torch.randn(2, other.num_params)))
    graphs = [template.graph(p) for p in params]
    with pytest.raises(ngc.ShapeMismatchError):
        model(ngc.batch(graphs))  # mixed batches: not supported by flat-vector baselines


def test_normalizer_standardises_each_tensor() -> None:
    gen = torch.Generator().manual_seed(0)
    template = ngc.GraphTemplate.from_module(
        nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    )
    params = torch.randn(64, template.num_params, generator=gen, dtype=torch.float64) * 3 + 1
    norm = ParamNormalizer(template.spec).double()
    torch.testing.assert_close(norm(params), params)  # identity before fit
    out = norm.fit(params)(params)
    for _key, (off, shape) in template.spec.param_offsets().items():
        block = out[:, off : off + int(torch.Size(shape).numel())]
        torch.testing.assert_close(block.mean(), torch.tensor(0.0, dtype=torch.float64))
        torch.testing.assert_close(
            block.std(unbiased=False), torch.tensor(1.0, dtype=torch.float64)
        )


# -- StatNN -------------------------------------------------------------------------------------


class TestStatNN(ngt.InvariantModelTests):
    kinds = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return StatNN.for_graphs(template, num_outputs=3, hidden=(16,)).to(dtype)

    @given(data=st.data())
    def test_sensitive_to_uncoupled_permutation(self, data: st.DataObject) -> None:
        """Overrides the base test on purpose: per-tensor statistics ignore the order inside a
        tensor, so an UNCOUPLED permutation leaves StatNN unchanged too (its coarseness)."""
        template, params, dtype, mode = self._draw_setup(data)
        pi = self._draw_uncoupled_index(data, template)
        model = self._model(template, dtype, mode, data.draw(ngt.seeds))
        with torch.no_grad():
            ngt.assert_invariant(
                lambda p: self.run_model(model, template, p),
                params,
                lambda p: p[..., pi],
                scale=self.scale,
            )

    @given(data=st.data())
    def test_output_neurons_keep_identity(self, data: st.DataObject) -> None:
        """Overrides the base test on purpose: swapping two output neurons keeps every tensor's
        statistics, so StatNN cannot tell (unlike the graph models)."""
        template, params, dtype, mode = self._draw_setup(data)
        n_out = template.spec.widths[-1]
        if n_out < 2:
            return
        swap = torch.arange(n_out)
        swap[0], swap[1] = 1, 0
        pi = ngt.partial_permutation_index(
            template, template.spec.num_layers, swap, incoming=True, outgoing=False
        )
        model = self._model(template, dtype, mode, data.draw(ngt.seeds))
        with torch.no_grad():
            ngt.assert_invariant(
                lambda p: self.run_model(model, template, p),
                params,
                lambda p: p[..., pi],
                scale=self.scale,
            )


@given(recipe=recipes, seed=ngt.seeds, b=st.integers(1, 4))
def test_statnn_features_match_numpy(recipe: ngt.NetworkRecipe, seed: int, b: int) -> None:
    """Each tensor's mean, variance and 0/25/50/75/100% quantiles, as numpy computes them."""
    template, params = _zoo(recipe, seed, b, torch.float64)
    got = weight_statistics(params, template.spec).numpy()
    flat = params.numpy()
    expected = []
    for _key, (off, shape) in template.spec.param_offsets().items():
        block = flat[:, off : off + int(np.prod(shape))]
        expected += [block.mean(1, keepdims=True), block.var(1, keepdims=True)]
        expected.append(np.quantile(block, [0.0, 0.25, 0.5, 0.75, 1.0], axis=1).T)
    np.testing.assert_allclose(got, np.concatenate(expected, 1), rtol=1e-12, atol=1e-12)


def test_statnn_standardises_with_training_statistics() -> None:
    recipe = ngt.NetworkRecipe("mlp", (2, 4, 3, 1), ("relu", "relu"), (True, True, True))
    template, params = _zoo(recipe, 0, 16, torch.float64)
    model = StatNN.for_graphs(template, num_outputs=1, hidden=(8,)).double()
    raw = weight_statistics(params, template.spec)
    torch.testing.assert_close(model.features(params), raw)  # identity before the fit
    assert model.fit_normalization(params) is model
    z = model.features(params)
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1], dtype=torch.float64))
    # constant statistics (a zero-initialised bias's quantiles) stay finite
    assert torch.isfinite(z).all()
    assert model(template.batch(params)).shape == (16, 1)
    with pytest.raises(ngc.ShapeMismatchError):
        weight_statistics(params[:, :-1], template.spec)
