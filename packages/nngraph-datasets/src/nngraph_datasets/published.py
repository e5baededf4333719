"""Readers for the published INR zips (DWSNet lineage), converted into our zoo format.

- MNIST: `mnist-inrs/mnist_png_<training|testing>_<label>_<idx>/checkpoints/model_final.pth`
- Fashion-MNIST: `fmnist_inrs/{train,test}/model_<i>.pth`, each with an extra `label` key.
- Optionally a splits json `{"train": {"path": [...], "label": [...]}, "val": ..., "test": ...}`
  (the reference code's format); otherwise val is a seeded 5,000 of the training INRs.

Safety: sizes are checked from the zip directory before anything is read, reads are bounded
anyway, every `.pth` goes through `torch.load(weights_only=True)` (never a plain unpickler, and
never retried unsafely), and each file must hold exactly the expected tensors.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CorruptFileError, FileTooLargeError, UnsafeFileError
from .inr import num_params, param_slices

__all__ = ["Limits", "PublishedZoo", "convert_published", "load_pth", "read_published"]

_MNIST_RE = re.compile(
    r"(?:^|/)mnist_png_(training|testing)_(\d)_(\d{1,9})/checkpoints/model_final\.pth$", re.ASCII
)
_FMNIST_RE = re.compile(r"(?:^|/)(train|test)/model_(\d{1,9})\.pth$", re.ASCII)
#: the exceptions that reading a broken zip archive or member can raise (zipfile, zlib, bz2,
#: lzma): the archive's bytes are not what they claim to be
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
               RuntimeError, IndexError, KeyError, OverflowError, struct.error)  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """Size limits checked before reading (bytes / counts)."""

    max_member_bytes: int = 1 << 20  # one 1,185-parameter checkpoint is ~6 KiB
    max_total_bytes: int = 4 << 30
    max_members: int = 200_000
    max_ratio: int = 200  # uncompressed / compressed


def load_pth(
    data: bytes, name: str = "<bytes>", *, extra_keys: tuple[str, ...] = (), hidden: int = 32
) -> dict[str, Tensor]:
    """Load one checkpoint safely and check its keys, shapes and dtypes.

    Raises:
        UnsafeFileError: the pickle references anything beyond plain tensors/containers.
        CorruptFileError: truncated/unreadable, wrong keys, shapes or non-float tensors.
    """
    if not data.startswith(b"PK\x03\x04"):
        # torch.save has written zip archives since torch 1.6; the legacy formats (a raw pickle
        # stream, a tar archive) size their storages from the pickle itself, before any check
        raise CorruptFileError(
            f"{name}: not a zip-form torch checkpoint (legacy pickle and tar formats are refused)"
        )
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"{name}: refused to unpickle (not plain tensors): {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:  # truncated zip/pickle stream, bad magic, ...
        raise CorruptFileError(
            f"{name}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{name}: expected a state dict, got {type(obj).__name__}")
    shapes = {
        "seq.0.weight": (hidden, 2), "seq.0.bias": (hidden,), "seq.1.weight": (hidden, hidden),
        "seq.1.bias": (hidden,), "seq.2.weight": (1, hidden), "seq.2.bias": (1,),
    }  # fmt: skip
    expected = set(shapes) | set(extra_keys)
    if set(obj) != expected:
        raise CorruptFileError(
            f"{name}: keys {sorted(map(str, obj))} differ from the expected {sorted(expected)}"
        )
    for k, shape in shapes.items():
        v = obj[k]
        if (
            not isinstance(v, Tensor)
            or not v.is_floating_point()
            or v.layout != torch.strided
            or tuple(v.shape) != shape
        ):
            desc = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
            raise CorruptFileError(
                f"{name}: {k} must be a dense float tensor of shape {shape}, got {desc}"
            )
        if not bool(torch.isfinite(v).all()):
            raise CorruptFileError(f"{name}: {k} holds NaN or infinite values")
    return obj


@dataclass
class PublishedZoo:
    """INRs read from a published zip: `params [n, P]`, `labels`, `image_ids`, `split` names."""

    params: Tensor
    labels: Tensor
    image_ids: Tensor
    split: list[str]
    kind: str


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> bytes:
    try:
        with zf.open(info) as f:
            data = f.read(limits.max_member_bytes + 1)
    except _ZIP_ERRORS as e:  # bad CRC, broken deflate stream, encrypted member, ...
        raise CorruptFileError(
            f"{info.filename}: cannot be read from the archive ({type(e).__name__}: {e})"
        ) from e
    if len(data) > limits.max_member_bytes:
        raise FileTooLargeError(f"{info.filename}: larger than {limits.max_member_bytes} bytes")
    return data


def read_published(
    path: str | os.PathLike[str],
    kind: str | None = None,
    *,
    splits_json: str | os.PathLike[str] | None = None,
    seed: int = 0,
    limits: Limits = Limits(),
) -> PublishedZoo:
    """Read a published MNIST (`kind="mnist"`) or Fashion-MNIST (`"fashion-mnist"`) INR zip.

    `kind=None` guesses from the member names. Without `splits_json`, 5,000 training INRs
    (scaled down for smaller zips) chosen with `seed` form the validation split.
    """
    path = Path(path)
    if path.stat().st_size > limits.max_total_bytes:
        raise FileTooLargeError(f"{path}: larger than {limits.max_total_bytes} bytes")
    try:
        zf = zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
        raise CorruptFileError(f"{path}: not a zip file ({type(e).__name__}: {e})") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise FileTooLargeError(f"{path}: {len(infos)} members (limit {limits.max_members})")
        if sum(i.file_size for i in infos) > limits.max_total_bytes:
            raise FileTooLargeError(
                f"{path}: uncompressed size exceeds {limits.max_total_bytes} bytes"
            )
        entries: list[tuple[zipfile.ZipInfo, str, int, int | None]] = []  # info, split, id, label
        for info in infos:
            m_mnist, m_fm = _MNIST_RE.search(info.filename), _FMNIST_RE.search(info.filename)
            if m_mnist and kind in (None, "mnist"):
                kind = "mnist"
                part = "train" if m_mnist.group(1) == "training" else "test"
                idx = int(m_mnist.group(3))
                entries.append(
                    (info, part, idx + (60000 if part == "test" else 0), int(m_mnist.group(2)))
                )
            elif m_fm and kind in (None, "fashion-mnist"):
                kind = "fashion-mnist"
                idx = int(m_fm.group(2))
                entries.append(
                    (info, m_fm.group(1), idx + (60000 if m_fm.group(1) == "test" else 0), None)
                )
        if not entries:
            raise CorruptFileError(f"{path}: no published INR checkpoints found (kind={kind!r})")
        seen: dict[int, str] = {}
        for info, _, image_id, _ in entries:
            if image_id in seen:
                raise CorruptFileError(
                    f"{path}: {info.filename} and {seen[image_id]} are checkpoints of the same "
                    f"image ({image_id})"
                )
            seen[image_id] = info.filename
        for info, *_ in entries:
            if info.file_size > limits.max_member_bytes:
                raise FileTooLargeError(
                    f"{info.filename}: {info.file_size} bytes (limit {limits.max_member_bytes})"
                )
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                raise FileTooLargeError(f"{info.filename}: suspicious compression ratio")
        entries.sort(key=lambda e: e[2])
        p = num_params()
        params = torch.empty(len(entries), p)
        labels = torch.empty(len(entries), dtype=torch.int64)
        extra = ("label",) if kind == "fashion-mnist" else ()
        slices = param_slices()
        for row, (info, _, _, label) in enumerate(entries):
            sd = load_pth(
                _read_member(zf, info, limits), f"{path}:{info.filename}", extra_keys=extra
            )
            for k, s in slices.items():
                params[row, s] = sd[k].reshape(-1).float()
            if label is None:
                lab: Any = sd["label"]
                if isinstance(lab, Tensor):
                    if lab.numel() != 1 or lab.layout != torch.strided:
                        raise CorruptFileError(f"{info.filename}: label must be a scalar")
                    lab = lab.item()
                if (
                    not isinstance(lab, (int, float))
                    or not math.isfinite(lab)
                    or int(lab) != lab
                    or not 0 <= lab < 1 << 31
                ):
                    raise CorruptFileError(
                        f"{info.filename}: label must be a non-negative integer, got {lab!r}"
                    )
                label = int(lab)
            labels[row] = label
    names = [e[0].filename for e in entries]
    split: list[str] = [e[1] for e in entries]
    if splits_json is not None:
        split = _apply_splits_json(Path(splits_json), names)
    else:
        train = [i for i, s in enumerate(split) if s == "train"]
        n_val = round(len(train) * 5000 / 60000)
        rng = np.random.default_rng([seed, 0x5EED])
        for i in rng.permutation(np.asarray(train, dtype=np.int64))[:n_val]:
            split[int(i)] = "val"
    ids = torch.tensor([e[2] for e in entries], dtype=torch.int64)
    assert kind is not None
    return PublishedZoo(params, labels, ids, split, kind)


def _apply_splits_json(path: Path, names: list[str]) -> list[str]:
    if path.stat().st_size > 256 << 20:
        raise FileTooLargeError(f"{path}: splits json too large")
    try:
        spec = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CorruptFileError(f"{path}: not valid JSON") from e
    if not isinstance(spec, dict):
        raise CorruptFileError(f"{path}: expected an object of splits, got {type(spec).__name__}")
    by_suffix: dict[str, str] = {}
    for split, part in spec.items():
        if split not in ("train", "val", "test") or not isinstance(part, dict):
            raise CorruptFileError(f"{path}: unexpected entry {split!r}")
        paths = part.get("path", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise CorruptFileError(f"{path}: {split}.path must be a list of strings")
        for p in paths:
            by_suffix["/".join(Path(p).parts[-3:])] = split
    out = []
    for name in names:
        key = "/".join(Path(name).parts[-3:])
        if key not in by_suffix:
            raise CorruptFileError(f"{path}: no split for {name}")
        out.append(by_suffix[key])
    return out


def convert_published(
    zip_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    kind: str | None = None,
    *,
    splits_json: str | os.PathLike[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    limits: Limits = Limits(),
) -> Path:
    """Read a published zip and write it as a zoo (no source images; recipe `"published"`)."""
    from .zoo import write_zoo

    pub = read_published(zip_path, kind, splits_json=splits_json, seed=seed, limits=limits)
    order = [i for s in ("train", "val", "test") for i, x in enumerate(pub.split) if x == s]
    idx = torch.tensor(order, dtype=torch.int64)
    n = {s: pub.split.count(s) for s in ("train", "val", "test")}
    splits = {"train": (0, n["train"]), "val": (n["train"], n["train"] + n["val"]),
              "test": (n["train"] + n["val"], len(order))}  # fmt: skip
    tensors = {
        "params": pub.params[idx],
        "labels": pub.labels[idx],
        "image_ids": pub.image_ids[idx],
        "steps": torch.full((len(order),), -1, dtype=torch.int32),
        "psnr": torch.full((len(order),), float("nan")),
    }
    return write_zoo(
        out, tensors, splits, source=pub.kind,
        recipe={"name": "published", "file": Path(zip_path).name}, overwrite=overwrite,
    )  # fmt: skip
