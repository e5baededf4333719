from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nngraph_datasets import (
    BENCHMARK,
    IntegrityError,
    ZooExistsError,
    ZooFormatError,
    build_zoo,
    dilate,
    load_zoo,
    verify_zoo,
)
from nngraph_datasets.zoo import Zoo

pytest.importorskip("sklearn")
RECIPE = dataclasses.replace(BENCHMARK, steps=4)
KW = {"seed": 3, "limit": 40, "shard_size": 16, "batch_size": 8, "compile": False}


def _hashes(path: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((path / "manifest.json").read_text())["shards"]]


def test_build_load_verify(tmp_path: Path) -> None:
    out = build_zoo(tmp_path / "z", "digits", RECIPE, **KW)
    m = verify_zoo(out)
    assert m["num_inrs"] == 40 and len(m["shards"]) == 3 and m["recipe"]["steps"] == 4
    sp = m["splits"]
    assert (
        sp["train"][0] == 0
        and sp["train"][1] == sp["val"][0]
        and sp["val"][1] == sp["test"][0]
        and sp["test"][1] == 40
    )
    assert sp["train"][1] >= 30 and sp["val"][1] - sp["val"][0] >= 3
    splits = load_zoo(out, targets="dilated")
    item = splits["train"][0]
    assert item["params"].shape == (1185,) and item["params"].dtype == torch.float32
    assert item["target"].shape == (8, 8)
    zoo = Zoo(out)
    img = zoo.images(0, 1)[0]
    assert torch.equal(item["target"], dilate(img))
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == 40
    assert (zoo.column("steps") == 4).all()
    assert not (tmp_path / ".z.partial").exists()
    with pytest.raises(ZooExistsError):
        build_zoo(tmp_path / "z", "digits", RECIPE, **KW)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = build_zoo(tmp_path / "a", "digits", RECIPE, **KW)
    b = build_zoo(tmp_path / "b", "digits", RECIPE, **KW)
    assert _hashes(a) == _hashes(b)
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()


def test_flipped_byte_is_caught(tmp_path: Path) -> None:
    out = build_zoo(tmp_path / "z", "digits", RECIPE, **KW)
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="shard-00001"):
        verify_zoo(out)


def test_interrupted_build_resumes_to_the_same_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = build_zoo(tmp_path / "ref", "digits", RECIPE, **KW)
    import nngraph_datasets.fit as fit_mod

    real = fit_mod.fit_inrs
    calls = {"n": 0}

    def dying(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_mod, "fit_inrs", dying)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path / "z", "digits", RECIPE, **KW)
    monkeypatch.setattr(fit_mod, "fit_inrs", real)
    partial = tmp_path / ".z.partial"
    assert (partial / "shard-00000.safetensors").exists() and not (tmp_path / "z").exists()
    with pytest.raises(ZooFormatError, match="no manifest"):
        load_zoo(partial)
    # a half-written shard left behind by a kill is ignored
    (partial / "shard-00001.safetensors").write_bytes(b"\x10\x00")
    seen = []
    build_zoo(tmp_path / "z", "digits", RECIPE, progress=lambda d, t, p: seen.append(d), **KW)
    assert _hashes(tmp_path / "z") == _hashes(ref)
    assert seen[0] > 16  # the finished first shard was not refitted
    with pytest.raises(ZooFormatError, match="different settings"):
        (tmp_path / ".y.partial").mkdir()
        (tmp_path / ".y.partial" / "build.json").write_text("{}")
        build_zoo(tmp_path / "y", "digits", RECIPE, **KW)


def test_dataset_pickles_without_data(tmp_path: Path) -> None:
    import pickle

    out = build_zoo(tmp_path / "z", "digits", RECIPE, **KW)
    ds = load_zoo(out)["train"]
    _ = ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # memory maps are not pickled; workers re-map
    assert torch.equal(pickle.loads(blob)[3]["params"], ds[3]["params"])
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    batch = next(iter(loader))
    assert batch["params"].shape == (8, 1185)
    assert np.array_equal(ds.params().numpy()[:8], batch["params"].numpy())
