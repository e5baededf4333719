"""SIGTERM, non-finite losses, bad configs, missing data, DDP -- through the real CLI.

Resuming after a kill at random moments, checkpoints as outside files, full and read-only
disks: test_checkpoints.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nngraph_apps import InrClassificationTask
from nngraph_apps.callbacks import process_start_time
from nngraph_apps.cli import main

CLI = [sys.executable, "-m", "nngraph_apps.cli"]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class _NaNLoss(torch.nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, target) * float("nan")


def test_non_finite_loss_stops_without_checkpoint(
    tiny_args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        InrClassificationTask,
        "configure_losses",
        lambda self: setattr(self, "criterion", _NaNLoss()),
    )
    run = Path(tiny_args[-1])
    code = main(["fit", "--config", "mnist5k_ngnn", *tiny_args, "--checkpoint_every_n_steps", "1",
                 "--trainer.max_epochs", "1"])  # fmt: skip
    assert code == 3
    assert "non-finite training loss" in capsys.readouterr().err
    assert not list(run.glob("checkpoints/*.ckpt"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model.model", "resnet"], "unknown model 'resnet'"),
        (["--model.model", "flat_mlp", "--model.model_kwargs", "{}"], "use_probes applies to"),
        (["--model.model_kwargs", "{no_such_arg: 1}"], "bad model_kwargs"),
        (["--data.source", "cifar"], "unknown source 'cifar'"),
        (["--data.source", "mnist-5k"], "holds a 'digits' zoo"),
    ],
)
def test_bad_configs_exit_2_with_a_message(
    extra: list[str], message: str, tiny_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["fit", "--config", "mnist5k_ngnn", *tiny_args, *extra,
                 "--trainer.fast_dev_run", "1"])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_zoo_is_an_error_when_building_is_off(
    tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*tiny_args, "--data.zoo_dir", str(tmp_path / "nowhere"), "--data.build", "false"]
    assert main(["fit", "--config", "mnist5k_ngnn", *args, "--trainer.fast_dev_run", "1"]) == 2
    err = capsys.readouterr().err
    assert "no zoo at" in err and "nngraph-datasets fit --source digits" in err


def test_unknown_config_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--config", "no_such_config"]) == 2
    assert "not one of the shipped configs" in capsys.readouterr().err


def test_missing_zoo_is_fitted_on_first_use(tmp_path: Path, tiny_args: list[str]) -> None:
    zoo = tmp_path / "fresh-zoo"
    args = [*tiny_args, "--data.zoo_dir", str(zoo), "--data.limit", "40", "--data.fit_steps", "3",
            "--data.fit_compile", "false", "--trainer.fast_dev_run", "1"]  # fmt: skip
    assert main(["fit", "--config", "mnist5k_ngnn", *args]) == 0
    manifest = json.loads((zoo / "manifest.json").read_text())
    assert manifest["source"] == "digits" and manifest["num_inrs"] == 40
    assert manifest["recipe"]["steps"] == 3


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_sigterm_saves_a_resumable_checkpoint(tiny_args: list[str]) -> None:
    run = Path(tiny_args[-1])
    args = [*CLI, "fit", "--config", "mnist5k_ngnn", *tiny_args, "--trainer.max_epochs", "1000",
            "--test_after_fit", "false"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if "training started" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    step = _load(last)["global_step"]
    assert step > 0
    resume = [*CLI, "fit", "--config", "mnist5k_ngnn", *tiny_args, "--ckpt_path", "last",
              "--trainer.max_steps", str(step + 2), "--test_after_fit", "false"]  # fmt: skip
    done = subprocess.run(resume, capture_output=True, text=True, env=_env(), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _load(last)["global_step"] == step + 2


def test_ddp_two_cpu_processes(tiny_args: list[str]) -> None:
    """The same CLI on Lightning's DDP with 2 CPU processes (gloo), fast_dev_run."""
    run = Path(tiny_args[-1])
    args = [*CLI, "fit", "--config", "mnist5k_ngnn", *tiny_args, "--trainer.strategy", "ddp",
            "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.fast_dev_run", "2"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["test"]["test/acc"] <= 1.0


def test_time_budget_stops_training_and_still_tests(
    tiny_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1-minute budget that started 12 s ago leaves ~3 s of training (45 s are kept for the
    test and the report): training stops early, the best checkpoint is tested, the job time is
    reported."""
    run = Path(tiny_args[-1])
    start = time.time() - 12.0
    code = main(["fit", "--config", "mnist5k_ngnn", *tiny_args, "--trainer.max_epochs", "100000",
                 "--time_budget", "1", "--time_budget_start", str(start)])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "time budget spent: training stops" in err
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] >= 1 and results["epochs"] < 100000
    assert results["time_budget_seconds"] == 60.0
    assert 15.0 <= results["job_seconds"] < 60.0
    assert results["best_checkpoint"] and 0.0 <= results["test"]["test/acc"] <= 1.0
    assert time.time() - start < 60.0  # the whole job fitted in its budget


def test_time_budget_spent_before_training(
    tiny_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(tiny_args[-1])
    code = main(["fit", "--config", "mnist5k_ngnn", *tiny_args, "--time_budget", "0.5",
                 "--time_budget_start", str(time.time() - 3600)])  # fmt: skip
    assert code == 0
    assert "0 s left" in capsys.readouterr().err
    assert json.loads((run / "results.json").read_text())["steps"] == 0


def test_time_budget_must_be_positive(
    tiny_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fit", "--config", "mnist5k_ngnn", *tiny_args, "--time_budget", "-1"]) == 2
    assert "time budget must be positive" in capsys.readouterr().err


def test_process_start_time_is_in_the_past() -> None:
    started = process_start_time()
    assert time.time() - 24 * 3600 < started <= time.time()
