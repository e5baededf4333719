"""Fuzzing every reader of outside bytes in nngraph-datasets.

Each example mutates a valid file (bytes, or its decoded structure) and runs the reader on it in
a fresh folder: the reader must return a result or raise an `NNGraphError` subclass with a
message, within its time limit, without writing outside the folder. 200 examples per test under
the `ci` profile, 2,000 under `nox -s fuzz`.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nngraph_datasets as nds
from nngraph_datasets.zoo import Zoo
from nngraph_testing.fuzz import (
    EVIL_VALUES,
    Outcomes,
    byte_mutations,
    evil_member_names,
    json_bytes_mutations,
    mutate,
    mutate_tree,
    tree_mutations,
)

pytestmark = pytest.mark.fuzz

# Hypothesis calls a test many times with one fixture value: the examples make their own folders.
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

ZOO_LOAD = Outcomes("zoo: load (manifest + shards)")
ZOO_VERIFY = Outcomes("zoo: verify_zoo")
PTH = Outcomes("published: load_pth")
ZIP = Outcomes("published: read_published (zip)")
CONVERT = Outcomes("published: convert_published")
SPLITS = Outcomes("published: splits json")
IDX = Outcomes("images: read_idx")


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    """A fresh folder per example (the reader may write only into it)."""
    path = Path(tempfile.mkdtemp(prefix="nngraph-fuzz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- valid inputs
def _pth(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _siren_sd(seed: int) -> dict[str, torch.Tensor]:
    return nds.Siren(generator=torch.Generator().manual_seed(seed)).state_dict()


@pytest.fixture(scope="module")
def valid_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 random INRs with images, 3 shards (written by `write_zoo`; no fitting)."""
    gen = torch.Generator().manual_seed(0)
    n = 12
    tensors = {
        "params": torch.randn(n, nds.num_params(), generator=gen) * 0.05,
        "labels": torch.arange(n) % 10,
        "image_ids": torch.arange(n),
        "steps": torch.full((n,), 5, dtype=torch.int32),
        "psnr": torch.rand(n, generator=gen) * 30,
        "images": torch.randint(0, 256, (n, 8, 8), generator=gen, dtype=torch.uint8),
    }
    out = tmp_path_factory.mktemp("fuzz") / "zoo"
    return nds.write_zoo(out, tensors, {"train": (0, 8), "val": (8, 10), "test": (10, 12)},
                         source="digits", recipe={"name": "fuzz"}, image_size=(8, 8),
                         shard_size=4)  # fmt: skip


def _read_zoo(path: Path) -> dict[str, Any]:
    """Everything a training run or `nngraph-datasets info` reads from a zoo."""
    zoo = Zoo(path)
    out: dict[str, Any] = {"psnr": zoo.column("psnr"), "steps": zoo.column("steps")}
    for name in zoo.splits:
        split = nds.load_zoo(path, targets="image" if "images" in zoo.shards[0] else None)[name]
        out[name] = (split.params(), split.labels())
        if len(split):
            out[name + "/items"] = (split[0], split[len(split) - 1])
    return out


def _zoo_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- zoo
@FIXTURE_OK
@given(
    shard=st.integers(0, 2),
    edits=byte_mutations(),
)
def test_fuzz_zoo_shard_bytes(valid_zoo: Path, shard: int, edits: list[Any]) -> None:
    """Byte flips, truncations, huge or negative sizes anywhere in a shard (its header too)."""
    with sandbox() as box:
        zoo = _zoo_copy(valid_zoo, box / "zoo")
        f = zoo / f"shard-{shard:05d}.safetensors"
        f.write_bytes(mutate(f.read_bytes(), edits))
        ZOO_LOAD.run(lambda: _read_zoo(zoo), allowed=box)
        ZOO_VERIFY.run(lambda: nds.verify_zoo(zoo), allowed=box)


_ST_VALUES = st.one_of(
    EVIL_VALUES,
    st.sampled_from(["F32", "F64", "I64", "U8", "BOOL", "F16", "X9", "f32", "BF16"]),
    st.lists(st.integers(-(2**64), 2**64), max_size=4),
)


@FIXTURE_OK
@given(shard=st.integers(0, 2), edits=tree_mutations(_ST_VALUES, max_edits=3),
       length=st.sampled_from([None, 0, 1, 2**63 - 1, 2**64 - 1, -1]))  # fmt: skip
def test_fuzz_zoo_shard_header(valid_zoo: Path, shard: int, edits: list[Any], length: Any) -> None:
    """A shard's safetensors header decoded, mutated (dtypes, shapes, offsets: negative, huge,
    wrong types; keys removed or added) and written back, with a true or lying length field."""
    with sandbox() as box:
        zoo = _zoo_copy(valid_zoo, box / "zoo")
        f = zoo / f"shard-{shard:05d}.safetensors"
        data = f.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = mutate_tree(json.loads(data[8 : 8 + n]), edits)
        raw = json.dumps(header).encode()
        size = len(raw) if length is None else length % 2**64
        f.write_bytes(size.to_bytes(8, "little") + raw + data[8 + n :])
        ZOO_LOAD.run(lambda: _read_zoo(zoo), allowed=box)
        ZOO_VERIFY.run(lambda: nds.verify_zoo(zoo), allowed=box)


@FIXTURE_OK
@given(edits=tree_mutations(), text_edits=st.lists(json_bytes_mutations(), max_size=1))
def test_fuzz_zoo_manifest(valid_zoo: Path, edits: list[Any], text_edits: list[Any]) -> None:
    """The manifest decoded and mutated (wrong types, negative or huge counts, NaN, path tricks
    in shard file names, keys removed or added), then optionally broken as text."""
    with sandbox() as box:
        zoo = _zoo_copy(valid_zoo, box / "zoo")
        mf = zoo / "manifest.json"
        manifest = mutate_tree(json.loads(mf.read_text()), edits)
        mf.write_bytes(mutate(json.dumps(manifest).encode(), text_edits))
        ZOO_LOAD.run(lambda: _read_zoo(zoo), allowed=box)
        ZOO_VERIFY.run(lambda: nds.verify_zoo(zoo), allowed=box)


# ----------------------------------------------------------------------------- .pth
def _evil_tensor() -> st.SearchStrategy[Any]:
    dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16,
                              torch.int64, torch.uint8, torch.bool, torch.complex64])  # fmt: skip
    shapes = st.lists(st.integers(0, 40), max_size=3)
    fill = st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -float("inf"), 1e38])

    def build(dtype: torch.dtype, shape: list[int], value: float, sparse: bool) -> Any:
        t = (
            torch.full(shape, value).to(dtype)
            if dtype.is_floating_point
            else torch.zeros(shape, dtype=dtype)
        )
        return t.to_sparse() if sparse and t.dim() > 0 else t

    return st.builds(build, dtypes, shapes, fill, st.booleans())


_SD_VALUES = st.one_of(EVIL_VALUES, _evil_tensor())
_NAN_EDIT = st.tuples(st.sampled_from(list(nds.inr.param_slices())), st.integers(0, 1023),
                      st.sampled_from([float("nan"), float("inf"), -float("inf")]))  # fmt: skip


@given(
    edits=tree_mutations(_SD_VALUES, max_edits=2),
    nonfinite=st.lists(_NAN_EDIT, max_size=1),
    byte_edits=st.lists(byte_mutations(3), max_size=1),
    label=st.one_of(st.none(), EVIL_VALUES, _evil_tensor()),
)
def test_fuzz_load_pth(
    edits: list[Any], nonfinite: list[Any], byte_edits: list[Any], label: Any
) -> None:
    """State dicts with wrong dtypes and shapes, NaN/Inf, sparse tensors, non-tensors, missing or
    extra keys, saved by `torch.save` and then possibly byte-mutated."""
    sd: dict[str, Any] = dict(_siren_sd(1))
    for key, i, value in nonfinite:
        sd[key].view(-1)[i % sd[key].numel()] = value
    extra: tuple[str, ...] = ()
    if label is not None:
        sd["label"], extra = label, ("label",)
    data = _pth(mutate_tree(sd, edits))
    for e in byte_edits:
        data = mutate(data, e)
    PTH.run(lambda: nds.load_pth(data, "fuzz.pth", extra_keys=extra))


# ----------------------------------------------------------------------------- zip
def _member_name(kind: str, split: str, i: int) -> str:
    if kind == "mnist":
        part = "training" if split == "train" else "testing"
        return f"mnist-inrs/mnist_png_{part}_{i % 10}_{i}/checkpoints/model_final.pth"
    return f"fmnist_inrs/{split}/model_{i}.pth"


@functools.cache
def _members(kind: str) -> tuple[tuple[str, bytes], ...]:
    out = []
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            sd: dict[str, Any] = dict(_siren_sd(i))
            if kind == "fashion-mnist":
                sd["label"] = torch.tensor(i)
            out.append((_member_name(kind, split, i), _pth(sd)))
    return tuple(out)


@st.composite
def published_zips(draw: st.DrawFn) -> tuple[bytes, str]:
    """A published-layout zip (MNIST or Fashion-MNIST) with some members replaced: evil names,
    mutated checkpoints, duplicates, directories; stored or deflated; then maybe byte-mutated."""
    kind = draw(st.sampled_from(["mnist", "fashion-mnist"]))
    members = list(_members(kind))
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["rename", "corrupt", "duplicate", "add", "directory"]))
        k = draw(st.integers(0, len(members) - 1))
        name, data = members[k]
        if what == "rename":
            members[k] = (draw(st.one_of(evil_member_names(), st.just("../" + name))), data)
        elif what == "corrupt":
            members[k] = (name, mutate(data, draw(byte_mutations(3))))
        elif what == "duplicate":
            members.append((name, data))
        elif what == "add":
            members.append((draw(evil_member_names()), draw(st.binary(max_size=64))))
        else:
            members.append((name.rsplit("/", 1)[0] + "/", b""))
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose
        for name, data in members:
            with contextlib.suppress(ValueError, IndexError):  # names zipfile cannot write
                zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, method)
    data = buf.getvalue()
    for e in draw(st.lists(byte_mutations(3), max_size=1)):
        data = mutate(data, e)
    return data, kind


@FIXTURE_OK
@given(zipped=published_zips(), kind=st.sampled_from([None, "mnist", "fashion-mnist"]))
def test_fuzz_read_published(zipped: tuple[bytes, str], kind: str | None) -> None:
    """The published-zoo zip reader: member names with `../`, absolute paths, long and unicode
    names; corrupted, duplicated and extra members; byte flips and truncations of the archive."""
    data, _ = zipped
    with sandbox() as box:
        path = box / "inrs.zip"
        path.write_bytes(data)
        ZIP.run(lambda: nds.read_published(path, kind), allowed=box)


@FIXTURE_OK
@given(zipped=published_zips())
def test_fuzz_convert_published(zipped: tuple[bytes, str]) -> None:
    """`convert_published` reads a zip and writes a zoo: only into its output folder."""
    data, _ = zipped
    with sandbox() as box:
        (box / "in").mkdir()
        path = box / "in" / "inrs.zip"
        path.write_bytes(data)
        before = sorted((box / "in").iterdir())
        out = CONVERT.run(lambda: nds.convert_published(path, box / "out" / "zoo"),
                          allowed=box / "out")  # fmt: skip
        assert sorted((box / "in").iterdir()) == before
        if not isinstance(out, Exception):
            nds.verify_zoo(out)


@FIXTURE_OK
@given(edits=tree_mutations(), text_edits=st.lists(json_bytes_mutations(), max_size=1))
def test_fuzz_splits_json(edits: list[Any], text_edits: list[Any]) -> None:
    """The published splits json: mutated structure and broken text."""
    spec = {
        "train": {"path": [f"x/fmnist_inrs/train/model_{i}.pth" for i in (0, 1)], "label": [0, 1]},
        "val": {"path": ["x/fmnist_inrs/train/model_2.pth"], "label": [2]},
        "test": {"path": [f"x/fmnist_inrs/test/model_{i}.pth" for i in (0, 1)], "label": [0, 1]},
    }
    with sandbox() as box:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for split, n in (("train", 3), ("test", 2)):
                for i in range(n):
                    sd: dict[str, Any] = dict(_siren_sd(i))
                    sd["label"] = torch.tensor(i)
                    zf.writestr(_member_name("fashion-mnist", split, i), _pth(sd))
        (box / "f.zip").write_bytes(buf.getvalue())
        text = json.dumps(mutate_tree(spec, edits)).encode()
        (box / "s.json").write_bytes(mutate(text, text_edits))
        SPLITS.run(lambda: nds.read_published(box / "f.zip", splits_json=box / "s.json"),
                   allowed=box)  # fmt: skip


# ----------------------------------------------------------------------------- IDX
@st.composite
def idx_files(draw: st.DrawFn) -> bytes:
    """IDX files with mutated headers (dtype code, number of dimensions, sizes up to 2^32 - 1)
    and bodies, raw or gzipped (gzip streams mutated too)."""
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]))
    dims = draw(st.one_of(st.just(list(arr.shape)),
                          st.lists(st.sampled_from([0, 1, 2, 3, 4, 2**31, 2**32 - 1]), max_size=6)))  # fmt: skip
    raw = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()
    raw = mutate(
        raw, draw(st.lists(byte_mutations(2), max_size=1).map(lambda x: x[0] if x else []))
    )
    if draw(st.booleans()):
        raw = gzip.compress(raw, mtime=0)
        for e in draw(st.lists(byte_mutations(2), max_size=1)):
            raw = mutate(raw, e)
    return raw


@given(data=idx_files())
def test_fuzz_read_idx(data: bytes) -> None:
    with sandbox() as box:
        path = box / "train-images-idx3-ubyte"
        path.write_bytes(data)
        IDX.run(lambda: nds.read_idx(path), allowed=box)


def test_gzip_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(4) + bytes(50 << 20)))  # 50 MB of zeros in 50 KB
    with pytest.raises(nds.FileTooLargeError, match="gunzipped"):
        nds.read_idx(path, max_bytes=1 << 20)
