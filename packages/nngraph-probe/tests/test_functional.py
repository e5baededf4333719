"""functional_forward against running each nn.Module directly."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nngraph_core as ngc
import nngraph_testing as ngt
from nngraph_probe import functional_forward

recipes = st.one_of(
    ngt.network_recipes("mlp", max_width=6, max_layers=4),
    ngt.network_recipes("cnn", max_channels=4, max_conv=2, max_linear=2, max_kernel=4),
)


def _zoo(recipe: ngt.NetworkRecipe, seed: int, b: int, dtype: torch.dtype):
    nets = [recipe.build(seed + i, dtype) for i in range(b)]
    template = ngc.GraphTemplate.from_module(nets[0], input_shape=recipe.input_shape)
    return nets, template, torch.stack([template.flatten(m) for m in nets])


@given(
    recipe=recipes,
    seed=ngt.seeds,
    b=st.integers(1, 3),
    k=st.integers(1, 4),
    shared=st.booleans(),
    dtype=ngt.dtypes,
)
def test_matches_modules(
    recipe: ngt.NetworkRecipe, seed: int, b: int, k: int, shared: bool, dtype: torch.dtype
) -> None:
    nets, template, params = _zoo(recipe, seed, b, dtype)
    with torch.no_grad():
        if shared:
            x = recipe.example_input(k, seed, dtype)
            expected = torch.stack([m(x) for m in nets])
        else:
            x = torch.stack([recipe.example_input(k, seed + i, dtype) for i in range(b)])
            expected = torch.stack([m(xi) for m, xi in zip(nets, x)])
        out = functional_forward(template, params, x)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == dtype
    ngt.assert_close_by_dtype(out, expected, "functional forward != module forward")


def _reference_node_values(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Each node layer's values from running the module child by child: the input, then after
    each layer and its parameter-free modules (a conv layer: its last feature map with more than
    one pixel -- the map before a global pooling -- or its last map if all are 1 x 1)."""
    mods = list(net.children())
    values, h, last_map, is_conv = [x], x, None, False
    for i, m in enumerate(mods):
        h = m(h)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            is_conv = isinstance(m, nn.Conv2d)
            last_map = None
        if h.dim() == 4 and (
            last_map is None or h.shape[-2:].numel() > 1 or last_map.shape[-2:].numel() == 1
        ):
            last_map = h
        if i + 1 == len(mods) or isinstance(mods[i + 1], (nn.Linear, nn.Conv2d)):
            values.append(last_map if is_conv else h)
    return values


@given(recipe=recipes, seed=ngt.seeds, k=st.integers(1, 3))
def test_activations_match_module(recipe: ngt.NetworkRecipe, seed: int, k: int) -> None:
    """Each node layer's values are the module's activations after the layer's modules."""
    nets, template, params = _zoo(recipe, seed, 2, torch.float64)
    x = recipe.example_input(k, seed)
    out, acts = functional_forward(template.spec, params, x, return_activations=True)
    assert len(acts) == template.spec.num_layers + 1
    assert torch.equal(acts[-1], out)
    for b, net in enumerate(nets):
        with torch.no_grad():
            expected = _reference_node_values(net, x)
        for layer, (a, e) in enumerate(zip(acts, expected)):
            assert a.shape[:3] == (2, k, template.spec.widths[layer])
            torch.testing.assert_close(a[b], e, rtol=1e-12, atol=1e-12)


def test_linear_without_bias_and_flatten_input() -> None:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 5, bias=False), nn.Tanh(), nn.Linear(5, 2)
    ).double()
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    template = ngc.GraphTemplate.from_module(net, input_shape=(3, 2, 2))
    x = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    params = template.flatten(net).unsqueeze(0)
    out = functional_forward(template, params, x)
    torch.testing.assert_close(out[0], net(x), rtol=1e-12, atol=1e-12)


def test_padding_modes_and_same_padding() -> None:
    gen = torch.Generator().manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, (2, 3), padding=1, padding_mode="circular", dilation=(1, 2)),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 2),
    ).double()
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    template = ngc.GraphTemplate.from_module(net)
    params = torch.stack([template.flatten(net), template.flatten(net) * 0.5])
    x = torch.randn(5, 2, 9, 9, generator=gen, dtype=torch.float64)
    net.eval()
    half = copy.deepcopy(net)
    half.load_state_dict(template.unflatten(params[1]))
    out = functional_forward(template, params, x)
    torch.testing.assert_close(out[0], net(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1], half(x), rtol=1e-12, atol=1e-12)


def test_gradients_reach_params_and_inputs() -> None:
    recipe = ngt.NetworkRecipe("mlp", (2, 4, 4, 1), ("sine", "tanh"), (True, True, True))
    _, template, params = _zoo(recipe, 3, 2, torch.float64)
    params = params.clone().requires_grad_(True)
    x = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: functional_forward(template, p, q), (params, x))


def test_shape_errors() -> None:
    recipe = ngt.NetworkRecipe("mlp", (2, 3, 1), ("tanh",), (True, True))
    _, template, params = _zoo(recipe, 0, 2, torch.float64)
    with pytest.raises(ngc.ShapeMismatchError):
        functional_forward(template, params[:, :-1], torch.zeros(4, 2))
    with pytest.raises(ngc.ShapeMismatchError):
        functional_forward(template, params, torch.zeros(3, 4, 2))  # B=3 != 2
    with pytest.raises(TypeError):
        functional_forward(object(), params, torch.zeros(4, 2))  # type: ignore[arg-type]
