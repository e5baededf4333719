"""INR zoos on disk: safetensors shards + `manifest.json`; build, load, verify.

A zoo folder holds `shard-00000.safetensors ...` and `manifest.json`. Each shard stores, for
a contiguous range of the zoo's INRs: `params [n, P]` float32 (state-dict order), `labels`,
`image_ids` (ids in the image source), `steps`, `psnr`, and the source `images` as uint8
(`pixels = images / manifest["image_scale"]`), so editing targets
([`dilate`][nngraph_datasets.dilate]) and reconstructions can be computed from the zoo alone. INRs
are ordered by split (train, val, test); the manifest gives each split's `[start, stop)`.

Builds go to `.<name>.partial/` next to the output; every finished shard is renamed into place
there, so an interrupted build resumes from its finished shards; the manifest (which makes a
folder a zoo) is written last and the folder renamed to its final name. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import IntegrityError, ZooExistsError, ZooFormatError
from .images import dilate, load_raw, source_info
from .inr import BENCHMARK, InrRecipe, num_params, param_slices, render

__all__ = [
    "SCHEMA_VERSION",
    "Zoo",
    "ZooSplit",
    "build_zoo",
    "load_zoo",
    "make_splits",
    "verify_zoo",
    "write_zoo",
]

SCHEMA_VERSION = 1
SHARD_KEYS = ("params", "labels", "image_ids", "steps", "psnr", "images")
_SPLIT_NAMES = ("train", "val", "test")


# ----------------------------------------------------------------------------- splits
def make_splits(
    source: str, labels: np.ndarray, ids: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    """Row numbers (into `labels`) of each split, seeded.

    70k sets: 55,000 train / 5,000 val from the 60,000 training images, test = the 10,000 test
    images. `mnist-5k`: 4,000 / 500 / 500, class-balanced (400 / 50 / 50 per class). Other
    sources: 80 / 10 / 10 per class.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    if source in ("fashion-mnist", "mnist"):
        train_rows = np.flatnonzero(ids < 60000)
        test_rows = np.flatnonzero(ids >= 60000)
        perm = rng.permutation(train_rows)
        n_val = round(len(train_rows) * 5000 / 60000)
        return {"train": np.sort(perm[n_val:]), "val": np.sort(perm[:n_val]), "test": test_rows}
    out: dict[str, list[np.ndarray]] = {s: [] for s in _SPLIT_NAMES}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = n_test = len(rows) // 10
        out["test"].append(rows[:n_test])
        out["val"].append(rows[n_test : n_test + n_val])
        out["train"].append(rows[n_test + n_val :])
    return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def _limit_splits(
    splits: dict[str, np.ndarray], limit: int | None, seed: int
) -> dict[str, np.ndarray]:
    """Keep `limit` INRs in total, each split in proportion (seeded choice within a split)."""
    total = sum(len(v) for v in splits.values())
    if limit is None or limit >= total:
        return splits
    rng = np.random.default_rng([seed, 0x11A1])
    sizes = {s: math.floor(limit * len(v) / total) for s, v in splits.items()}
    for s in sorted(splits, key=lambda s: -len(splits[s])):  # hand out the remainder
        if sum(sizes.values()) < limit:
            sizes[s] += 1
    return {s: np.sort(rng.permutation(v)[: sizes[s]]) for s, v in splits.items()}


# ----------------------------------------------------------------------------- safetensors I/O
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_shard(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(tmp)
    )  # no metadata: deterministic bytes
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8,
              "F16": np.float16, "I16": np.int16, "I8": np.int8, "BOOL": np.bool_}  # fmt: skip


def _mmap_shard(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only numpy views, nothing copied)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ZooFormatError(f"{path}: truncated safetensors file")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 << 20):
            raise ZooFormatError(f"{path}: bad safetensors header length")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ZooFormatError(f"{path}: unreadable safetensors header") from e
    out: dict[str, np.ndarray] = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        start, stop = meta["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[meta["dtype"]])
        shape = tuple(meta["shape"])
        if 8 + n + stop > size or stop - start != int(np.prod(shape)) * dtype.itemsize:
            raise ZooFormatError(f"{path}: tensor {key} lies outside the file (truncated?)")
        out[key] = np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start, shape=shape)
    return out


# ----------------------------------------------------------------------------- build
def _plan(
    source: str, recipe: InrRecipe, seed: int, limit: int | None, shard_size: int,
    batch_size: int, kernel: str, root: str | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "source": source,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "limit": limit,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "kernel": kernel,
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for dist in ("nngraph-datasets", "nngraph-core", "safetensors"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def build_zoo(
    out: str | os.PathLike[str],
    source: str = "mnist-5k",
    recipe: InrRecipe = BENCHMARK,
    *,
    seed: int = 0,
    limit: int | None = None,
    shard_size: int = 1024,
    batch_size: int = 16,
    compile: bool | str = "auto",
    root: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, Tensor], None] | None = None,
    kernel: str = "auto",
) -> Path:
    """Fit an INR per image of `source` and write the zoo to `out` (atomically, resumably).

    Args:
        out: the zoo folder to create.
        source: image source (see [`load_images`][nngraph_datasets.load_images]).
        recipe: fitting recipe, recorded in the manifest.
        seed: splits and INR initialisations derive from it; same seed -> same bytes.
        limit: fit only this many INRs (each split shrunk in proportion).
        shard_size: INRs per shard (the unit of resumption).
        batch_size: INRs fitted at once.
        compile: see [`fit_inrs`][nngraph_datasets.fit_inrs].
        kernel: the step kernel (`"auto"`, `"fused"`, `"compiled"`, `"eager"`; see
            [`fit_inrs`][nngraph_datasets.fit_inrs]); the one that runs is recorded in the manifest.
        root: folder of the IDX files, for `fashion-mnist` / `mnist`.
        overwrite: replace an existing zoo at `out`.
        progress: called as `progress(done, total, psnr_of_the_batch)` after each batch
            (`done` counts INRs in finished or resumed shards).

    Returns:
        The path of the finished zoo.
    """
    from .fit import _example_args, _resolve_kernel, fit_inrs

    out = Path(out)
    if out.exists() and not overwrite:
        raise ZooExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    images, labels, ids = load_raw(source, "all", root)
    # build / compile the kernel now (falling back with a warning if that fails) to record the
    # kernel that really runs; the whole build then uses that one
    hw = (int(images.shape[1]), int(images.shape[2]))
    ran, _ = _resolve_kernel(
        kernel, compile, torch.float32, recipe.hidden,
        lambda: _example_args(batch_size, hw, recipe, torch.float32),
    )  # fmt: skip
    scale = int(source_info(source)["scale"])  # type: ignore[call-overload]
    splits = _limit_splits(make_splits(source, labels, ids, seed), limit, seed)
    order = np.concatenate([splits[s] for s in _SPLIT_NAMES])
    bounds, start = {}, 0
    for s in _SPLIT_NAMES:
        bounds[s] = [start, start + len(splits[s])]
        start += len(splits[s])
    total = len(order)
    plan = _plan(source, recipe, seed, limit, shard_size, batch_size, ran, None)
    partial = out.with_name(f".{out.name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    plan_file = partial / "build.json"
    if plan_file.exists():
        old = json.loads(plan_file.read_text())
        if old != plan:
            raise ZooFormatError(
                f"{partial} holds an interrupted build with different settings ({old}); "
                "delete it or rerun with the same settings"
            )
    else:
        plan_file.write_text(json.dumps(plan, indent=1, sort_keys=True))
    n_shards = max(1, math.ceil(total / shard_size))
    shards = []
    done = 0
    for k in range(n_shards):
        lo, hi = k * shard_size, min((k + 1) * shard_size, total)
        path = partial / f"shard-{k:05d}.safetensors"
        shards.append((path, lo, hi))
        if path.exists():
            try:
                m = _mmap_shard(path)
                if m["params"].shape[0] == hi - lo:
                    done += hi - lo
                    continue
            except (ZooFormatError, KeyError):
                pass
        rows = order[lo:hi]
        imgs = torch.from_numpy(images[rows].astype(np.float32) / scale)
        base = done

        def cb(n_done: int, batch_psnr: Tensor, base: int = base) -> None:
            if progress is not None:
                progress(base + n_done, total, batch_psnr)

        res = fit_inrs(imgs, recipe, seed=seed, indices=range(lo, hi), batch_size=batch_size,
                       kernel=ran, callback=cb)  # fmt: skip
        _write_shard(path, {
            "params": res.params,
            "labels": torch.from_numpy(labels[rows].astype(np.int64)),
            "image_ids": torch.from_numpy(ids[rows].astype(np.int64)),
            "steps": res.steps,
            "psnr": res.psnr,
            "images": torch.from_numpy(np.ascontiguousarray(images[rows])),
        })  # fmt: skip
        done += hi - lo
    if progress is not None:
        progress(done, total, torch.zeros(0))
    height, width = images.shape[1:]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "format": "nngraph-inr-zoo",
        "architecture": {
            "kind": "siren",
            "layers": [2, recipe.hidden, recipe.hidden, 1],
            "w0": recipe.w0,
            "output_offset": 0.5,
            "num_params": num_params(recipe.hidden),
            "param_keys": list(param_slices(recipe.hidden)),
            "image_size": [int(height), int(width)],
        },
        "source": source,
        "image_scale": scale,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "limit": limit,
        "kernel": plan["kernel"],
        "num_inrs": total,
        "splits": bounds,
        "shards": [
            {"file": p.name, "start": lo, "stop": hi, "sha256": _sha256(p)} for p, lo, hi in shards
        ],
        "versions": _versions(),
    }
    _finish(partial, out, manifest, overwrite)
    return out


def write_zoo(
    out: str | os.PathLike[str],
    tensors: dict[str, Tensor],
    splits: dict[str, tuple[int, int]],
    *,
    source: str,
    recipe: dict[str, Any],
    image_scale: int = 255,
    image_size: tuple[int, int] = (28, 28),
    shard_size: int = 4096,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write already-fitted INRs (e.g. a converted published zoo) as a zoo.

    `tensors` holds the `SHARD_KEYS` arrays (`images` may be absent), INRs ordered by
    split; `splits` maps `train`/`val`/`test` to `(start, stop)`.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ZooExistsError(f"{out} exists; pass overwrite=True to replace it")
    total = tensors["params"].shape[0]
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shards = []
    for k in range(max(1, math.ceil(total / shard_size))):
        lo, hi = k * shard_size, min((k + 1) * shard_size, total)
        path = partial / f"shard-{k:05d}.safetensors"
        _write_shard(path, {key: v[lo:hi] for key, v in tensors.items()})
        shards.append({"file": path.name, "start": lo, "stop": hi, "sha256": _sha256(path)})
    p = tensors["params"].shape[1]
    hidden = round((-5 + math.sqrt(25 - 4 * (1 - p))) / 2)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "format": "nngraph-inr-zoo",
        "architecture": {
            "kind": "siren",
            "layers": [2, hidden, hidden, 1],
            "w0": 30.0,
            "output_offset": 0.5,
            "num_params": p,
            "param_keys": list(param_slices(hidden)),
            "image_size": list(image_size),
        },
        "source": source,
        "image_scale": image_scale,
        "recipe": recipe,
        "num_inrs": total,
        "splits": {s: list(v) for s, v in splits.items()},
        "shards": shards,
        "versions": _versions(),
        **(extra or {}),
    }
    _finish(partial, out, manifest, overwrite)
    return out


def _finish(partial: Path, out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    (partial / "build.json").unlink(missing_ok=True)
    tmp = partial / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, partial / "manifest.json")
    if out.exists() and overwrite:
        trash = out.with_name(f".{out.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out, trash)
        os.replace(partial, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, out)


# ----------------------------------------------------------------------------- load / verify
def _read_manifest(path: Path) -> dict[str, Any]:
    mf = path / "manifest.json"
    if not mf.is_file():
        hint = (
            " (an unfinished build? rerun the same `fit` to resume it)"
            if path.name.endswith(".partial")
            else ""
        )
        raise ZooFormatError(f"{path} is not a zoo: no manifest.json{hint}")
    try:
        manifest: dict[str, Any] = json.loads(mf.read_text())
    except ValueError as e:
        raise ZooFormatError(f"{mf}: not valid JSON") from e
    if manifest.get("format") != "nngraph-inr-zoo":
        raise ZooFormatError(f"{mf}: not an nngraph INR zoo manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ZooFormatError(
            f"{mf}: schema version {manifest.get('schema_version')}, this library reads {SCHEMA_VERSION}"
        )
    return manifest


def verify_zoo(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every shard's sha256 and shape against the manifest.

    Returns the manifest; raises [`IntegrityError`][nngraph_datasets.IntegrityError] /
    [`ZooFormatError`][nngraph_datasets.ZooFormatError] on a mismatch.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    bad = []
    for shard in manifest["shards"]:
        f = path / shard["file"]
        if not f.is_file():
            bad.append(f"{shard['file']}: missing")
        elif _sha256(f) != shard["sha256"]:
            bad.append(f"{shard['file']}: sha256 mismatch")
        else:
            m = _mmap_shard(f)
            n = shard["stop"] - shard["start"]
            if m["params"].shape != (n, manifest["architecture"]["num_params"]):
                bad.append(f"{shard['file']}: params shape {m['params'].shape}")
    if bad:
        raise IntegrityError(f"{path}: " + "; ".join(bad))
    return manifest


class Zoo:
    """A zoo on disk: manifest + lazily memory-mapped shards.

    `Zoo(path)["train"]` (or [`load_zoo`][nngraph_datasets.load_zoo]) gives a
    [`ZooSplit`][nngraph_datasets.ZooSplit] dataset. Whole columns:
    [`column`][nngraph_datasets.Zoo.column] (e.g. `zoo.column("psnr")`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        self._maps: list[dict[str, np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:  # workers re-map, nothing is copied
        return {"path": self.path, "manifest": self.manifest, "_maps": None}

    @property
    def shards(self) -> list[dict[str, np.ndarray]]:
        if self._maps is None:
            self._maps = [_mmap_shard(self.path / s["file"]) for s in self.manifest["shards"]]
        return self._maps

    def __len__(self) -> int:
        return int(self.manifest["num_inrs"])

    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        return {k: (int(v[0]), int(v[1])) for k, v in self.manifest["splits"].items()}

    @property
    def recipe(self) -> dict[str, Any]:
        return dict(self.manifest["recipe"])

    def __getitem__(self, split: str) -> ZooSplit:
        if split not in self.splits:
            raise KeyError(f"no split {split!r}; the zoo has {list(self.splits)}")
        return ZooSplit(self, *self.splits[split])

    def locate(self, index: int) -> tuple[dict[str, np.ndarray], int]:
        for shard, maps in zip(self.manifest["shards"], self.shards):
            if shard["start"] <= index < shard["stop"]:
                return maps, index - shard["start"]
        raise IndexError(index)

    def column(self, key: str, start: int = 0, stop: int | None = None) -> Tensor:
        """Concatenate one shard key over the INRs `[start, stop)` (a copy)."""
        stop = len(self) if stop is None else stop
        parts = []
        for shard, maps in zip(self.manifest["shards"], self.shards):
            lo, hi = max(start, shard["start"]), min(stop, shard["stop"])
            if lo < hi:
                parts.append(np.asarray(maps[key][lo - shard["start"] : hi - shard["start"]]))
        return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0)

    def images(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Source images `[n, H, W]` float in `[0, 1]`."""
        return self.column("images", start, stop).float() / float(self.manifest["image_scale"])


class ZooSplit(Dataset[dict[str, Tensor]]):
    """One split of a zoo as a map-style `Dataset`.

    Items are dicts with `params [P]` float32, `label`, `image_id` and, with
    `targets="dilated"`, `target [H, W]` (the dilated source image, for editing tasks);
    `targets="image"` gives the source image. Shards are memory-mapped per process.
    """

    def __init__(self, zoo: Zoo, start: int, stop: int, targets: str | None = None) -> None:
        self.zoo, self.start, self.stop, self.targets = zoo, start, stop, targets

    def __len__(self) -> int:
        return self.stop - self.start

    def with_targets(self, kind: str = "dilated") -> ZooSplit:
        if kind not in ("dilated", "image"):
            raise ValueError("targets must be 'dilated' or 'image'")
        return ZooSplit(self.zoo, self.start, self.stop, kind)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        maps, j = self.zoo.locate(self.start + i)
        item = {
            "params": torch.from_numpy(np.array(maps["params"][j], dtype=np.float32)),
            "label": torch.tensor(int(maps["labels"][j])),
            "image_id": torch.tensor(int(maps["image_ids"][j])),
        }
        if self.targets is not None:
            img = torch.from_numpy(np.array(maps["images"][j], dtype=np.float32)) / float(
                self.zoo.manifest["image_scale"]
            )
            item["target"] = dilate(img) if self.targets == "dilated" else img
        return item

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for i in range(len(self)):
            yield self[i]

    def params(self) -> Tensor:
        """All parameters of the split `[n, P]` (a copy)."""
        return self.zoo.column("params", self.start, self.stop)

    def labels(self) -> Tensor:
        return self.zoo.column("labels", self.start, self.stop)

    def dilated_targets(self) -> Tensor:
        """Editing targets `[n, H, W]`: grey dilation (3x3 ones) of each source image."""
        return dilate(self.zoo.images(self.start, self.stop))

    def reconstructions(self) -> Tensor:
        h, w = self.zoo.manifest["architecture"]["image_size"]
        return render(self.params(), h, w, w0=float(self.zoo.manifest["architecture"]["w0"]))


def load_zoo(path: str | os.PathLike[str], targets: str | None = None) -> dict[str, ZooSplit]:
    """The splits of a zoo as datasets: `{"train": ..., "val": ..., "test": ...}`.

    Args:
        path: zoo folder.
        targets: `None`, `"dilated"` (editing targets) or `"image"`.
    """
    zoo = Zoo(path)
    out = {s: zoo[s] for s in zoo.splits}
    return {s: d.with_targets(targets) if targets else d for s, d in out.items()}
