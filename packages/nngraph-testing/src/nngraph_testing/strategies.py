"""Hypothesis strategies: architectures, seeded networks, hidden permutations.

Structure is drawn by Hypothesis (depths, widths, kernel sizes, activations, permutations);
values come from a `torch.Generator` seeded with a drawn integer, never from torch's global RNG,
so every example replays exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st
from torch import nn

import nngraph_core as ngc

__all__ = [
    "ACTIVATIONS",
    "NetworkRecipe",
    "cnn_recipes",
    "dtypes",
    "hidden_permutations",
    "mlp_recipes",
    "network_recipes",
    "networks",
    "nontrivial_hidden_permutations",
    "seeds",
]

ACTIVATIONS: dict[str, type[nn.Module] | object] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sine": lambda: ngc.Sine(3.0),
    "silu": nn.SiLU,
    "identity": nn.Identity,
}
"""Activations drawn for random networks: name -> factory. "Smooth" ones never zero a neuron
out."""
SMOOTH_ACTIVATIONS = ("tanh", "sine", "silu")
"""The activations of [`ACTIVATIONS`][nngraph_testing.ACTIVATIONS] that never zero a neuron out."""


def _make_activation(name: str) -> nn.Module:
    factory = ACTIVATIONS[name]
    module = factory()  # type: ignore[operator]
    assert isinstance(module, nn.Module)
    return module


@dataclass(frozen=True)
class NetworkRecipe:
    """A drawn architecture; [`build`][nngraph_testing.NetworkRecipe.build] makes a seeded network
    of it.

    Args:
        kind: `"mlp"` or `"cnn"`.
        widths: nodes per node layer (inputs/channels first, outputs last).
        activations: one name per parameterised layer but the last.
        bias: one flag per parameterised layer.
        kernels: `(kh, kw)` per conv layer (CNN only; the rest of the layers are linear).
        strides: stride per conv layer.
        pooling: `"avg"` (global average pooling) or `"flatten"` between convs and linears.
        image_size: input `(H, W)` of a CNN.
    """

    kind: str
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    bias: tuple[bool, ...]
    kernels: tuple[tuple[int, int], ...] = ()
    strides: tuple[int, ...] = ()
    pooling: str = "avg"
    image_size: tuple[int, int] = (8, 8)
    extra: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.kind == "mlp":
            return (self.widths[0],)
        return (self.widths[0], *self.image_size)

    def _conv_output_size(self) -> tuple[int, int]:
        h, w = self.image_size
        for (kh, kw), s in zip(self.kernels, self.strides, strict=True):
            # padding = k // 2 (see build): out = floor((n + 2*(k//2) - k) / s) + 1
            h = (h + 2 * (kh // 2) - kh) // s + 1
            w = (w + 2 * (kw // 2) - kw) // s + 1
        return h, w

    def build(self, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
        """A network of this architecture with weights drawn from `torch.Generator(seed)`.

        Weights ~ N(0, 1/fan_in) (biases N(0, 0.1^2)) so activations stay O(1) at any depth.
        """
        layers: list[nn.Module] = []
        n_conv = len(self.kernels)
        for i in range(self.num_layers):
            n_in, n_out = self.widths[i], self.widths[i + 1]
            if i < n_conv:
                kh, kw = self.kernels[i]
                layers.append(
                    nn.Conv2d(
                        n_in,
                        n_out,
                        (kh, kw),
                        stride=self.strides[i],
                        padding=(kh // 2, kw // 2),
                        bias=self.bias[i],
                    )
                )
                if i == n_conv - 1:
                    layers.append(_make_activation(self.activations[i]))
                    if self.pooling == "avg":
                        layers.append(nn.AdaptiveAvgPool2d(1))
                    layers.append(nn.Flatten())
                    continue
            else:
                fan = n_in
                if i == n_conv and n_conv and self.pooling == "flatten":
                    h, w = self._conv_output_size()
                    fan = n_in * h * w
                layers.append(nn.Linear(fan, n_out, bias=self.bias[i]))
            if i < self.num_layers - 1:
                layers.append(_make_activation(self.activations[i]))
        module = nn.Sequential(*layers).to(dtype)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.endswith("weight"):
                    fan_in = math.prod(p.shape[1:])
                    p.copy_(
                        torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
                    )
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        return module.eval()

    def example_input(
        self, batch: int, seed: int, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed + 1)
        return torch.randn((batch, *self.input_shape), generator=gen, dtype=torch.float64).to(dtype)


seeds = st.integers(min_value=0, max_value=2**31 - 1)
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def mlp_recipes(
    draw: st.DrawFn,
    *,
    min_layers: int = 1,
    max_layers: int = 5,
    max_width: int = 32,
    activations: tuple[str, ...] = tuple(ACTIVATIONS),
    min_hidden_width: int = 1,
) -> NetworkRecipe:
    """MLP architectures: 1-5 linear layers, widths 1-32, random activations and bias flags."""
    n = draw(st.integers(min_layers, max_layers))
    widths = [draw(st.integers(1, max_width))]
    widths += [draw(st.integers(min_hidden_width, max_width)) for _ in range(n - 1)]
    widths.append(draw(st.integers(1, max_width)))
    acts = tuple(draw(st.sampled_from(activations)) for _ in range(n - 1))
    bias = tuple(draw(st.booleans()) for _ in range(n))
    return NetworkRecipe("mlp", tuple(widths), acts, bias)


@st.composite
def cnn_recipes(
    draw: st.DrawFn,
    *,
    max_conv: int = 3,
    max_linear: int = 2,
    max_channels: int = 32,
    max_kernel: int = 7,
    activations: tuple[str, ...] = tuple(ACTIVATIONS),
    min_hidden_width: int = 1,
) -> NetworkRecipe:
    """CNN architectures: 1-3 convs (kernels 1-7, square or not, stride 1-2), average pooling or
    flatten, then 1-2 linear layers; 1-5 layers in all, channels 1-32 on small images."""
    n_conv = draw(st.integers(1, max_conv))
    n_lin = draw(st.integers(1, max_linear))
    in_ch = draw(st.integers(1, 3))
    widths = [in_ch] + [
        draw(st.integers(min_hidden_width, max_channels)) for _ in range(n_conv + n_lin - 1)
    ]
    widths.append(draw(st.integers(1, 10)))
    kernels = tuple(
        (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))) for _ in range(n_conv)
    )
    strides = tuple(draw(st.integers(1, 2)) for _ in range(n_conv))
    size = draw(st.integers(4, 9))
    acts = tuple(draw(st.sampled_from(activations)) for _ in range(n_conv + n_lin - 1))
    bias = tuple(draw(st.booleans()) for _ in range(n_conv + n_lin))
    pooling = draw(st.sampled_from(["avg", "flatten"]))
    return NetworkRecipe("cnn", tuple(widths), acts, bias, kernels, strides, pooling, (size, size))


def network_recipes(kind: str = "any", **kwargs: object) -> st.SearchStrategy[NetworkRecipe]:
    """MLP (`kind="mlp"`), CNN (`"cnn"`) or either (`"any"`) recipes."""
    if kind == "mlp":
        return mlp_recipes(**kwargs)  # type: ignore[arg-type]
    if kind == "cnn":
        return cnn_recipes(**kwargs)  # type: ignore[arg-type]
    if kind == "any":
        return st.one_of(mlp_recipes(**kwargs), cnn_recipes(**kwargs))  # type: ignore[arg-type]
    raise ValueError(f"kind must be 'mlp', 'cnn' or 'any', not {kind!r}")


@st.composite
def networks(
    draw: st.DrawFn, kind: str = "any", dtype: torch.dtype | None = None, **kwargs: object
) -> tuple[NetworkRecipe, nn.Module]:
    """`(recipe, module)`: a seeded network of a drawn architecture (dtype drawn if `None`)."""
    recipe = draw(network_recipes(kind, **kwargs))
    chosen = dtype if dtype is not None else draw(dtypes)
    return recipe, recipe.build(draw(seeds), chosen)


@st.composite
def hidden_permutations(draw: st.DrawFn, spec: ngc.NetworkSpec) -> ngc.HiddenPermutation:
    """A hidden permutation of `spec` drawn with `st.permutations` (shrinks towards identity).

    One permutation per hidden node set (`spec.hidden_sets`: the hidden layers of a chain).
    Sets owned by a parent set (attention dimensions by their heads, channels by their
    normalization groups) are drawn as a permutation of the parent's blocks followed by a
    permutation inside every block."""
    sets = spec.hidden_sets
    perms: list[list[int] | None] = [None] * len(sets)

    def get(k: int) -> list[int]:
        done = perms[k]
        if done is not None:
            return done
        hs = sets[k]
        if hs.parent is None:
            p = list(draw(st.permutations(range(hs.size))))
        else:
            owners = get(hs.parent) if hs.parent >= 0 else list(range(hs.size // hs.block))
            p = []
            for o in owners:
                p += [o * hs.block + j for j in draw(st.permutations(range(hs.block)))]
        perms[k] = p
        return p

    return ngc.HiddenPermutation.from_lists([get(k) for k in range(len(sets))])


@st.composite
def nontrivial_hidden_permutations(draw: st.DrawFn, spec: ngc.NetworkSpec) -> ngc.HiddenPermutation:
    """A hidden permutation that moves at least one neuron (`spec` needs a hidden layer of width >= 2)."""
    sets = spec.hidden_sets
    candidates = [
        i
        for i, hs in enumerate(sets)
        if (hs.parent is None and hs.size >= 2) or (hs.parent is not None and hs.block >= 2)
    ]
    if not candidates:
        raise ValueError("no hidden layer has two or more neurons")
    perm = draw(hidden_permutations(spec))
    if not perm.is_identity():
        return perm
    layer = draw(st.sampled_from(candidates))
    n = sets[layer].size
    if sets[layer].parent is None:
        i = draw(st.integers(0, n - 2))
    else:
        b = sets[layer].block
        i = draw(st.integers(0, n // b - 1)) * b + draw(st.integers(0, b - 2))
    perms = list(perm.perms)
    p = perms[layer].clone()
    p[i], p[i + 1] = p[i + 1].clone(), p[i].clone()
    perms[layer] = p
    return ngc.HiddenPermutation(tuple(perms))
