"""CNN zoos: many small CNNs trained with sampled hyper-parameters, stored with their accuracies.

The protocol is the one of the Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural
Network Accuracy from Weights"): one architecture, [`small_cnn`][nngraph_datasets.small_cnn]
(three 3x3 stride-2 convolutions of 16 channels, global average pooling, a dense layer to 10
classes: 4,970 parameters on grey images), trained many times, each network with its own
activation, initialiser and its std, optimiser and learning rate, L2 penalty, dropout and
fraction of the training set. Weights are stored at several epochs with the train and test
accuracy and loss at each, so the regression target (test accuracy) spreads from chance to the
best the architecture reaches.

The builder trains a whole group of networks at once (their convolutions stacked as the groups
of one grouped convolution, the Adam / RMSProp / SGD updates vectorised over the network axis:
see [`train_cnns`][nngraph_datasets.train_cnns]). Storage has the guarantees of INR zoos
([`build_zoo`][nngraph_datasets.build_zoo]): safetensors shards + `manifest.json` (schema
version, recipe, seeds, per-shard sha256, splits), built into `.<name>.partial/` and renamed
into place, resumable after a kill at any moment (finished shards are kept, the rerun ends byte
identical), one build at a time (a lock file), typed errors on a full or read-only disk and on
malformed files. Nothing is pickled.

```python
from nngraph_datasets import load_cnn_zoo
zoo = load_cnn_zoo("fashion-mnist", "default")     # built (about 6 minutes) and cached on first use
params = zoo.params("train")                       # [m, 4970] float32, GraphTemplate layout
acc = zoo.metrics("train")["test_acc"]             # [m] float32 in [0, 1]: the target
model = zoo.architecture("relu")                   # a fresh small_cnn to load a row into
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ZooExistsError, ZooFormatError
from .images import load_raw, source_info
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
    "ACTIVATIONS",
    "CNN_RECIPES",
    "CNN_SCHEMA_VERSION",
    "INITIALIZERS",
    "OPTIMIZERS",
    "CnnRecipe",
    "CnnZoo",
    "build_cnn_zoo",
    "default_cnn_zoo_dir",
    "heldout_images",
    "init_cnn_params",
    "load_cnn_zoo",
    "small_cnn",
    "train_cnns",
    "verify_cnn_zoo",
    "write_cnn_zoo",
]

CNN_SCHEMA_VERSION = 1
_FORMAT = "nngraph-cnn-zoo"
#: categorical hyper-parameters: the code stored in the zoo is the index in these tuples
ACTIVATIONS = ("relu", "tanh")
INITIALIZERS = ("normal", "truncated_normal", "uniform", "glorot_uniform", "he_normal")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
CATEGORIES = {"activation": ACTIVATIONS, "initializer": INITIALIZERS, "optimizer": OPTIMIZERS}
#: the metric columns every CNN zoo has, with their dtype kind (i: int64, f: float32)
REQUIRED_COLUMNS = {
    "network": "i", "epoch": "i", "train_acc": "f", "test_acc": "f", "train_loss": "f",
    "test_loss": "f", "activation": "i", "initializer": "i", "optimizer": "i", "init_std": "f",
    "lr": "f", "l2": "f", "dropout": "f", "train_fraction": "f",
}  # fmt: skip
_SPLIT_NAMES = ("train", "val", "test")
#: the parameter-carrying modules of small_cnn, by index in its nn.Sequential
_LAYER_INDEX = (0, 3, 6, 10)
_ADAM_BETAS = (0.9, 0.999)
_RMSPROP_ALPHA = 0.99
_EPS = 1e-8


# ----------------------------------------------------------------------------- architecture
def small_cnn(
    activation: str = "relu",
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    channels: int = 16,
    dropout: float = 0.0,
) -> nn.Sequential:
    """The Small CNN Zoo architecture (Unterthiner et al. 2020).

    `Conv2d(in, 16, 3, stride=2)`, act, `Dropout`, `Conv2d(16, 16, 3, 2)`, act, `Dropout`,
    `Conv2d(16, 16, 3, 2)`, act, `AdaptiveAvgPool2d(1)`, `Flatten`, `Linear(16, 10)`: 4,970
    parameters for grey inputs (any size from 15x15 up; 28x28 in the zoos). The `Dropout`
    modules are always there (`p = dropout`, identity when 0), so the state-dict keys are
    `0.*`, `3.*`, `6.*`, `10.*` whatever the hyper-parameters, and the flat layout
    (`nngraph_core.GraphTemplate.from_module(small_cnn()).flatten(...)`, state-dict order,
    torch `[out, in, kh, kw]` kernels) is the same for both activations.

    Args:
        activation: `"relu"` or `"tanh"`.
        in_channels: input channels (1: grey).
        num_classes: outputs.
        channels: channels of each convolution.
        dropout: dropout probability after the first two convolutions.
    """
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
    act = acts[activation]
    c = channels
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, stride=2), act(), nn.Dropout(dropout),
        nn.Conv2d(c, c, 3, stride=2), act(), nn.Dropout(dropout),
        nn.Conv2d(c, c, 3, stride=2), act(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes),
    )  # fmt: skip


def _param_shapes(
    in_channels: int, num_classes: int, channels: int
) -> list[tuple[str, tuple[int, ...]]]:
    c = channels
    w_shapes = [(c, in_channels, 3, 3), (c, c, 3, 3), (c, c, 3, 3), (num_classes, c)]
    out = []
    for idx, w in zip(_LAYER_INDEX, w_shapes):
        out += [(f"{idx}.weight", w), (f"{idx}.bias", (w[0],))]
    return out


def _param_keys(in_channels: int, num_classes: int, channels: int) -> dict[str, list[Any]]:
    """`key -> [offset, shape]` of the flat layout (state-dict order)."""
    out, offset = {}, 0
    for key, shape in _param_shapes(in_channels, num_classes, channels):
        out[key] = [offset, list(shape)]
        offset += math.prod(shape)
    return out


# ----------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class CnnRecipe:
    """How a CNN zoo is trained: the hyper-parameter ranges and the training budget.

    Each network draws its hyper-parameters independently: `activation`, `initializer` and
    `optimizer` uniformly from the given tuples; `init_std`, `lr` and `l2` log-uniformly from
    their ranges; `dropout` and `train_fraction` uniformly. Biases start at zero; the
    initialisers are `normal` $\\mathcal N(0, s^2)$, `truncated_normal` (cut at $\\pm 2s$),
    `uniform` $U(\\pm\\sqrt 3 s)$ (std $s$), and `glorot_uniform` / `he_normal`, which set their
    own scale and ignore the drawn `init_std` (it is still recorded, as in the Small CNN Zoo).

    An epoch is `steps_per_epoch` steps of `batch_size` images, the size of the training pool
    (`train_pool` images of the data set's training split, a seeded subset): a network with
    train fraction $f$ draws its batches from its own $f \\cdot$ `train_pool` images, so it sees
    each of them $1/f$ times per epoch (all networks get the same number of steps, like the
    published zoo's fixed step budget). Weights and metrics are stored at the `checkpoints`
    epochs (0 = the initialisation). Train accuracy and loss are measured on `eval_train`
    images of each network's own training subset, test accuracy and loss on a fixed seeded
    subset of `eval_test` test images (all of them when `None`).

    `CnnRecipe.named("default")` (1,200 networks) builds in about 6 minutes on 2 idle CPU cores; `"full"` follows
    the published protocol (30,000 networks, 86 epochs, checkpoints at 0, 1, 2, 3, 20, 40,
    60, 80, 86 on the whole training set); `"tiny"` is for tests.
    """

    name: str = "default"
    num_networks: int = 1200
    epochs: int = 3
    checkpoints: tuple[int, ...] = (0, 1, 2, 3)
    batch_size: int = 32
    train_pool: int | None = 1600
    eval_train: int = 256
    eval_test: int | None = 500
    group_size: int = 100
    activations: tuple[str, ...] = ACTIVATIONS
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
            return ValueError(f"CnnRecipe {self.name!r}: {msg}")

        if self.num_networks < 1 or self.epochs < 0 or self.batch_size < 1 or self.group_size < 1:
            raise bad("num_networks, batch_size and group_size must be >= 1, epochs >= 0")
        cps = self.checkpoints
        if not cps or list(cps) != sorted(set(cps)) or cps[0] < 0 or cps[-1] > self.epochs:
            raise bad(f"checkpoints must be increasing epochs in [0, {self.epochs}], got {cps}")
        for field, allowed in (("activations", ACTIVATIONS), ("initializers", INITIALIZERS),
                               ("optimizers", OPTIMIZERS)):  # fmt: skip
            values = getattr(self, field)
            if not values or any(v not in allowed for v in values):
                raise bad(f"{field} must be a non-empty subset of {allowed}, got {values}")
        for field in ("init_std", "lr", "l2"):
            lo, hi = getattr(self, field)
            if not 0 < lo <= hi:
                raise bad(f"{field} must be a range 0 < low <= high, got {(lo, hi)}")
        lo, hi = self.dropout
        if not 0 <= lo <= hi < 1:
            raise bad(f"dropout must be a range in [0, 1), got {self.dropout}")
        lo, hi = self.train_fraction
        if not 0 < lo <= hi <= 1:
            raise bad(f"train_fraction must be a range in (0, 1], got {self.train_fraction}")
        if self.train_pool is not None and self.train_pool < 1:
            raise bad("train_pool must be >= 1 (or None: the whole training split)")
        if self.eval_train < 1 or (self.eval_test is not None and self.eval_test < 1):
            raise bad("eval_train and eval_test must be >= 1")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-9:
            raise bad(f"split_fractions must be 3 numbers summing to 1, got {self.split_fractions}")

    @classmethod
    def named(cls, name: str) -> CnnRecipe:
        """`"default"`, `"full"` or `"tiny"`."""
        if name not in CNN_RECIPES:
            raise ValueError(f"unknown CNN zoo recipe {name!r}; choose from {sorted(CNN_RECIPES)}")
        return CNN_RECIPES[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CnnRecipe:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown CnnRecipe fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def steps_per_epoch(self, pool_size: int) -> int:
        return max(1, math.ceil(pool_size / self.batch_size))


CNN_RECIPES: dict[str, CnnRecipe] = {
    "default": CnnRecipe(),
    "full": CnnRecipe(
        name="full", num_networks=30000, epochs=86, checkpoints=(0, 1, 2, 3, 20, 40, 60, 80, 86),
        train_pool=None, eval_train=10000, eval_test=None, group_size=100,
    ),
    "tiny": CnnRecipe(
        name="tiny", num_networks=12, epochs=2, checkpoints=(0, 1, 2), batch_size=16,
        train_pool=160, eval_train=64, eval_test=64, group_size=4,
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- hyper-parameters
def _sample_hparams(recipe: CnnRecipe, seed: int, networks: Sequence[int]) -> dict[str, np.ndarray]:
    """Hyper-parameters of the given network ids; network `i`'s depend on `(seed, i)` only."""
    cols: dict[str, list[Any]] = {k: [] for k in
                                  ("activation", "initializer", "optimizer", "init_std", "lr",
                                   "l2", "dropout", "train_fraction")}  # fmt: skip

    def log_uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
        return float(np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))

    for i in networks:
        rng = np.random.default_rng([seed, i, 0x4A11])
        cols["activation"].append(
            ACTIVATIONS.index(recipe.activations[rng.integers(len(recipe.activations))])
        )
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
    out = {
        k: np.asarray(v, dtype=np.int64 if k in CATEGORIES else np.float64) for k, v in cols.items()
    }
    # float32 is what the zoo stores; training uses exactly the stored values
    for k in ("init_std", "lr", "l2", "dropout", "train_fraction"):
        out[k] = out[k].astype(np.float32).astype(np.float64)
    return out


def init_cnn_params(
    initializer: str, init_std: float, generator: torch.Generator, *, in_channels: int = 1,
    num_classes: int = 10, channels: int = 16, dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:  # fmt: skip
    """Initial state dict of one [`small_cnn`][nngraph_datasets.small_cnn] (biases zero).

    `normal`: $\\mathcal N(0, s^2)$; `truncated_normal`: the same cut at $\\pm 2s$; `uniform`:
    $U(\\pm\\sqrt 3\\, s)$; `glorot_uniform`: $U(\\pm\\sqrt{6 / (f_{in} + f_{out})})$;
    `he_normal`: $\\mathcal N(0, 2 / f_{in})$ (fans count the kernel: $f_{in} = c_{in} k_h k_w$).
    """
    if initializer not in INITIALIZERS:
        raise ValueError(f"initializer must be one of {INITIALIZERS}, got {initializer!r}")
    out: dict[str, Tensor] = {}
    for key, shape in _param_shapes(in_channels, num_classes, channels):
        if key.endswith("bias"):
            out[key] = torch.zeros(shape, dtype=dtype)
            continue
        out[key] = _init_tensor(shape, initializer, init_std, generator, dtype)
    return out


def _init_tensor(
    shape: tuple[int, ...], initializer: str, init_std: float, generator: torch.Generator,
    dtype: torch.dtype,
) -> Tensor:  # fmt: skip
    """One weight tensor drawn by `initializer` (in float64, then cast to `dtype`)."""
    rf = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * rf, shape[0] * rf
    z = torch.empty(shape, dtype=torch.float64)
    if initializer == "normal":
        w = z.normal_(0.0, init_std, generator=generator)
    elif initializer == "truncated_normal":
        w = z.normal_(0.0, 1.0, generator=generator)
        bad = w.abs() > 2
        while bool(bad.any()):  # redraw outside +-2 std (the TensorFlow rule)
            w[bad] = torch.empty(int(bad.sum()), dtype=torch.float64).normal_(generator=generator)
            bad = w.abs() > 2
        w = w * init_std
    elif initializer == "uniform":
        a = math.sqrt(3.0) * init_std
        w = z.uniform_(-a, a, generator=generator)
    elif initializer == "glorot_uniform":
        a = math.sqrt(6.0 / (fan_in + fan_out))
        w = z.uniform_(-a, a, generator=generator)
    else:  # he_normal
        w = z.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
    return w.to(dtype)


# ----------------------------------------------------------------------------- batched training
class _Batched:
    """B small CNNs as stacked parameters `[B, ...]`, their forward pass as grouped convolutions
    and their optimiser updates vectorised over the network axis."""

    def __init__(
        self, params: list[Tensor], hp: Mapping[str, np.ndarray], dtype: torch.dtype
    ) -> None:
        self.params = [p.detach().to(dtype).clone().requires_grad_(True) for p in params]
        self.B = int(params[0].shape[0])
        self.c = int(params[0].shape[1])
        self.dtype = dtype

        def col(k: str) -> Tensor:
            return torch.as_tensor(hp[k], dtype=dtype)

        relu = np.asarray(hp["activation"]) == ACTIVATIONS.index("relu")
        cuts = [0, *(np.flatnonzero(relu[1:] != relu[:-1]) + 1).tolist(), self.B]
        #: (start, stop, is_relu) of each run of consecutive networks with the same activation
        self.runs = [(a, z, bool(relu[a])) for a, z in itertools.pairwise(cuts)]
        self.dropout = col("dropout")
        self.lr = col("lr")
        self.l2 = col("l2")
        opt = torch.as_tensor(hp["optimizer"])
        self.adam = opt == OPTIMIZERS.index("adam")
        self.sgd = opt == OPTIMIZERS.index("sgd")
        # Adam: m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2; RMSProp: v <- a v + (1 - a) g^2
        # (m = g: b1 = 0); SGD uses neither
        adam = self.adam.numpy()
        self.beta1 = torch.as_tensor(np.where(adam, _ADAM_BETAS[0], 0.0), dtype=dtype)
        self.beta2 = torch.as_tensor(np.where(adam, _ADAM_BETAS[1], _RMSPROP_ALPHA), dtype=dtype)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0
        self.alive = torch.ones(self.B, dtype=torch.bool)

    def forward(self, x: Tensor, masks: Sequence[Tensor | None] = (None, None)) -> Tensor:
        """`x [n, B, C, H, W]` (network b's images in `x[:, b]`) -> logits `[n, B, classes]`.
        `masks[k]`: dropout multipliers `[n, B*c, h, w]` after conv `k` (None: no dropout).

        Each run of consecutive networks with the same activation is one chain of grouped
        convolutions (the builder sorts a group's networks by activation: two runs)."""
        n = x.shape[0]
        w1, b1, w2, b2, w3, b3, wl, bl = self.params
        outs = []
        for a, z, relu in self.runs:
            # channels-last: oneDNN's grouped convolutions run faster in it on CPU
            h = x[:, a:z].reshape(n, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
            for k, (w, b) in enumerate(((w1, b1), (w2, b2), (w3, b3))):
                wk = w[a:z].reshape(-1, *w.shape[2:]).contiguous(memory_format=torch.channels_last)
                h = F.conv2d(h, wk, b[a:z].reshape(-1), stride=2, groups=z - a)
                h = torch.relu(h) if relu else torch.tanh(h)
                mask = masks[k] if k < 2 else None
                if mask is not None:
                    h = h * mask[:, a * self.c : z * self.c]
            h = h.mean((2, 3)).view(n, z - a, -1)
            outs.append(torch.einsum("nbi,boi->nbo", h, wl[a:z]) + bl[a:z])
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    def dropout_masks(
        self, n: int, shapes: Sequence[tuple[int, int]], gen: torch.Generator
    ) -> list[Tensor | None]:
        if not bool((self.dropout > 0).any()):
            return [None, None]
        keep = (1 - self.dropout).repeat_interleave(self.c)
        scale, zero = 1 / keep, torch.zeros((), dtype=self.dtype)
        out: list[Tensor | None] = []
        for h, w in shapes:  # drawn as [n, h, w, B*c]: the channels-last layout of [n, B*c, h, w]
            u = torch.rand((n, h, w, self.B * self.c), generator=gen, dtype=self.dtype)
            out.append(torch.where(u < keep, scale, zero).permute(0, 3, 1, 2))
        return out

    def losses(
        self, x: Tensor, y: Tensor, masks: Sequence[Tensor | None] = (None, None)
    ) -> tuple[Tensor, Tensor]:
        """Per-network mean cross-entropy `[B]` and accuracy `[B]` on `x [n, B, ...]`, `y [n, B]`."""
        logits = self.forward(x, masks)
        loss = F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)
        acc = (logits.argmax(-1) == y).to(self.dtype).mean(0)
        return loss, acc

    def step(self, x: Tensor, y: Tensor, masks: Sequence[Tensor | None] = (None, None)) -> Tensor:
        """One optimiser step of every network on its own batch; returns the losses `[B]`.

        A network whose parameters would become non-finite keeps its previous parameters and
        stops training (its learning rate is set to 0): the zoo then records it as it was.
        """
        for p in self.params:
            p.grad = None
        loss, _ = self.losses(x, y, masks)
        loss.sum().backward()
        self.t += 1
        adam = self.adam.numpy()  # (bias corrections in float64, then the training dtype)
        bc1 = torch.as_tensor(np.where(adam, 1 - _ADAM_BETAS[0] ** self.t, 1.0), dtype=self.dtype)
        bc2 = torch.as_tensor(np.where(adam, 1 - _ADAM_BETAS[1] ** self.t, 1.0), dtype=self.dtype)
        finite = torch.ones(self.B, dtype=torch.bool)
        new = []
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                shape = (-1,) + (1,) * (p.dim() - 1)
                assert p.grad is not None
                g = p.grad + self.l2.view(shape) * p  # torch's weight_decay: L2 penalty l2/2 |w|^2
                m.mul_(self.beta1.view(shape)).add_((1 - self.beta1).view(shape) * g)
                v.mul_(self.beta2.view(shape)).add_((1 - self.beta2).view(shape) * g * g)
                denom = (v.sqrt() / bc2.sqrt().view(shape)).add_(_EPS)
                denom = torch.where(self.sgd.view(shape), torch.ones_like(denom), denom)
                upd = (self.lr / bc1).view(shape) * m / denom
                q = p - upd
                finite &= torch.isfinite(q).flatten(1).all(1)
                new.append(q)
            self.alive &= finite
            for p, q in zip(self.params, new):
                p.copy_(torch.where(self.alive.view((-1,) + (1,) * (p.dim() - 1)), q, p))
            self.lr = torch.where(self.alive, self.lr, 0.0)
        return loss.detach()

    def flat(self) -> Tensor:
        """`[B, P]` in the state-dict layout."""
        return torch.cat([p.detach().reshape(self.B, -1) for p in self.params], 1)


def _conv_shapes(hw: tuple[int, int]) -> list[tuple[int, int]]:
    out, (h, w) = [], hw
    for _ in range(3):
        h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        out.append((h, w))
    return out


def train_cnns(
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
    """Train B small CNNs at once, each with its own hyper-parameters and its own batches.

    Args:
        init: B initial state dicts (see [`init_cnn_params`][nngraph_datasets.init_cnn_params]).
        hparams: per-network columns `activation`, `optimizer` (codes in
            `ACTIVATIONS` / `OPTIMIZERS`), `lr`, `l2`, `dropout` (arrays of length B).
        train_x: the training images `[N, C, H, W]`.
        train_y: their labels `[N]`.
        batches: `[steps, batch, B]` rows of `train_x`: network b trains on `batches[s, :, b]`
            at step s.
        checkpoints: epochs at which the weights (and metrics) are taken; epoch 0 is the
            initialisation, epoch e follows `e * steps_per_epoch` steps.
        steps_per_epoch: steps per epoch.
        eval_sets: name -> `(x [n, B, C, H, W], y [n, B])` per-network evaluation images; each
            gives `<name>_acc` and `<name>_loss` `[len(checkpoints), B]` at every checkpoint.
        dropout_seed: seed of the dropout masks.
        dtype: training dtype (float64 for exactness tests).
        callback: called with the number of steps done after each step.
        masks: `masks(step)` -> the dropout multipliers `[batch, B*c, h, w]` after the first
            two convolutions (None: no dropout); default: drawn from `dropout_seed`.

    Returns:
        `(params [len(checkpoints), B, P], metrics)`; `metrics["alive"]` `[len(checkpoints), B]`
        is False once a network has stopped on a non-finite update.

    The updates are those of `torch.optim.Adam` (betas 0.9, 0.999), `torch.optim.RMSprop`
    (alpha 0.99) and `torch.optim.SGD` (no momentum), eps 1e-8, with `weight_decay = l2`
    (the gradient of $\\tfrac{l_2}{2}\\lVert w\\rVert^2$ is added to each gradient).
    """
    keys = [k for k, _ in _param_shapes(1, 1, 1)]
    params = [torch.stack([sd[k] for sd in init]) for k in keys]
    net = _Batched(params, hparams, dtype)
    hw = (int(train_x.shape[-2]), int(train_x.shape[-1]))
    shapes = _conv_shapes(hw)[:2]
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
                    loss, acc = net.losses(ex[lo : lo + 256].to(dtype), ey[lo : lo + 256])
                    k = min(256, ex.shape[0] - lo)
                    losses.append(loss * k)
                    accs.append(acc * k)
                metrics[f"{name}_loss"].append(torch.stack(losses).sum(0) / ex.shape[0])
                metrics[f"{name}_acc"].append(torch.stack(accs).sum(0) / ex.shape[0])

    step = 0
    for epoch in range(max(checkpoints) + 1):
        if epoch > 0:
            for _ in range(steps_per_epoch):
                idx = torch.from_numpy(batches[step])  # [batch, B]
                x = xs[idx]  # [batch, B, C, H, W]
                m = masks(step) if masks is not None else net.dropout_masks(x.shape[0], shapes, gen)
                net.step(x, train_y[idx], m)
                step += 1
                if callback is not None:
                    callback(step)
        if epoch in checkpoints:
            checkpoint()
    return torch.stack(saved), {k: torch.stack(v) for k, v in metrics.items()}


def _plain_train(
    init: Sequence[Mapping[str, Tensor]],
    hparams: Mapping[str, np.ndarray],
    train_x: Tensor,
    train_y: Tensor,
    batches: np.ndarray,
    *,
    steps: int,
    dtype: torch.dtype = torch.float32,
    masks: Callable[[int], Sequence[Tensor | None]] | None = None,
) -> Tensor:
    """The reference: a plain Python loop over the networks, each a
    [`small_cnn`][nngraph_datasets.small_cnn] with its own `torch.optim` optimiser, trained on
    the same batches as [`train_cnns`][nngraph_datasets.train_cnns] would. Returns the final
    parameters `[B, P]`. `masks(step)` gives the dropout multipliers of
    [`train_cnns`][nngraph_datasets.train_cnns] (the batched layout `[n, B*c, h, w]`, sliced
    here per network); without it the modules' own `nn.Dropout` draws them."""
    out = []
    for b, sd in enumerate(init):
        act = ACTIVATIONS[int(hparams["activation"][b])]
        p_drop = 0.0 if masks is not None else float(hparams["dropout"][b])
        model = small_cnn(act, in_channels=int(train_x.shape[1]), dropout=p_drop).to(dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
        model.train()
        lr, l2 = float(hparams["lr"][b]), float(hparams["l2"][b])
        kind = OPTIMIZERS[int(hparams["optimizer"][b])]
        opt: torch.optim.Optimizer
        if kind == "adam":
            opt = torch.optim.Adam(
                model.parameters(), lr, betas=_ADAM_BETAS, eps=_EPS, weight_decay=l2
            )
        elif kind == "rmsprop":
            opt = torch.optim.RMSprop(
                model.parameters(), lr, alpha=_RMSPROP_ALPHA, eps=_EPS, weight_decay=l2
            )
        else:
            opt = torch.optim.SGD(model.parameters(), lr, weight_decay=l2)
        current: list[Tensor | None] = [None, None]
        hooks = []
        if masks is not None:
            for k, idx in enumerate((2, 5)):

                def hook(
                    mod: nn.Module,
                    inp: Any,
                    output: Tensor,
                    k: int = k,
                    b: int = b,
                    current: list[Tensor | None] = current,
                ) -> Tensor:
                    m = current[k]
                    if m is None:
                        return output
                    n = m.shape[0]
                    return output * m.view(n, len(init), -1, *m.shape[2:])[:, b]

                hooks.append(model[idx].register_forward_hook(hook))
        for s in range(steps):
            idx_s = torch.from_numpy(batches[s, :, b])
            if masks is not None:
                current[:] = list(masks(s))
            opt.zero_grad()
            F.cross_entropy(model(train_x[idx_s].to(dtype)), train_y[idx_s]).backward()
            opt.step()
        for h in hooks:
            h.remove()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.state_dict().values()]))
    return torch.stack(out)


# ----------------------------------------------------------------------------- data
def _data_rows(
    ids: np.ndarray, dataset: str, train_pool: int | None, eval_test: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """`(pool, test, n_test)`: the rows of the training pool and of the test subset of a zoo's
    images (seeded; the draw of every zoo built so far), and the size of the test split."""
    rng = np.random.default_rng([seed, 0xDA7A])
    if dataset in ("fashion-mnist", "mnist"):
        train_rows, test_rows = np.flatnonzero(ids < 60000), np.flatnonzero(ids >= 60000)
    else:  # no official split: a seeded 80 / 20 split of the images
        perm = rng.permutation(len(ids))
        cut = len(ids) * 4 // 5
        train_rows, test_rows = np.sort(perm[:cut]), np.sort(perm[cut:])
    pool = train_rows if train_pool is None or train_pool >= len(train_rows) else (
        np.sort(rng.permutation(train_rows)[:train_pool]))  # fmt: skip
    test = test_rows if eval_test is None or eval_test >= len(test_rows) else (
        np.sort(rng.permutation(test_rows)[:eval_test]))  # fmt: skip
    return pool, test, len(test_rows)


def _as_zoo_inputs(images: np.ndarray, dataset: str) -> Tensor:
    """Integer pixels `[n, H, W]` -> the networks' inputs `[n, 1, H', W']`: pixels in [0, 1];
    images too small for three stride-2 3x3 convolutions (the 8x8 digits) zero-padded to 16x16."""
    scale = float(source_info(dataset)["scale"])  # type: ignore[arg-type]
    x = torch.from_numpy(images.astype(np.float32) / scale).unsqueeze(1)
    if x.shape[-1] < 15:
        p = (16 - x.shape[-1]) // 2
        x = F.pad(x, (p, 16 - x.shape[-1] - p, p, 16 - x.shape[-2] - p))
    return x


def _load_data(
    dataset: str, recipe: CnnRecipe, seed: int, data_root: str | os.PathLike[str] | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
    """`(pool_x [N, 1, H, W], pool_y, test_x, test_y, info)`: the training pool and the test
    subset (seeded), pixels in [0, 1]; the 8x8 `digits` are zero-padded to 16x16."""
    images, labels, ids = load_raw(dataset, "all", data_root)
    pool, test, n_test = _data_rows(ids, dataset, recipe.train_pool, recipe.eval_test, seed)
    x = _as_zoo_inputs(images, dataset)
    y = torch.from_numpy(labels.astype(np.int64))
    info = {"train_pool": len(pool), "test_images": len(test),
            "test_is_subset": bool(len(test) < n_test),
            "input_shape": [int(s) for s in x.shape[1:]],
            "pool_ids": hashlib.sha256(ids[pool].tobytes()).hexdigest(),
            "test_ids": hashlib.sha256(ids[test].tobytes()).hexdigest()}  # fmt: skip
    return x[pool], y[pool], x[test], y[test], info


def heldout_images(
    zoo: Any, data_root: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The images of a zoo's data set that **no network of the zoo saw**: neither in the
    training pool the networks drew their training images from, nor among the test images
    their recorded test accuracy was measured on. Inputs exactly as the networks saw them
    (pixels in [0, 1]; the 8x8 digits zero-padded to 16x16), e.g. for real probe images
    ([`select_probe_images`][nngraph_probe.select_probe_images]) that carry no information about
    the recorded accuracies beyond the networks' function.

    The pool and the test subset are drawn again from the zoo's manifest (data set, seed,
    `train_pool`, `eval_test`) and checked against the hashes of their image ids that the
    builder recorded, so images that differ from those the zoo was built from are refused.

    Args:
        zoo: a [`CnnZoo`][nngraph_datasets.CnnZoo] or wild park zoo (anything with the builder's
            `manifest`), or a manifest dict.
        data_root: the folder of the IDX files (fashion-mnist / mnist; default as for building).

    Returns:
        `(images [n, 1, H, W] float32, labels [n] int64, ids [n] int64)`: `ids` as in
        [`load_images`][nngraph_datasets.load_images] (test-split ids of the 70k sets start at
        60,000).

    Raises:
        ZooFormatError: a zoo whose manifest does not record the images it was built from (a
            zoo written from outside weights, e.g. a converted published zoo), or whose
            recorded pool / test ids do not match the images found; a zoo whose data set has no
            image left over.
    """
    mf = zoo if isinstance(zoo, Mapping) else zoo.manifest
    where = getattr(zoo, "path", "the zoo")
    data, recipe = mf.get("data"), mf.get("recipe")
    if not isinstance(data, Mapping) or not isinstance(recipe, Mapping) or "pool_ids" not in data:
        raise ZooFormatError(
            f"{where}: the manifest does not record which images the zoo was built from (no "
            "'data' entry with 'pool_ids'): held-out images are known only for zoos built by "
            "nngraph-datasets"
        )
    dataset, seed = str(mf.get("dataset")), int(mf.get("seed", 0))
    images, labels, ids = load_raw(dataset, "all", data_root)
    pool, test, _ = _data_rows(
        ids, dataset, recipe.get("train_pool"), recipe.get("eval_test"), seed
    )
    for name, rows in (("pool", pool), ("test", test)):
        if hashlib.sha256(ids[rows].tobytes()).hexdigest() != data.get(f"{name}_ids"):
            raise ZooFormatError(
                f"{where}: the {dataset} images found are not those the zoo was built from "
                f"(the ids of its {name} images differ from the manifest's {name}_ids)"
            )
    rest = np.setdiff1d(np.arange(len(ids)), np.concatenate([pool, test]))
    if len(rest) == 0:
        raise ZooFormatError(
            f"{where}: every {dataset} image is in the zoo's training pool or test subset; no "
            "held-out image is left"
        )
    x = _as_zoo_inputs(images[rest], dataset)
    return x, torch.from_numpy(labels[rest].astype(np.int64)), torch.from_numpy(ids[rest])


def _network_streams(
    recipe: CnnRecipe,
    seed: int,
    networks: Sequence[int],
    fractions: np.ndarray,
    pool: int,
    steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per network: its training rows (`round(f * pool)` of the pool, seeded by `(seed, i)`),
    the batches of all steps `[steps, batch, B]` (epochs of its rows in fresh orders) and its
    `eval_train` rows `[eval_train, B]` (its first rows, cycled when it has fewer)."""
    need = steps * recipe.batch_size
    batches = np.empty((len(networks), need), dtype=np.int64)
    evals = np.empty((len(networks), recipe.eval_train), dtype=np.int64)
    for j, (i, f) in enumerate(zip(networks, fractions)):
        rng = np.random.default_rng([seed, i, 0xBA7C])
        rows = rng.permutation(pool)[: max(1, round(float(f) * pool))]
        evals[j] = rows[np.arange(recipe.eval_train) % len(rows)]
        reps = math.ceil(need / len(rows)) if need else 0
        stream = np.concatenate([rng.permutation(rows) for _ in range(reps)]) if reps else rows[:0]
        batches[j] = stream[:need]
    return batches.reshape(len(networks), steps, recipe.batch_size).transpose(
        1, 2, 0
    ).copy(), evals.T.copy()


def _train_group(
    recipe: CnnRecipe, seed: int, networks: Sequence[int], data: tuple[Tensor, Tensor, Tensor, Tensor],
    callback: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:  # fmt: skip
    """Train the networks `networks` (one shard) and return the shard's tensors."""
    pool_x, pool_y, test_x, test_y = data
    group_id = int(networks[0])
    # train the relu networks first, then the tanh ones (one activation pass, see _Batched._act);
    # the rows are put back in network order at the end
    act = _sample_hparams(recipe, seed, networks)["activation"]
    networks = [int(networks[j]) for j in np.argsort(act, kind="stable")]
    hp = _sample_hparams(recipe, seed, networks)
    spe = recipe.steps_per_epoch(len(pool_x))
    steps = recipe.epochs * spe
    batches, evals = _network_streams(
        recipe, seed, networks, hp["train_fraction"], len(pool_x), steps
    )
    init = []
    for j, i in enumerate(networks):
        gen = torch.Generator().manual_seed(
            int(np.random.default_rng([seed, i, 0x1417]).integers(2**62))
        )
        init.append(init_cnn_params(INITIALIZERS[hp["initializer"][j]], float(hp["init_std"][j]), gen,
                                    in_channels=int(pool_x.shape[1])))  # fmt: skip
    B = len(networks)
    eval_idx = torch.from_numpy(evals)
    eval_sets = {
        "train": (pool_x[eval_idx], pool_y[eval_idx]),
        "test": (test_x.unsqueeze(1).expand(-1, B, *test_x.shape[1:]),
                 test_y.unsqueeze(1).expand(-1, B)),
    }  # fmt: skip
    dseed = int(np.random.default_rng([seed, group_id, 0xD209]).integers(2**62))
    params, m = train_cnns(init, hp, pool_x, pool_y, batches, checkpoints=recipe.checkpoints,
                           steps_per_epoch=spe, eval_sets=eval_sets, dropout_seed=dseed,
                           callback=callback)  # fmt: skip
    C = len(recipe.checkpoints)
    out: dict[str, Tensor] = {
        "params": params.permute(1, 0, 2).reshape(B * C, -1).to(torch.float32).contiguous()
    }
    out["network"] = torch.as_tensor(networks, dtype=torch.int64).repeat_interleave(C)
    out["epoch"] = torch.as_tensor(recipe.checkpoints, dtype=torch.int64).repeat(B)
    for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
        out[k] = m[k].T.reshape(-1).to(torch.float32)
    out["stopped"] = (~m["alive"]).T.reshape(-1).to(torch.int64)
    for k, v in hp.items():
        t = torch.from_numpy(v)
        out[k] = (t if k in CATEGORIES else t.to(torch.float32)).repeat_interleave(C)
    order = torch.from_numpy(np.argsort(np.asarray(networks), kind="stable"))
    rows = (order.view(-1, 1) * C + torch.arange(C)).reshape(-1)
    return {k: v[rows].contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------- splits
def _default_splits(
    networks: np.ndarray, fractions: Sequence[float], seed: int
) -> dict[str, list[int]]:
    """Seeded split of the network ids (sizes by `fractions`, rounded down, the rest to train)."""
    ids = np.unique(networks)
    perm = np.random.default_rng([seed, 0x5911]).permutation(ids)
    n_val = int(len(ids) * fractions[1])
    n_test = int(len(ids) * fractions[2])
    return {"train": sorted(int(i) for i in perm[n_val + n_test :]),
            "val": sorted(int(i) for i in perm[:n_val]),
            "test": sorted(int(i) for i in perm[n_val : n_val + n_test])}  # fmt: skip


# ----------------------------------------------------------------------------- manifest
def _architecture(
    in_channels: int, input_shape: Sequence[int], num_classes: int = 10, channels: int = 16
) -> dict[str, Any]:
    keys = _param_keys(in_channels, num_classes, channels)
    return {
        "kind": "small-cnn",
        "in_channels": in_channels,
        "num_classes": num_classes,
        "channels": channels,
        "input_shape": list(input_shape),
        "num_params": sum(math.prod(s) for _, s in keys.values()),
        "param_keys": keys,
        "kernel_layout": "torch [out, in, kh, kw]",
    }


def _check_cnn_manifest(m: Any, mf: Path) -> dict[str, Any]:
    """Every field a reader uses; each problem is a `ZooFormatError` naming it."""

    def bad(what: str) -> ZooFormatError:
        return ZooFormatError(f"{mf}: {what}")

    def count(x: object, top: int = 1 << 40) -> bool:
        return _is_int(x) and 0 <= x < top  # type: ignore[operator]

    if not isinstance(m, dict) or m.get("format") != _FORMAT:
        raise bad("not an nngraph CNN zoo manifest")
    if m.get("schema_version") != CNN_SCHEMA_VERSION:
        raise bad(
            f"schema version {m.get('schema_version')!r}, this library reads {CNN_SCHEMA_VERSION}"
        )
    arch = m.get("architecture")
    if not isinstance(arch, dict) or arch.get("kind") != "small-cnn":
        raise bad("architecture must be an object of kind 'small-cnn'")
    for k, top in (("in_channels", 16), ("num_classes", 10000), ("channels", 512)):
        if not count(arch.get(k), top + 1) or arch[k] < 1:
            raise bad(f"architecture.{k} must be an integer in [1, {top}], got {arch.get(k)!r}")
    shape = arch.get("input_shape")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(count(s, 1 << 16) for s in shape)
            or shape[0] != arch["in_channels"] or min(shape[1:]) < 15):  # fmt: skip
        raise bad(
            f"architecture.input_shape must be [in_channels, H, W] with H, W >= 15, got {shape!r}"
        )
    keys = _param_keys(arch["in_channels"], arch["num_classes"], arch["channels"])
    if arch.get("param_keys") != keys:
        raise bad("architecture.param_keys do not match the small-cnn layout")
    if arch.get("num_params") != sum(math.prod(s) for _, s in keys.values()):
        raise bad(f"architecture.num_params {arch.get('num_params')!r} does not match the layout")
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
    for c in CATEGORIES:
        if c not in cats:
            raise bad(f"categories has no {c!r}")
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
        if (
            not isinstance(file, str)
            or not _SHARD_NAME.fullmatch(file)
            or file in names
            or file == "manifest.json"
        ):
            raise bad(f"shard file {file!r} is not a plain, unique file name in the zoo folder")
        names.add(file)
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise bad(f"{file}: sha256 must be 64 hex digits")
        if shard.get("start") != stop or not count(shard.get("stop")) or shard["stop"] < stop:
            raise bad(
                f"{file}: shards must cover the checkpoints in order without gaps ({shard!r})"
            )
        stop = shard["stop"]
    if stop != n:
        raise bad(f"the shards hold {stop} checkpoints, num_checkpoints says {n}")
    return m


def _read_cnn_manifest(path: Path) -> dict[str, Any]:
    mf = path / "manifest.json"
    if not mf.is_file():
        hint = (
            " (an unfinished build? rerun the same build to resume it)"
            if path.name.endswith(".partial")
            else ""
        )
        raise ZooFormatError(f"{path} is not a CNN zoo: no manifest.json{hint}")
    try:
        if mf.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ZooFormatError(f"{mf}: larger than {_MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(mf.read_bytes())
    except OSError as e:
        raise ZooFormatError(f"{mf}: cannot be read ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:
        raise ZooFormatError(f"{mf}: not valid JSON") from e
    return _check_cnn_manifest(manifest, mf)


def _check_cnn_shard(
    maps: Mapping[str, np.ndarray],
    entry: Mapping[str, Any],
    manifest: Mapping[str, Any],
    path: Path,
) -> None:
    n = entry["stop"] - entry["start"]
    p = maps.get("params")
    if (
        p is None
        or p.ndim != 2
        or p.shape != (n, manifest["architecture"]["num_params"])
        or p.dtype != np.float32
    ):
        got = "none" if p is None else f"{p.dtype} {list(p.shape)}"
        raise ZooFormatError(
            f"{path}: params must be float32 [{n}, {manifest['architecture']['num_params']}], got {got}"
        )
    for col, dt in manifest["columns"].items():
        a = maps.get(col)
        if a is None or a.ndim != 1 or a.shape[0] != n or a.dtype != np.dtype(dt):
            got = "none" if a is None else f"{a.dtype} {list(a.shape)}"
            raise ZooFormatError(f"{path}: column {col!r} must be {dt} [{n}], got {got}")


# ----------------------------------------------------------------------------- writing
def _as_column(name: str, values: Any, m: int) -> Tensor:
    if isinstance(values, Tensor):
        t = values.detach().cpu()
    else:
        try:
            a = np.asarray(values)
        except (ValueError, TypeError) as e:
            raise ZooFormatError(f"metric {name!r} is not a numeric column ({e})") from e
        if a.dtype.kind not in "biuf":
            raise ZooFormatError(f"metric {name!r} has dtype {a.dtype}, not a number")
        t = torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64))
    if t.dim() != 1 or t.shape[0] != m:
        raise ZooFormatError(
            f"metric {name!r} must have one value per checkpoint ({m}), got shape {list(t.shape)}"
        )
    kind = REQUIRED_COLUMNS.get(name)
    if t.dtype == torch.bool or (t.is_floating_point() and kind == "i"):
        d = t.double()
        if not bool(torch.isfinite(d).all()) or bool((d != d.round()).any()):
            raise ZooFormatError(f"metric {name!r} must hold integers")
        return t.to(torch.int64)
    if not t.is_floating_point() and not t.is_complex():
        return t.to(torch.int64) if kind != "f" else t.to(torch.float32)
    if t.is_complex():
        raise ZooFormatError(f"metric {name!r} is complex")
    if not name.endswith("_loss") and not bool(torch.isfinite(t).all()):
        raise ZooFormatError(f"metric {name!r} holds NaN or infinite values")
    return t.to(torch.float32)


def write_cnn_zoo(
    out: str | os.PathLike[str],
    params: Tensor,
    metrics: Mapping[str, Any],
    *,
    architecture: Mapping[str, Any],
    recipe: Mapping[str, Any],
    categories: Mapping[str, Sequence[str]],
    splits: Mapping[str, Sequence[int]] | None = None,
    overwrite: bool = False,
    dataset: str = "unknown",
    shard_size: int = 65536,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write already-trained networks (e.g. a converted published zoo) as a CNN zoo.

    Args:
        out: the zoo folder to create (atomically: written beside it, then renamed).
        params: `[M, P]` flat parameters of M checkpoints in the
            [`small_cnn`][nngraph_datasets.small_cnn] layout.
        metrics: 1-D columns of length M: at least `network`, `epoch`, `train_acc`,
            `test_acc`, `train_loss`, `test_loss`, `activation`, `initializer`, `optimizer`,
            `init_std`, `lr`, `l2`, `dropout`, `train_fraction` (more are kept).
        architecture: `in_channels`, `input_shape` `[C, H, W]` (and optionally `num_classes`,
            `channels`).
        recipe: how the networks were made (recorded as is).
        categories: code -> name lists of the categorical columns (`activation`,
            `initializer`, `optimizer` at least).
        splits: split name -> network ids (values of `metrics["network"]`); a network's
            checkpoints all go to its split, and no network may be in two. Default: a seeded
            80 / 10 / 10 split of the networks.
        overwrite: replace an existing zoo at `out`.
        dataset: the data set's name, recorded.
        shard_size: checkpoints per shard.
        extra: more manifest fields.

    Raises:
        ZooFormatError: bad shapes, missing or non-finite columns, overlapping splits.
        ZooExistsError: `out` exists and `overwrite` is False.
    """
    out = Path(out)
    if not isinstance(params, Tensor) or params.dim() != 2:
        raise ZooFormatError(
            f"params must be a [M, P] tensor, got {getattr(params, 'shape', type(params))}"
        )
    m = int(params.shape[0])
    in_ch = int(architecture.get("in_channels", 1))
    arch = _architecture(in_ch, list(architecture.get("input_shape", [in_ch, 28, 28])),
                         int(architecture.get("num_classes", 10)), int(architecture.get("channels", 16)))  # fmt: skip
    if params.shape[1] != arch["num_params"]:
        raise ZooFormatError(
            f"params have {params.shape[1]} columns, the small-cnn layout {arch['num_params']}"
        )
    params = params.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(params).all()):
        raise ZooFormatError("params hold NaN or infinite values")
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics]
    if missing:
        raise ZooFormatError(f"metrics lack the columns {missing}")
    cols = {k: _as_column(k, v, m) for k, v in metrics.items()}
    for k, t in cols.items():
        if not _SHARD_NAME.fullmatch(k) or k == "params":
            raise ZooFormatError(f"bad metric name {k!r}")
        if (
            t.is_floating_point()
            and k in ("train_acc", "test_acc")
            and not bool(((t >= 0) & (t <= 1)).all())
        ):
            raise ZooFormatError(f"{k} must lie in [0, 1]")
    cats = {k: [str(s) for s in v] for k, v in categories.items()}
    for c in CATEGORIES:
        if c not in cats or not cats[c]:
            raise ZooFormatError(f"categories has no names for {c!r}")
        codes = cols[c]
        if m and (int(codes.min()) < 0 or int(codes.max()) >= len(cats[c])):
            raise ZooFormatError(f"column {c!r} has codes outside 0..{len(cats[c]) - 1}")
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
    tensors = {"params": params, **cols}
    manifest = {
        "schema_version": CNN_SCHEMA_VERSION,
        "format": _FORMAT,
        "architecture": arch,
        "dataset": dataset,
        "recipe": dict(recipe),
        "num_checkpoints": m,
        "num_networks": len(np.unique(networks)),
        "columns": {k: "int64" if v.dtype == torch.int64 else "float32" for k, v in cols.items()},
        "categories": cats,
        "splits": split_ids,
        "versions": _versions(),
        **dict(extra or {}),
    }
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
            shards = []
            for k in range(max(1, math.ceil(m / shard_size))):
                lo, hi = k * shard_size, min((k + 1) * shard_size, m)
                path = partial / f"shard-{k:05d}.safetensors"
                _write_shard(path, {key: v[lo:hi] for key, v in tensors.items()})
                shards.append({"file": path.name, "start": lo, "stop": hi, "sha256": _sha256(path)})
            manifest["shards"] = shards
            _check_cnn_manifest(json.loads(json.dumps(manifest)), partial / "manifest.json")
            _finish(partial, out, manifest, overwrite)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return out


# ----------------------------------------------------------------------------- building
def _resolve_recipe(recipe: str | CnnRecipe, num_networks: int | None) -> CnnRecipe:
    r = CnnRecipe.named(recipe) if isinstance(recipe, str) else recipe
    if num_networks is not None:
        r = dataclasses.replace(r, num_networks=num_networks)
    return r


class _LineProgress:
    """One line on stderr: networks done, network-epochs/s, ETA (no dependencies)."""

    def __init__(self, total: int, epochs: int) -> None:
        self.total, self.epochs, self.t0 = total, epochs, time.monotonic()
        self.start: int | None = None

    def __call__(self, done: float, info: str = "") -> None:
        if self.start is None:
            self.start = int(done)
        dt = time.monotonic() - self.t0
        rate = (done - self.start) / dt if dt > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        fill = int(30 * done / max(self.total, 1))
        eta_s = "?" if eta != eta else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        print(f"\r[{'#' * fill}{'.' * (30 - fill)}] {done:,.1f}/{self.total} networks | "
              f"{rate * self.epochs:,.1f} network-epochs/s | ETA {eta_s} {info}",
              end="", file=sys.stderr, flush=True)  # fmt: skip
        if done >= self.total:
            print(file=sys.stderr)


def build_cnn_zoo(
    out: str | os.PathLike[str],
    *,
    dataset: str = "fashion-mnist",
    recipe: str | CnnRecipe = "default",
    seed: int = 0,
    num_networks: int | None = None,
    progress: bool | Callable[[float, str], None] = True,
    overwrite: bool = False,
    data_root: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> Path:
    """Train a CNN zoo and write it to `out` (atomically, resumably, deterministically).

    Networks are trained in groups of `recipe.group_size` (one shard each, the unit of
    resumption); network `i`'s hyper-parameters, initialisation and batches depend on
    `(seed, i)` only, so the same seed rebuilds the same bytes (on the same machine, torch
    version and thread count: the build fixes the thread count, `threads` or torch's, and
    records it). Splits are by network (80 / 10 / 10 by default, seeded): all checkpoints of a
    network are in one split.

    Args:
        out: the zoo folder to create.
        dataset: `"fashion-mnist"` (default: the 70k IDX files, see
            [`load_images`][nngraph_datasets.load_images]), `"mnist"`, `"mnist-5k"` or
            `"digits"` (8x8, zero-padded to 16x16; for tests).
        recipe: a [`CnnRecipe`][nngraph_datasets.CnnRecipe] or the name of one.
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
    pool_x, pool_y, test_x, test_y, info = _load_data(dataset, r, seed, data_root)
    plan = {"dataset": dataset, "recipe": r.to_dict(), "seed": seed, "threads": nthreads,
            "data": info, "format": _FORMAT, "schema_version": CNN_SCHEMA_VERSION}  # fmt: skip
    partial = out.with_name(f".{out.name}.partial")
    kept = f"the finished shards in {partial} are intact and a rerun resumes from them" + (
        f"; the zoo at {out} is unchanged" if out.exists() else "")  # fmt: skip
    groups = [list(range(lo, min(lo + r.group_size, r.num_networks)))
              for lo in range(0, r.num_networks, r.group_size)]  # fmt: skip
    C = len(r.checkpoints)
    report: Callable[[float, str], None] | None
    report = _LineProgress(r.num_networks, r.epochs) if progress is True else (progress or None)  # type: ignore[assignment]
    torch.set_num_threads(nthreads)
    try:
        with _storage_errors(out, kept), _build_lock(out):
            if out.exists() and not overwrite:  # built by another process while this one waited
                try:
                    done_m = _read_cnn_manifest(out)
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
            shards, columns = [], None
            for k, nets in enumerate(groups):
                path = partial / f"shard-{k:05d}.safetensors"
                lo = nets[0] * C
                if path.exists():
                    try:
                        maps = _mmap_shard(path)
                        if maps["params"].shape[0] == len(nets) * C:
                            shards.append((path, lo, lo + len(nets) * C))
                            if report:
                                report(float(nets[-1] + 1), "")
                            continue
                    except (ZooFormatError, KeyError):
                        pass
                spe = r.steps_per_epoch(len(pool_x))
                total_steps = max(1, r.epochs * spe)

                def cb(step: int, nets: list[int] = nets, total: int = total_steps) -> None:
                    if report and (step % 10 == 0 or step == total):
                        report(nets[0] + len(nets) * step / total, "")

                tensors = _train_group(r, seed, nets, (pool_x, pool_y, test_x, test_y), cb)
                columns = {k2: "int64" if v.dtype == torch.int64 else "float32"
                           for k2, v in tensors.items() if k2 != "params"}  # fmt: skip
                _write_shard(path, tensors)
                shards.append((path, lo, lo + len(nets) * C))
                if report:
                    report(float(nets[-1] + 1), "")
            if columns is None:  # every shard was resumed: read the columns from one
                maps = _mmap_shard(shards[0][0])
                columns = {k2: "int64" if v.dtype == np.int64 else "float32"
                           for k2, v in maps.items() if k2 != "params"}  # fmt: skip
            manifest = {
                "schema_version": CNN_SCHEMA_VERSION,
                "format": _FORMAT,
                "architecture": _architecture(int(pool_x.shape[1]), info["input_shape"]),
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
                "categories": {k2: list(v) for k2, v in CATEGORIES.items()},
                "splits": _default_splits(np.arange(r.num_networks), r.split_fractions, seed),
                "shards": [
                    {"file": p.name, "start": a, "stop": b, "sha256": _sha256(p)}
                    for p, a, b in shards
                ],
                "versions": _versions(),
            }
            _finish(partial, out, manifest, overwrite)
            return out
    finally:
        torch.set_num_threads(old_threads)


# ----------------------------------------------------------------------------- reading
def verify_cnn_zoo(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-hash every shard and check its tensors against the manifest.

    Returns the manifest; raises [`IntegrityError`][nngraph_datasets.IntegrityError] on a
    changed or missing shard and [`ZooFormatError`][nngraph_datasets.ZooFormatError] on a bad
    manifest.
    """
    path = Path(path)
    return _verify_shards(path, _read_cnn_manifest(path), _check_cnn_shard)


class CnnZoo:
    """A CNN zoo on disk: manifest + lazily memory-mapped shards.

    Rows are checkpoints (a network at an epoch), ordered by network then epoch. Columns:
    [`params`][nngraph_datasets.CnnZoo.params] `[m, P]` and
    [`metrics`][nngraph_datasets.CnnZoo.metrics] (1-D), each for the whole zoo or one split.

    Attributes:
        categories: column -> names of its codes (`activation`, `initializer`, `optimizer`).
        splits: split name -> checkpoint indices `[m]` int64 (all checkpoints of a network
            are in the same split).
        recipe: how the zoo was trained.
        manifest: the whole manifest.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest = _read_cnn_manifest(self.path)
        self.recipe: dict[str, Any] = dict(self.manifest["recipe"])
        self.categories: dict[str, list[str]] = {
            k: list(v) for k, v in self.manifest["categories"].items()
        }
        self._maps: list[dict[str, np.ndarray]] | None = None
        self._splits: dict[str, Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:  # workers re-map, nothing is copied
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return int(self.manifest["num_checkpoints"])

    def __repr__(self) -> str:
        return (f"CnnZoo({str(self.path)!r}: {self.manifest.get('num_networks')} networks, "
                f"{len(self)} checkpoints, {self.manifest['dataset']})")  # fmt: skip

    @property
    def _shards(self) -> list[dict[str, np.ndarray]]:
        if self._maps is None:
            maps = []
            for entry in self.manifest["shards"]:
                path = self.path / entry["file"]
                if not path.is_file():
                    raise ZooFormatError(f"{self.path}: shard {entry['file']} is missing")
                maps.append(_mmap_shard(path))
                _check_cnn_shard(maps[-1], entry, self.manifest, path)
            self._maps = maps
        return self._maps

    def _column(self, key: str) -> Tensor:
        parts = [np.asarray(m[key]) for m in self._shards]
        return torch.from_numpy(np.concatenate(parts))

    @property
    def splits(self) -> dict[str, Tensor]:
        if self._splits is None:
            network = self._column("network").numpy()
            self._splits = {name: torch.from_numpy(np.flatnonzero(np.isin(network, np.asarray(ids, dtype=np.int64))))
                            for name, ids in self.manifest["splits"].items()}  # fmt: skip
        return self._splits

    def _rows(self, split: str | None) -> Tensor | None:
        if split is None:
            return None
        if split not in self.splits:
            raise KeyError(f"no split {split!r}; the zoo has {list(self.splits)}")
        return self.splits[split]

    def params(self, split: str | None = None) -> Tensor:
        """Flat parameters `[m, P]` float32 (a copy) of the whole zoo or one split."""
        rows = self._rows(split)
        p = self._column("params")
        return p if rows is None else p[rows]

    def metrics(self, split: str | None = None) -> dict[str, Tensor]:
        """Every metric column (1-D, int64 or float32) of the whole zoo or one split."""
        rows = self._rows(split)
        out = {}
        for key in self.manifest["columns"]:
            c = self._column(key)
            out[key] = c if rows is None else c[rows]
        return out

    def architecture(self, activation: str | None = None) -> nn.Module:
        """A fresh [`small_cnn`][nngraph_datasets.small_cnn] of this zoo (`activation`
        default: the first of the zoo's categories)."""
        arch = self.manifest["architecture"]
        act = activation or self.categories["activation"][0]
        return small_cnn(act, in_channels=arch["in_channels"], num_classes=arch["num_classes"],
                         channels=arch["channels"])  # fmt: skip

    def template(self) -> Any:
        """The [`nngraph_core.GraphTemplate`][nngraph_core.GraphTemplate] of the architecture
        (its `flatten` layout is the zoo's `params` layout)."""
        from nngraph_core import GraphTemplate

        return GraphTemplate.from_module(self.architecture())


def _cache_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return Path(
        os.environ.get("NNGRAPH_ZOOS", Path.home() / ".cache" / "nngraph" / "zoos")
    ).expanduser()


def default_cnn_zoo_dir(
    dataset: str = "fashion-mnist", recipe: str | CnnRecipe = "default", seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> Path:  # fmt: skip
    """Where a CNN zoo is cached: `$NNGRAPH_ZOOS/cnn-<dataset>-<recipe>-s<seed>` (the cache
    root of INR zoos, `~/.cache/nngraph/zoos` by default). A custom
    [`CnnRecipe`][nngraph_datasets.CnnRecipe] that differs from the named one gets a hash of
    its fields in the name."""
    if isinstance(recipe, str):
        name = CnnRecipe.named(recipe).name
    else:
        name = recipe.name
        if CNN_RECIPES.get(recipe.name) != recipe:
            digest = hashlib.sha256(
                json.dumps(recipe.to_dict(), sort_keys=True).encode()
            ).hexdigest()
            name = f"{recipe.name}-{digest[:10]}"
    return _cache_root(root) / f"cnn-{dataset}-{name}-s{seed}"


def load_cnn_zoo(
    dataset: str = "fashion-mnist",
    recipe: str | CnnRecipe = "default",
    seed: int = 0,
    *,
    root: str | os.PathLike[str] | None = None,
    build: bool = True,
    progress: bool | Callable[[float, str], None] = True,
    data_root: str | os.PathLike[str] | None = None,
) -> CnnZoo:
    """The cached CNN zoo of `(dataset, recipe, seed)`, built on first use.

    Args:
        dataset: see [`build_cnn_zoo`][nngraph_datasets.build_cnn_zoo].
        recipe: see [`build_cnn_zoo`][nngraph_datasets.build_cnn_zoo].
        seed: see [`build_cnn_zoo`][nngraph_datasets.build_cnn_zoo].
        root: the cache folder (default `$NNGRAPH_ZOOS`, else `~/.cache/nngraph/zoos`).
        build: build the zoo when it is not cached (else a
            [`ZooFormatError`][nngraph_datasets.ZooFormatError] says how to build it).
        progress: see [`build_cnn_zoo`][nngraph_datasets.build_cnn_zoo].
        data_root: the folder of the IDX files.
    """
    path = default_cnn_zoo_dir(dataset, recipe, seed, root)
    if not (path / "manifest.json").is_file():
        if not build:
            raise ZooFormatError(
                f"no CNN zoo at {path}; build it with `nngraph-datasets cnn-zoo fit --dataset "
                f"{dataset} --recipe {recipe if isinstance(recipe, str) else recipe.name} --seed {seed} --out {path}`"
            )
        build_cnn_zoo(
            path, dataset=dataset, recipe=recipe, seed=seed, progress=progress, data_root=data_root
        )
    zoo = CnnZoo(path)
    want = _resolve_recipe(recipe, None).to_dict()
    if zoo.recipe != want or zoo.manifest.get("dataset") != dataset:
        raise ZooFormatError(
            f"the cached zoo at {path} was built with another recipe or data set than the "
            f"{dataset} / {want['name']} requested (an older version of the recipe?); delete "
            "it to rebuild it, or pass another root"
        )
    return zoo
