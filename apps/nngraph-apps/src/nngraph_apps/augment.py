r"""Training-time augmentation of INRs, applied to the flat batch `[B, P]` in weight space.

Three kinds, applied in this order to every training batch (never to validation or test):

1. **Geometric** (changes the image, exactly): the INR $f$ becomes $g(x) = f(sRx + t)$ — the
   image rotated by $\theta \sim U(-r, r)$ degrees, zoomed by $s \sim U(1 - z, 1 + z)$ and shifted
   by $t \sim U(-\tau, \tau)^2$ — folded into the first layer ($W_0' = s W_0 R$,
   $b_0' = b_0 + W_0 t$) by [`fold_input_affine`][nngraph_core.fold_input_affine]. The reference
   code of the paper trains with $r = 45$, $\tau = 0.25$, $z = 0.2$.
2. **Noise** (changes the function a little): weight dropout (each parameter zeroed with
   probability $p$) and Gaussian noise of `noise` times the std of each parameter tensor of
   each network.
3. **Symmetries** (keep the function): random sign flips and phase shifts of sine neurons and
   random hidden permutations, drawn per network by
   [`random_symmetry`][nngraph_core.random_symmetry] — models that are already invariant to a
   symmetry gain nothing from it, the flat baselines do.

Every draw comes from a `torch.Generator` seeded with `(seed, global step, rank)`, so a run
resumed from any checkpoint sees the same augmented batches as the uninterrupted run, and the
settings are stored in the checkpoint with the data module's hyper-parameters.

Editing (dilation) gets symmetries only: they keep the function, so the dilated target stays
right. The geometric maps do not commute with a 3x3 dilation on the pixel grid (a rotated square
is no square; sub-pixel shifts resample the target), and noise changes the input image but not
the target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

import nngraph_core as ngc

from .errors import ConfigError

__all__ = ["Augmentation", "AugmentedTrainingBatches", "augment_params"]


@dataclass
class Augmentation:
    """Settings of the training-time augmentation (all off by default).

    Args:
        rotation: largest rotation of the image plane, in degrees ($\\theta \\sim U(-r, r)$).
        translation: largest shift per coordinate, in coordinate units (the image spans
            $[-1, 1]$).
        scale: largest relative zoom $z$ (factor $U(1 - z, 1 + z)$).
        signs: random sign flips of neurons with odd activations (sine).
        phases: random phase shifts $k\\pi$, $|k| \\le 2$, of sine neurons.
        permute: random hidden permutations.
        weight_dropout: probability of zeroing each weight and bias.
        noise: Gaussian noise, in units of each parameter tensor's std per network.
    """

    rotation: float = 0.0
    translation: float = 0.0
    scale: float = 0.0
    signs: bool = False
    phases: bool = False
    permute: bool = False
    weight_dropout: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation", "translation", "scale", "weight_dropout", "noise"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"augment.{name} must be a finite number >= 0, got {value}")
        if self.scale >= 1:
            raise ConfigError(
                f"augment.scale must be < 1 (a zoom factor 1 +- scale), got {self.scale}"
            )
        if self.weight_dropout >= 1:
            raise ConfigError(f"augment.weight_dropout must be < 1, got {self.weight_dropout}")

    @property
    def geometric(self) -> bool:
        return bool(self.rotation or self.translation or self.scale)

    @property
    def changes_function(self) -> bool:
        """Whether the augmented INR computes another function (geometric or noise)."""
        return self.geometric or bool(self.weight_dropout or self.noise)

    @property
    def symmetries(self) -> bool:
        return self.signs or self.phases or self.permute

    @property
    def active(self) -> bool:
        return self.changes_function or self.symmetries

    def describe(self) -> dict[str, float | bool]:
        return asdict(self)


class AugmentedTrainingBatches:
    """Mixin of the data modules that augment their training batches (before
    `pl.LightningDataModule` in the bases): Lightning's `on_after_batch_transfer` hook replaces a
    training batch's `params` by `augment_batch(batch, augment, generator)`; validation and test
    batches, and every batch of a module whose `augment` is `None`, pass unchanged.

    The generator is seeded by the module's `seed`, the batches the trainer has done and its
    rank, so a run resumed from any checkpoint draws what the uninterrupted run drew.
    """

    augment: Augmentation | None
    seed: int
    trainer: Any

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if self.augment is None or trainer is None or not trainer.training:
            return batch
        done = int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        gen = torch.Generator(device=batch["params"].device)
        gen.manual_seed((self.seed * 1_000_003 + done) * 1_009 + int(trainer.global_rank))
        return {**batch, "params": self.augment_batch(batch, self.augment, gen)}

    def augment_batch(
        self, batch: dict[str, Tensor], augment: Augmentation, generator: torch.Generator
    ) -> Tensor:
        """The augmented `params` of a training batch."""
        raise NotImplementedError


def _affine(b: int, aug: Augmentation, gen: torch.Generator, like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-network input maps `A [B, 2, 2]`, `t [B, 2]` (rotation x zoom, shift)."""
    opts = {"device": like.device, "dtype": like.dtype, "generator": gen}
    theta = (torch.rand(b, **opts) * 2 - 1) * math.radians(aug.rotation)
    zoom = 1 + (torch.rand(b, **opts) * 2 - 1) * aug.scale
    cos, sin = theta.cos() * zoom, theta.sin() * zoom
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    t = (torch.rand(b, 2, **opts) * 2 - 1) * aug.translation
    return a, t


def augment_params(
    params: Tensor, spec: ngc.NetworkSpec, aug: Augmentation, generator: torch.Generator
) -> Tensor:
    """Augmented copy of flat parameters `[B, P]` of networks of `spec` (see the module doc).

    Geometric maps need a linear first layer with 2 inputs (image coordinates); symmetries need
    the activations they act on (sine for phases, odd activations for signs).
    """
    if not aug.active:
        return params
    out = params
    b = params.shape[0]
    if aug.geometric:
        if spec.widths[0] != 2:
            raise ConfigError(
                f"geometric augmentation acts on 2-D image coordinates; these networks have "
                f"{spec.widths[0]} inputs"
            )
        a, t = _affine(b, aug, generator, params)
        out = ngc.fold_input_affine(spec, out, a, t)
    if aug.weight_dropout or aug.noise:
        out = out.clone()
        for offset, shape in spec.param_offsets().values():
            n = math.prod(shape)
            part = out[:, offset : offset + n]
            if aug.noise:
                std = part.std(dim=1, keepdim=True) if n > 1 else part.abs()
                noise = torch.randn(part.shape, generator=generator, device=part.device)
                part += aug.noise * std * noise.to(part.dtype)
            if aug.weight_dropout:
                keep = torch.rand(part.shape, generator=generator, device=part.device)
                part *= (keep >= aug.weight_dropout).to(part.dtype)
    if aug.symmetries:
        out = ngc.random_symmetry(
            spec, out, generator, permute=aug.permute, signs=aug.signs, phases=aug.phases
        )
    return out
