"""Heterogeneous CNN zoos in the style of the CNN Wild Park (Kofinas et al., ICLR 2024).

Every network has its own architecture, drawn from a small discrete set: depth (2-5 conv
layers), width (channels), kernel size (3, 5, 7), residual connections or not, and activation
(relu, tanh, gelu), followed by global average pooling and a linear classifier. On top of the
architecture each network draws the training hyper-parameters of the Small CNN Zoo protocol
(initialiser and its std, optimiser and learning rate, L2, dropout, fraction of the training
set; see [`CnnRecipe`][nngraph_datasets.CnnRecipe]). Weights are stored at several epochs
with train and test accuracy and loss.

An architecture is a [`WildCnnArch`][nngraph_datasets.WildCnnArch] (its constructor
arguments, stored in the manifest); [`WildCnnArch.module`][nngraph_datasets.WildCnnArch.module]
builds an ordinary `nn.Module` ([`WildCnn`][nngraph_datasets.WildCnn]) that
`nngraph_core.GraphTemplate.from_module` converts (residual adds become identity edges). The
builder trains all networks of one architecture at once (grouped convolutions, the optimiser
updates of [`train_cnns`][nngraph_datasets.train_cnns] vectorised over the network axis:
[`train_wild_cnns`][nngraph_datasets.train_wild_cnns]). Storage has the guarantees of the other
zoos: safetensors shards (one architecture per shard, `params [n, P_a]` in the module's
state-dict order) + `manifest.json` (schema version, recipe, seed, architectures, per-shard
sha256, splits by network), built atomically in `.<name>.partial/`, resumable after a kill,
one build at a time, byte-identical for a seed.

```python
from nngraph_datasets import load_wild_park_zoo
zoo = load_wild_park_zoo("digits", "tiny", root="zoos", progress=False)
rows = zoo.rows("train")                      # checkpoint indices of the train split
graphs = zoo.graph_batch(rows[:8])            # a mixed-architecture nngraph_core.GraphBatch
acc = zoo.metrics("train")["test_acc"]        # the regression target
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cnn_zoo import (
    _ADAM_BETAS,
    _EPS,
    _RMSPROP_ALPHA,
    INITIALIZERS,
    OPTIMIZERS,
    _as_column,
    _Batched,
    _cache_root,
    _default_splits,
    _init_tensor,
    _LineProgress,
    _load_data,
    _network_streams,
)
from .errors import ZooExistsError, ZooFormatError
from .zoo import (
    _MAX_MANIFEST_BYTES,
    _SHA256,
    _SHARD_NAME,
    _atomic_write,
    _build_lock,
    _finish,
    _is_int,
    _mmap_shard,
    _sha256,
    _storage_errors,
    _verify_shards,
    _versions,
    _write_shard,
)

__all__ = [
    "WILD_ACTIVATIONS",
    "WILD_PARK_RECIPES",
    "WILD_PARK_SCHEMA_VERSION",
    "WildCnn",
    "WildCnnArch",
    "WildParkRecipe",
    "WildParkZoo",
    "build_wild_park_zoo",
    "default_wild_park_zoo_dir",
    "load_wild_park_zoo",
    "train_wild_cnns",
    "verify_wild_park_zoo",
    "wild_cnn",
    "write_wild_park_zoo",
]

WILD_PARK_SCHEMA_VERSION = 1
_FORMAT = "nngraph-wild-park-zoo"
#: activation names; the zoo's `activation` column is the index in this tuple ("mixed": the
#: layers of a (converted) network have different activations)
WILD_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leaky_relu", "none", "mixed")
_ACT_FN: dict[str, Callable[[Tensor], Tensor] | None] = {
    "relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu, "none": None,
}  # fmt: skip
#: the metric columns every wild park zoo has (i: int64, f: float32)
REQUIRED_COLUMNS = {"network": "i", "epoch": "i", "architecture": "i", "test_acc": "f",
                    "activation": "i", "depth": "i", "width": "i", "kernel": "i",
                    "residual": "i"}  # fmt: skip
#: per-layer strides of the sampled architectures (two stride-2 layers, then stride 1)
_STRIDES = (2, 2, 1, 1, 1, 1, 1, 1)
_MAX_LAYERS = 16


# ----------------------------------------------------------------------------- architecture
@dataclasses.dataclass(frozen=True)
class WildCnnArch:
    """The constructor arguments of one [`WildCnn`][nngraph_datasets.WildCnn].

    Layer $i$ is `Conv2d(c_i, c_{i+1}, k_i, stride=s_i, padding=k_i // 2)`; when
    `residual[i] = r >= 0` the output of layer $r$ (after its activation and dropout) is added
    to the convolution's output before the activation: an identity shortcut when the two have
    the same number of channels, else a bias-free 1x1 convolution `shortcuts.<i>` (the
    projection). Then global average pooling and `Linear(c_L, num_classes)`.

    Args:
        in_channels: input channels.
        channels: output channels of each conv layer.
        kernel_sizes: odd kernel size of each conv layer.
        strides: stride of each conv layer.
        activations: activation of each conv layer (see `WILD_ACTIVATIONS`, not `"mixed"`).
        residual: per layer, the earlier layer whose output is added, or -1.
        num_classes: outputs.
    """

    in_channels: int
    channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    strides: tuple[int, ...]
    activations: tuple[str, ...]
    residual: tuple[int, ...]
    num_classes: int = 10

    def __post_init__(self) -> None:
        d = len(self.channels)
        if not 1 <= d <= _MAX_LAYERS:
            raise ValueError(f"a WildCnnArch has 1 to {_MAX_LAYERS} conv layers, got {d}")
        for name in ("kernel_sizes", "strides", "activations", "residual"):
            if len(getattr(self, name)) != d:
                raise ValueError(f"{name} must have one entry per conv layer ({d})")
        ints = [self.in_channels, self.num_classes, *self.channels, *self.kernel_sizes,
                *self.strides, *self.residual]  # fmt: skip
        if not all(_is_int(v) for v in ints):
            raise ValueError("channels, kernel sizes, strides and residual sources are integers")
        if not 1 <= self.in_channels <= 64 or not 1 <= self.num_classes <= 10000:
            raise ValueError("in_channels must be in [1, 64] and num_classes in [1, 10000]")
        if not all(1 <= c <= 1024 for c in self.channels):
            raise ValueError(f"channels must be in [1, 1024], got {self.channels}")
        if not all(k % 2 == 1 and 1 <= k <= 15 for k in self.kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, 1..15, got {self.kernel_sizes}")
        if not all(1 <= s <= 4 for s in self.strides):
            raise ValueError(f"strides must be in [1, 4], got {self.strides}")
        if not all(a in _ACT_FN for a in self.activations):
            raise ValueError(f"activations must be in {sorted(_ACT_FN)}, got {self.activations}")
        if not all(-1 <= r < i for i, r in enumerate(self.residual)):
            raise ValueError(f"residual[i] must be -1 or an earlier layer, got {self.residual}")

    @property
    def depth(self) -> int:
        return len(self.channels)

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """`(state-dict key, shape)` of every parameter, in state-dict order."""
        out: list[tuple[str, tuple[int, ...]]] = []
        cin = [self.in_channels, *self.channels]
        for i, (c, k) in enumerate(zip(self.channels, self.kernel_sizes)):
            out += [(f"layers.{i}.weight", (c, cin[i], k, k)), (f"layers.{i}.bias", (c,))]
        for i in self.projections():
            out.append(
                (f"shortcuts.{i}.weight", (self.channels[i], self.channels[self.residual[i]], 1, 1))
            )
        out += [
            ("fc.weight", (self.num_classes, self.channels[-1])),
            ("fc.bias", (self.num_classes,)),
        ]
        return out

    def projections(self) -> list[int]:
        """The layers whose shortcut is a 1x1 projection (the source has other channels)."""
        return [i for i, r in enumerate(self.residual)
                if r >= 0 and self.channels[r] != self.channels[i]]  # fmt: skip

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for _, s in self.param_shapes())

    def feature_shapes(self, hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Spatial size of each layer's output for an input of size `hw`."""
        out, (h, w) = [], hw
        for k, s in zip(self.kernel_sizes, self.strides):
            h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
            out.append((h, w))
        return out

    def check_input(self, hw: tuple[int, int]) -> None:
        """Raise `ValueError` when a shortcut joins outputs of different spatial sizes."""
        shapes = self.feature_shapes(hw)
        if min(min(s) for s in shapes) < 1:
            raise ValueError(f"{hw} inputs are too small for {self.label}")
        for i, r in enumerate(self.residual):
            if r >= 0 and shapes[r] != shapes[i]:
                raise ValueError(
                    f"layer {i} adds layer {r}'s output of size {shapes[r]} to one of {shapes[i]}"
                )

    @property
    def activation(self) -> str:
        """The activation of every layer, or `"mixed"`."""
        return self.activations[0] if len(set(self.activations)) == 1 else "mixed"

    @property
    def label(self) -> str:
        res = [f"{i}<-{r}" for i, r in enumerate(self.residual) if r >= 0]
        return (f"wild-cnn depth {self.depth} channels {list(self.channels)} kernels "
                f"{list(self.kernel_sizes)} {self.activation}"
                + (f" residual {','.join(res)}" if res else ""))  # fmt: skip

    def module(self, dropout: float = 0.0) -> WildCnn:
        """A fresh [`WildCnn`][nngraph_datasets.WildCnn] of this architecture."""
        return WildCnn(self, dropout=dropout)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WildCnnArch:
        """The inverse of `to_dict` (`ValueError` on unknown or missing fields)."""
        if not isinstance(d, Mapping):
            raise ValueError("an architecture must be an object")
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(d) - fields or {"in_channels", "channels"} - set(d):
            raise ValueError(f"architecture fields must be {sorted(fields)}, got {sorted(d)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, list):
                if len(v) > _MAX_LAYERS:
                    raise ValueError(f"{k}: more than {_MAX_LAYERS} layers")
                v = tuple(v)
            kw[k] = v
        for k in ("activations",):
            if not isinstance(kw.get(k), tuple) or not all(isinstance(a, str) for a in kw[k]):
                raise ValueError(f"{k} must be a list of names")
        for k in ("channels", "kernel_sizes", "strides", "residual"):
            if not isinstance(kw.get(k), tuple):
                raise ValueError(f"{k} must be a list")
        return cls(**kw)


def wild_cnn(
    depth: int,
    width: int,
    kernel_size: int,
    activation: str = "relu",
    *,
    residual: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
) -> WildCnnArch:
    """An architecture of the sampled family: `depth` conv layers of `width` channels and
    `kernel_size` kernels, strides 2, 2, 1, 1, ... and one activation.

    With `residual`, every layer $i \\ge 2$ whose output has the spatial size of layer
    $i - 2$'s gets an identity shortcut from it (ResNet basic blocks: the shortcut spans two
    convolutions); the first layers halve the resolution, so the shortcuts are
    $1 \\to 3$ and $2 \\to 4$ (none below depth 4). Shortcuts between outputs of different
    sizes are skipped, never projected.

    Args:
        depth: conv layers (1-8).
        width: channels of every conv layer.
        kernel_size: odd kernel size of every conv layer.
        activation: `"relu"`, `"tanh"`, `"gelu"`, `"sigmoid"`, `"leaky_relu"` or `"none"`.
        residual: add the shortcuts.
        in_channels: input channels.
        num_classes: outputs.
    """
    if not 1 <= depth <= len(_STRIDES):
        raise ValueError(f"depth must be in [1, {len(_STRIDES)}], got {depth}")
    strides = _STRIDES[:depth]
    res = [-1] * depth
    if residual:
        for i in range(2, depth):
            # same spatial size for every input size: both layers come after the stride-2 ones
            if all(s == 1 for s in strides[i - 1 : i + 1]) and i - 2 >= 1:
                res[i] = i - 2
    return WildCnnArch(in_channels, (width,) * depth, (kernel_size,) * depth, strides,
                       (activation,) * depth, tuple(res), num_classes)  # fmt: skip


class WildCnn(nn.Module):
    """The module of a [`WildCnnArch`][nngraph_datasets.WildCnnArch]: convolutions
    `layers.<i>`, 1x1 shortcut projections `shortcuts.<i>` (only where channels differ),
    dropout after every conv layer but the last, global average pooling, `fc`.

    The state-dict keys are `layers.<i>.weight`, `layers.<i>.bias`, `shortcuts.<i>.weight`,
    `fc.weight`, `fc.bias` (the keys of the reference CNN Wild Park models, plus the
    projections), and the flat layout of `nngraph_core.GraphTemplate.from_module(model)` is
    this state-dict order.

    Args:
        arch: the architecture.
        dropout: dropout probability after each conv layer but the last.
    """

    def __init__(self, arch: WildCnnArch, dropout: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        cin = [arch.in_channels, *arch.channels]
        self.layers = nn.ModuleList(
            nn.Conv2d(cin[i], c, k, stride=s, padding=k // 2)
            for i, (c, k, s) in enumerate(zip(arch.channels, arch.kernel_sizes, arch.strides))
        )
        self.shortcuts = nn.ModuleDict({
            str(i): nn.Conv2d(arch.channels[arch.residual[i]], arch.channels[i], 1, bias=False)
            for i in arch.projections()
        })  # fmt: skip
        self.drops = nn.ModuleList(
            nn.Dropout(dropout) if i < arch.depth - 1 else nn.Identity() for i in range(arch.depth)
        )
        self.fc = nn.Linear(arch.channels[-1], arch.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        outs: list[Tensor] = []
        for i, conv in enumerate(self.layers):
            h = conv(x)
            r = self.arch.residual[i]
            if r >= 0:
                y = outs[r]
                if str(i) in self.shortcuts:
                    y = self.shortcuts[str(i)](y)
                h = h + y
            act = _ACT_FN[self.arch.activations[i]]
            if act is not None:
                h = act(h)
            x = self.drops[i](h)
            outs.append(x)
        return self.fc(x.mean((2, 3)))


# ----------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class WildParkRecipe:
    """How a wild park zoo is made: the architecture space, the hyper-parameter ranges and the
    training budget.

    The build enumerates the architectures [`wild_cnn`][nngraph_datasets.wild_cnn]`(depth,
    width, kernel, activation, residual=...)` for every combination of `depths`, `widths`,
    `kernel_sizes`, `activations` and `residual` (residual only where the depth allows a
    shortcut), draws `num_architectures` of them (seeded; all when `None`), and gives each
    network one of those uniformly; so every architecture is trained by many networks, in
    groups of at most `group_size` (one shard each). The training hyper-parameters and the
    budget are those of [`CnnRecipe`][nngraph_datasets.CnnRecipe] (same meaning, same
    defaults).

    `WildParkRecipe.named("default")` (480 networks of 16 architectures, widths 4 / 8 / 16)
    is sized to build in under ten minutes on 2 idle CPU cores; `"full"` follows the
    reference's protocol as far as it applies (its depths, widths 4-32, kernels and five of its
    activations: 360 architectures, 50,000 networks, 200 epochs on all 60,000 training images;
    for accelerators and time); `"tiny"` is for tests.
    """

    name: str = "default"
    num_networks: int = 480
    num_architectures: int | None = 16
    depths: tuple[int, ...] = (2, 3, 4, 5)
    widths: tuple[int, ...] = (4, 8, 16)
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")
    residual: tuple[bool, ...] = (False, True)
    epochs: int = 3
    checkpoints: tuple[int, ...] = (0, 1, 2, 3)
    batch_size: int = 32
    train_pool: int | None = 1024
    eval_train: int = 256
    eval_test: int | None = 500
    group_size: int = 50
    initializers: tuple[str, ...] = INITIALIZERS
    optimizers: tuple[str, ...] = OPTIMIZERS
    init_std: tuple[float, float] = (1e-3, 0.5)
    lr: tuple[float, float] = (5e-4, 5e-2)
    l2: tuple[float, float] = (1e-8, 1e-2)
    dropout: tuple[float, float] = (0.0, 0.7)
    train_fraction: tuple[float, float] = (0.05, 1.0)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"WildParkRecipe {self.name!r}: {msg}")

        if self.num_networks < 1 or self.epochs < 0 or self.batch_size < 1 or self.group_size < 1:
            raise bad("num_networks, batch_size and group_size must be >= 1, epochs >= 0")
        cps = self.checkpoints
        if not cps or list(cps) != sorted(set(cps)) or cps[0] < 0 or cps[-1] > self.epochs:
            raise bad(f"checkpoints must be increasing epochs in [0, {self.epochs}], got {cps}")
        if not self.depths or not all(1 <= d <= len(_STRIDES) for d in self.depths):
            raise bad(f"depths must be in [1, {len(_STRIDES)}], got {self.depths}")
        if not self.widths or not all(1 <= w <= 256 for w in self.widths):
            raise bad(f"widths must be in [1, 256], got {self.widths}")
        if not self.kernel_sizes or not all(k % 2 == 1 and 1 <= k <= 15 for k in self.kernel_sizes):
            raise bad(f"kernel_sizes must be odd, 1..15, got {self.kernel_sizes}")
        allowed = WILD_ACTIVATIONS[:-1]
        if not self.activations or any(a not in allowed for a in self.activations):
            raise bad(f"activations must be a non-empty subset of {allowed}")
        if not self.residual or any(not isinstance(r, bool) for r in self.residual):
            raise bad("residual must be a non-empty tuple of booleans")
        for field, allowed2 in (("initializers", INITIALIZERS), ("optimizers", OPTIMIZERS)):
            values = getattr(self, field)
            if not values or any(v not in allowed2 for v in values):
                raise bad(f"{field} must be a non-empty subset of {allowed2}, got {values}")
        for field in ("init_std", "lr", "l2"):
            lo, hi = getattr(self, field)
            if not 0 < lo <= hi:
                raise bad(f"{field} must be a range 0 < low <= high, got {(lo, hi)}")
        if not 0 <= self.dropout[0] <= self.dropout[1] < 1:
            raise bad(f"dropout must be a range in [0, 1), got {self.dropout}")
        if not 0 < self.train_fraction[0] <= self.train_fraction[1] <= 1:
            raise bad(f"train_fraction must be a range in (0, 1], got {self.train_fraction}")
        if self.train_pool is not None and self.train_pool < 1:
            raise bad("train_pool must be >= 1 (or None: the whole training split)")
        if self.eval_train < 1 or (self.eval_test is not None and self.eval_test < 1):
            raise bad("eval_train and eval_test must be >= 1")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-9:
            raise bad(f"split_fractions must be 3 numbers summing to 1, got {self.split_fractions}")
        if self.num_architectures is not None and not 1 <= self.num_architectures <= len(
            self.space()
        ):
            raise bad(f"num_architectures must be in [1, {len(self.space())}] (or None: all)")

    @classmethod
    def named(cls, name: str) -> WildParkRecipe:
        """`"default"`, `"full"` or `"tiny"`."""
        if name not in WILD_PARK_RECIPES:
            raise ValueError(
                f"unknown wild park recipe {name!r}; choose from {sorted(WILD_PARK_RECIPES)}"
            )
        return WILD_PARK_RECIPES[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WildParkRecipe:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown WildParkRecipe fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def steps_per_epoch(self, pool_size: int) -> int:
        return max(1, math.ceil(pool_size / self.batch_size))

    def space(self) -> list[tuple[int, int, int, str, bool]]:
        """Every `(depth, width, kernel, activation, residual)` of the recipe, in a fixed order
        (residual only for depths that have a shortcut)."""
        out = []
        for d, w, k, a, r in itertools.product(self.depths, self.widths, self.kernel_sizes,
                                               self.activations, self.residual):  # fmt: skip
            if r and all(x < 0 for x in wild_cnn(d, w, k, a, residual=True).residual):
                continue
            out.append((d, w, k, a, r))
        return out

    def architectures(self, seed: int, in_channels: int = 1) -> list[WildCnnArch]:
        """The zoo's architectures for `seed` (a seeded draw of `num_architectures` from
        `space()`, kept in the space's order)."""
        space = self.space()
        if self.num_architectures is None or self.num_architectures >= len(space):
            chosen = list(range(len(space)))
        else:
            rng = np.random.default_rng([seed, 0xA2C4])
            chosen = sorted(rng.choice(len(space), self.num_architectures, replace=False).tolist())
        return [wild_cnn(d, w, k, a, residual=r, in_channels=in_channels)
                for d, w, k, a, r in (space[j] for j in chosen)]  # fmt: skip


WILD_PARK_RECIPES: dict[str, WildParkRecipe] = {
    "default": WildParkRecipe(),
    "full": WildParkRecipe(
        name="full", num_networks=50000, num_architectures=None, widths=(4, 8, 16, 32),
        activations=("relu", "tanh", "gelu", "sigmoid", "leaky_relu"), epochs=200,
        checkpoints=(0, 1, 2, 5, 10, 20, 50, 100, 150, 200), train_pool=None,
        eval_train=10000, eval_test=None, group_size=100,
    ),
    "tiny": WildParkRecipe(
        name="tiny", num_networks=12, num_architectures=3, depths=(2, 4), widths=(4,),
        kernel_sizes=(3, 5), activations=("relu", "gelu"), epochs=2, checkpoints=(0, 1, 2),
        batch_size=16, train_pool=160, eval_train=64, eval_test=64, group_size=3,
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- hyper-parameters
_HP_FLOATS = ("init_std", "lr", "l2", "dropout", "train_fraction")


def _sample_wild_hparams(
    recipe: WildParkRecipe, seed: int, networks: Sequence[int], num_arch: int
) -> dict[str, np.ndarray]:
    """Architecture and hyper-parameters of the given network ids; network `i`'s depend on
    `(seed, i)` (and the number of architectures) only."""
    cols: dict[str, list[Any]] = {k: [] for k in ("architecture", "initializer", "optimizer",
                                                  *_HP_FLOATS)}  # fmt: skip

    def log_uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
        return float(np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))

    for i in networks:
        rng = np.random.default_rng([seed, i, 0x3A1D])
        cols["architecture"].append(int(rng.integers(num_arch)))
        cols["initializer"].append(
            INITIALIZERS.index(recipe.initializers[rng.integers(len(recipe.initializers))])
        )
        cols["optimizer"].append(
            OPTIMIZERS.index(recipe.optimizers[rng.integers(len(recipe.optimizers))])
        )
        cols["init_std"].append(log_uniform(rng, recipe.init_std))
        cols["lr"].append(log_uniform(rng, recipe.lr))
        cols["l2"].append(log_uniform(rng, recipe.l2))
        cols["dropout"].append(float(rng.uniform(*recipe.dropout)))
        cols["train_fraction"].append(float(rng.uniform(*recipe.train_fraction)))
    out = {k: np.asarray(v, dtype=np.float64 if k in _HP_FLOATS else np.int64)
           for k, v in cols.items()}  # fmt: skip
    for k in _HP_FLOATS:  # float32 is what the zoo stores; training uses exactly those values
        out[k] = out[k].astype(np.float32).astype(np.float64)
    return out


def _init_wild_params(
    arch: WildCnnArch, initializer: str, init_std: float, generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:  # fmt: skip
    """Initial state dict (biases zero; the initialisers of
    [`init_cnn_params`][nngraph_datasets.init_cnn_params])."""
    if initializer not in INITIALIZERS:
        raise ValueError(f"initializer must be one of {INITIALIZERS}, got {initializer!r}")
    return {key: torch.zeros(shape, dtype=dtype) if key.endswith("bias")
            else _init_tensor(shape, initializer, init_std, generator, dtype)
            for key, shape in arch.param_shapes()}  # fmt: skip


# ----------------------------------------------------------------------------- batched training
class _WildBatched(_Batched):
    """B networks of one [`WildCnnArch`][nngraph_datasets.WildCnnArch] as stacked parameters:
    the forward pass is a chain of grouped convolutions with the shortcut adds, the optimiser
    updates are those of `_Batched` (vectorised over the network axis)."""

    def __init__(
        self, arch: WildCnnArch, params: list[Tensor], hp: Mapping[str, np.ndarray],
        dtype: torch.dtype,
    ) -> None:  # fmt: skip
        if arch.projections():
            raise ValueError("the batched trainer supports identity shortcuts only")
        B = int(params[0].shape[0])
        super().__init__(params, {**hp, "activation": np.zeros(B, dtype=np.int64)}, dtype)
        self.arch = arch

    def forward(self, x: Tensor, masks: Sequence[Tensor | None] = ()) -> Tensor:
        """`x [n, B, C, H, W]` -> logits `[n, B, classes]`; `masks[i]`: dropout multipliers
        `[n, B*c_i, h_i, w_i]` after conv `i` (None or missing: no dropout)."""
        n, B, a = x.shape[0], self.B, self.arch
        h = x.reshape(n, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
        outs: list[Tensor] = []
        for i in range(a.depth):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            wk = w.reshape(-1, *w.shape[2:]).contiguous(memory_format=torch.channels_last)
            k = a.kernel_sizes[i]
            h = F.conv2d(h, wk, b.reshape(-1), stride=a.strides[i], padding=k // 2, groups=B)
            if a.residual[i] >= 0:
                h = h + outs[a.residual[i]]
            act = _ACT_FN[a.activations[i]]
            if act is not None:
                h = act(h)
            mask = masks[i] if i < len(masks) else None
            if mask is not None:
                h = h * mask
            outs.append(h)
        wl, bl = self.params[-2], self.params[-1]
        pooled = h.mean((2, 3)).view(n, B, -1)
        return torch.einsum("nbi,boi->nbo", pooled, wl) + bl

    def wild_masks(
        self, n: int, shapes: Sequence[tuple[int, int]], gen: torch.Generator
    ) -> list[Tensor | None]:
        """Dropout multipliers after every conv layer but the last (drawn in channels-last)."""
        if not bool((self.dropout > 0).any()):
            return []
        out: list[Tensor | None] = []
        for c, (h, w) in zip(self.arch.channels[:-1], shapes[:-1]):
            keep = (1 - self.dropout).repeat_interleave(c)
            scale, zero = 1 / keep, torch.zeros((), dtype=self.dtype)
            u = torch.rand((n, h, w, self.B * c), generator=gen, dtype=self.dtype)
            out.append(torch.where(u < keep, scale, zero).permute(0, 3, 1, 2))
        return out


def train_wild_cnns(
    arch: WildCnnArch,
    init: Sequence[Mapping[str, Tensor]],
    hparams: Mapping[str, np.ndarray],
    train_x: Tensor,
    train_y: Tensor,
    batches: np.ndarray,
    *,
    checkpoints: Sequence[int],
    steps_per_epoch: int,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    dropout_seed: int = 0,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int], None] | None = None,
    masks: Callable[[int], Sequence[Tensor | None]] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Train B networks of one architecture at once, each with its own hyper-parameters and
    batches: [`train_cnns`][nngraph_datasets.train_cnns] for a
    [`WildCnnArch`][nngraph_datasets.WildCnnArch] (any depth, kernel size, stride and identity
    shortcuts).

    Args:
        arch: the architecture of all B networks (identity shortcuts only).
        init: B initial state dicts (keys of `arch.param_shapes()`).
        hparams: per-network columns `optimizer` (codes in `OPTIMIZERS`), `lr`, `l2`,
            `dropout` (arrays of length B).
        train_x: the training images `[N, C, H, W]`.
        train_y: their labels `[N]`.
        batches: `[steps, batch, B]` rows of `train_x` (network b trains on
            `batches[s, :, b]` at step s).
        checkpoints: epochs at which the weights and metrics are taken (0: the initialisation).
        steps_per_epoch: steps per epoch.
        eval_sets: name -> `(x [n, B, C, H, W], y [n, B])`; gives `<name>_acc` and
            `<name>_loss` `[len(checkpoints), B]`.
        dropout_seed: seed of the dropout masks.
        dtype: training dtype (float64 for exactness tests).
        callback: called with the number of steps done after each step.
        masks: `masks(step)` -> dropout multipliers `[batch, B*c_i, h_i, w_i]` after each conv
            layer but the last; default: drawn from `dropout_seed`.

    Returns:
        `(params [len(checkpoints), B, P], metrics)` as
        [`train_cnns`][nngraph_datasets.train_cnns] returns them.
    """
    keys = [k for k, _ in arch.param_shapes()]
    params = [torch.stack([sd[k] for sd in init]) for k in keys]
    net = _WildBatched(arch, params, hparams, dtype)
    hw = (int(train_x.shape[-2]), int(train_x.shape[-1]))
    arch.check_input(hw)
    shapes = arch.feature_shapes(hw)
    gen = torch.Generator().manual_seed(dropout_seed)
    xs = train_x.to(dtype)
    steps = int(batches.shape[0])
    need = max(checkpoints) * steps_per_epoch
    if need > steps:
        raise ValueError(f"batches cover {steps} steps, the checkpoints need {need}")
    saved: list[Tensor] = []
    metrics: dict[str, list[Tensor]] = {"alive": []}
    for name in eval_sets or {}:
        metrics[f"{name}_acc"], metrics[f"{name}_loss"] = [], []

    def checkpoint() -> None:
        saved.append(net.flat().clone())
        metrics["alive"].append(net.alive.clone())
        with torch.no_grad():
            for name, (ex, ey) in (eval_sets or {}).items():
                losses, accs = [], []
                for lo in range(0, ex.shape[0], 256):
                    loss, acc = net.losses(ex[lo : lo + 256].to(dtype), ey[lo : lo + 256], ())
                    k = min(256, ex.shape[0] - lo)
                    losses.append(loss * k)
                    accs.append(acc * k)
                metrics[f"{name}_loss"].append(torch.stack(losses).sum(0) / ex.shape[0])
                metrics[f"{name}_acc"].append(torch.stack(accs).sum(0) / ex.shape[0])

    step = 0
    for epoch in range(max(checkpoints) + 1):
        if epoch > 0:
            for _ in range(steps_per_epoch):
                idx = torch.from_numpy(batches[step])
                x = xs[idx]
                m = masks(step) if masks is not None else net.wild_masks(x.shape[0], shapes, gen)
                net.step(x, train_y[idx], m)
                step += 1
                if callback is not None:
                    callback(step)
        if epoch in checkpoints:
            checkpoint()
    return torch.stack(saved), {k: torch.stack(v) for k, v in metrics.items()}


def _plain_train_wild(
    arch: WildCnnArch,
    init: Sequence[Mapping[str, Tensor]],
    hparams: Mapping[str, np.ndarray],
    train_x: Tensor,
    train_y: Tensor,
    batches: np.ndarray,
    *,
    steps: int,
    dtype: torch.dtype = torch.float64,
    masks: Callable[[int], Sequence[Tensor | None]] | None = None,
) -> Tensor:
    """The reference of [`train_wild_cnns`][nngraph_datasets.train_wild_cnns]: a Python loop
    over the networks, each a [`WildCnn`][nngraph_datasets.WildCnn] with its own `torch.optim`
    optimiser on the same batches and dropout masks (injected by forward hooks on its dropout
    modules). Returns the final parameters `[B, P]`."""
    out = []
    B = len(init)
    for b, sd in enumerate(init):
        model = arch.module(dropout=0.0).to(dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
        model.train()
        lr, l2 = float(hparams["lr"][b]), float(hparams["l2"][b])
        kind = OPTIMIZERS[int(hparams["optimizer"][b])]
        opt: torch.optim.Optimizer
        if kind == "adam":
            opt = torch.optim.Adam(model.parameters(), lr, betas=_ADAM_BETAS, eps=_EPS,
                                   weight_decay=l2)  # fmt: skip
        elif kind == "rmsprop":
            opt = torch.optim.RMSprop(model.parameters(), lr, alpha=_RMSPROP_ALPHA, eps=_EPS,
                                      weight_decay=l2)  # fmt: skip
        else:
            opt = torch.optim.SGD(model.parameters(), lr, weight_decay=l2)
        current: list[Tensor | None] = []
        hooks = []
        for i in range(arch.depth - 1):

            def hook(
                mod: nn.Module, inp: Any, output: Tensor, i: int = i, b: int = b,
                current: list[Tensor | None] = current,
            ) -> Tensor:  # fmt: skip
                m = current[i] if i < len(current) else None
                if m is None:
                    return output
                return output * m.view(m.shape[0], B, -1, *m.shape[2:])[:, b]

            hooks.append(model.drops[i].register_forward_hook(hook))
        for s in range(steps):
            idx = torch.from_numpy(batches[s, :, b])
            current[:] = list(masks(s)) if masks is not None else []
            opt.zero_grad()
            F.cross_entropy(model(train_x[idx].to(dtype)), train_y[idx]).backward()
            opt.step()
        for h in hooks:
            h.remove()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.state_dict().values()]))
    return torch.stack(out)


# ----------------------------------------------------------------------------- building
def _groups(recipe: WildParkRecipe, seed: int, num_arch: int) -> list[tuple[int, list[int]]]:
    """`(architecture, network ids)` of every shard: the networks of each architecture in
    chunks of `group_size`, architectures in order."""
    arch_of = _sample_wild_hparams(recipe, seed, range(recipe.num_networks), num_arch)[
        "architecture"
    ]
    out = []
    for a in range(num_arch):
        nets = np.flatnonzero(arch_of == a).tolist()
        out += [
            (a, nets[lo : lo + recipe.group_size]) for lo in range(0, len(nets), recipe.group_size)
        ]
    return out


def _train_wild_group(
    recipe: WildParkRecipe, seed: int, arch_id: int, arch: WildCnnArch, num_arch: int,
    networks: Sequence[int], data: tuple[Tensor, Tensor, Tensor, Tensor],
    callback: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:  # fmt: skip
    """Train the networks `networks` (all of architecture `arch`) and return the shard's
    tensors (rows: network by network, checkpoints in order)."""
    pool_x, pool_y, test_x, test_y = data
    hp = _sample_wild_hparams(recipe, seed, networks, num_arch)
    spe = recipe.steps_per_epoch(len(pool_x))
    steps = recipe.epochs * spe
    batches, evals = _network_streams(
        recipe,
        seed,
        networks,
        hp["train_fraction"],
        len(pool_x),
        steps,  # type: ignore[arg-type]
    )
    init = []
    for j, i in enumerate(networks):
        gen = torch.Generator().manual_seed(
            int(np.random.default_rng([seed, i, 0x1417]).integers(2**62))
        )
        init.append(_init_wild_params(arch, INITIALIZERS[hp["initializer"][j]],
                                      float(hp["init_std"][j]), gen))  # fmt: skip
    B = len(networks)
    eval_idx = torch.from_numpy(evals)
    eval_sets = {
        "train": (pool_x[eval_idx], pool_y[eval_idx]),
        "test": (test_x.unsqueeze(1).expand(-1, B, *test_x.shape[1:]),
                 test_y.unsqueeze(1).expand(-1, B)),
    }  # fmt: skip
    dseed = int(np.random.default_rng([seed, arch_id, int(networks[0]), 0xD209]).integers(2**62))
    params, m = train_wild_cnns(arch, init, hp, pool_x, pool_y, batches,
                                checkpoints=recipe.checkpoints, steps_per_epoch=spe,
                                eval_sets=eval_sets, dropout_seed=dseed, callback=callback)  # fmt: skip
    C = len(recipe.checkpoints)
    out: dict[str, Tensor] = {
        "params": params.permute(1, 0, 2).reshape(B * C, -1).to(torch.float32).contiguous()
    }
    out["network"] = torch.as_tensor(list(networks), dtype=torch.int64).repeat_interleave(C)
    out["epoch"] = torch.as_tensor(recipe.checkpoints, dtype=torch.int64).repeat(B)
    for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
        out[k] = m[k].T.reshape(-1).to(torch.float32).contiguous()
    out["stopped"] = (~m["alive"]).T.reshape(-1).to(torch.int64).contiguous()
    out.update(_arch_columns(arch, arch_id, B * C))
    for k, v in hp.items():
        if k == "architecture":
            continue
        t = torch.from_numpy(v)
        out[k] = (t.to(torch.float32) if k in _HP_FLOATS else t).repeat_interleave(C)
    return out


def _arch_columns(arch: WildCnnArch, arch_id: int, rows: int) -> dict[str, Tensor]:
    """The architecture columns of `rows` checkpoints of one architecture."""
    vals = {"architecture": arch_id, "activation": WILD_ACTIVATIONS.index(arch.activation),
            "depth": arch.depth, "width": max(arch.channels), "kernel": max(arch.kernel_sizes),
            "residual": int(any(r >= 0 for r in arch.residual))}  # fmt: skip
    return {k: torch.full((rows,), v, dtype=torch.int64) for k, v in vals.items()}


def _resolve_recipe(recipe: str | WildParkRecipe, num_networks: int | None) -> WildParkRecipe:
    r = WildParkRecipe.named(recipe) if isinstance(recipe, str) else recipe
    if num_networks is not None:
        r = dataclasses.replace(r, num_networks=num_networks)
    return r


def _categories() -> dict[str, list[str]]:
    return {"activation": list(WILD_ACTIVATIONS), "initializer": list(INITIALIZERS),
            "optimizer": list(OPTIMIZERS)}  # fmt: skip


def build_wild_park_zoo(
    out: str | os.PathLike[str],
    *,
    dataset: str = "fashion-mnist",
    recipe: str | WildParkRecipe = "default",
    seed: int = 0,
    num_networks: int | None = None,
    progress: bool | Callable[[float, str], None] = True,
    overwrite: bool = False,
    data_root: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> Path:
    """Train a heterogeneous (wild park) CNN zoo and write it to `out` (atomically, resumably,
    deterministically).

    The architectures are drawn from the recipe's space (see
    [`WildParkRecipe`][nngraph_datasets.WildParkRecipe]); the networks of one architecture
    are trained together in groups of `recipe.group_size`, one shard each (the unit of
    resumption). Network `i`'s architecture, hyper-parameters, initialisation and batches
    depend on `(seed, i)` only (given the recipe), so the same seed rebuilds the same bytes on
    the same machine, torch version and thread count. Splits are by network (80 / 10 / 10,
    seeded).

    Args:
        out: the zoo folder to create.
        dataset: `"fashion-mnist"` (default), `"mnist"`, `"mnist-5k"` or `"digits"` (8x8,
            zero-padded to 16x16; for tests): see
            [`build_cnn_zoo`][nngraph_datasets.build_cnn_zoo].
        recipe: a [`WildParkRecipe`][nngraph_datasets.WildParkRecipe] or the name of one.
        seed: everything random derives from it.
        num_networks: override the recipe's number of networks.
        progress: a progress line on stderr (True), none (False) or a callable
            `progress(networks_done: float, info: str)`.
        overwrite: replace an existing zoo at `out`.
        data_root: the folder of the IDX files (fashion-mnist / mnist).
        threads: torch threads during the build (default: torch's current setting).

    Returns:
        The path of the finished zoo.
    """
    out = Path(out)
    r = _resolve_recipe(recipe, num_networks)
    if out.exists() and not overwrite:
        raise ZooExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    old_threads = torch.get_num_threads()
    nthreads = int(threads or old_threads)
    pool_x, pool_y, test_x, test_y, info = _load_data(dataset, r, seed, data_root)  # type: ignore[arg-type]
    in_ch = int(pool_x.shape[1])
    archs = r.architectures(seed, in_ch)
    hw = (int(pool_x.shape[-2]), int(pool_x.shape[-1]))
    for a in archs:
        a.check_input(hw)
    plan = {"dataset": dataset, "recipe": r.to_dict(), "seed": seed, "threads": nthreads,
            "data": info, "format": _FORMAT, "schema_version": WILD_PARK_SCHEMA_VERSION}  # fmt: skip
    partial = out.with_name(f".{out.name}.partial")
    kept = f"the finished shards in {partial} are intact and a rerun resumes from them" + (
        f"; the zoo at {out} is unchanged" if out.exists() else "")  # fmt: skip
    groups = _groups(r, seed, len(archs))
    C = len(r.checkpoints)
    report: Callable[[float, str], None] | None
    report = _LineProgress(r.num_networks, r.epochs) if progress is True else (progress or None)  # type: ignore[assignment]
    torch.set_num_threads(nthreads)
    try:
        with _storage_errors(out, kept), _build_lock(out):
            if out.exists() and not overwrite:  # built by another process while this one waited
                try:
                    done_m = _read_wild_manifest(out)
                    if all(done_m.get(k) == plan[k] for k in ("dataset", "recipe", "seed")):
                        return out
                except ZooFormatError:
                    pass
                raise ZooExistsError(
                    f"{out} exists; pass overwrite=True (--overwrite) to replace it"
                )
            partial.mkdir(parents=True, exist_ok=True)
            plan_file = partial / "build.json"
            if plan_file.exists():
                try:
                    old = json.loads(plan_file.read_text())
                except (ValueError, RecursionError) as e:
                    raise ZooFormatError(
                        f"{plan_file} is unreadable; delete {partial} and rerun"
                    ) from e
                if old != plan:
                    raise ZooFormatError(
                        f"{partial} holds an interrupted build with different settings; delete it "
                        "or rerun with the same settings (dataset, recipe, seed, threads)"
                    )
            else:
                _atomic_write(plan_file, json.dumps(plan, indent=1, sort_keys=True).encode())
            shards, columns, start, done = [], None, 0, 0
            spe = r.steps_per_epoch(len(pool_x))
            total_steps = max(1, r.epochs * spe)
            for k, (a, nets) in enumerate(groups):
                path = partial / f"shard-{k:05d}.safetensors"
                rows = len(nets) * C
                resumed = False
                if path.exists():
                    try:
                        maps = _mmap_shard(path)
                        resumed = maps["params"].shape == (rows, archs[a].num_params)
                    except (ZooFormatError, KeyError):
                        pass
                if not resumed:

                    def cb(step: int, base: int = done, n: int = len(nets)) -> None:
                        if report and (step % 10 == 0 or step == total_steps):
                            report(base + n * step / total_steps, "")

                    tensors = _train_wild_group(r, seed, a, archs[a], len(archs), nets,
                                                (pool_x, pool_y, test_x, test_y), cb)  # fmt: skip
                    columns = {k2: "int64" if v.dtype == torch.int64 else "float32"
                               for k2, v in tensors.items() if k2 != "params"}  # fmt: skip
                    _write_shard(path, tensors)
                shards.append((path, a, start, start + rows))
                start += rows
                done += len(nets)
                if report:
                    report(float(done), "")
            if columns is None:  # every shard was resumed: read the columns from one
                maps = _mmap_shard(shards[0][0])
                columns = {k2: "int64" if v.dtype == np.int64 else "float32"
                           for k2, v in maps.items() if k2 != "params"}  # fmt: skip
            manifest = {
                "schema_version": WILD_PARK_SCHEMA_VERSION,
                "format": _FORMAT,
                "architectures": [_arch_entry(a) for a in archs],
                "input_shape": info["input_shape"],
                "dataset": dataset,
                "recipe": r.to_dict(),
                "seed": seed,
                "threads": nthreads,
                "data": info,
                "evaluation": {
                    "train": f"train_acc / train_loss on {r.eval_train} images of each network's own "
                    "training subset (cycled when the subset is smaller)",
                    "test": f"test_acc / test_loss on {info['test_images']} test images"
                    + (
                        " (a fixed seeded subset of the test split)"
                        if info["test_is_subset"]
                        else " (the whole test split)"
                    ),
                    "stopped": "1 once a network stopped training after a non-finite update "
                    "(its weights stay those of its last finite step)",
                },
                "num_networks": r.num_networks,
                "num_checkpoints": r.num_networks * C,
                "columns": columns,
                "categories": _categories(),
                "splits": _default_splits(np.arange(r.num_networks), r.split_fractions, seed),
                "shards": [
                    {
                        "file": p.name,
                        "architecture": a,
                        "start": lo,
                        "stop": hi,
                        "sha256": _sha256(p),
                    }
                    for p, a, lo, hi in shards
                ],
                "versions": _versions(),
            }
            _check_wild_manifest(json.loads(json.dumps(manifest)), partial / "manifest.json")
            _finish(partial, out, manifest, overwrite)
            return out
    finally:
        torch.set_num_threads(old_threads)


def _arch_entry(arch: WildCnnArch) -> dict[str, Any]:
    return {"args": arch.to_dict(), "num_params": arch.num_params, "label": arch.label}


# ----------------------------------------------------------------------------- manifest
def _check_wild_manifest(m: Any, mf: Path) -> dict[str, Any]:
    """Every field a reader uses; each problem is a `ZooFormatError` naming it. Adds the parsed
    architectures as `m["_archs"]` (not written to disk)."""

    def bad(what: str) -> ZooFormatError:
        return ZooFormatError(f"{mf}: {what}")

    def count(x: object, top: int = 1 << 40) -> bool:
        return _is_int(x) and 0 <= x < top  # type: ignore[operator]

    if not isinstance(m, dict) or m.get("format") != _FORMAT:
        raise bad("not an nngraph wild park zoo manifest")
    if m.get("schema_version") != WILD_PARK_SCHEMA_VERSION:
        raise bad(f"schema version {m.get('schema_version')!r}, this library reads "
                  f"{WILD_PARK_SCHEMA_VERSION}")  # fmt: skip
    archs = m.get("architectures")
    if not isinstance(archs, list) or not archs or len(archs) > 1 << 20:
        raise bad("architectures must be a non-empty list")
    parsed = []
    for j, entry in enumerate(archs):
        if not isinstance(entry, dict):
            raise bad(f"architecture {j} is not an object")
        try:
            arch = WildCnnArch.from_dict(entry.get("args"))  # type: ignore[arg-type]
        except (ValueError, TypeError) as e:
            raise bad(f"architecture {j}: {e}") from e
        if entry.get("num_params") != arch.num_params:
            raise bad(f"architecture {j}: num_params {entry.get('num_params')!r} does not match "
                      f"its layout ({arch.num_params})")  # fmt: skip
        parsed.append(arch)
    shape = m.get("input_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(count(s, 1 << 16) and s > 0 for s in shape)
    ):
        raise bad(f"input_shape must be [C, H, W], got {shape!r}")
    for j, arch in enumerate(parsed):
        if arch.in_channels != shape[0]:
            raise bad(
                f"architecture {j} takes {arch.in_channels} channels, the input has {shape[0]}"
            )
        try:
            arch.check_input((shape[1], shape[2]))
        except ValueError as e:
            raise bad(f"architecture {j}: {e}") from e
    n = m.get("num_checkpoints")
    if not count(n):
        raise bad(f"num_checkpoints must be a non-negative integer, got {n!r}")
    cols = m.get("columns")
    if not isinstance(cols, dict) or not all(
        isinstance(v, str) and v in ("int64", "float32") for v in cols.values()
    ):
        raise bad("columns must map column names to 'int64' or 'float32'")
    for c, kind in REQUIRED_COLUMNS.items():
        if cols.get(c) != ("int64" if kind == "i" else "float32"):
            raise bad(f"column {c!r} is missing or has the wrong dtype ({cols.get(c)!r})")
    if any(not isinstance(c, str) or not _SHARD_NAME.fullmatch(c) or c == "params" for c in cols):
        raise bad("column names must be plain names (and not 'params')")
    cats = m.get("categories")
    if not isinstance(cats, dict) or not all(
        isinstance(v, list) and v and all(isinstance(s, str) for s in v) and len(v) < 1 << 16
        for v in cats.values()
    ):  # fmt: skip
        raise bad("categories must map columns to non-empty lists of names")
    if "activation" not in cats:
        raise bad("categories has no 'activation'")
    if not isinstance(m.get("recipe"), dict) or not isinstance(m.get("dataset"), str):
        raise bad("recipe must be an object and dataset a string")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(k, str) for k in splits):
        raise bad("splits must be an object")
    seen: set[int] = set()
    for name, ids in splits.items():
        if not isinstance(ids, list) or not all(count(i) for i in ids):
            raise bad(f"split {name!r} must be a list of network ids")
        if seen.intersection(ids) or len(set(ids)) != len(ids):
            raise bad(f"split {name!r} repeats a network (a network belongs to one split)")
        seen.update(ids)
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        raise bad("shards must be a non-empty list")
    stop, names = 0, set()
    for shard in shards:
        if not isinstance(shard, dict):
            raise bad(f"shard entry {shard!r} is not an object")
        file, sha = shard.get("file"), shard.get("sha256")
        if (not isinstance(file, str) or not _SHARD_NAME.fullmatch(file) or file in names
                or file == "manifest.json"):  # fmt: skip
            raise bad(f"shard file {file!r} is not a plain, unique file name in the zoo folder")
        names.add(file)
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise bad(f"{file}: sha256 must be 64 hex digits")
        if not count(shard.get("architecture"), len(parsed)):
            raise bad(f"{file}: architecture must be an index into architectures")
        if shard.get("start") != stop or not count(shard.get("stop")) or shard["stop"] < stop:
            raise bad(
                f"{file}: shards must cover the checkpoints in order without gaps ({shard!r})"
            )
        stop = shard["stop"]
    if stop != n:
        raise bad(f"the shards hold {stop} checkpoints, num_checkpoints says {n}")
    return m


def _read_wild_manifest(path: Path) -> dict[str, Any]:
    mf = path / "manifest.json"
    if not mf.is_file():
        hint = (" (an unfinished build? rerun the same build to resume it)"
                if path.name.endswith(".partial") else "")  # fmt: skip
        raise ZooFormatError(f"{path} is not a wild park zoo: no manifest.json{hint}")
    try:
        if mf.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ZooFormatError(f"{mf}: larger than {_MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(mf.read_bytes())
    except OSError as e:
        raise ZooFormatError(f"{mf}: cannot be read ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:
        raise ZooFormatError(f"{mf}: not valid JSON") from e
    return _check_wild_manifest(manifest, mf)


def _check_wild_shard(
    maps: Mapping[str, np.ndarray], entry: Mapping[str, Any], manifest: Mapping[str, Any],
    path: Path,
) -> None:  # fmt: skip
    n = entry["stop"] - entry["start"]
    width = manifest["architectures"][entry["architecture"]]["num_params"]
    p = maps.get("params")
    if p is None or p.ndim != 2 or p.shape != (n, width) or p.dtype != np.float32:
        got = "none" if p is None else f"{p.dtype} {list(p.shape)}"
        raise ZooFormatError(f"{path}: params must be float32 [{n}, {width}], got {got}")
    for col, dt in manifest["columns"].items():
        a = maps.get(col)
        if a is None or a.ndim != 1 or a.shape[0] != n or a.dtype != np.dtype(dt):
            got = "none" if a is None else f"{a.dtype} {list(a.shape)}"
            raise ZooFormatError(f"{path}: column {col!r} must be {dt} [{n}], got {got}")
    arch_col = np.asarray(maps["architecture"])
    if n and not bool((arch_col == entry["architecture"]).all()):
        raise ZooFormatError(f"{path}: its architecture column disagrees with the manifest")


def verify_wild_park_zoo(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-hash every shard and check its tensors against the manifest.

    Returns the manifest; raises [`IntegrityError`][nngraph_datasets.IntegrityError] on a
    changed or missing shard and [`ZooFormatError`][nngraph_datasets.ZooFormatError] on a bad
    manifest.
    """
    path = Path(path)
    return _verify_shards(path, _read_wild_manifest(path), _check_wild_shard)


# ----------------------------------------------------------------------------- reading
class WildParkZoo:
    """A wild park zoo on disk: manifest + lazily memory-mapped shards.

    Rows are checkpoints (a network at an epoch), grouped by architecture (shard by shard),
    network by network, epochs in order. The parameter vectors have one length per
    architecture: [`params`][nngraph_datasets.WildParkZoo.params] gives them row by row,
    [`params_by_architecture`][nngraph_datasets.WildParkZoo.params_by_architecture] as one
    `[n_a, P_a]` tensor per architecture; [`metrics`][nngraph_datasets.WildParkZoo.metrics]
    are 1-D columns over rows (`architecture`, `activation`, `depth`, `width`, `kernel`,
    `residual`, `test_acc`, ...).

    Attributes:
        architectures: the [`WildCnnArch`][nngraph_datasets.WildCnnArch] of each architecture id.
        categories: column -> names of its codes (`activation`, `initializer`, `optimizer`).
        recipe: how the zoo was made.
        manifest: the whole manifest.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest = _read_wild_manifest(self.path)
        self.architectures: list[WildCnnArch] = [
            WildCnnArch.from_dict(e["args"]) for e in self.manifest["architectures"]
        ]
        self.recipe: dict[str, Any] = dict(self.manifest["recipe"])
        self.categories: dict[str, list[str]] = {
            k: list(v) for k, v in self.manifest["categories"].items()
        }
        self._maps: list[dict[str, np.ndarray]] | None = None
        self._splits: dict[str, Tensor] | None = None
        self._templates: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # workers re-map, nothing is copied
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return int(self.manifest["num_checkpoints"])

    def __repr__(self) -> str:
        return (f"WildParkZoo({str(self.path)!r}: {self.manifest.get('num_networks')} networks "
                f"of {len(self.architectures)} architectures, {len(self)} checkpoints, "
                f"{self.manifest['dataset']})")  # fmt: skip

    @property
    def _shards(self) -> list[dict[str, np.ndarray]]:
        if self._maps is None:
            maps = []
            for entry in self.manifest["shards"]:
                path = self.path / entry["file"]
                if not path.is_file():
                    raise ZooFormatError(f"{self.path}: shard {entry['file']} is missing")
                maps.append(_mmap_shard(path))
                _check_wild_shard(maps[-1], entry, self.manifest, path)
            self._maps = maps
        return self._maps

    def _column(self, key: str) -> Tensor:
        parts = [np.asarray(m[key]) for m in self._shards]
        return torch.from_numpy(np.concatenate(parts))

    @property
    def splits(self) -> dict[str, Tensor]:
        """Split name -> checkpoint indices `[m]` int64 (all checkpoints of a network are in
        the same split)."""
        if self._splits is None:
            network = self._column("network").numpy()
            self._splits = {name: torch.from_numpy(np.flatnonzero(np.isin(network, np.asarray(ids, dtype=np.int64))))
                            for name, ids in self.manifest["splits"].items()}  # fmt: skip
        return self._splits

    def rows(self, split: str | None = None) -> Tensor:
        """Checkpoint indices of one split (all when `None`)."""
        if split is None:
            return torch.arange(len(self))
        if split not in self.splits:
            raise KeyError(f"no split {split!r}; the zoo has {list(self.splits)}")
        return self.splits[split]

    def metrics(self, split: str | None = None) -> dict[str, Tensor]:
        """Every metric column (1-D, int64 or float32) of the whole zoo or one split."""
        rows = None if split is None else self.rows(split)
        out = {}
        for key in self.manifest["columns"]:
            c = self._column(key)
            out[key] = c if rows is None else c[rows]
        return out

    def architecture_ids(self, split: str | None = None) -> Tensor:
        """The architecture id of every row `[m]` int64."""
        return self.metrics(split)["architecture"]

    def _locate(self, rows: Sequence[int] | Tensor) -> list[tuple[int, int]]:
        starts = np.asarray([e["start"] for e in self.manifest["shards"]])
        idx = torch.as_tensor(rows, dtype=torch.int64).reshape(-1).tolist()
        out = []
        for r in idx:
            if not 0 <= r < len(self):
                raise IndexError(f"row {r} is outside the zoo's {len(self)} checkpoints")
            k = int(np.searchsorted(starts, r, side="right") - 1)
            out.append((k, r - int(starts[k])))
        return out

    def params(self, rows: Sequence[int] | Tensor) -> list[Tensor]:
        """Flat parameters (float32 copies, each `[P_a]` in its architecture's layout) of the
        given rows."""
        shards = self._shards
        return [torch.from_numpy(np.array(shards[k]["params"][j])) for k, j in self._locate(rows)]

    def params_by_architecture(self, split: str | None = None) -> dict[int, tuple[Tensor, Tensor]]:
        """Architecture id -> `(rows [n_a], params [n_a, P_a])` of one split (or all rows)."""
        rows = self.rows(split)
        keep = torch.zeros(len(self), dtype=torch.bool)
        keep[rows] = True
        out: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        for entry, maps in zip(self.manifest["shards"], self._shards):
            sel = keep[entry["start"] : entry["stop"]].numpy()
            if not sel.any():
                continue
            rs, ps = out.setdefault(entry["architecture"], ([], []))
            rs.append(torch.from_numpy(np.flatnonzero(sel) + entry["start"]))
            ps.append(torch.from_numpy(np.array(maps["params"][sel])))
        return {a: (torch.cat(rs), torch.cat(ps)) for a, (rs, ps) in sorted(out.items())}

    def module(self, architecture: int) -> WildCnn:
        """A fresh [`WildCnn`][nngraph_datasets.WildCnn] of an architecture id."""
        return self.architectures[architecture].module()

    def template(self, architecture: int) -> Any:
        """The `nngraph_core.GraphTemplate` of an architecture (its `flatten` layout is the
        zoo's `params` layout for that architecture)."""
        if architecture not in self._templates:
            from nngraph_core import GraphTemplate

            shape = tuple(self.manifest["input_shape"])
            self._templates[architecture] = GraphTemplate.from_module(
                self.module(architecture), input_shape=shape
            )
        return self._templates[architecture]

    def templates(self) -> list[Any]:
        """The `nngraph_core.GraphTemplate` of every architecture, by id."""
        return [self.template(a) for a in range(len(self.architectures))]

    def activation(self, rows: Sequence[int] | Tensor | None = None) -> Tensor:
        """Activation codes (indices into `categories["activation"]`) of the given rows."""
        codes = self._column("activation")
        return codes if rows is None else codes[torch.as_tensor(rows, dtype=torch.int64)]

    def graph_batch(self, rows: Sequence[int] | Tensor) -> Any:
        """A `nngraph_core.GraphBatch` of the given rows (mixed architectures; conv kernels
        re-padded to the largest kernel of the batch, see `nngraph_core.batch`)."""
        from nngraph_core import batch

        arch = self._column("architecture")
        idx = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        graphs = [
            self.template(int(arch[r])).graph(p) for r, p in zip(idx.tolist(), self.params(idx))
        ]
        return batch(graphs)


def default_wild_park_zoo_dir(
    dataset: str = "fashion-mnist", recipe: str | WildParkRecipe = "default", seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> Path:  # fmt: skip
    """Where a wild park zoo is cached: `$NNGRAPH_ZOOS/wild-park-<dataset>-<recipe>-s<seed>`
    (a custom recipe that differs from the named one gets a hash of its fields in the name)."""
    if isinstance(recipe, str):
        name = WildParkRecipe.named(recipe).name
    else:
        name = recipe.name
        if WILD_PARK_RECIPES.get(recipe.name) != recipe:
            digest = hashlib.sha256(
                json.dumps(recipe.to_dict(), sort_keys=True).encode()
            ).hexdigest()
            name = f"{recipe.name}-{digest[:10]}"
    return _cache_root(root) / f"wild-park-{dataset}-{name}-s{seed}"


def load_wild_park_zoo(
    dataset: str = "fashion-mnist",
    recipe: str | WildParkRecipe = "default",
    seed: int = 0,
    *,
    root: str | os.PathLike[str] | None = None,
    build: bool = True,
    progress: bool | Callable[[float, str], None] = True,
    data_root: str | os.PathLike[str] | None = None,
) -> WildParkZoo:
    """The cached wild park zoo of `(dataset, recipe, seed)`, built on first use.

    Args:
        dataset: see [`build_wild_park_zoo`][nngraph_datasets.build_wild_park_zoo].
        recipe: see [`build_wild_park_zoo`][nngraph_datasets.build_wild_park_zoo].
        seed: see [`build_wild_park_zoo`][nngraph_datasets.build_wild_park_zoo].
        root: the cache folder (default `$NNGRAPH_ZOOS`, else `~/.cache/nngraph/zoos`).
        build: build the zoo when it is not cached (else a
            [`ZooFormatError`][nngraph_datasets.ZooFormatError] says how to build it).
        progress: see [`build_wild_park_zoo`][nngraph_datasets.build_wild_park_zoo].
        data_root: the folder of the IDX files.
    """
    path = default_wild_park_zoo_dir(dataset, recipe, seed, root)
    if not (path / "manifest.json").is_file():
        if not build:
            name = recipe if isinstance(recipe, str) else recipe.name
            raise ZooFormatError(
                f"no wild park zoo at {path}; build it with `nngraph-datasets wild-park-zoo fit "
                f"--dataset {dataset} --recipe {name} --seed {seed} --out {path}`"
            )
        build_wild_park_zoo(path, dataset=dataset, recipe=recipe, seed=seed, progress=progress,
                            data_root=data_root)  # fmt: skip
    zoo = WildParkZoo(path)
    want = _resolve_recipe(recipe, None).to_dict()
    if zoo.recipe != want or zoo.manifest.get("dataset") != dataset:
        raise ZooFormatError(
            f"the cached zoo at {path} was built with another recipe or data set than the "
            f"{dataset} / {want['name']} requested; delete it to rebuild it, or pass another root"
        )
    return zoo


# ----------------------------------------------------------------------------- writing
def write_wild_park_zoo(
    out: str | os.PathLike[str],
    architectures: Sequence[WildCnnArch],
    params: Sequence[Tensor],
    metrics: Mapping[str, Any],
    *,
    input_shape: Sequence[int],
    recipe: Mapping[str, Any],
    splits: Mapping[str, Sequence[int]] | None = None,
    overwrite: bool = False,
    dataset: str = "unknown",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write already-trained networks of many architectures (e.g. a converted published wild
    park) as a wild park zoo: one shard per architecture, rows grouped by architecture.

    Args:
        out: the zoo folder to create (atomically: written beside it, then renamed).
        architectures: the architectures, by id.
        params: M flat parameter vectors, row `j` in the layout of
            `architectures[metrics["architecture"][j]]`.
        metrics: 1-D columns of length M: at least `network`, `epoch`, `architecture`,
            `test_acc` (more are kept); `activation`, `depth`, `width`, `kernel`, `residual`
            are filled in from the architectures.
        input_shape: `[C, H, W]` of the images.
        recipe: how the networks were made (recorded as is).
        splits: split name -> network ids; default: a seeded 80 / 10 / 10 split of the networks.
        overwrite: replace an existing zoo at `out`.
        dataset: the data set's name, recorded.
        extra: more manifest fields.

    Raises:
        ZooFormatError: bad shapes, missing or non-finite values, overlapping splits.
        ZooExistsError: `out` exists and `overwrite` is False.
    """
    import shutil

    out = Path(out)
    m = len(params)
    for c in ("network", "epoch", "architecture", "test_acc"):
        if c not in metrics:
            raise ZooFormatError(f"metrics lack the column {c!r}")
    cols = {k: _as_column(k, v, m) for k, v in metrics.items()}
    cols["network"], cols["epoch"] = cols["network"].to(torch.int64), cols["epoch"].to(torch.int64)
    arch_col = cols["architecture"].to(torch.int64)
    if m and (int(arch_col.min()) < 0 or int(arch_col.max()) >= len(architectures)):
        raise ZooFormatError("architecture ids outside the list of architectures")
    for k, t in cols.items():
        if not _SHARD_NAME.fullmatch(k) or k == "params":
            raise ZooFormatError(f"bad metric name {k!r}")
        if (
            t.is_floating_point()
            and k in ("train_acc", "test_acc")
            and not bool(((t >= 0) & (t <= 1)).all())
        ):
            raise ZooFormatError(f"{k} must lie in [0, 1]")
    flat = []
    for j, p in enumerate(params):
        a = architectures[int(arch_col[j])]
        if not isinstance(p, Tensor) or p.shape != (a.num_params,):
            raise ZooFormatError(f"row {j}: params must be [{a.num_params}] for {a.label}")
        p = p.detach().to(torch.float32)
        if not bool(torch.isfinite(p).all()):
            raise ZooFormatError(f"row {j}: params hold NaN or infinite values")
        flat.append(p)
    networks = cols["network"].numpy()
    if splits is None:
        split_ids = _default_splits(networks, (0.8, 0.1, 0.1), 0)
    else:
        split_ids = {str(k): sorted(int(i) for i in v) for k, v in splits.items()}
        seen: set[int] = set()
        for name, ids in split_ids.items():
            if seen.intersection(ids) or len(set(ids)) != len(ids):
                raise ZooFormatError(
                    f"split {name!r} shares networks with another split (or repeats one)"
                )
            seen.update(ids)
        unknown = seen - set(np.unique(networks).tolist())
        if unknown:
            raise ZooFormatError(
                f"splits name networks that the zoo does not have: {sorted(unknown)[:5]}"
            )
    order = np.lexsort((cols["epoch"].numpy(), networks, arch_col.numpy()))
    kept = "nothing was changed" + (f"; the zoo at {out} is intact" if out.exists() else "")
    if out.exists() and not overwrite:
        raise ZooExistsError(f"{out} exists; pass overwrite=True to replace it")
    with _storage_errors(out, kept), _build_lock(out):
        if out.exists() and not overwrite:
            raise ZooExistsError(f"{out} exists; pass overwrite=True to replace it")
        partial = out.with_name(f".{out.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            shards, start, columns = [], 0, None
            used = sorted(set(arch_col.tolist()))
            for k, a in enumerate(used):
                sel = order[arch_col.numpy()[order] == a]
                idx = torch.from_numpy(sel)
                tensors = {"params": torch.stack([flat[j] for j in sel.tolist()])}
                tensors.update({c: v[idx].contiguous() for c, v in cols.items()})
                tensors.update(_arch_columns(architectures[a], a, len(sel)))
                path = partial / f"shard-{k:05d}.safetensors"
                _write_shard(path, tensors)
                columns = {c: "int64" if v.dtype == torch.int64 else "float32"
                           for c, v in tensors.items() if c != "params"}  # fmt: skip
                shards.append({"file": path.name, "architecture": a, "start": start,
                               "stop": start + len(sel), "sha256": _sha256(path)})  # fmt: skip
                start += len(sel)
            manifest = {
                "schema_version": WILD_PARK_SCHEMA_VERSION,
                "format": _FORMAT,
                "architectures": [_arch_entry(a) for a in architectures],
                "input_shape": [int(s) for s in input_shape],
                "dataset": dataset,
                "recipe": dict(recipe),
                "num_networks": len(np.unique(networks)),
                "num_checkpoints": m,
                "columns": columns or {c: "int64" for c in REQUIRED_COLUMNS},
                "categories": _categories(),
                "splits": split_ids,
                "shards": shards,
                "versions": _versions(),
                **dict(extra or {}),
            }
            _check_wild_manifest(json.loads(json.dumps(manifest)), partial / "manifest.json")
            _finish(partial, out, manifest, overwrite)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return out
