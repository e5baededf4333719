"""Data: INR zoos as Lightning data modules, with whole splits held in memory.

A split of an INR zoo is small (`mnist-5k`: 4,000 x 1,185 floats = 19 MB; Fashion-MNIST's
55,000 training INRs: 260 MB), so [`InrDataModule`][nngraph_apps.InrDataModule] reads every split
once into one `[n, P]` tensor and [`TensorLoader`][nngraph_apps.TensorLoader] serves batches by
indexing it: no per-item `Dataset.__getitem__`, no collation, no worker processes.

[`TensorLoader`][nngraph_apps.TensorLoader] is resumable in the middle of an epoch: the order of
epoch `e` depends only on `(seed, e)`, and its `state_dict` records the epoch and the batches
already trained, so a run resumed from any checkpoint sees exactly the batches the uninterrupted run
would have seen. Under DDP each rank takes every `world_size`-th index of the shuffled (padded)
order, like `DistributedSampler`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

import nngraph_core as ngc
import nngraph_datasets as nds

from .augment import Augmentation, AugmentedTrainingBatches, augment_params
from .errors import ConfigError

__all__ = ["OFFLINE_SOURCES", "InrDataModule", "TensorLoader", "default_zoo_dir", "inr_template"]

#: Image sources whose zoos can be fitted on this machine (nothing is downloaded).
OFFLINE_SOURCES = ("mnist-5k", "fashion-mnist", "mnist", "digits")
#: Zoos that must be made by the user (converted from the published zips).
PUBLISHED_SOURCES = ("mnist-published", "fmnist-published")


class DataConfigError(ConfigError):
    """A data module setting that cannot work (the message says what to do)."""


def default_zoo_dir(source: str, limit: int | None = None, steps: int | None = None) -> Path:
    """Where a zoo of `source` is cached: `$NNGRAPH_ZOOS/<source>[-n<limit>][-s<steps>]`
    (default `~/.cache/nngraph/zoos`)."""
    root = Path(os.environ.get("NNGRAPH_ZOOS", Path.home() / ".cache" / "nngraph" / "zoos"))
    name = source + (f"-n{limit}" if limit else "") + (f"-s{steps}" if steps else "")
    return root.expanduser() / name


def inr_template(hidden: int = 32, w0: float = 30.0) -> ngc.GraphTemplate:
    """The graph template of the benchmark INR (2 -> hidden -> hidden -> 1 SIREN)."""
    return ngc.GraphTemplate.from_module(nds.Siren(hidden=hidden, w0=w0))


class TensorLoader:
    """Batches of in-memory tensors by index: a resumable, DDP-aware replacement for
    `DataLoader(TensorDataset(...), shuffle=...)`.

    Training order: batch `j` of epoch `e` is a function of `(seed, e, j)` only, and each
    `iter()` starts where `position_fn` says training stands -- `(epoch, batches of it
    already trained)`, read from the trainer's restored progress counters -- so a run resumed
    from any checkpoint, even one written in the middle of an epoch, sees exactly the batches the
    uninterrupted run would have seen.

    Args:
        tensors: equal-length tensors, yielded as dicts of `[batch, ...]` slices.
        batch_size: INRs per batch (per process under DDP).
        shuffle: a new seeded order per epoch (training); otherwise the stored order.
        drop_last: drop the last incomplete batch.
        seed: base seed of the shuffle.
        rank: this process's index under DDP (training pads to equal shares, like
            `DistributedSampler`; evaluation gives each rank a disjoint slice, no duplicates).
        world_size: the number of processes under DDP.
        position_fn: returns `(epoch, batches to skip)` at the start of each `iter()`
            (default: count the epochs, skip nothing).
    """

    def __init__(
        self,
        tensors: dict[str, Tensor],
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position_fn: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        sizes = {len(v) for v in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"tensors of different lengths {sizes}")
        if batch_size < 1:
            raise DataConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.n = sizes.pop()
        self.batch_size = batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.position_fn = position_fn
        self._epoch = 0
        self.position = (0, 0)

    def _indices(self, epoch: int) -> Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=gen)
            per_rank = math.ceil(self.n / self.world_size)
            pad = per_rank * self.world_size - self.n
            if pad:
                order = torch.cat([order, order[:pad]])
            return order[self.rank :: self.world_size]
        return torch.arange(self.n)[self.rank :: self.world_size]

    def _num_items(self) -> int:
        if self.shuffle:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        n = self._num_items()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.position_fn is not None:
            epoch, skip = self.position_fn()
        else:
            epoch, skip = self._epoch, 0
            self._epoch += 1
        self.position = (epoch, skip)
        idx = self._indices(epoch)
        for b in range(skip, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield {k: v[sel] for k, v in self.tensors.items()}

    # Lightning treats loaders with these two methods as resumable (no mid-epoch warning); the
    # position itself is recomputed from the trainer's restored counters.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.position[0]), "skipped": int(self.position[1])}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


class _Bar:
    """Progress bar of a zoo build (rich when it is installed, else one line on stderr)."""

    def __init__(self, source: str, steps: int) -> None:
        self.source, self.steps, self.t0 = source, steps, time.monotonic()
        self._rich: Any = None
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(
                TextColumn(f"fitting {source} INRs ({steps} steps)"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[psnr]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task: Any = None
        except ImportError:  # pragma: no cover
            self._rich = None
        self._psnr: list[float] = []

    def __call__(self, done: int, total: int, batch_psnr: Tensor) -> None:
        self._psnr += batch_psnr.tolist()
        med = f"median PSNR {sorted(self._psnr)[len(self._psnr) // 2]:.1f} dB" if self._psnr else ""
        if self._rich is not None:
            if self._task is None:
                self._rich.start()
                self._task = self._rich.add_task("fit", total=total, psnr=med)
            self._rich.update(self._task, completed=done, psnr=med)
            if done >= total:
                self._rich.stop()
        else:  # pragma: no cover
            print(f"\rfitting {self.source}: {done}/{total} INRs {med}", end="", file=sys.stderr)
            if done >= total:
                print(file=sys.stderr)


class InrDataModule(AugmentedTrainingBatches, pl.LightningDataModule):
    """An INR zoo (`nngraph_datasets`) as train / val / test batches of flat parameters.

    Batches are dicts: `params [B, P]` (float32, state-dict order), `label [B]` and, with
    `targets`, `image [B, H, W]` (the source image) and `target [B, H, W]` (the dilated image
    for `targets="dilated"`). Tasks turn `params` into graphs (`template.batch(params)`).

    A missing zoo of an offline source (`mnist-5k`, `fashion-mnist`, `mnist` from IDX files,
    `digits`) is fitted on first use with [`nngraph_datasets.build_zoo`][nngraph_datasets.build_zoo]
    (with a progress bar) into `zoo_dir`, and reused afterwards; an interrupted build resumes. A zoo
    folder that exists is used as it is, and must hold the requested source: nothing is silently
    replaced.

    Args:
        source: image source of the zoo (`mnist-5k` default; `fashion-mnist`; `mnist`;
            `digits` for tests) or `published` for a zoo converted from the published zips
            (`nngraph-datasets convert`; then `zoo_dir` is required).
        zoo_dir: the zoo folder (default [`default_zoo_dir`][nngraph_apps.default_zoo_dir]).
        root: folder of the IDX files for `fashion-mnist` / `mnist`.
        limit: use (and fit) only this many INRs, each split shrunk in proportion.
        fit_steps: fitting steps per INR when the zoo is built (default: the benchmark recipe;
            few steps make tiny test zoos).
        build: fit a missing zoo (`False`: a missing zoo is an error).
        fit_kernel: the fitting step's kernel (`"auto"`: the fused C kernel when a C compiler
            is found, else `torch.compile`, else eager; see
            [`nngraph_datasets.fit_inrs`][nngraph_datasets.fit_inrs]).
        fit_compile: the older switch: `true` / `false` mean `fit_kernel` `"compiled"` /
            `"eager"` (`false` saves the compile time for tiny zoos).
        targets: `None` (classification) or `"dilated"` (editing targets; also loads images).
        batch_size: INRs per batch (paper: 128).
        eval_batch_size: batch size of validation and test (default `batch_size`).
        seed: seed of the zoo build, of the shuffling and of the augmentation.
        augment: training-time augmentation of the flat batches (geometric, noise, symmetries;
            see [`Augmentation`][nngraph_apps.Augmentation]), e.g. `--data.augment.rotation 10`;
            `None`: off.
    """

    def __init__(
        self,
        source: str = "mnist-5k",
        zoo_dir: str | None = None,
        root: str | None = None,
        limit: int | None = None,
        fit_steps: int | None = None,
        build: bool = True,
        fit_kernel: Literal["auto", "fused", "compiled", "eager"] = "auto",
        fit_compile: bool | Literal["auto"] = "auto",
        targets: Literal["dilated", "image"] | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        augment: Augmentation | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # plain numbers in checkpoints (they load with weights_only=True)
        self.hparams["augment"] = augment.describe() if augment is not None else None
        self.augment = augment if augment is not None and augment.active else None
        if source not in (*OFFLINE_SOURCES, "published"):
            raise DataConfigError(
                f"unknown source {source!r}: use one of {', '.join(OFFLINE_SOURCES)} or "
                "'published' (with --data.zoo_dir pointing at a converted zoo)"
            )
        if source == "published" and zoo_dir is None:
            raise DataConfigError(
                "source 'published' needs --data.zoo_dir: convert the published zip first with "
                "`nngraph-datasets convert mnist-inrs.zip --out zoos/mnist-published`"
            )
        if targets not in (None, "dilated", "image"):
            raise DataConfigError(f"targets must be null, 'dilated' or 'image', not {targets!r}")
        self.source, self.root, self.limit, self.fit_steps = source, root, limit, fit_steps
        self.zoo_dir = Path(zoo_dir) if zoo_dir else default_zoo_dir(source, limit, fit_steps)
        self.build, self.targets, self.fit_compile = build, targets, fit_compile
        self.fit_kernel = fit_kernel
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.splits: dict[str, dict[str, Tensor]] = {}
        self.manifest: dict[str, Any] = {}

    # -- zoo ------------------------------------------------------------------------------------
    def _recipe(self) -> nds.InrRecipe:
        import dataclasses

        recipe = nds.FASHION_MNIST_BENCHMARK if self.source == "fashion-mnist" else nds.BENCHMARK
        if self.fit_steps is not None:
            recipe = dataclasses.replace(recipe, steps=int(self.fit_steps))
        return recipe

    def prepare_data(self) -> None:
        """Fit the zoo if it is missing (rank 0 only under DDP)."""
        if (self.zoo_dir / "manifest.json").is_file():
            return
        if self.source == "published" or not self.build:
            raise FileNotFoundError(
                f"no zoo at {self.zoo_dir} (no manifest.json). "
                + (
                    "Convert the published zip with `nngraph-datasets convert <zip> --out "
                    f"{self.zoo_dir}`."
                    if self.source == "published"
                    else f"Build it with `nngraph-datasets fit --source {self.source} --out "
                    f"{self.zoo_dir}` or set --data.build true."
                )
            )
        if self.zoo_dir.exists() and any(self.zoo_dir.iterdir()):
            raise FileExistsError(
                f"{self.zoo_dir} exists but is not a finished zoo (no manifest.json); it is not "
                "replaced. Delete it or pass another --data.zoo_dir."
            )
        recipe = self._recipe()
        print(
            f"[nngraph] no zoo at {self.zoo_dir}: fitting {self.source} INRs "
            f"({'all' if self.limit is None else self.limit}, {recipe.steps} steps each) ...",
            file=sys.stderr,
        )
        t0 = time.monotonic()
        try:
            nds.build_zoo(
                self.zoo_dir,
                self.source,
                recipe,
                seed=self.seed,
                limit=self.limit,
                root=self.root,
                kernel=self.fit_kernel,
                compile=self.fit_compile,
                progress=_Bar(self.source, recipe.steps),
            )
        except nds.SourceNotFoundError as e:
            raise FileNotFoundError(
                f"cannot fit a {self.source} zoo: {e}. "
                + (
                    "Install Debian's `dataset-fashion-mnist` or pass --data.root <folder with "
                    "the IDX files>."
                    if self.source in ("fashion-mnist", "mnist")
                    else ""
                )
            ) from e
        print(
            f"[nngraph] zoo ready in {time.monotonic() - t0:.0f} s: {self.zoo_dir}", file=sys.stderr
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not (self.zoo_dir / "manifest.json").is_file():
            self.prepare_data()  # direct use without a Trainer
        zoo = nds.Zoo(self.zoo_dir)
        self.manifest = zoo.manifest
        if self.source != "published" and zoo.manifest["source"] != self.source:
            raise DataConfigError(
                f"{self.zoo_dir} holds a {zoo.manifest['source']!r} zoo, not {self.source!r}: "
                "pass the matching --data.source or another --data.zoo_dir"
            )
        for name in ("train", "val", "test"):
            if name not in zoo.splits:
                raise DataConfigError(f"{self.zoo_dir}: the zoo has no {name!r} split")
            start, stop = zoo.splits[name]
            if stop <= start:
                raise DataConfigError(
                    f"{self.zoo_dir}: the {name} split is empty (limit too small?)"
                )
            part = {
                "params": zoo.column("params", start, stop).float(),
                "label": zoo.column("labels", start, stop).long(),
            }
            if self.targets is not None:
                try:
                    img = zoo.images(start, stop)
                except KeyError as e:
                    raise DataConfigError(
                        f"{self.zoo_dir}: the zoo stores no source images, so it has no "
                        "editing targets"
                    ) from e
                part["image"] = img
                part["target"] = nds.dilate(img) if self.targets == "dilated" else img
            self.splits[name] = part

    # -- facts the tasks need ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.splits["train"]["label"].max()) + 1 if self.splits else 10

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.manifest["architecture"]["image_size"]
        return int(h), int(w)

    @property
    def train_params(self) -> Tensor:
        return self.splits["train"]["params"]

    @property
    def spec(self) -> ngc.NetworkSpec:
        """The architecture of the zoo's INRs."""
        arch = self.manifest["architecture"]
        return inr_template(int(arch["layers"][1]), float(arch.get("w0", 30.0))).spec

    def augment_batch(
        self, batch: dict[str, Tensor], augment: Augmentation, generator: torch.Generator
    ) -> Tensor:
        """Augmented `params` of a training batch (see
        [`AugmentedTrainingBatches`][nngraph_apps.AugmentedTrainingBatches])."""
        return augment_params(batch["params"], self.spec, augment, generator)

    # -- loaders ----------------------------------------------------------------------------------
    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _position(self, loader: TensorLoader) -> tuple[int, int]:
        """(epoch, batches of it already trained) from the trainer's progress counters, which a
        resumed run restores from the checkpoint."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        done = int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        per_epoch = len(loader)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            per_epoch = min(per_epoch, limit)
        elif limit is not None:
            per_epoch = int(per_epoch * float(limit))
        return divmod(done, max(per_epoch, 1))

    def train_dataloader(self) -> TensorLoader:
        rank, world = self._dist()
        loader = TensorLoader(
            self.splits["train"],
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        loader.position_fn = lambda: self._position(loader)
        return loader

    def _eval(self, split: str) -> TensorLoader:
        rank, world = self._dist()
        return TensorLoader(self.splits[split], self.eval_batch_size, rank=rank, world_size=world)

    def val_dataloader(self) -> TensorLoader:
        return self._eval("val")

    def test_dataloader(self) -> TensorLoader:
        return self._eval("test")
