"""Callbacks of the training CLI: SIGTERM checkpoints and wall-clock timing."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["SigtermCheckpoint", "Timer"]


class SigtermCheckpoint(pl.Callback):
    """On SIGTERM, save a resumable ``last.ckpt`` after the current training batch and exit.

    Lightning's signal handler sets ``trainer.received_sigterm``; this callback checks it after
    every training batch (a consistent point: the optimiser step is done), writes
    ``<dirpath>/last.ckpt`` -- the file ``--ckpt_path last`` resumes from -- and raises
    Lightning's ``SIGTERMException``, which ends the run (exit code 143 from the CLI).

    Args:
        dirpath: the checkpoint folder (the ModelCheckpoint's).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if getattr(trainer, "received_sigterm", False):
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path)
            self.saved = path
            raise SIGTERMException()


class Timer(pl.Callback):
    """Wall-clock seconds of fitting and testing, and training throughput (INRs / s)."""

    def __init__(self) -> None:
        self.fit_seconds = 0.0
        self.test_seconds = 0.0
        self.train_items = 0
        self.train_seconds = 0.0
        self._t0 = 0.0
        self._e0 = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds += time.monotonic() - self._t0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print("[nngraph] training started", file=sys.stderr, flush=True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._e0 = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *a: Any
    ) -> None:
        self.train_items += int(batch["params"].shape[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_seconds += time.monotonic() - self._e0

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test_seconds += time.monotonic() - self._t0
