"""Training-time augmentation of INRs in weight space (`nngraph_apps.augment`, the data module)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nngraph_apps import Augmentation, ConfigError, InrDataModule, augment_params
from nngraph_apps.cli import main
from nngraph_apps.data import inr_template
from nngraph_probe import functional_forward

SPEC = inr_template().spec


def _inrs(b: int = 6, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(b, SPEC.num_params, generator=gen) * 0.1).to(dtype)


def _f(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Values `[B, K]` of the INRs at points `x [K, 2]` or `[B, K, 2]`."""
    out = functional_forward(SPEC, params, x, shared_input=x.dim() == 2)
    assert isinstance(out, torch.Tensor)
    return out[..., 0]


def test_geometric_augmentation_is_the_transformed_image() -> None:
    """g(x) = f(s R x + t): the INR of the rotated / zoomed / shifted image, exactly."""
    params = _inrs()
    aug = Augmentation(rotation=45, translation=0.25, scale=0.2)
    new = augment_params(params, SPEC, aug, torch.Generator().manual_seed(3))
    # the same draws, recomputed here
    gen = torch.Generator().manual_seed(3)
    b = len(params)
    theta = (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(45)
    zoom = 1 + (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * 0.2
    t = (torch.rand(b, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 0.25
    assert float(theta.abs().max()) > math.radians(5)  # a real rotation was drawn
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    rot = (
        torch.stack(
            [
                torch.stack([theta.cos(), -theta.sin()], -1),
                torch.stack([theta.sin(), theta.cos()], -1),
            ],
            -2,
        )
        * zoom[:, None, None]
    )
    moved = torch.einsum("bij,kj->bki", rot, x) + t[:, None, :]
    torch.testing.assert_close(_f(new, x), _f(params, moved), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(_f(new, x), _f(params, x))


def test_symmetry_augmentation_keeps_the_function() -> None:
    params = _inrs()
    aug = Augmentation(signs=True, phases=True, permute=True)
    new = augment_params(params, SPEC, aug, torch.Generator().manual_seed(0))
    assert not torch.allclose(new, params)
    x = torch.rand(64, 2, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(_f(new, x), _f(params, x), rtol=1e-10, atol=1e-10)


def test_noise_and_weight_dropout() -> None:
    params = _inrs(64, torch.float32)
    dropped = augment_params(params, SPEC, Augmentation(weight_dropout=0.25),
                             torch.Generator().manual_seed(0))  # fmt: skip
    zero = (dropped == 0) & (params != 0)
    assert 0.2 < float(zero.float().mean()) < 0.3
    assert torch.equal(dropped[~zero], params[~zero])
    noisy = augment_params(params, SPEC, Augmentation(noise=0.1), torch.Generator().manual_seed(0))
    # per parameter tensor and network: noise std = 0.1 x the tensor's std
    w1 = slice(96, 96 + 32 * 32)
    ratio = (noisy[:, w1] - params[:, w1]).std(1) / params[:, w1].std(1)
    assert float((ratio - 0.1).abs().max()) < 0.02


def test_augmentation_is_seeded_and_off_by_default() -> None:
    params = _inrs()
    aug = Augmentation(rotation=10, signs=True, permute=True, noise=0.01)
    a = augment_params(params, SPEC, aug, torch.Generator().manual_seed(5))
    b = augment_params(params, SPEC, aug, torch.Generator().manual_seed(5))
    c = augment_params(params, SPEC, aug, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_params(params, SPEC, Augmentation(), torch.Generator()) is params
    assert not Augmentation().active


@pytest.mark.parametrize(
    "kwargs",
    [{"rotation": -1.0}, {"scale": 1.0}, {"weight_dropout": 1.0}, {"noise": float("nan")}],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="augment"):
        Augmentation(**kwargs)


def test_data_module_augments_training_batches_only(tiny_args: list[str], tmp_path: Path) -> None:
    """Through the CLI: a run with augmentation differs from one without, validation batches are
    untouched (the same model evaluates the same numbers), and the setting is in the checkpoint."""
    common = ["fit", "--config", "mnist5k_ngnn_paper", *tiny_args[:-2], "--trainer.max_steps", "3",
              "--test_after_fit", "false"]  # fmt: skip
    plain, augmented = tmp_path / "plain", tmp_path / "aug"
    assert main([*common, "--run_dir", str(plain)]) == 0
    assert main([*common, "--run_dir", str(augmented), "--data.augment.rotation", "20",
                 "--data.augment.signs", "true", "--data.augment.phases", "true"]) == 0  # fmt: skip
    a = torch.load(plain / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(augmented / "checkpoints" / "last.ckpt", weights_only=True)
    assert b["datamodule_hyper_parameters"]["augment"]["rotation"] == 20
    differs = [
        k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])
    ]
    assert differs
    dm = InrDataModule(source="digits", zoo_dir=tiny_args[tiny_args.index("--data.zoo_dir") + 1],
                       augment=Augmentation(rotation=20))  # fmt: skip
    dm.setup()
    batch = {"params": dm.splits["val"]["params"][:4]}
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer: nothing is augmented


def test_resume_with_augmentation_is_exact(tiny_args: list[str], tmp_path: Path) -> None:
    common = ["fit", "--config", "mnist5k_ngnn", *tiny_args[:-2], "--checkpoint_every_n_steps",
              "1", "--test_after_fit", "false", "--trainer.max_epochs", "-1",
              "--data.augment.rotation", "30", "--data.augment.noise", "0.05",
              "--data.augment.permute", "true"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*common, "--run_dir", str(straight), "--trainer.max_steps", "6"]) == 0
    assert main([*common, "--run_dir", str(resumed), "--trainer.max_steps", "3"]) == 0
    assert main([*common, "--run_dir", str(resumed), "--trainer.max_steps", "6",
                 "--ckpt_path", "last"]) == 0  # fmt: skip
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def test_editing_refuses_function_changing_augmentation(tiny_args: list[str]) -> None:
    args = ["fit", "--config", "mnist5k_dilate_ngnn", *tiny_args, "--trainer.fast_dev_run", "1"]
    assert main([*args, "--data.augment.rotation", "10"]) == 2
    assert main([*args, "--data.augment.signs", "true", "--data.augment.permute", "true"]) == 0
