"""Fuzzing the readers of CNN zoos (manifest + shards) and of the published Small CNN Zoo
layout: each example mutates a valid file and runs the reader in a fresh folder; it must return
a result or raise an `NNGraphError` subclass with a message, in time, writing nowhere else.
200 examples per test under the `ci` profile, 2,000 under `nox -s fuzz`."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import _ST_VALUES, sandbox

import nngraph_datasets as nds
from nngraph_testing.fuzz import (
    Outcomes,
    byte_mutations,
    json_bytes_mutations,
    mutate,
    mutate_tree,
    tree_mutations,
)

pytestmark = pytest.mark.fuzz
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

CNN_LOAD = Outcomes("cnn zoo: load (manifest + shards)")
CNN_VERIFY = Outcomes("cnn zoo: verify_cnn_zoo")


@pytest.fixture(scope="module")
def valid_cnn_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 random networks x 2 checkpoints in 3 shards (written by `write_cnn_zoo`)."""
    g = torch.Generator().manual_seed(0)
    m = 24
    metrics: dict[str, Any] = {
        "network": torch.arange(m) // 2, "epoch": torch.arange(m) % 2 * 5,
        "train_acc": torch.rand(m, generator=g), "test_acc": torch.rand(m, generator=g),
        "train_loss": torch.rand(m, generator=g) * 3, "test_loss": torch.rand(m, generator=g) * 3,
        "activation": torch.arange(m) // 2 % 2, "initializer": torch.arange(m) // 2 % 5,
        "optimizer": torch.arange(m) // 2 % 3, "init_std": torch.rand(m, generator=g),
        "lr": torch.rand(m, generator=g) / 10, "l2": torch.rand(m, generator=g) / 100,
        "dropout": torch.rand(m, generator=g) / 2, "train_fraction": torch.rand(m, generator=g),
    }  # fmt: skip
    cats = {"activation": list(nds.ACTIVATIONS), "initializer": list(nds.INITIALIZERS),
            "optimizer": list(nds.OPTIMIZERS)}  # fmt: skip
    out = tmp_path_factory.mktemp("fuzz-cnn") / "zoo"
    return nds.write_cnn_zoo(out, torch.randn(m, 4970, generator=g) * 0.1, metrics,
                             architecture={"in_channels": 1, "input_shape": [1, 28, 28]},
                             recipe={"name": "fuzz"}, categories=cats, shard_size=8)  # fmt: skip


def _read(path: Path) -> dict[str, Any]:
    """Everything a training run or `cnn-zoo info` reads from a CNN zoo."""
    from nngraph_datasets.cli import cnn_zoo_info

    zoo = nds.CnnZoo(path)
    out: dict[str, Any] = {"all": (zoo.params(), zoo.metrics())}
    for name in zoo.splits:
        out[name] = (zoo.params(name), zoo.metrics(name))
    out["model"] = zoo.architecture().state_dict()
    out["info"] = cnn_zoo_info(path)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@FIXTURE_OK
@given(shard=st.integers(0, 2), edits=byte_mutations())
def test_fuzz_cnn_zoo_shard_bytes(valid_cnn_zoo: Path, shard: int, edits: list[Any]) -> None:
    with sandbox() as box:
        zoo = _copy(valid_cnn_zoo, box / "zoo")
        f = zoo / f"shard-{shard:05d}.safetensors"
        f.write_bytes(mutate(f.read_bytes(), edits))
        CNN_LOAD.run(lambda: _read(zoo), allowed=box)
        CNN_VERIFY.run(lambda: nds.verify_cnn_zoo(zoo), allowed=box)


@FIXTURE_OK
@given(shard=st.integers(0, 2), edits=tree_mutations(_ST_VALUES, max_edits=3),
       length=st.sampled_from([None, 0, 1, 2**63 - 1, 2**64 - 1, -1]))  # fmt: skip
def test_fuzz_cnn_zoo_shard_header(
    valid_cnn_zoo: Path, shard: int, edits: list[Any], length: Any
) -> None:
    with sandbox() as box:
        zoo = _copy(valid_cnn_zoo, box / "zoo")
        f = zoo / f"shard-{shard:05d}.safetensors"
        data = f.read_bytes()
        n = int.from_bytes(data[:8], "little")
        raw = json.dumps(mutate_tree(json.loads(data[8 : 8 + n]), edits)).encode()
        size = len(raw) if length is None else length % 2**64
        f.write_bytes(size.to_bytes(8, "little") + raw + data[8 + n :])
        CNN_LOAD.run(lambda: _read(zoo), allowed=box)
        CNN_VERIFY.run(lambda: nds.verify_cnn_zoo(zoo), allowed=box)


@FIXTURE_OK
@given(edits=tree_mutations(), text_edits=st.lists(json_bytes_mutations(), max_size=1))
def test_fuzz_cnn_zoo_manifest(
    valid_cnn_zoo: Path, edits: list[Any], text_edits: list[Any]
) -> None:
    with sandbox() as box:
        zoo = _copy(valid_cnn_zoo, box / "zoo")
        mf = zoo / "manifest.json"
        manifest = mutate_tree(json.loads(mf.read_text()), edits)
        mf.write_bytes(mutate(json.dumps(manifest).encode(), text_edits))
        CNN_LOAD.run(lambda: _read(zoo), allowed=box)
        CNN_VERIFY.run(lambda: nds.verify_cnn_zoo(zoo), allowed=box)


def test_valid_cnn_zoo_reads(valid_cnn_zoo: Path) -> None:
    """The unmutated fixture reads (the fuzz tests start from a valid zoo)."""
    out = _read(valid_cnn_zoo)
    assert out["all"][0].shape == (24, 4970)
    assert sum(len(out[s][0]) for s in ("train", "val", "test")) == 24
    assert out["info"]["num_networks"] == 12
    nds.verify_cnn_zoo(valid_cnn_zoo)


# ----------------------------------------------------------------------------- published layout
SMALL_CNN_ZOO = Outcomes("published: convert_small_cnn_zoo")


@pytest.fixture(scope="module")
def valid_published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_cnn_zoo import write_small_cnn_zoo

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz-published") / "fmnist"
    write_small_cnn_zoo(folder, [nds.small_cnn() for _ in range(3)], gz=False)
    return folder


@FIXTURE_OK
@given(file=st.sampled_from(["weights.npy", "layout.csv", "metrics.csv"]), edits=byte_mutations(),
       gz=st.booleans())  # fmt: skip
def test_fuzz_small_cnn_zoo(valid_published: Path, file: str, edits: list[Any], gz: bool) -> None:
    """Byte flips, truncations and insertions in one file of a published Small CNN Zoo folder
    (the metrics optionally gzipped after the edit), then the conversion."""
    with sandbox() as box:
        src = _copy(valid_published, box / "src")
        f = src / file
        data = mutate(f.read_bytes(), edits)
        if file == "metrics.csv" and gz:
            f.unlink()
            f = src / "metrics.csv.gz"
            data = gzip.compress(data, mtime=0)
        f.write_bytes(data)
        SMALL_CNN_ZOO.run(lambda: nds.convert_small_cnn_zoo(src, box / "out"), allowed=box)


# ----------------------------------------------------------------------------- malicious files
def test_malicious_corpus_against_cnn_readers(
    valid_cnn_zoo: Path, valid_published: Path, tmp_path: Path
) -> None:
    """Every payload of the malicious corpus (>= 25) in place of each file a CNN zoo reader
    opens -- a shard, the manifest, and the three files of a published Small CNN Zoo folder:
    a typed error each time and no canary file, while the same payloads loaded the unsafe way
    do create theirs."""
    import os

    from test_reliability import _report

    from nngraph_core import NNGraphError
    from nngraph_testing.malicious import malicious_corpus, run_control

    corpus = malicious_corpus(tmp_path / "canaries")
    assert len(corpus) >= 25
    fired = run_control(corpus, tmp_path / "control" / "a" / "b")
    assert sorted(fired) == sorted(p.name for p in corpus), "the corpus is not live"
    shard = sorted(p.name for p in valid_cnn_zoo.glob("*.safetensors"))[0]
    cwd = os.getcwd()
    rejected: dict[str, str] = {}
    try:
        for payload in corpus:
            work = tmp_path / "runs" / payload.name
            work.mkdir(parents=True)

            def zoo_with(
                name: str, tag: str, work: Path = work, data: bytes = payload.data
            ) -> Path:
                zoo = shutil.copytree(valid_cnn_zoo, work / f"zoo-{tag}")
                (zoo / name).write_bytes(data)
                return zoo

            def published_with(name: str, work: Path = work, data: bytes = payload.data) -> Path:
                src = shutil.copytree(valid_published, work / f"pub-{name}")
                (src / name).write_bytes(data)
                return src

            readers = {
                "CnnZoo shard": lambda: _read(zoo_with(shard, "read")),
                "verify_cnn_zoo": lambda: nds.verify_cnn_zoo(zoo_with(shard, "verify")),
                "CnnZoo manifest": lambda: _read(zoo_with("manifest.json", "manifest")),
                **{
                    f"convert_small_cnn_zoo ({f})": (
                        lambda f=f, work=work: nds.convert_small_cnn_zoo(
                            published_with(f), work / f"out-{f}"
                        )
                    )
                    for f in ("weights.npy", "layout.csv", "metrics.csv")
                },
            }
            for reader, run in readers.items():
                os.chdir(work)
                with pytest.raises(NNGraphError) as info:
                    run()
                assert str(info.value), (payload.name, reader)
                rejected[f"{payload.name} -> {reader}"] = type(info.value).__name__
                assert not payload.canary.exists(), f"{payload.name} ran in {reader}"
    finally:
        os.chdir(cwd)
    assert not any((tmp_path / "canaries").iterdir())
    assert len(rejected) == len(corpus) * 6
    _report("malicious-cnn", {"payloads": len(corpus), "runs": len(rejected),
                              "rejected": len(rejected), "executed": 0, "by": rejected})  # fmt: skip


# ----------------------------------------------------------------------------- wild park zoos
WILD_LOAD = Outcomes("wild park zoo: load (manifest + shards)")
WILD_VERIFY = Outcomes("wild park zoo: verify_wild_park_zoo")
WILD_PARK = Outcomes("published: convert_cnn_wild_park")


@pytest.fixture(scope="module")
def valid_wild_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 random networks of 2 architectures (one residual) x 2 checkpoints, 2 shards."""
    g = torch.Generator().manual_seed(0)
    archs = [nds.wild_cnn(2, 4, 3, "relu"), nds.wild_cnn(4, 4, 5, "gelu", residual=True)]
    m = 12
    arch = torch.arange(m) // 2 % 2
    params = [torch.randn(archs[int(a)].num_params, generator=g) * 0.1 for a in arch]
    metrics = {"network": torch.arange(m) // 2, "epoch": torch.arange(m) % 2,
               "architecture": arch, "test_acc": torch.rand(m, generator=g)}  # fmt: skip
    out = tmp_path_factory.mktemp("fuzz-wild") / "zoo"
    return nds.write_wild_park_zoo(out, archs, params, metrics, input_shape=[1, 16, 16],
                                   recipe={"name": "fuzz"})  # fmt: skip


def _read_wild(path: Path) -> dict[str, Any]:
    """Everything a training run or `wild-park-zoo info` reads from a wild park zoo."""
    from nngraph_datasets.cli import wild_park_zoo_info

    zoo = nds.WildParkZoo(path)
    out: dict[str, Any] = {"metrics": zoo.metrics(), "info": wild_park_zoo_info(path)}
    for name in zoo.splits:
        out[name] = zoo.params_by_architecture(name)
    out["graphs"] = zoo.graph_batch(torch.arange(min(len(zoo), 4)))
    return out


@FIXTURE_OK
@given(shard=st.integers(0, 1), edits=byte_mutations())
def test_fuzz_wild_park_zoo_shard_bytes(valid_wild_zoo: Path, shard: int, edits: list[Any]) -> None:
    with sandbox() as box:
        zoo = _copy(valid_wild_zoo, box / "zoo")
        f = zoo / f"shard-{shard:05d}.safetensors"
        f.write_bytes(mutate(f.read_bytes(), edits))
        WILD_LOAD.run(lambda: _read_wild(zoo), allowed=box)
        WILD_VERIFY.run(lambda: nds.verify_wild_park_zoo(zoo), allowed=box)


@FIXTURE_OK
@given(edits=tree_mutations(), text_edits=st.lists(json_bytes_mutations(), max_size=1))
def test_fuzz_wild_park_zoo_manifest(
    valid_wild_zoo: Path, edits: list[Any], text_edits: list[Any]
) -> None:
    with sandbox() as box:
        zoo = _copy(valid_wild_zoo, box / "zoo")
        mf = zoo / "manifest.json"
        manifest = mutate_tree(json.loads(mf.read_text()), edits)
        mf.write_bytes(mutate(json.dumps(manifest).encode(), text_edits))
        WILD_LOAD.run(lambda: _read_wild(zoo), allowed=box)
        WILD_VERIFY.run(lambda: nds.verify_wild_park_zoo(zoo), allowed=box)


@pytest.fixture(scope="module")
def valid_wild_park(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_wild_park import write_cnn_wild_park

    folder = tmp_path_factory.mktemp("fuzz-wild-park") / "park"
    write_cnn_wild_park(folder, networks=2, epochs=(1,))
    return folder


@FIXTURE_OK
@given(target=st.sampled_from(["checkpoint", "splits"]), edits=byte_mutations())
def test_fuzz_cnn_wild_park(valid_wild_park: Path, target: str, edits: list[Any]) -> None:
    """Byte flips, truncations and insertions in a checkpoint or the splits file of a CNN Wild
    Park folder (reference layout), then the conversion."""
    with sandbox() as box:
        src = _copy(valid_wild_park, box / "src")
        f = (src / "zoo/trial_001/checkpoint_000001/checkpoint.pt" if target == "checkpoint"
             else src / "cnn_park_splits.json")  # fmt: skip
        f.write_bytes(mutate(f.read_bytes(), edits))
        WILD_PARK.run(lambda: nds.convert_cnn_wild_park(src, box / "out"), allowed=box)


def test_valid_wild_park_zoo_reads(valid_wild_zoo: Path) -> None:
    out = _read_wild(valid_wild_zoo)
    assert out["info"]["num_networks"] == 6 and out["info"]["num_architectures"] == 2
    assert out["graphs"].num_graphs == 4
    nds.verify_wild_park_zoo(valid_wild_zoo)
