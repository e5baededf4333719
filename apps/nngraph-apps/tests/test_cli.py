"""The real CLI (``nngraph_apps.cli.main``, in process) with ``fast_dev_run`` on a tiny zoo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nngraph_apps import list_configs
from nngraph_apps.cli import main

EXPECTED_CONFIGS = {
    "mnist5k_ngnn.yaml", "mnist5k_ngt.yaml", "fmnist_ngnn.yaml", "fmnist_ngt.yaml",
    "mnist_dws_ngnn.yaml", "mnist5k_mlp.yaml", "mnist5k_deepsets.yaml", "mnist5k_probe_mlp.yaml",
    "mnist5k_dilate_ngnn.yaml", "mnist5k_dilate_ngt.yaml", "fmnist_ngnn_paper.yaml",
    "fmnist_probe_mlp.yaml",
}  # fmt: skip


def test_configs_are_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(list_configs()) >= EXPECTED_CONFIGS
    assert main(["--list-configs"]) == 0
    assert "mnist5k_ngnn.yaml" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("mnist5k_ngnn", []),
        ("mnist5k_ngnn", ["--model.use_probes", "false", "--model.probe_branch", "false"]),
        ("mnist5k_ngnn_paper", []),
        ("mnist5k_ngt", ["--model.model_kwargs", "{node_dim: 8, edge_channels: 8, attention_dim: 8, "
                         "node_hidden_dim: 8, edge_hidden_dim: 8, num_layers: 1, heads: 2, "
                         "out_hidden_dim: 8}"]),
        ("mnist5k_mlp", ["--model.model_kwargs", "{hidden: [16]}"]),
        ("mnist5k_deepsets", ["--model.model_kwargs", "{hidden: 8}"]),
        ("mnist5k_probe_mlp", ["--model.model_kwargs", "{hidden: [16]}"]),
        ("fmnist_ngnn", []),
        ("fmnist_probe_mlp", ["--model.model_kwargs", "{hidden: [16]}"]),
    ],
)  # fmt: skip
def test_fit_classification(config: str, extra: list[str], tiny_args: list[str]) -> None:
    run = Path(tiny_args[-1])
    code = main(["fit", "--config", config, *tiny_args, *extra, "--trainer.fast_dev_run", "1"])
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "InrClassificationTask"
    assert 0.0 <= results["test"]["test/acc"] <= 1.0
    assert (run / "report.md").is_file()
    assert (run / "confusion_matrix.png").is_file()


def test_fit_nfn(tiny_args: list[str]) -> None:
    pytest.importorskip("nfn")
    args = ["--model.model", "nfn", "--model.model_kwargs", "{hidden: 4, num_layers: 2}"]
    assert main(["fit", "--config", "mnist5k_mlp", *tiny_args, *args,
                 "--trainer.fast_dev_run", "1"]) == 0  # fmt: skip


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("mnist5k_dilate_ngnn", []),
        ("mnist5k_dilate_ngt", ["--model.model_kwargs", "{node_dim: 8, edge_channels: 8, "
                                "attention_dim: 8, node_hidden_dim: 8, edge_hidden_dim: 8, "
                                "num_layers: 1, heads: 2, out_hidden_dim: 8}"]),
    ],
)  # fmt: skip
def test_fit_editing(config: str, extra: list[str], tiny_args: list[str]) -> None:
    run = Path(tiny_args[-1])
    assert main(["fit", "--config", config, *tiny_args, *extra, "--trainer.fast_dev_run", "1"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "InrEditingTask"
    assert results["test"]["test/mse"] > 0 and results["test"]["test/mse_identity"] > 0
    assert (run / "editing_examples.png").is_file()


def test_fit_then_test_and_validate_best_checkpoint(tiny_args: list[str]) -> None:
    run = Path(tiny_args[-1])
    limits = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"]
    assert main(["fit", "--config", "mnist5k_ngnn", *tiny_args, *limits]) == 0
    results = json.loads((run / "results.json").read_text())
    best = results["best_checkpoint"]
    assert best and Path(best).is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert results["best_score"] is not None
    assert list((run / "logs" / "tb").glob("**/events.out.tfevents.*"))
    assert list((run / "logs" / "csv").glob("**/metrics.csv"))
    assert (run / "learning_curves.png").is_file()
    assert main(["test", "--config", "mnist5k_ngnn", *tiny_args, "--ckpt_path", best]) == 0
    tested = json.loads((run / "results.json").read_text())
    assert tested["command"] == "test"
    assert tested["test"]["test/acc"] == pytest.approx(results["test"]["test/acc"])
    assert main(["validate", "--config", "mnist5k_ngnn", *tiny_args, "--ckpt_path", best]) == 0
    assert "val/acc" in json.loads((run / "results.json").read_text())["test"]


@pytest.mark.parametrize("every", [[], ["--checkpoint_every_n_steps", "4"]])
def test_last_checkpoint_is_the_latest_state_not_the_best(
    every: list[str], tiny_args: list[str]
) -> None:
    """`last.ckpt` (what `--ckpt_path last` resumes) is the final state even when the monitored
    metric stopped improving: with lr 0 validation never improves after the first epoch, so the
    best checkpoint is the first epoch's and last.ckpt must still be the third's. One last.ckpt,
    also when a second callback refreshes it every n steps (no `last-v1.ckpt` beside it)."""
    run = Path(tiny_args[-1])
    limits = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2", "--model.lr", "0"]
    assert main(["fit", "--config", "mnist5k_ngnn", *tiny_args, *limits, *every]) == 0
    results = json.loads((run / "results.json").read_text())
    best = torch.load(results["best_checkpoint"], weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["global_step"] == 2 and best["epoch"] == 0
    assert last["global_step"] == 6 == results["steps"]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [Path(results["best_checkpoint"]).name, "last.ckpt"]


def test_aggregate_seeds(tiny_args: list[str], tmp_path: Path) -> None:
    """Two seeds through the real CLI, then `nngraph-train aggregate`: mean ± std (ddof 1)."""
    args = tiny_args[:-2]  # without --run_dir
    runs = [tmp_path / f"tiny-seed{s}" for s in (0, 1)]
    for seed, run in enumerate(runs):
        code = main(["fit", "--config", "mnist5k_ngnn", *args, "--run_dir", str(run),
                     "--seed_everything", str(seed), "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "2"])  # fmt: skip
        assert code == 0
    assert main(["aggregate", *map(str, runs)]) == 0
    agg = json.loads((tmp_path / "tiny-seeds" / "aggregate.json").read_text())
    accs = [json.loads((r / "results.json").read_text())["test"]["test/acc"] for r in runs]
    acc = agg["metrics"]["test/acc"]
    assert agg["seeds"] == [0, 1]
    assert acc["values"] == accs
    assert acc["mean"] == pytest.approx(sum(accs) / 2)
    assert acc["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    assert "test/acc" in (tmp_path / "tiny-seeds" / "aggregate.md").read_text()


def test_aggregate_rejects_unfinished_or_different_runs(
    tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["aggregate", str(tmp_path / "nothing")]) == 2
    assert "has no results.json" in capsys.readouterr().err
    args = tiny_args[:-2]
    a, b = tmp_path / "a", tmp_path / "b"
    fast = ["--trainer.fast_dev_run", "1"]
    assert main(["fit", "--config", "mnist5k_ngnn_paper", *args, "--run_dir", str(a), *fast]) == 0
    assert main(["fit", "--config", "mnist5k_probe_mlp", *args, "--run_dir", str(b),
                 "--model.model_kwargs", "{hidden: [16]}", *fast]) == 0  # fmt: skip
    assert main(["aggregate", str(a), str(b)]) == 2
    assert "model='probe_mlp'" in capsys.readouterr().err


def test_editing_report_shows_one_example_per_class() -> None:
    """The test split is stored class by class: the report's examples still span the classes."""
    import torch

    from nngraph_apps import InrEditingTask

    task = InrEditingTask(model_kwargs={"hidden_channels": 8, "num_layers": 1}, num_probes=4)
    task.num_examples = 3
    for i, labels in enumerate([[0, 0, 0], [0, 1, 1], [1, 2, 3]]):
        n = len(labels)
        batch = {"image": torch.full((n, 4, 4), float(i)), "target": torch.zeros(n, 4, 4),
                 "label": torch.tensor(labels)}  # fmt: skip
        task._collect_examples(batch, torch.zeros(n, 4, 4), torch.zeros(n, 4, 4), first=i == 0)
    assert task.examples is not None
    assert task.examples["label"].tolist() == [0, 1, 2]
    assert task.examples["original"][:, 0, 0].tolist() == [0.0, 1.0, 2.0]
