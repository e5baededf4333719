"""Callbacks of the training CLI: SIGTERM checkpoints, wall-clock timing and a time budget."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["SigtermCheckpoint", "TimeBudget", "Timer", "process_start_time"]


class SigtermCheckpoint(pl.Callback):
    """On SIGTERM, save a resumable `last.ckpt` after the current training batch and exit.

    Lightning's signal handler sets `trainer.received_sigterm`; this callback checks it after
    every training batch (a consistent point: the optimiser step is done), writes
    `<dirpath>/last.ckpt` -- the file `--ckpt_path last` resumes from -- and raises
    Lightning's `SIGTERMException`, which ends the run (exit code 143 from the CLI).

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
        self.train_items += len(batch["params"] if "params" in batch else batch["target"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_seconds += time.monotonic() - self._e0

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test_seconds += time.monotonic() - self._t0


def process_start_time() -> float:
    """Unix time at which this process started (Linux `/proc`; elsewhere: now)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class TimeBudget(pl.Callback):
    """Stop training when a wall-clock budget for the WHOLE job is spent.

    `--trainer.max_time` counts training only. This budget starts at `start` (a Unix time;
    default: when the process started), so fitting the INR zoo on first use, start-up and --
    when `nox` passes its own start time -- creating the environment count as well. Training
    stops after the first batch that ends with less than `reserve` seconds left (time kept for
    the last validation, testing the best checkpoint and writing the report); Lightning then
    validates once more and ends the fit as it does for `max_time`.

    Args:
        seconds: the budget.
        start: Unix time at which it started (default: `process_start_time`).
        reserve: seconds kept for what comes after training.
    """

    def __init__(self, seconds: float, start: float | None = None, reserve: float = 45.0) -> None:
        if seconds <= 0:
            raise ValueError(f"the time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.start = process_start_time() if start is None else float(start)
        self.reserve = float(reserve)
        self.stopped = False

    @property
    def deadline(self) -> float:
        """Unix time at which training stops."""
        return self.start + self.seconds - self.reserve

    def remaining(self) -> float:
        """Seconds of training left (negative once the deadline has passed)."""
        return self.deadline - time.time()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        left = self.remaining()
        if trainer.is_global_zero:
            spent = time.time() - self.start
            print(
                f"[nngraph] time budget {self.seconds / 60:.1f} min: {spent:.0f} s spent before "
                f"training, {max(left, 0):.0f} s left for it ({self.reserve:.0f} s kept for "
                "testing and the report)",
                file=sys.stderr,
                flush=True,
            )
        self._check(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        # every rank asks rank 0 (one collective per batch, like Lightning's max_time Timer)
        spent = bool(trainer.strategy.broadcast(self.remaining() <= 0))
        if not spent:
            return
        trainer.should_stop = True
        if not self.stopped and trainer.is_global_zero:
            print(
                f"[nngraph] time budget spent: training stops at epoch {trainer.current_epoch}, "
                f"step {trainer.global_step}",
                file=sys.stderr,
                flush=True,
            )
        self.stopped = True
