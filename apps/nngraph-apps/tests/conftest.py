"""Fixtures of the app tests: one tiny digits zoo per test session (per xdist worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import nngraph_datasets as nds

torch.set_num_threads(1)  # tiny models run much faster single-threaded (and workers share 2 cores)
os.environ.setdefault("MPLBACKEND", "Agg")

#: A CLI run small enough for a test: tiny model, 8 probes, batches of 16, no progress bars.
TINY = [
    "--data.source", "digits",
    "--data.batch_size", "16",
    "--model.model_kwargs", "{hidden_channels: 8, num_layers: 1}",
    "--model.num_probes", "8",
    "--model.warmup_steps", "2",
    "--model.branch_warmup_steps", "2",  # configs with probe_branch: the graph joins at step 2
    "--num_threads", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.accelerator", "cpu",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 INRs of scikit-learn digits (97 / 12 / 11), 10 fitting steps each: ~1 s to build."""
    out = tmp_path_factory.mktemp("zoos") / "digits-tiny"
    return nds.build_zoo(out, "digits", nds.InrRecipe(steps=10), limit=120, compile=False)


@pytest.fixture(scope="session")
def tiny_settings() -> list[str]:
    """`TINY`: the CLI settings of a tiny run, without zoo and run folders."""
    return list(TINY)


@pytest.fixture
def tiny_args(tiny_zoo: Path, tmp_path: Path) -> list[str]:
    """CLI arguments of a tiny run into ``tmp_path/run`` on the tiny zoo."""
    return [*TINY, "--data.zoo_dir", str(tiny_zoo), "--run_dir", str(tmp_path / "run")]
