"""Reference architectures beyond layer chains, and Hypothesis families of small ones.

* [`resnet18`][nngraph_testing.resnet18]: ResNet-18 in torchvision's module layout (`conv1, bn1,
  relu, maxpool, layer1..4` of `BasicBlock`s with `downsample` shortcuts, `avgpool, fc`),
  written in plain torch (torchvision's wheels do not load against the CPU torch used here).
* [`SmallViT`][nngraph_testing.SmallViT]: a ViT-style encoder (patch conv, class token,
  positional embedding, `nn.TransformerEncoderLayer` blocks, LayerNorm, linear head).
* Strategies drawing small networks of one *family* — `"resnet"` (basic blocks with and without
  projection shortcuts), `"norm"` (BatchNorm / LayerNorm / GroupNorm between layers),
  `"attention"` (multi-head attention and transformer encoder blocks) — as
  [`FamilyRecipe`][nngraph_testing.FamilyRecipe]s whose values come from a seeded
  `torch.Generator`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from .strategies import ACTIVATIONS

__all__ = [
    "FAMILIES",
    "NORMS",
    "BasicBlock",
    "FamilyRecipe",
    "ResNet",
    "SmallViT",
    "TokenNet",
    "attention_recipes",
    "family_recipes",
    "norm_recipes",
    "randomize_",
    "resnet18",
    "resnet_recipes",
]

FAMILIES = ("resnet", "norm", "attention")


class BasicBlock(nn.Module):
    """torchvision's `BasicBlock`: two 3x3 convs with BatchNorm, an identity or projection
    (`downsample`: 1x1 conv + norm) shortcut, ReLU after the add."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
        activation: Callable[[], nn.Module] = lambda: nn.ReLU(inplace=True),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.relu = activation()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision's ResNet with basic blocks (`layers=(2, 2, 2, 2)`: ResNet-18)."""

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 1000,
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], 2)
        self.layer3 = self._make_layer(width * 4, layers[2], 2)
        self.layer4 = self._make_layer(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        out: Tensor = self.fc(x)
        return out


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 in torchvision's module layout (11.7 M parameters with 1,000 classes)."""
    return ResNet((2, 2, 2, 2), num_classes)


class SmallViT(nn.Module):
    """A ViT-style encoder: patch conv, class token and positional embedding parameters,
    `depth` pre-norm `nn.TransformerEncoderLayer` blocks (GELU MLP), a final LayerNorm and a
    linear head on the class token."""

    def __init__(
        self,
        image_size: int = 16,
        patch: int = 4,
        in_channels: int = 3,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
        num_classes: int = 10,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        tokens = (image_size // patch) ** 2
        self.image_size = image_size
        self.in_channels = in_channels
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim,
                heads,
                mlp_dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=norm_first,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def forward(self, img: Tensor) -> Tensor:
        x = self.patch_embed(img).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        for block in self.blocks:
            x = block(x)
        out: Tensor = self.head(self.norm(x[:, 0]))
        return out


class TokenNet(nn.Module):
    """Tokens `[B, T, n_in]` -> linear embedding -> attention blocks -> mean over tokens ->
    linear head. Each block is an `nn.TransformerEncoderLayer`, or (`raw=True`) an
    `nn.MultiheadAttention` with a residual add."""

    def __init__(
        self,
        n_in: int,
        dim: int,
        heads: int,
        n_out: int,
        depth: int = 1,
        mlp_dim: int = 4,
        raw: bool = False,
        norm_first: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(n_in, dim)
        self.raw = raw
        self.blocks = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, batch_first=True)
            if raw
            else nn.TransformerEncoderLayer(
                dim,
                heads,
                mlp_dim,
                dropout=0.0,
                activation=activation,
                batch_first=True,
                norm_first=norm_first,
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, n_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            if isinstance(block, nn.MultiheadAttention):
                h = h + block(h, h, h, need_weights=False)[0]
            else:
                h = block(h)
        out: Tensor = self.head(h.mean(dim=1))
        return out


def randomize_(module: nn.Module, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    """Fill every parameter and buffer of `module` from `torch.Generator(seed)` (in place; the
    module is cast to `dtype` and put in eval mode).

    Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), normalization scales ~ 1 + N(0, 0.1^2),
    running means ~ N(0, 0.1^2), running variances ~ U(0.5, 1.5), counters ~ U{0..99}.
    """
    module.to(dtype)
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> Tensor:
        return mean + std * torch.randn(shape, generator=gen, dtype=torch.float64)

    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for m in module.modules():
            is_norm = isinstance(m, norm_types)
            for name, p in m.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    p.copy_(normal(p.shape, 0.1, 1.0))
                elif name.endswith("bias") or p.dim() == 1:
                    p.copy_(normal(p.shape, 0.1))
                elif name in ("cls_token", "pos_embedding"):
                    p.copy_(normal(p.shape, 0.5))
                else:
                    fan_in = math.prod(p.shape[1:])
                    p.copy_(normal(p.shape, 1.0 / math.sqrt(fan_in)))
            for name, b in m.named_buffers(recurse=False):
                if name == "running_mean":
                    b.copy_(normal(b.shape, 0.1))
                elif name == "running_var":
                    b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=torch.float64))
                elif not b.is_floating_point():
                    b.fill_(int(torch.randint(0, 100, (1,), generator=gen)))
    return module.eval()


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    module = ACTIVATIONS[name]()  # type: ignore[operator]
    assert isinstance(module, nn.Module)
    return module


class _ResNetFamily(nn.Module):
    def __init__(
        self,
        in_ch: int,
        stem: int,
        widths: tuple[int, ...],
        strides: tuple[int, ...],
        norm: str,
        activation: str,
        n_out: int,
    ) -> None:
        super().__init__()

        def make_norm(c: int) -> nn.Module:
            if norm == "batch":
                return nn.BatchNorm2d(c)
            if norm == "group":
                return nn.GroupNorm(2 if c % 2 == 0 else 1, c)
            return nn.Identity()

        self.conv1 = nn.Conv2d(in_ch, stem, 3, 1, 1, bias=norm == "none")
        self.bn1 = make_norm(stem)
        self.act = _activation(activation)
        blocks = []
        inplanes = stem
        for planes, stride in zip(widths, strides):
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), make_norm(planes)
                )
            blocks.append(
                BasicBlock(
                    inplanes,
                    planes,
                    stride,
                    downsample,
                    norm=make_norm,
                    activation=lambda: _activation(activation),
                )
            )
            inplanes = planes
        self.layer1 = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, n_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        out: Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return out


class _NormFamily(nn.Module):
    def __init__(
        self, kind: str, widths: tuple[int, ...], norms: tuple[str, ...], activation: str
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        conv = kind == "cnn"
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            last = i == len(widths) - 2
            layers.append(nn.Conv2d(a, b, 3, padding=1) if conv and not last else nn.Linear(a, b))
            if last:
                break
            norm = norms[i]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(b) if conv else nn.BatchNorm1d(b))
            elif norm == "batch_plain":
                layers.append(
                    nn.BatchNorm2d(b, affine=False) if conv else nn.BatchNorm1d(b, affine=False)
                )
            elif norm == "layer":
                layers.append(nn.GroupNorm(1, b) if conv else nn.LayerNorm(b))
            elif norm == "group":
                layers.append(nn.GroupNorm(2 if b % 2 == 0 else 1, b))
            layers.append(_activation(activation))
            if conv and i == len(widths) - 3:
                layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


@dataclass(frozen=True)
class FamilyRecipe:
    """A drawn architecture of one family; [`build`][nngraph_testing.FamilyRecipe.build] makes a
    seeded network of it.

    Args:
        family: `"resnet"`, `"norm"` or `"attention"`.
        config: the family's constructor arguments.
        input_shape: one input's shape without batch.
    """

    family: str
    config: tuple[tuple[str, object], ...]
    input_shape: tuple[int, ...]

    def build(self, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
        """A network of this architecture, every value drawn from `torch.Generator(seed)`."""
        kw = dict(self.config)
        module: nn.Module
        if self.family == "resnet":
            module = _ResNetFamily(**kw)  # type: ignore[arg-type]
        elif self.family == "norm":
            module = _NormFamily(**kw)  # type: ignore[arg-type]
        else:
            module = TokenNet(**kw)  # type: ignore[arg-type]
        return randomize_(module, seed, dtype)

    def example_input(self, batch: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
        gen = torch.Generator().manual_seed(seed + 1)
        return torch.randn((batch, *self.input_shape), generator=gen, dtype=torch.float64).to(dtype)


SMOOTH = ("tanh", "sine", "silu")


@st.composite
def resnet_recipes(
    draw: st.DrawFn,
    *,
    projection: bool | None = None,
    max_channels: int = 4,
    activations: tuple[str, ...] = SMOOTH,
) -> FamilyRecipe:
    """A stem conv, one or two basic blocks (identity or projection shortcuts; `projection`
    forces the first block's shortcut one way), BatchNorm / GroupNorm / no norm, pooling, a
    linear head."""
    in_ch = draw(st.integers(1, 2))
    stem = draw(st.integers(1, max_channels))
    n_blocks = draw(st.integers(1, 2))
    widths, strides = [], []
    prev = stem
    for i in range(n_blocks):
        if i == 0 and projection is not None:
            if projection:
                stride = draw(st.integers(1, 2))
                width = draw(st.integers(1, max_channels))
                if stride == 1 and width == prev:
                    width = prev + 1
            else:
                stride, width = 1, prev
        else:
            stride = draw(st.integers(1, 2))
            width = draw(st.sampled_from([prev, draw(st.integers(1, max_channels))]))
        widths.append(width)
        strides.append(stride)
        prev = width
    config = (
        ("in_ch", in_ch),
        ("stem", stem),
        ("widths", tuple(widths)),
        ("strides", tuple(strides)),
        ("norm", draw(st.sampled_from(["batch", "group", "none"]))),
        ("activation", draw(st.sampled_from(activations))),
        ("n_out", draw(st.integers(1, 3))),
    )
    size = draw(st.integers(3, 6))
    return FamilyRecipe("resnet", config, (in_ch, size, size))


NORMS = ("batch", "batch_plain", "layer", "group", "none")


@st.composite
def norm_recipes(
    draw: st.DrawFn,
    *,
    max_width: int = 5,
    min_hidden_width: int = 1,
    norms: tuple[str, ...] = NORMS,
    activations: tuple[str, ...] = SMOOTH,
) -> FamilyRecipe:
    """An MLP or CNN with a BatchNorm (affine or not) / LayerNorm / GroupNorm (two groups when
    the width is even) / nothing after each hidden layer (drawn from `norms`)."""
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    n_hidden = draw(st.integers(1, 3 if kind == "mlp" else 2))
    widths = [draw(st.integers(1, 3))]
    widths += [draw(st.integers(min_hidden_width, max_width)) for _ in range(n_hidden)]
    widths.append(draw(st.integers(1, 3)))
    norms = tuple(draw(st.sampled_from(norms)) for _ in range(n_hidden))
    config = (
        ("kind", kind),
        ("widths", tuple(widths)),
        ("norms", norms),
        ("activation", draw(st.sampled_from(activations))),
    )
    shape = (widths[0],) if kind == "mlp" else (widths[0], 4, 4)
    return FamilyRecipe("norm", config, shape)


@st.composite
def attention_recipes(
    draw: st.DrawFn,
    *,
    max_heads: int = 3,
    max_head_dim: int = 3,
    min_head_dim: int = 1,
    min_dim: int = 1,
    min_tokens: int = 1,
) -> FamilyRecipe:
    """Token networks with `nn.MultiheadAttention` (+ residual) or `nn.TransformerEncoderLayer`
    blocks (post- or pre-norm, ReLU or GELU), 1-3 heads of 1-3 dimensions (at least `min_dim`
    in all), 1-4 tokens (at least `min_tokens`)."""
    heads = draw(st.integers(1, max_heads))
    head_dim = draw(
        st.integers(
            max(min_head_dim, -(-min_dim // heads)), max(max_head_dim, -(-min_dim // heads))
        )
    )
    n_in = draw(st.integers(1, 3))
    tokens = draw(st.integers(min_tokens, max(4, min_tokens)))
    config = (
        ("n_in", n_in),
        ("dim", heads * head_dim),
        ("heads", heads),
        ("n_out", draw(st.integers(1, 3))),
        ("depth", draw(st.integers(1, 2))),
        ("mlp_dim", draw(st.integers(1, 4))),
        ("raw", draw(st.booleans())),
        ("norm_first", draw(st.booleans())),
        ("activation", draw(st.sampled_from(["relu", "gelu"]))),
    )
    return FamilyRecipe("attention", config, (tokens, n_in))


def family_recipes(family: str, **kwargs: object) -> st.SearchStrategy[FamilyRecipe]:
    """Recipes of `family` (`"resnet"`, `"norm"`, `"attention"`)."""
    strategies: dict[str, Callable[..., st.SearchStrategy[FamilyRecipe]]] = {
        "resnet": resnet_recipes,
        "norm": norm_recipes,
        "attention": attention_recipes,
    }
    if family not in strategies:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    return strategies[family](**kwargs)
