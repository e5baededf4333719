from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nngraph_datasets import CorruptFileError, SourceNotFoundError, dilate, load_images, read_idx
from nngraph_datasets.zoo import _limit_splits, make_splits


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_and_mnist_folder(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("t10k", 3)):
        suffix = ".gz" if gz else ""
        _write_idx(
            tmp_path / f"{split}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 4, 4), dtype=np.uint8),
            gz,
        )
        _write_idx(
            tmp_path / f"{split}-labels-idx1-ubyte{suffix}",
            rng.integers(0, 10, n, dtype=np.uint8),
            gz,
        )
    x, _y, ids = load_images("mnist", "all", root=tmp_path)
    assert x.shape == (10, 4, 4) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert ids.tolist() == [*range(7), 60000, 60001, 60002]
    xt, _, idt = load_images("mnist", "test", root=tmp_path)
    assert torch.equal(xt, x[7:]) and idt.tolist() == [60000, 60001, 60002]


def test_idx_rejects_truncation(tmp_path: Path) -> None:
    p = tmp_path / "x-idx3-ubyte"
    _write_idx(p, np.zeros((3, 4, 4), np.uint8), False)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(CorruptFileError, match="holds"):
        read_idx(p)


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist", "train", root=tmp_path)


def test_mnist5k() -> None:
    x, y, ids = load_images("mnist-5k")
    assert x.shape == (5000, 28, 28) and x.max() == 1.0
    assert torch.bincount(y).tolist() == [500] * 10
    assert ids.tolist() == list(range(5000))


def test_digits() -> None:
    pytest.importorskip("sklearn")
    x, _y, _ = load_images("digits")
    assert x.shape == (1797, 8, 8) and x.max() == 1.0


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="dataset-fashion-mnist not installed",
)
def test_fashion_mnist_system_folder() -> None:
    x, _y, ids = load_images("fashion-mnist", "test")
    assert x.shape == (10000, 28, 28) and int(ids[0]) == 60000


def test_dilation_matches_definition() -> None:
    img = torch.zeros(5, 5)
    img[2, 2] = 0.7
    img[0, 4] = 0.3
    d = dilate(img)
    assert d[1:4, 1:4].eq(0.7).all() and d[0, 3] == 0.3 and d[1, 4] == 0.3 and d[4, 0] == 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 9), w=st.integers(1, 9))
def test_dilation_properties(seed: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, h, w, generator=g)
    d = dilate(x)
    assert (d >= x).all()  # extensive
    assert (dilate(torch.minimum(x, x.flip(0))) <= d).all()  # monotone
    ref = torch.full((2, h + 2, w + 2), -1.0)
    ref[:, 1:-1, 1:-1] = x
    brute = torch.stack([ref[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]).amax(0)
    assert torch.equal(d, brute)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    n_per_class=st.integers(10, 60),
    classes=st.integers(2, 10),
    limit=st.integers(1, 300),
)
def test_splits_are_disjoint_balanced_and_seeded(
    seed: int, n_per_class: int, classes: int, limit: int
) -> None:
    labels = np.repeat(np.arange(classes), n_per_class)
    ids = np.arange(len(labels))
    s = make_splits("mnist-5k", labels, ids, seed)
    allrows = np.concatenate(list(s.values()))
    assert len(np.unique(allrows)) == len(labels)
    for part in ("val", "test"):
        assert (np.bincount(labels[s[part]], minlength=classes) == n_per_class // 10).all()
    s2 = make_splits("mnist-5k", labels, ids, seed)
    assert all(np.array_equal(s[k], s2[k]) for k in s)
    lim = _limit_splits(s, limit, seed)
    assert sum(len(v) for v in lim.values()) == min(limit, len(labels))
    assert all(np.isin(lim[k], s[k]).all() for k in s)


def test_70k_split_sizes() -> None:
    ids = np.arange(70000)
    s = make_splits("fashion-mnist", np.zeros(70000, np.int64), ids, 0)
    assert {k: len(v) for k, v in s.items()} == {"train": 55000, "val": 5000, "test": 10000}
    assert (ids[s["test"]] >= 60000).all()
