"""Reader of the published Small CNN Zoo layout (Unterthiner et al. 2020), and its conversion to
a CNN zoo ([`write_cnn_zoo`][nngraph_datasets.write_cnn_zoo]).

A published data set is a folder with

- `weights.npy`: `[N, 4970]` float, one row per checkpoint, the variables concatenated as
  `layout.csv` says, in TensorFlow order (conv kernels `[kh, kw, in, out]`, dense kernels
  `[in, out]`);
- `layout.csv`: one row per variable: its name (`varname`), its `shape` (e.g. `(3, 3, 1, 16)`)
  and its `start_idx` / `end_idx` in a row of `weights.npy`;
- `metrics.csv` or `metrics.csv.gz`: one row per checkpoint, in the order of `weights.npy`:
  hyper-parameters (`config.activation`, `config.w_init`, `config.init_std`,
  `config.optimizer`, `config.learning_rate`, `config.l2reg`, `config.dropout`,
  `config.train_fraction`), the checkpoint (`epoch`, or else `step`), `train_accuracy`,
  `test_accuracy`, `train_loss`, `test_loss`, and the network's folder `modeldir`.

Kernels are converted to torch's `[out, in, kh, kw]` (dense `[out, in]`), so rows follow the
[`small_cnn`][nngraph_datasets.small_cnn] layout. `np.load(allow_pickle=False)` only; every
problem (missing file or column, bad shape, object arrays, NaN weights or accuracies, a layout
that is not the Small CNN) is a [`ZooFormatError`][nngraph_datasets.ZooFormatError] naming it.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .cnn_zoo import _default_splits, write_cnn_zoo
from .errors import FileTooLargeError, ZooFormatError

__all__ = ["convert_small_cnn_zoo", "read_small_cnn_zoo"]

#: our column <- the published ones (first found wins; `config.` prefixes are optional)
_COLUMNS = {
    "activation": ("activation",), "initializer": ("w_init", "initializer"),
    "optimizer": ("optimizer",), "init_std": ("init_std",), "lr": ("learning_rate", "lr"),
    "l2": ("l2reg", "l2"), "dropout": ("dropout",), "train_fraction": ("train_fraction",),
    "epoch": ("epoch", "step"), "train_acc": ("train_accuracy",),
    "test_acc": ("test_accuracy",), "train_loss": ("train_loss",), "test_loss": ("test_loss",),
}  # fmt: skip
_CATEGORICAL = ("activation", "initializer", "optimizer")
#: files above these sizes are refused before they are read
MAX_WEIGHTS_BYTES = 8 << 30
MAX_CSV_BYTES = 1 << 30


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise FileTooLargeError(f"{path}: larger than {MAX_CSV_BYTES} bytes")
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                raw = g.read(MAX_CSV_BYTES + 1)
            if len(raw) > MAX_CSV_BYTES:
                raise FileTooLargeError(f"{path}: more than {MAX_CSV_BYTES} bytes once gunzipped")
        text = raw.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text)))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        if isinstance(e, FileTooLargeError):
            raise
        raise ZooFormatError(f"{path}: not a readable CSV file ({e})") from e
    rows = [r for r in rows if r]
    if not rows:
        raise ZooFormatError(f"{path}: empty CSV file")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ZooFormatError(
                f"{path}: row {i + 2} has {len(r)} fields, the header {len(header)}"
            )
    return header, body


def _find(header: Sequence[str], names: Sequence[str]) -> int | None:
    for name in names:
        for key in (name, f"config.{name}"):
            if key in header:
                return header.index(key)
    return None


def _shape(text: str, where: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[^0-9]+", text) if p]
    if not parts or len(parts) > 4 or not re.fullmatch(r"[\s()\[\],x0-9]*", text):
        raise ZooFormatError(f"{where}: bad shape {text!r}")
    return tuple(int(p) for p in parts)


def _layout(path: Path, num_cols: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    """`(name, TF shape, start, end)` of the 8 variables, in the Small CNN's order."""
    header, body = _read_csv(path)
    cols = {k: _find(header, names) for k, names in
            (("name", ("varname", "name", "variable")), ("shape", ("shape",)),
             ("start", ("start_idx", "start")), ("end", ("end_idx", "end")))}  # fmt: skip
    missing = [k for k, v in cols.items() if v is None]
    if missing:
        raise ZooFormatError(f"{path}: no column for {missing} (header {header})")
    out = []
    for i, r in enumerate(body):
        where = f"{path} row {i + 2}"
        try:
            start, end = int(r[cols["start"]]), int(r[cols["end"]])  # type: ignore[index]
        except ValueError as e:
            raise ZooFormatError(f"{where}: start/end are not integers") from e
        shape = _shape(r[cols["shape"]], where)  # type: ignore[index]
        if not 0 <= start <= end <= num_cols or end - start != math.prod(shape):
            raise ZooFormatError(
                f"{where}: [{start}, {end}) does not hold shape {shape} within {num_cols} columns"
            )
        out.append((r[cols["name"]], shape, start, end))  # type: ignore[index]
    out.sort(key=lambda v: v[2])
    stop = 0
    for name, _, start, end in out:
        if start != stop:
            raise ZooFormatError(f"{path}: variable {name!r} starts at {start}, expected {stop}")
        stop = end
    if stop != num_cols:
        raise ZooFormatError(f"{path}: the variables cover {stop} of {num_cols} columns")
    dims = [len(s) for _, s, _, _ in out]
    if dims != [4, 1, 4, 1, 4, 1, 2, 1]:
        raise ZooFormatError(
            f"{path}: not the Small CNN layout (3 conv kernels + biases, a dense kernel + bias); "
            f"variable ranks {dims}"
        )
    (k1, k2, k3, kd) = (out[0][1], out[2][1], out[4][1], out[6][1])
    c = k1[3]
    ok = (k1[:2] == k2[:2] == k3[:2] == (3, 3) and k2[2:] == k3[2:] == (c, c)
          and kd[0] == c and all(out[j][1] == (out[j - 1][1][-1],) for j in (1, 3, 5, 7)))  # fmt: skip
    if not ok:
        raise ZooFormatError(f"{path}: shapes {[s for _, s, _, _ in out]} are not a Small CNN")
    return out


def read_small_cnn_zoo(
    folder: str | os.PathLike[str],
) -> tuple[Tensor, dict[str, Any], dict[str, list[str]], dict[str, Any]]:
    """Read a published Small CNN Zoo folder.

    Returns:
        `(params [N, P] float32 in the small_cnn layout, metrics (1-D columns as
        write_cnn_zoo takes them), categories, architecture)`.
    """
    folder = Path(folder)
    wpath = folder / "weights.npy"
    mpath = next((folder / n for n in ("metrics.csv", "metrics.csv.gz") if (folder / n).is_file()),
                 None)  # fmt: skip
    if not wpath.is_file() or mpath is None or not (folder / "layout.csv").is_file():
        raise ZooFormatError(
            f"{folder}: a Small CNN Zoo folder holds weights.npy, layout.csv and "
            "metrics.csv[.gz]; some are missing"
        )
    if wpath.stat().st_size > MAX_WEIGHTS_BYTES:
        raise FileTooLargeError(f"{wpath}: larger than {MAX_WEIGHTS_BYTES} bytes")
    try:
        w = np.load(wpath, allow_pickle=False, mmap_mode="r")
    except Exception as e:
        # numpy's header parser raises ValueError, OSError, EOFError, SyntaxError,
        # tokenize.TokenError... on broken files, and object arrays refuse to load without
        # pickle (ValueError): all mean "not a plain numeric .npy array"
        raise ZooFormatError(f"{wpath}: not a plain numeric .npy array ({e!r})") from e
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype.kind != "f":
        raise ZooFormatError(
            f"{wpath}: expected a 2-D float array, got {getattr(w, 'dtype', '?')} "
            f"{list(getattr(w, 'shape', []))}"
        )
    layout = _layout(folder / "layout.csv", int(w.shape[1]))
    header, body = _read_csv(mpath)
    if len(body) != w.shape[0]:
        raise ZooFormatError(
            f"{mpath}: {len(body)} rows, weights.npy has {w.shape[0]} (one row per checkpoint)"
        )
    idx = {k: _find(header, names) for k, names in _COLUMNS.items()}
    missing = [f"{k} ({'/'.join(_COLUMNS[k])})" for k, v in idx.items() if v is None]
    if missing:
        raise ZooFormatError(f"{mpath}: missing columns {missing}")
    metrics: dict[str, Any] = {}
    categories: dict[str, list[str]] = {}
    for k, j in idx.items():
        values = [r[j] for r in body]  # type: ignore[index]
        if k in _CATEGORICAL:
            names = sorted({v.strip().lower() for v in values})
            categories[k] = names or ["none"]
            code = {n: i for i, n in enumerate(names)}
            metrics[k] = np.array([code[v.strip().lower()] for v in values], dtype=np.int64)
            continue
        try:
            col = np.array([float(v) if v.strip() else math.nan for v in values], dtype=np.float64)
        except ValueError as e:
            raise ZooFormatError(f"{mpath}: column {header[j]!r} is not numeric ({e})") from e  # type: ignore[index]
        if not k.endswith("_loss") and not np.isfinite(col).all():
            row = int(np.flatnonzero(~np.isfinite(col))[0]) + 2
            raise ZooFormatError(f"{mpath}: column {header[j]!r} has NaN/inf (row {row})")  # type: ignore[index]
        metrics[k] = col
    if not ((metrics["epoch"] >= 0) & (metrics["epoch"] == np.round(metrics["epoch"]))).all():
        raise ZooFormatError(f"{mpath}: {header[idx['epoch']]} must hold non-negative integers")  # type: ignore[index]
    metrics["epoch"] = metrics["epoch"].astype(np.int64)
    j = _find(header, ("modeldir",))
    if j is not None:  # one network per model folder, numbered in order of appearance
        ids: dict[str, int] = {}
        metrics["network"] = np.array([ids.setdefault(r[j], len(ids)) for r in body], np.int64)
    else:  # a new network whenever the checkpoint does not increase
        e = metrics["epoch"]
        metrics["network"] = np.concatenate([[0], np.cumsum(e[1:] <= e[:-1])]).astype(np.int64)
    # weights: NaN check, then TF -> torch layout
    w = np.array(w, dtype=np.float32)  # a copy: in memory, writable
    bad = ~np.isfinite(w).all(1)
    if bad.any():
        raise ZooFormatError(
            f"{wpath}: {int(bad.sum())} rows hold NaN/inf weights (first: row {int(np.flatnonzero(bad)[0])})"
        )
    parts = []
    for _, shape, start, end in layout:
        block = torch.from_numpy(w[:, start:end]).reshape(len(w), *shape)
        if len(shape) == 4:  # [kh, kw, in, out] -> [out, in, kh, kw]
            block = block.permute(0, 4, 3, 1, 2)
        elif len(shape) == 2:  # [in, out] -> [out, in]
            block = block.permute(0, 2, 1)
        parts.append(block.reshape(len(w), -1))
    params = torch.cat(parts, 1).contiguous()
    k1, kd = layout[0][1], layout[6][1]
    arch = {"in_channels": k1[2], "channels": k1[3], "num_classes": kd[1]}
    return params, metrics, categories, arch


def convert_small_cnn_zoo(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    input_size: int = 28,
    seed: int = 0,
    dataset: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a published Small CNN Zoo folder into a CNN zoo (safetensors + manifest with
    checksums; splits by network, seeded 80 / 10 / 10).

    Args:
        src: the folder with `weights.npy`, `layout.csv`, `metrics.csv[.gz]`.
        out: the zoo folder to create.
        input_size: the images' height and width (28 for MNIST / Fashion-MNIST, 32 for CIFAR-10
            grey-scale and SVHN).
        seed: seed of the split.
        dataset: recorded name (default: the folder's name).
        overwrite: replace an existing zoo at `out`.
    """
    src = Path(src)
    params, metrics, categories, arch = read_small_cnn_zoo(src)
    arch["input_shape"] = [arch["in_channels"], input_size, input_size]
    splits = _default_splits(metrics["network"], (0.8, 0.1, 0.1), seed)
    return write_cnn_zoo(
        out, params, metrics, architecture=arch, categories=categories, splits=splits,
        recipe={"name": "small-cnn-zoo", "source": "published Small CNN Zoo (Unterthiner et al. 2020)"},
        dataset=dataset or src.name, overwrite=overwrite,
        extra={"converted_from": {"layout": "small-cnn-zoo", "folder": src.name}},
    )  # fmt: skip
