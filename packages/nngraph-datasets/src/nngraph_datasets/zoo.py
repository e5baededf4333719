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

Reliability: every file is written through ``<file>.tmp`` + fsync + rename (a kill leaves the
previous file or the whole new one); a build holds ``.<name>.lock`` (``fcntl.flock``), so two
processes building the same zoo do not race -- the second waits and returns the finished zoo; a
full or read-only disk raises ``DiskFullError`` / ``StorageError`` saying which files are intact.
Reading checks the manifest's fields and every shard's safetensors header (dtypes, shapes,
offsets inside the file) before anything is mapped: a bad file is a ``ZooFormatError``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

from .errors import (
    DatasetError,
    DiskFullError,
    IntegrityError,
    StorageError,
    ZooExistsError,
    ZooFormatError,
)
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


# ----------------------------------------------------------------------------- file I/O
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
#: safetensors headers above this size are refused before they are read
_MAX_HEADER_BYTES = 100 << 20
#: manifests above this size are refused before they are read
_MAX_MANIFEST_BYTES = 64 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``<path>.tmp`` + fsync + rename: ``path`` holds either
    its previous content or all of ``data``, whatever happens (kill, full disk). The bytes go
    through ``os.write``, so a full disk is an ``OSError`` here and not later."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[: 1 << 24]) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk should not keep the half-written copy
        raise


def _write_shard(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save

    # no metadata: deterministic bytes
    _atomic_write(path, save({k: v.contiguous() for k, v in tensors.items()}))


@contextlib.contextmanager
def _storage_errors(target: Path, kept: str) -> Iterator[None]:
    """Turn the ``OSError`` of a full disk or a read-only folder into a typed error that names
    ``target`` and says what was ``kept`` as it was."""
    try:
        yield
    except DatasetError:
        raise
    except OSError as e:
        if e.errno in _NO_SPACE:
            err: StorageError = DiskFullError(
                f"no space left on the device while writing {target} ({e.filename or e}): {kept}"
                ". Free some space and rerun the same command."
            )
        elif e.errno in _READ_ONLY:
            err = StorageError(
                f"cannot write {target}: {e.strerror} ({e.filename}). The folder is read-only "
                "or not yours: choose a writable folder (--out, or $NNGRAPH_ZOOS for the cache)."
            )
        else:
            raise
        err.errno = e.errno  # (strerror and filename stay unset: str(err) is the message)
        raise err from e


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` next to ``out`` (an exclusive ``fcntl.flock``), waiting while
    another process builds the same zoo. The kernel drops the lock when its holder dies, even by
    SIGKILL; the holder removes the file while it still holds it, and whoever then gets the lock
    on the removed file tries again on a fresh one, so two builds never hold it at once."""
    lock = out.with_name(f".{out.name}.lock")
    if fcntl is None:  # pragma: no cover - not POSIX: no lock
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                warnings.warn(
                    f"{out} is being built by another process (lock {lock}); waiting for it",
                    stacklevel=4,
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                here = os.stat(lock)
                mine = os.fstat(fd)
                locked = (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                locked = False
        except BaseException:
            os.close(fd)
            raise
        if locked:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8,
              "F16": np.float16, "I16": np.int16, "I8": np.int8, "BOOL": np.bool_}  # fmt: skip


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _mmap_shard(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only numpy views, nothing copied).

    The header is checked before anything is mapped: its length, that it is a JSON object, and
    for every tensor a known dtype, a shape of non-negative integers and data offsets that match
    the shape and lie inside the file. Anything else is a [`ZooFormatError`][nngraph_datasets.ZooFormatError].
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ZooFormatError(f"{path}: truncated safetensors file")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _MAX_HEADER_BYTES):
                raise ZooFormatError(f"{path}: bad safetensors header length {n}")
            raw = f.read(n)
    except OSError as e:
        raise ZooFormatError(f"{path}: cannot read the shard ({e.strerror or e})") from e
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ZooFormatError(f"{path}: unreadable safetensors header") from e
    if not isinstance(header, dict):
        raise ZooFormatError(f"{path}: the safetensors header is not a JSON object")
    data_size = size - 8 - n
    out: dict[str, np.ndarray] = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("dtype"), str)
            or (meta["dtype"] not in _ST_DTYPES)
        ):
            raise ZooFormatError(f"{path}: tensor {key!r} has no known dtype")
        dtype = np.dtype(_ST_DTYPES[meta["dtype"]])
        shape, offsets = meta.get("shape"), meta.get("data_offsets")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(_is_int(d) and d >= 0 for d in shape)
        ):
            raise ZooFormatError(f"{path}: tensor {key!r} has a bad shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
        ):
            raise ZooFormatError(f"{path}: tensor {key!r} has bad data offsets {offsets!r}")
        start, stop = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if not 0 <= start <= stop <= data_size or stop - start != nbytes:
            raise ZooFormatError(
                f"{path}: tensor {key!r} ({meta['dtype']} {shape}) lies outside the file "
                f"(bytes {start}..{stop} of {data_size}; truncated?)"
            )
        if nbytes == 0:
            out[key] = np.zeros(shape, dtype=dtype)
            continue
        try:
            out[key] = np.memmap(
                path, dtype=dtype, mode="r", offset=8 + n + start, shape=tuple(shape)
            )
        except (OSError, ValueError) as e:
            raise ZooFormatError(f"{path}: cannot map tensor {key!r} ({e})") from e
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
    kept = f"the finished shards in {partial} are intact and a rerun resumes from them" + (
        f"; the zoo at {out} is unchanged" if out.exists() else ""
    )
    with _storage_errors(out, kept), _build_lock(out):
        if out.exists() and not overwrite:  # built by another process while this one waited
            if _same_build(out, plan):
                return out
            raise ZooExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        partial.mkdir(parents=True, exist_ok=True)
        plan_file = partial / "build.json"
        if plan_file.exists():
            try:
                old = json.loads(plan_file.read_text())
            except (ValueError, RecursionError) as e:
                raise ZooFormatError(
                    f"{plan_file} is unreadable; delete {partial} and rerun the build"
                ) from e
            if old != plan:
                raise ZooFormatError(
                    f"{partial} holds an interrupted build with different settings ({old}); "
                    "delete it or rerun with the same settings"
                )
        else:
            _atomic_write(plan_file, json.dumps(plan, indent=1, sort_keys=True).encode())
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
                {"file": p.name, "start": lo, "stop": hi, "sha256": _sha256(p)}
                for p, lo, hi in shards
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
    kept = "nothing was changed" + (f"; the zoo at {out} is intact" if out.exists() else "")
    with _storage_errors(out, kept), _build_lock(out):
        if out.exists() and not overwrite:
            raise ZooExistsError(f"{out} exists; pass overwrite=True to replace it")
        _write_zoo(out, tensors, splits, source=source, recipe=recipe, image_scale=image_scale,
                   image_size=image_size, shard_size=shard_size, overwrite=overwrite, extra=extra)  # fmt: skip
    return out


def _write_zoo(
    out: Path,
    tensors: dict[str, Tensor],
    splits: dict[str, tuple[int, int]],
    *,
    source: str,
    recipe: dict[str, Any],
    image_scale: int,
    image_size: tuple[int, int],
    shard_size: int,
    overwrite: bool,
    extra: dict[str, Any] | None,
) -> None:
    total = tensors["params"].shape[0]
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shards = []
    try:
        for k in range(max(1, math.ceil(total / shard_size))):
            lo, hi = k * shard_size, min((k + 1) * shard_size, total)
            path = partial / f"shard-{k:05d}.safetensors"
            _write_shard(path, {key: v[lo:hi] for key, v in tensors.items()})
            shards.append({"file": path.name, "start": lo, "stop": hi, "sha256": _sha256(path)})
    except BaseException:  # nothing to resume from here: do not leave the copies behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
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


def _same_build(out: Path, plan: dict[str, Any]) -> bool:
    """Whether the finished zoo at ``out`` was built from the same source, recipe, seed and
    limit as ``plan`` (then a build that waited for the lock has nothing left to do)."""
    try:
        manifest = _read_manifest(out)
    except ZooFormatError:
        return False
    return all(manifest.get(k) == plan[k] for k in ("source", "recipe", "seed", "limit"))


def _finish(partial: Path, out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    (partial / "build.json").unlink(missing_ok=True)
    _atomic_write(
        partial / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    )
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
        if mf.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ZooFormatError(f"{mf}: larger than {_MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(mf.read_bytes())
    except OSError as e:
        raise ZooFormatError(f"{mf}: cannot be read ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ZooFormatError(f"{mf}: not valid JSON") from e
    if not isinstance(manifest, dict) or manifest.get("format") != "nngraph-inr-zoo":
        raise ZooFormatError(f"{mf}: not an nngraph INR zoo manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ZooFormatError(
            f"{mf}: schema version {manifest.get('schema_version')!r}, this library reads {SCHEMA_VERSION}"
        )
    _check_manifest(manifest, mf)
    return manifest


#: a shard's file name: a plain name inside the zoo folder (no separators, no leading dot)
_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _check_manifest(m: dict[str, Any], mf: Path) -> None:
    """Check the fields that readers use; every problem is a [`ZooFormatError`][nngraph_datasets.ZooFormatError] naming it."""

    def bad(what: str) -> ZooFormatError:
        return ZooFormatError(f"{mf}: {what}")

    def count(x: object) -> bool:
        return _is_int(x) and 0 <= x < 1 << 40  # type: ignore[operator]

    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    n = m.get("num_inrs")
    if not count(n):
        raise bad(f"num_inrs must be a non-negative integer, got {n!r}")
    arch = m.get("architecture")
    if not isinstance(arch, dict):
        raise bad("architecture must be an object")
    layers = arch.get("layers")
    if (
        not isinstance(layers, list)
        or len(layers) != 4
        or not all(count(x) and x > 0 for x in layers)
        or layers[0] != 2
        or layers[1] != layers[2]
        or layers[3] != 1
        or layers[1] > 4096
    ):
        raise bad(f"architecture.layers must be [2, h, h, 1], got {layers!r}")
    if arch.get("num_params") != num_params(layers[1]):
        raise bad(
            f"architecture.num_params {arch.get('num_params')!r} does not match layers {layers}"
        )
    size = arch.get("image_size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(count(x) and 0 < x <= 4096 for x in size)
    ):
        raise bad(f"architecture.image_size must be [height, width], got {size!r}")
    if not number(arch.get("w0")):
        raise bad(f"architecture.w0 must be a finite number, got {arch.get('w0')!r}")
    if not number(m.get("image_scale")) or m["image_scale"] <= 0:
        raise bad(f"image_scale must be a positive number, got {m.get('image_scale')!r}")
    if not isinstance(m.get("source"), str) or not isinstance(m.get("recipe"), dict):
        raise bad("source must be a string and recipe an object")
    splits = m.get("splits")
    if not isinstance(splits, dict):
        raise bad("splits must be an object")
    for name, span in splits.items():
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(count(x) for x in span)
            or not span[0] <= span[1] <= n
        ):
            raise bad(f"split {name!r} must be [start, stop] within [0, {n}], got {span!r}")
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        raise bad("shards must be a non-empty list")
    stop, names = 0, set()
    for shard in shards:
        if not isinstance(shard, dict):
            raise bad(f"shard entry {shard!r} is not an object")
        file, sha = shard.get("file"), shard.get("sha256")
        if not isinstance(file, str) or not _SHARD_NAME.fullmatch(file) or file in names:
            raise bad(f"shard file {file!r} is not a plain, unique file name in the zoo folder")
        names.add(file)
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise bad(f"{file}: sha256 must be 64 hex digits")
        if shard.get("start") != stop or not count(shard.get("stop")) or shard["stop"] < stop:
            raise bad(f"{file}: shards must cover the INRs in order without gaps ({shard!r})")
        stop = shard["stop"]
    if stop != n:
        raise bad(f"the shards hold {stop} INRs, num_inrs says {n}")


#: shard key -> (number of dimensions, dtype kind: f float, i signed, u unsigned integer)
_SHARD_LAYOUT = {"params": (2, "f"), "labels": (1, "iu"), "image_ids": (1, "iu"),
                 "steps": (1, "iu"), "psnr": (1, "f"), "images": (3, "u")}  # fmt: skip


def _check_shard(
    maps: dict[str, np.ndarray], entry: dict[str, Any], manifest: dict[str, Any], path: Path
) -> None:
    """A mapped shard holds what its manifest entry says: every key, ``n`` rows, right dtypes."""
    n = entry["stop"] - entry["start"]
    arch = manifest["architecture"]
    for key, (ndim, kinds) in _SHARD_LAYOUT.items():
        if key not in maps:
            if key == "images":  # optional (converted published zoos have none)
                continue
            raise ZooFormatError(f"{path}: no {key!r} tensor")
        a = maps[key]
        if a.ndim != ndim or a.shape[0] != n or a.dtype.kind not in kinds:
            raise ZooFormatError(
                f"{path}: {key} is {a.dtype} {list(a.shape)}, expected {ndim} dimensions, "
                f"{n} rows and dtype kind {kinds!r}"
            )
    if maps["params"].shape[1] != arch["num_params"]:
        raise ZooFormatError(
            f"{path}: params have {maps['params'].shape[1]} columns, the architecture "
            f"{arch['num_params']}"
        )
    if "images" in maps and list(maps["images"].shape[1:]) != arch["image_size"]:
        raise ZooFormatError(
            f"{path}: images are {list(maps['images'].shape[1:])}, the manifest says "
            f"{arch['image_size']}"
        )


def verify_zoo(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every shard's sha256 and shape against the manifest.

    Returns the manifest; raises [`IntegrityError`][nngraph_datasets.IntegrityError] /
    [`ZooFormatError`][nngraph_datasets.ZooFormatError] on a mismatch.
    """
    path = Path(path)
    return _verify_shards(path, _read_manifest(path), _check_shard)


def _verify_shards(
    path: Path,
    manifest: dict[str, Any],
    check: Callable[[dict[str, np.ndarray], dict[str, Any], dict[str, Any], Path], None],
) -> dict[str, Any]:
    """Re-hash every shard of `manifest` and run `check(maps, shard, manifest, file)` on it;
    every problem is collected into one [`IntegrityError`][nngraph_datasets.IntegrityError]
    (the INR and the CNN zoo share this, with their own shard checks)."""
    bad = []
    for shard in manifest["shards"]:
        f = path / shard["file"]
        if not f.is_file():
            bad.append(f"{shard['file']}: missing")
        elif _sha256(f) != shard["sha256"]:
            bad.append(f"{shard['file']}: sha256 mismatch")
        else:
            try:
                check(_mmap_shard(f), shard, manifest, f)
            except ZooFormatError as e:
                bad.append(str(e))
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
            maps = []
            for entry in self.manifest["shards"]:
                path = self.path / entry["file"]
                if not path.is_file():
                    raise ZooFormatError(f"{self.path}: shard {entry['file']} is missing")
                maps.append(_mmap_shard(path))
                _check_shard(maps[-1], entry, self.manifest, path)
            self._maps = maps
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
