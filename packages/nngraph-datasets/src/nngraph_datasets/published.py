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
import os
import pickle
import re
import zipfile
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
    r"(?:^|/)mnist_png_(training|testing)_(\d)_(\d+)/checkpoints/model_final\.pth$"
)
_FMNIST_RE = re.compile(r"(?:^|/)(train|test)/model_(\d+)\.pth$")


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
        if not isinstance(v, Tensor) or not v.is_floating_point() or tuple(v.shape) != shape:
            desc = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise CorruptFileError(
                f"{name}: {k} must be a float tensor of shape {shape}, got {desc}"
            )
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
    with zf.open(info) as f:
        data = f.read(limits.max_member_bytes + 1)
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
    except zipfile.BadZipFile as e:
        raise CorruptFileError(f"{path}: not a zip file ({e})") from e
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
                    if lab.numel() != 1:
                        raise CorruptFileError(f"{info.filename}: label must be a scalar")
                    lab = lab.item()
                if not isinstance(lab, (int, float)) or int(lab) != lab:
                    raise CorruptFileError(
                        f"{info.filename}: label must be an integer, got {lab!r}"
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
        spec: dict[str, Any] = json.loads(path.read_text())
    except ValueError as e:
        raise CorruptFileError(f"{path}: not valid JSON") from e
    by_suffix: dict[str, str] = {}
    for split, part in spec.items():
        if split not in ("train", "val", "test") or not isinstance(part, dict):
            raise CorruptFileError(f"{path}: unexpected entry {split!r}")
        for p in part.get("path", []):
            by_suffix["/".join(Path(str(p)).parts[-3:])] = split
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
