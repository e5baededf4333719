"""CNN generalisation prediction: data module, task, metrics, report and the real CLI on a tiny
synthetic CNN zoo written with `nngraph_datasets.write_cnn_zoo`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import nngraph_core as ngc
import nngraph_datasets as nds
from nngraph_apps import (
    Augmentation,
    CnnZooDataModule,
    ConfigError,
    GeneralizationTask,
    generalization_breakdown,
    kendall_tau,
)
from nngraph_apps.cli import main, task_name
from nngraph_probe import ProbeFeatures, functional_forward, select_probe_images

NETWORKS, EPOCHS = 40, 3
CATEGORIES = {
    "activation": ["relu", "tanh"],
    "initializer": ["normal", "glorot_uniform", "he_normal"],
    "optimizer": ["adam", "rmsprop", "sgd"],
}
ARCH = {"in_channels": 1, "input_shape": [1, 28, 28]}

#: Tiny model settings per model (a few steps each stay well under a second).
MODEL_KWARGS = {
    "ngnn": "{hidden_channels: 8, num_layers: 1}",
    "ngt": "{node_dim: 8, edge_channels: 8, attention_dim: 8, node_hidden_dim: 8, "
    "edge_hidden_dim: 8, num_layers: 1, heads: 2, out_hidden_dim: 8}",
    "statnn": "{hidden: [16]}",
    "nfn": "{hidden: 4, num_layers: 2}",
    "deepsets": "{hidden: 8}",
    "mlp": "{hidden: [16]}",
    "probe_mlp": "{hidden: [16]}",
    "ngnn_probes": "{hidden_channels: 8, num_layers: 1}",
    "ngt_probes": "{node_dim: 8, edge_channels: 8, attention_dim: 8, node_hidden_dim: 8, "
    "edge_hidden_dim: 8, num_layers: 1, heads: 2, out_hidden_dim: 8}",
}


def _synthetic_zoo(out: Path, *, networks: int = NETWORKS, seed: int = 0) -> Path:
    splits = {
        "train": list(range(int(0.8 * networks))),
        "val": list(range(int(0.8 * networks), int(0.9 * networks))),
        "test": list(range(int(0.9 * networks), networks)),
    }
    """`networks` x `EPOCHS` checkpoints of the Small CNN architecture with random weights whose
    scale grows with the epoch; the 'test accuracy' is a smooth function of the last layer's
    weight norm (so it can be learned) kept in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    template = nds.small_cnn().requires_grad_(False)
    num_params = sum(p.numel() for p in template.parameters())
    rows = networks * EPOCHS
    network = torch.arange(networks).repeat_interleave(EPOCHS)
    epoch = torch.arange(EPOCHS).repeat(networks)
    scale = (0.05 + 0.05 * epoch.float() + 0.05 * torch.rand(rows, generator=gen))[:, None]
    params = torch.randn(rows, num_params, generator=gen) * scale
    acc = torch.sigmoid(params[:, -170:].square().sum(1).sqrt() - 1.0).clamp(0.05, 0.95)
    per_net = lambda hi: torch.randint(0, hi, (networks,), generator=gen).repeat_interleave(EPOCHS)  # noqa: E731
    u = lambda: torch.rand(networks, generator=gen).repeat_interleave(EPOCHS)  # noqa: E731
    metrics = {
        "network": network,
        "epoch": epoch,
        "train_acc": (acc + 0.02).clamp(max=1.0),
        "test_acc": acc,
        "train_loss": 1.0 - acc,
        "test_loss": 1.1 - acc,
        "activation": per_net(2),
        "initializer": per_net(3),
        "optimizer": per_net(3),
        "init_std": u() * 0.1,
        "lr": 10 ** (-4 + 2 * u()),
        "l2": 10 ** (-8 + 6 * u()),
        "dropout": u() * 0.5,
        "train_fraction": 0.1 + 0.9 * u(),
    }
    metrics = {k: v.float() if v.is_floating_point() else v.long() for k, v in metrics.items()}
    written = nds.write_cnn_zoo(
        out, params, metrics, architecture=ARCH, recipe={"name": "synthetic"},
        categories=CATEGORIES, splits=splits,
    )  # fmt: skip
    return Path(written)


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synthetic_zoo(tmp_path_factory.mktemp("cnnzoo") / "tiny")


TINY = [
    "--data.batch_size", "16",
    "--model.warmup_steps", "2",
    "--num_threads", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.accelerator", "cpu",
    "--trainer.max_time", "null",
]  # fmt: skip


def _args(zoo: Path, run: Path, model: str = "statnn") -> list[str]:
    return [*TINY, "--data.zoo_dir", str(zoo), "--run_dir", str(run),
            "--model.model_kwargs", MODEL_KWARGS[model]]  # fmt: skip


def _steps(n: int) -> list[str]:
    """Train `n` steps, validating and refreshing last.ckpt every 4 (96 training checkpoints / 16:
    6 steps an epoch, so step 4 is inside the first epoch)."""
    return ["--trainer.max_steps", str(n), "--trainer.val_check_interval", "4",
            "--trainer.check_val_every_n_epoch", "null", "--checkpoint_every_n_steps", "4"]  # fmt: skip


# -- data -----------------------------------------------------------------------------------------


def test_splits_by_network_never_overlap(cnn_zoo: Path) -> None:
    dm = CnnZooDataModule(zoo_dir=str(cnn_zoo), batch_size=16)
    dm.setup("fit")
    nets = {k: set(v["network"].tolist()) for k, v in dm.splits.items()}
    assert nets["train"] and nets["val"] and nets["test"]
    assert not nets["train"] & nets["val"]
    assert not nets["train"] & nets["test"]
    assert not nets["val"] & nets["test"]
    assert sum(len(v["params"]) for v in dm.splits.values()) == NETWORKS * EPOCHS
    batch = next(iter(dm.train_dataloader()))
    assert batch["params"].shape == (16, 4970) and batch["params"].dtype == torch.float32
    assert batch["target"].dtype == torch.float32
    assert {"network", "epoch", "activation", "optimizer", "train_fraction"} <= set(batch)
    assert dm.categories["optimizer"] == CATEGORIES["optimizer"]


def test_final_checkpoints_and_min_epoch(cnn_zoo: Path) -> None:
    final = CnnZooDataModule(zoo_dir=str(cnn_zoo), checkpoints="final")
    final.setup("fit")
    for part in final.splits.values():
        assert (part["epoch"] == EPOCHS - 1).all()
        assert len(part["network"].unique()) == len(part["network"])
    later = CnnZooDataModule(zoo_dir=str(cnn_zoo), min_epoch=1)
    later.setup("fit")
    assert all(bool((p["epoch"] >= 1).all()) for p in later.splits.values())
    with pytest.raises(ConfigError):
        CnnZooDataModule(zoo_dir=str(cnn_zoo), min_epoch=EPOCHS).setup("fit")
    with pytest.raises(ConfigError):
        CnnZooDataModule(checkpoints="best")  # type: ignore[arg-type]


def test_splits_sharing_a_network_are_refused(
    cnn_zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_cnn_zoo refuses such splits; a zoo object that has them anyway (a foreign reader)
    is refused by the data module too."""
    zoo = nds.CnnZoo(cnn_zoo)
    with pytest.raises(nds.ZooFormatError):
        nds.write_cnn_zoo(
            cnn_zoo.parent / "mixed", zoo.params(), zoo.metrics(), architecture=ARCH,
            recipe={}, categories=CATEGORIES, splits={"train": [0, 1], "val": [1], "test": [2]},
        )  # fmt: skip
    rows = torch.arange(len(zoo))
    mixed = {"train": rows[: 3 * 30 + 1], "val": rows[3 * 30 : 3 * 35], "test": rows[3 * 35 :]}
    monkeypatch.setattr(nds.CnnZoo, "splits", property(lambda self: mixed))
    with pytest.raises(ConfigError, match="by network"):
        CnnZooDataModule(zoo_dir=str(cnn_zoo)).setup("fit")


# -- metrics --------------------------------------------------------------------------------------


def test_kendall_tau_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    gen = np.random.default_rng(0)
    x = gen.integers(0, 6, 300).astype(np.float64)  # many ties
    y = x + gen.normal(0, 2.0, 300).round()
    expected = float(stats.kendalltau(x, y).statistic)
    assert kendall_tau(x, y, chunk=37) == pytest.approx(expected, abs=1e-12)
    task = GeneralizationTask(model="statnn", model_kwargs={"hidden": [4]})
    metric = task.metrics["test_tau"]
    for s in range(0, 300, 64):  # accumulated over batches, as in a test epoch
        metric.update(torch.tensor(y[s : s + 64]), torch.tensor(x[s : s + 64]))
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-5)
    assert np.isnan(kendall_tau(np.ones(5), np.arange(5.0)))
    r2 = task.metrics["test_r2"]
    r2.update(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.5, 0.8]))
    assert float(r2.compute()) == pytest.approx(1 - 0.02 / 0.18, abs=1e-6)


def test_breakdown_groups_and_errors() -> None:
    outputs = {
        "prediction": np.array([0.5, 0.6, 0.7, 0.2, 0.3]),
        "target": np.array([0.4, 0.6, 0.9, 0.2, 0.1]),
        "optimizer": np.array([0, 0, 0, 2, 2]),
        "epoch": np.array([0, 1, 2, 0, 1]),
    }
    rows = generalization_breakdown(outputs, {"optimizer": CATEGORIES["optimizer"]})
    adam = next(r for r in rows if r["factor"] == "optimizer" and r["group"] == "adam")
    assert adam["n"] == 3 and adam["mae"] == pytest.approx(0.1) and adam["tau"] == pytest.approx(1)
    sgd = next(r for r in rows if r["group"] == "sgd")
    assert sgd["bias"] == pytest.approx(0.1)
    assert [r["group"] for r in rows if r["factor"] == "epoch"] == ["0", "1", "2"]


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_picks_the_task_data_module() -> None:
    assert task_name(["fit", "--config", "fmnist_cnn_gen_ngnn.yaml"]) is None  # name, not a path
    assert task_name(["--model", "GeneralizationTask"]) == "GeneralizationTask"
    assert task_name(["--model={class_path: nngraph_apps.InrClassificationTask}"]) == (
        "InrClassificationTask"
    )


@pytest.mark.parametrize("model", list(MODEL_KWARGS))
def test_fit_every_model(model: str, cnn_zoo: Path, tmp_path: Path) -> None:
    if model == "nfn":
        pytest.importorskip("nfn")
    run = tmp_path / "run"
    args = ["fit", "--config", f"fmnist_cnn_gen_{model}", *_args(cnn_zoo, run, model)]
    if "probe" in model:
        args += ["--model.num_probes", "4"]
    assert main([*args, "--trainer.fast_dev_run", "2"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "GeneralizationTask"
    name = {"mlp": "flat_mlp", "ngnn_probes": "ngnn", "ngt_probes": "ngt"}.get(model, model)
    assert results["model"] == name
    assert results["use_probes"] == ("probe" in model)
    assert -1.0 <= results["test"]["test/tau"] <= 1.0
    assert {"test/r2", "test/mse", "test/loss"} <= set(results["test"])


def test_fit_writes_the_report_and_resumes(cnn_zoo: Path, tmp_path: Path) -> None:
    """Two epochs, model selection on val/tau, the report's scatter and breakdown; a run stopped
    after 4 steps and resumed from last.ckpt ends with the weights of an uninterrupted run."""
    full = tmp_path / "full"
    steps = _steps(8)
    base = ["fit", "--config", "fmnist_cnn_gen_statnn"]
    assert main([*base, *_args(cnn_zoo, full), *steps]) == 0
    results = json.loads((full / "results.json").read_text())
    assert results["monitor"] == "val/tau" and results["steps"] == 8
    for name in ("scatter.png", "breakdown.png", "breakdown.md", "predictions.csv", "report.md"):
        assert (full / name).is_file(), name
    report = (full / "report.md").read_text()
    assert "scatter.png" in report and "| optimizer | adam |" in report
    assert {r["factor"] for r in results["breakdown"]} >= {"activation", "optimizer", "epoch"}
    n_test = results["split_sizes"]["test"]
    assert len((full / "predictions.csv").read_text().splitlines()) == n_test + 1

    part = tmp_path / "part"
    assert main([*base, *_args(cnn_zoo, part), *_steps(4), "--test_after_fit", "false"]) == 0
    assert main([*base, *_args(cnn_zoo, part), *steps, "--ckpt_path", "last"]) == 0
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


AUG = ["--data.augment.noise", "0.1", "--data.augment.weight_dropout", "0.05"]


def test_augmentation_changes_training_batches_only_and_resumes_exactly(
    cnn_zoo: Path, tmp_path: Path
) -> None:
    """Noise and weight dropout on training batches: the run differs from an unaugmented one, the
    setting is in the checkpoint, validation batches are untouched, and a run stopped after 4
    steps and resumed ends with the weights of an uninterrupted one (same augmented batches)."""
    base = ["fit", "--config", "fmnist_cnn_gen_statnn", "--test_after_fit", "false"]
    plain, full, part = tmp_path / "plain", tmp_path / "full", tmp_path / "part"
    assert main([*base, *_args(cnn_zoo, plain), *_steps(8)]) == 0
    assert main([*base, *_args(cnn_zoo, full), *_steps(8), *AUG]) == 0
    assert main([*base, *_args(cnn_zoo, part), *_steps(4), *AUG]) == 0
    assert main([*base, *_args(cnn_zoo, part), *_steps(8), *AUG, "--ckpt_path", "last"]) == 0
    a, b, c = (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        for run in (plain, full, part)
    )
    assert b["datamodule_hyper_parameters"]["augment"]["noise"] == 0.1
    assert a["datamodule_hyper_parameters"]["augment"] is None
    assert any(not torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    assert b["global_step"] == c["global_step"] == 8
    for key, value in b["state_dict"].items():
        assert torch.equal(value, c["state_dict"][key]), key

    dm = CnnZooDataModule(zoo_dir=str(cnn_zoo), augment=Augmentation(noise=0.1))
    dm.setup("fit")
    batch = {"params": dm.splits["val"]["params"][:4]}
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer: nothing is augmented


def _training(dm: CnnZooDataModule, step: int = 0) -> None:
    """Make `dm` see a trainer in its training loop at `step` (as Lightning's is)."""
    total = SimpleNamespace(processed=step)
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(total=total)))
    dm.trainer = SimpleNamespace(training=True, fit_loop=loop, global_rank=0)  # type: ignore[assignment]


def test_sign_augmentation_flips_tanh_networks_only_and_keeps_their_function(
    cnn_zoo: Path,
) -> None:
    """`augment.signs` negates hidden channels of the tanh networks of a batch (same outputs on
    any input), leaves the ReLU networks as they are, and draws the same flips for the same step."""
    dm = CnnZooDataModule(zoo_dir=str(cnn_zoo), augment=Augmentation(signs=True))
    dm.setup("fit")
    _training(dm, step=3)
    part = dm.splits["train"]
    batch = {"params": part["params"][:24].double(), "activation": part["activation"][:24]}
    tanh = dm.categories["activation"].index("tanh")
    is_tanh = batch["activation"] == tanh
    assert 0 < int(is_tanh.sum()) < 24  # both kinds in the batch
    out = dm.on_after_batch_transfer(batch, 0)["params"]
    again = dm.on_after_batch_transfer(batch, 0)["params"]
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    torch.testing.assert_close(out[~is_tanh], batch["params"][~is_tanh], rtol=0, atol=0)
    assert not torch.equal(out[is_tanh], batch["params"][is_tanh])
    variants = [ngc.GraphTemplate.from_module(dm.zoo.architecture(a)) for a in ("relu", "tanh")]
    codes = is_tanh.long()  # index into variants
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    before = functional_forward(variants, batch["params"], x, spec_index=codes)
    after = functional_forward(variants, out, x, spec_index=codes)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)
    # negating one channel's outgoing weights only (not its incoming ones) changes the function
    off, (n_out, n_in) = list(variants[1].spec.param_offsets().values())[-2]  # classifier weight
    broken = out[is_tanh].clone()
    broken[:, off : off + n_out * n_in].view(-1, n_out, n_in)[:, :, 0] *= -1
    moved = functional_forward(variants[1], broken, x)
    assert not torch.allclose(moved, after[is_tanh], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{"rotation": 10.0}, {"translation": 0.1}, {"scale": 0.1}, {"phases": True}]
)
def test_inr_only_augmentations_are_refused_for_cnn_zoos(
    kwargs: dict[str, float | bool], cnn_zoo: Path
) -> None:
    with pytest.raises(ConfigError, match="CNN zoo"):
        CnnZooDataModule(zoo_dir=str(cnn_zoo), augment=Augmentation(**kwargs))  # type: ignore[arg-type]


def test_probe_models_run_each_network_with_its_activation() -> None:
    """Probe features run network b as relu or tanh by its activation code (the zoo's column)."""
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(3, 4970, generator=gen) * 0.3
    act = torch.tensor([0, 1, 1])
    relu = torch.zeros(3, dtype=torch.long)
    task = GeneralizationTask(model="probe_mlp", num_probes=4, model_kwargs={"hidden": [8]})
    task.eval()
    with torch.no_grad():
        out, all_relu = task(params, act), task(params, relu)
        tanh = task.model(task.variants[1].batch(params))[:, 0]  # every network as tanh
    torch.testing.assert_close(out[0], all_relu[0])
    torch.testing.assert_close(out[1:], tanh[1:])
    assert not torch.allclose(out[1:], all_relu[1:])
    graph = GeneralizationTask(
        model="ngnn", use_probes=True, num_probes=4, probe_stats=["mean", "max"],
        model_kwargs={"hidden_channels": 8, "num_layers": 1},
    ).eval()  # fmt: skip
    assert graph.probe is not None and graph.probe.feature_dim == 8
    with torch.no_grad():
        assert not torch.allclose(graph(params, act), graph(params, relu))
    with pytest.raises(ConfigError, match="use_probes"):
        GeneralizationTask(model="statnn", use_probes=True)


@pytest.mark.parametrize(
    "extra",
    [
        ["--model.model", "inr_mlp"],
        ["--model.loss", "huber"],
        ["--model.channels", "8"],  # not the zoo's architecture
        ["--data.checkpoints", "best"],
    ],
)
def test_bad_config_is_a_config_error(
    extra: list[str], cnn_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", "fmnist_cnn_gen_statnn", *_args(cnn_zoo, tmp_path / "r"), *extra]
    assert main([*args, "--trainer.fast_dev_run", "1"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        GeneralizationTask(model="inr_mlp")


@pytest.fixture(scope="module")
def digits_cnn_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (built) tiny CNN zoo on the 8x8 digits (16x16 inputs): 12 networks."""
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("cnn") / "digits"
    return Path(nds.build_cnn_zoo(out, dataset="digits", recipe="tiny", progress=False))


@pytest.mark.parametrize("model", ["probe_mlp", "ngnn"])
def test_heldout_probe_images_are_images_no_network_saw(
    model: str, digits_cnn_zoo: Path, tmp_path: Path
) -> None:
    """`probe_images: heldout`: the probes are class-balanced images of the zoo's data set from
    outside its training pool and test subset, set when fitting starts and kept in checkpoints."""
    dm = CnnZooDataModule(zoo_dir=str(digits_cnn_zoo), batch_size=4)
    dm.setup("fit")
    task = GeneralizationTask(
        model=model, use_probes=model == "ngnn", num_probes=10, input_size=16,
        probe_images="heldout", model_kwargs=yaml.safe_load(MODEL_KWARGS[model]),
    )  # fmt: skip
    images, labels, _ = nds.heldout_images(dm.zoo)
    task.set_heldout_probes(dm)
    probe = next(m for m in task.modules() if isinstance(m, ProbeFeatures))
    expected = select_probe_images(images, 10, labels=labels, seed=0)
    assert torch.equal(probe.probes, expected)
    assert probe.probes.shape == (10, 1, 16, 16) and float(probe.probes.min()) >= 0.0
    # fitted from the CLI: the checkpoint holds them
    run = tmp_path / "run"
    args = [*TINY, "--data.zoo_dir", str(digits_cnn_zoo), "--run_dir", str(run),
            "--data.batch_size", "4", "--model.model", model, "--model.num_probes", "10",
            "--model.input_size", "16", "--model.probe_images", "heldout",
            "--model.use_probes", str(model == "ngnn").lower(),
            "--model.model_kwargs", MODEL_KWARGS[model], "--trainer.max_steps", "2"]  # fmt: skip
    assert main(["fit", "--config", "fmnist_cnn_gen_statnn", *args]) == 0
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    saved = [v for k, v in state.items() if k.endswith("probes")]
    assert len(saved) == 1 and torch.equal(saved[0], expected)


def test_heldout_probe_images_need_a_probing_model_and_a_built_zoo(cnn_zoo: Path) -> None:
    with pytest.raises(ConfigError, match="use_probes"):
        GeneralizationTask(model="ngnn", probe_images="heldout")
    with pytest.raises(ConfigError, match="probe_images"):
        GeneralizationTask(model="probe_mlp", probe_images="test")  # type: ignore[arg-type]
    dm = CnnZooDataModule(zoo_dir=str(cnn_zoo))  # written from outside weights: no image record
    dm.setup("fit")
    task = GeneralizationTask(model="probe_mlp", num_probes=4, probe_images="heldout")
    with pytest.raises(ConfigError, match="does not record"):
        task.set_heldout_probes(dm)
