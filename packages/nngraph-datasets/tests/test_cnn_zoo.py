"""CNN zoos: the architecture and its layout, the batched trainer against a plain loop, storage
(determinism, integrity, resumption, splits by network), and write_cnn_zoo's checks."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import nngraph_datasets as nds
from nngraph_core import GraphTemplate, NNGraphError
from nngraph_datasets.cnn_zoo import _load_data, _plain_train
from nngraph_testing.faults import kill_at

pytest.importorskip("sklearn")
TINY = nds.CnnRecipe.named("tiny")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nds.build_cnn_zoo(
        tmp_path_factory.mktemp("cnn") / "z", dataset="digits", recipe="tiny", progress=False
    )


# ----------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_small_cnn_has_4970_params_and_the_template_layout(activation: str) -> None:
    torch.manual_seed(0)
    model = nds.small_cnn(activation, dropout=0.3)
    assert sum(p.numel() for p in model.parameters()) == 4970
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    template = GraphTemplate.from_module(model)
    flat = template.flatten(model)
    assert template.num_params == 4970
    # state-dict order, torch [out, in, kh, kw] kernels; the same keys for every activation
    assert torch.equal(flat, torch.cat([v.reshape(-1) for v in model.state_dict().values()]))
    assert list(model.state_dict()) == list(nds.small_cnn("relu").state_dict())
    assert torch.equal(flat[:144].view(16, 1, 3, 3), model[0].weight.detach())
    with pytest.raises(ValueError, match="activation"):
        nds.small_cnn("gelu")


@pytest.mark.parametrize("initializer", nds.INITIALIZERS)
def test_initializers_have_their_scale(initializer: str) -> None:
    sd = nds.init_cnn_params(initializer, 0.05, torch.Generator().manual_seed(0), channels=64)
    w = sd["3.weight"]  # [64, 64, 3, 3]: fan_in 576
    expected = {"normal": 0.05, "uniform": 0.05, "truncated_normal": 0.05 * 0.8796,
                "glorot_uniform": (2 / (576 + 576)) ** 0.5, "he_normal": (2 / 576) ** 0.5}  # fmt: skip
    assert float(w.std()) == pytest.approx(expected[initializer], rel=0.03)
    assert not sd["3.bias"].any()
    if initializer == "truncated_normal":
        assert float(w.abs().max()) <= 0.1


# ----------------------------------------------------------------------------- batched training
def _problem(
    optimizer: str, dtype: torch.dtype, acts: tuple[int, ...] = (0, 1, 0, 1)
) -> dict[str, Any]:
    """4 networks (relu and tanh, different lr, l2, dropout) on 16x16 random images."""
    g = torch.Generator().manual_seed(3)
    B = 4
    hp = {
        "activation": np.array(acts),
        "optimizer": np.full(B, nds.OPTIMIZERS.index(optimizer)),
        "lr": np.array([1e-3, 3e-3, 1e-2, 3e-2]),
        "l2": np.array([0.0, 1e-3, 1e-2, 1e-4]),
        "dropout": np.array([0.0, 0.2, 0.5, 0.1]),
    }
    init = [nds.init_cnn_params("glorot_uniform", 0.1, g, dtype=dtype) for _ in range(B)]
    x = torch.rand(40, 1, 16, 16, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (40,), generator=g)
    batches = np.random.default_rng(0).integers(0, 40, size=(3, 8, B))  # own batches per network
    masks_by_step = []
    for _ in range(3):
        keep = 1 - torch.as_tensor(hp["dropout"], dtype=dtype).repeat_interleave(16)
        ms = []
        for hw in ((7, 7), (3, 3)):
            u = torch.rand((8, B * 16, *hw), generator=g, dtype=dtype)
            ms.append((u < keep.view(1, -1, 1, 1)).to(dtype) / keep.view(1, -1, 1, 1))
        masks_by_step.append(ms)
    return {"init": init, "hp": hp, "x": x, "y": y, "batches": batches,
            "masks": lambda s: masks_by_step[s]}  # fmt: skip


@pytest.mark.parametrize("acts", [(0, 1, 0, 1), (0, 0, 1, 1)])
@pytest.mark.parametrize("optimizer", nds.OPTIMIZERS)
def test_batched_training_equals_a_plain_loop_in_float64(
    optimizer: str, acts: tuple[int, ...]
) -> None:
    """The correctness proof of the vectorised update rules: 3 steps of 4 networks trained at
    once (grouped convolutions, Adam / RMSProp / SGD over the network axis, L2, dropout)
    equal 4 `small_cnn`s each trained by its own `torch.optim` optimiser on the same batches."""
    pr = _problem(optimizer, torch.float64, acts)
    params, metrics = nds.train_cnns(
        pr["init"], pr["hp"], pr["x"], pr["y"], pr["batches"], checkpoints=(0, 1),
        steps_per_epoch=3, dtype=torch.float64, masks=pr["masks"],
    )  # fmt: skip
    ref = _plain_train(pr["init"], pr["hp"], pr["x"], pr["y"], pr["batches"], steps=3,
                       dtype=torch.float64, masks=pr["masks"])  # fmt: skip
    assert params.dtype == torch.float64 and params.shape == (2, 4, 4970)
    start = torch.stack([torch.cat([v.reshape(-1) for v in sd.values()]) for sd in pr["init"]])
    assert torch.equal(params[0], start)
    assert (params[1] - start).abs().amax(1).min() > 1e-5  # every network moved
    torch.testing.assert_close(params[1], ref, rtol=0, atol=1e-10)
    assert bool(metrics["alive"].all())


def test_a_diverging_network_stops_with_finite_weights() -> None:
    pr = _problem("sgd", torch.float32)
    pr["hp"]["lr"] = np.array([1e-3, 1e30, 1e-3, 1e-3])
    params, metrics = nds.train_cnns(pr["init"], pr["hp"], pr["x"], pr["y"], pr["batches"],
                                     checkpoints=(0, 1), steps_per_epoch=3)  # fmt: skip
    assert bool(torch.isfinite(params).all())
    assert metrics["alive"][1].tolist() == [True, False, True, True]


# ----------------------------------------------------------------------------- zoo
def test_tiny_zoo_contents(tiny_zoo: Path) -> None:
    zoo = nds.CnnZoo(tiny_zoo)
    C = len(TINY.checkpoints)
    assert len(zoo) == TINY.num_networks * C == zoo.params().shape[0]
    assert zoo.params().dtype == torch.float32 and zoo.params().shape[1] == 4970
    m = zoo.metrics()
    for col in ("network", "epoch", "activation", "initializer", "optimizer"):
        assert m[col].dtype == torch.int64, col
    for col in ("train_acc", "test_acc", "train_loss", "test_loss", "init_std", "lr", "l2",
                "dropout", "train_fraction"):  # fmt: skip
        assert m[col].dtype == torch.float32, col
    assert m["epoch"][:C].tolist() == list(TINY.checkpoints)
    assert ((m["test_acc"] >= 0) & (m["test_acc"] <= 1)).all()
    assert zoo.categories["optimizer"] == list(nds.OPTIMIZERS)
    lo, hi = TINY.lr
    assert bool(((m["lr"] >= lo * 0.999) & (m["lr"] <= hi * 1.001)).all())
    assert zoo.template().num_params == 4970
    # hyper-parameters are per network: constant over its checkpoints
    for col in ("lr", "optimizer", "activation", "dropout"):
        assert bool((m[col].view(-1, C) == m[col].view(-1, C)[:, :1]).all()), col


def test_stored_weights_reproduce_the_stored_test_accuracy(tiny_zoo: Path) -> None:
    """Load each final checkpoint into `zoo.architecture(activation)` and evaluate it on the
    zoo's test images: the accuracy and loss recorded in the zoo."""
    zoo = nds.CnnZoo(tiny_zoo)
    _, _, test_x, test_y, _ = _load_data("digits", TINY, 0, None)
    m = zoo.metrics()
    template = zoo.template()
    last = torch.nonzero(m["epoch"] == max(TINY.checkpoints)).flatten()
    for row in last.tolist():
        model = zoo.architecture(zoo.categories["activation"][int(m["activation"][row])]).eval()
        model.load_state_dict(template.unflatten(zoo.params()[row]))
        with torch.no_grad():
            logits = model(test_x)
        acc = float((logits.argmax(1) == test_y).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, test_y))
        assert acc == pytest.approx(float(m["test_acc"][row]), abs=1e-6)
        assert loss == pytest.approx(float(m["test_loss"][row]), rel=1e-4)


def test_splits_are_by_network(tiny_zoo: Path) -> None:
    zoo = nds.CnnZoo(tiny_zoo)
    net = zoo.metrics()["network"]
    owners: dict[int, str] = {}
    rows = torch.cat(list(zoo.splits.values()))
    assert sorted(rows.tolist()) == list(range(len(zoo)))  # every checkpoint exactly once
    for name, idx in zoo.splits.items():
        assert len(zoo.params(name)) == len(idx)
        for n in net[idx].tolist():
            assert owners.setdefault(n, name) == name
    assert set(owners.values()) == {"train", "val", "test"}


def test_rebuild_is_byte_identical_and_verify_catches_a_flipped_byte(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    again = nds.build_cnn_zoo(tmp_path / "z", dataset="digits", recipe="tiny", progress=False)
    assert _files(again) == _files(tiny_zoo)
    other = nds.build_cnn_zoo(tmp_path / "s1", dataset="digits", recipe="tiny", seed=1,
                              progress=False)  # fmt: skip
    assert _files(other)["shard-00000.safetensors"] != _files(again)["shard-00000.safetensors"]
    manifest = nds.verify_cnn_zoo(again)
    assert manifest["num_checkpoints"] == len(nds.CnnZoo(again))
    shard = again / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(nds.IntegrityError, match=r"shard-00001\.safetensors: sha256 mismatch"):
        nds.verify_cnn_zoo(again)


def test_interrupted_build_resumes_to_the_same_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    """Stop a build after its second shard (an exception from the progress callback): the
    finished shards stay in the partial folder and the rerun resumes to identical bytes."""

    class Stop(Exception):
        pass

    def stop_after_two(done: float, info: str) -> None:
        if done >= 2 * TINY.group_size + 1:
            raise Stop

    out = tmp_path / "z"
    with pytest.raises(Stop):
        nds.build_cnn_zoo(out, dataset="digits", recipe="tiny", progress=stop_after_two)
    partial = tmp_path / ".z.partial"
    kept = sorted(p.name for p in partial.glob("shard-*"))
    assert kept == ["shard-00000.safetensors", "shard-00001.safetensors"]
    trained: list[float] = []
    nds.build_cnn_zoo(out, dataset="digits", recipe="tiny", progress=lambda d, i: trained.append(d))
    assert _files(out) == _files(tiny_zoo) and not partial.exists()
    # the two finished shards were not retrained: reported at once, whole
    assert [d for d in trained if d <= 2 * TINY.group_size] == [4.0, 8.0]
    with pytest.raises(nds.ZooExistsError):
        nds.build_cnn_zoo(out, dataset="digits", recipe="tiny", progress=False)


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    partial = tmp_path / ".z.partial"
    partial.mkdir()
    (partial / "build.json").write_text(json.dumps({"seed": 5}))
    with pytest.raises(nds.ZooFormatError, match="different settings"):
        nds.build_cnn_zoo(tmp_path / "z", dataset="digits", recipe="tiny", progress=False)


def test_load_cnn_zoo_builds_once_into_the_cache(
    tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNGRAPH_ZOOS", str(tmp_path))
    path = nds.default_cnn_zoo_dir("digits", "tiny", 0)
    assert path == tmp_path / "cnn-digits-tiny-s0"
    with pytest.raises(nds.ZooFormatError, match="cnn-zoo fit"):
        nds.load_cnn_zoo("digits", "tiny", build=False)
    shutil.copytree(tiny_zoo, path)  # a cached zoo is used as is
    zoo = nds.load_cnn_zoo("digits", "tiny", build=False)
    assert zoo.path == path and len(zoo) == len(nds.CnnZoo(tiny_zoo))
    custom = dataclasses.replace(TINY, epochs=3, checkpoints=(0, 3))
    assert nds.default_cnn_zoo_dir("digits", custom).name.startswith("cnn-digits-tiny-")
    assert nds.default_cnn_zoo_dir("digits", custom) != path
    shutil.copytree(tiny_zoo, nds.default_cnn_zoo_dir("digits", custom))  # a stale cache entry
    with pytest.raises(nds.ZooFormatError, match="another recipe"):
        nds.load_cnn_zoo("digits", custom, build=False)


# ----------------------------------------------------------------------------- write_cnn_zoo
def _columns(zoo: nds.CnnZoo) -> dict[str, torch.Tensor]:
    return zoo.metrics()


def test_write_cnn_zoo_round_trip(tiny_zoo: Path, tmp_path: Path) -> None:
    zoo = nds.CnnZoo(tiny_zoo)
    cols = _columns(zoo)
    splits = {"train": [0, 1, 2, 3, 4, 5, 6, 7], "test": [8, 9, 10, 11]}
    out = nds.write_cnn_zoo(tmp_path / "w", zoo.params(), cols, architecture={"in_channels": 1,
                            "input_shape": [1, 16, 16]}, recipe={"made": "by hand"},
                            categories=zoo.categories, splits=splits, shard_size=10)  # fmt: skip
    back = nds.CnnZoo(out)
    nds.verify_cnn_zoo(out)
    assert len(back.manifest["shards"]) == 4  # 36 checkpoints, 10 per shard
    assert torch.equal(back.params(), zoo.params())
    assert all(torch.equal(back.metrics()[k], v) for k, v in cols.items())
    assert back.splits["test"].tolist() == list(range(24, 36))
    assert back.recipe == {"made": "by hand"}


def _bad_inputs(zoo: nds.CnnZoo) -> dict[str, tuple[dict[str, Any], str]]:
    p, cols = zoo.params(), _columns(zoo)
    nan = p.clone()
    nan[3, 7] = float("nan")
    no_acc = {k: v for k, v in cols.items() if k != "test_acc"}
    short = {**cols, "lr": cols["lr"][:-1]}
    acc2 = {**cols, "test_acc": cols["test_acc"] + 1.5}
    codes = {**cols, "optimizer": cols["optimizer"] + 7}
    obj = {**cols, "l2": np.array(["a"] * len(p), dtype=object)}
    return {
        "nan params": ({"params": nan}, "NaN"),
        "wrong width": ({"params": p[:, :100]}, "100 columns"),
        "missing column": ({"metrics": no_acc}, "test_acc"),
        "short column": ({"metrics": short}, "one value per checkpoint"),
        "accuracy out of range": ({"metrics": acc2}, r"\[0, 1\]"),
        "unknown code": ({"metrics": codes}, "codes outside"),
        "object column": ({"metrics": obj}, "not a number"),
        "overlapping splits": ({"splits": {"train": [0, 1, 2], "test": [2, 3]}}, "shares"),
        "unknown network": ({"splits": {"train": [0, 99]}}, "does not have"),
    }


BAD_CASES = ["nan params", "wrong width", "missing column", "short column",
             "accuracy out of range", "unknown code", "object column", "overlapping splits",
             "unknown network"]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_write_cnn_zoo_rejects_bad_input(tiny_zoo: Path, tmp_path: Path, case: str) -> None:
    zoo = nds.CnnZoo(tiny_zoo)
    assert sorted(_bad_inputs(zoo)) == sorted(BAD_CASES)
    change, match = _bad_inputs(zoo)[case]
    kw: dict[str, Any] = {
        "params": zoo.params(),
        "metrics": _columns(zoo),
        "splits": None,
        **change,
    }
    with pytest.raises(nds.ZooFormatError, match=match):
        nds.write_cnn_zoo(tmp_path / "w", kw["params"], kw["metrics"], architecture={},
                          recipe={}, categories=zoo.categories, splits=kw["splits"])  # fmt: skip
    assert not any(tmp_path.iterdir())  # nothing written


def test_reading_a_broken_zoo_is_a_typed_error(tiny_zoo: Path, tmp_path: Path) -> None:
    z = shutil.copytree(tiny_zoo, tmp_path / "z")
    mf = json.loads((z / "manifest.json").read_text())
    mf["splits"]["test"].append(mf["splits"]["train"][0])
    (z / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(nds.ZooFormatError, match="repeats a network"):
        nds.CnnZoo(z)
    with pytest.raises(NNGraphError, match=r"no manifest\.json"):
        nds.CnnZoo(tmp_path)
    z2 = shutil.copytree(tiny_zoo, tmp_path / "z2")
    (z2 / "shard-00000.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(nds.ZooFormatError, match="params must be float32"):
        nds.CnnZoo(z2).params()


def test_recipes_validate() -> None:
    assert nds.CnnRecipe.named("default").num_networks >= 500
    full = nds.CnnRecipe.named("full")
    assert full.epochs == 86 and full.checkpoints == (0, 1, 2, 3, 20, 40, 60, 80, 86)
    assert nds.CnnRecipe.from_dict(full.to_dict()) == full
    with pytest.raises(ValueError, match="checkpoints"):
        dataclasses.replace(TINY, checkpoints=(0, 5))
    with pytest.raises(ValueError, match="optimizers"):
        dataclasses.replace(TINY, optimizers=("adamw",))
    with pytest.raises(ValueError, match="unknown"):
        nds.CnnRecipe.named("huge")


# ----------------------------------------------------------------------------- CLI
def test_cli_fit_info_verify_show(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nngraph_datasets.cli import main

    out = tmp_path / "z"
    args = ["cnn-zoo", "fit", "--dataset", "digits", "--recipe", "tiny", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "12.0/12 networks" in err and "network-epochs/s" in err and "ETA" in err
    assert _files(out) == _files(tiny_zoo)  # the CLI builds the same zoo
    assert main(["cnn-zoo", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_networks"] == 12 and info["num_checkpoints"] == 36
    assert info["epochs"] == [0, 1, 2]
    assert sum(s["networks"] for s in info["splits"].values()) == 12
    q = info["test_acc_final"]
    assert 0 <= q["min"] <= q["median"] <= q["max"] <= 1
    assert sum(info["hyperparameters"]["optimizer"].values()) == 12
    lo, hi = info["hyperparameters"]["lr"]
    assert TINY.lr[0] * 0.999 <= lo <= hi <= TINY.lr[1] * 1.001
    assert main(["cnn-zoo", "verify", str(out)]) == 0
    assert "OK: 3 shards, 12 networks, 36 checkpoints" in capsys.readouterr().out
    png = tmp_path / "p.png"
    assert main(["cnn-zoo", "show", str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args) == 2  # exists: a message, not a traceback
    assert "exists" in capsys.readouterr().err
    assert main(["cnn-zoo", "verify", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- kill anywhere
def _fit_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "nngraph_datasets.cli", "cnn-zoo", "fit", "--dataset",
            "digits", "--recipe", "tiny", "--num-networks", "24", "--out", str(out),
            "--threads", "1", "--quiet"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.kill
def test_cnn_zoo_build_killed_anywhere_resumes_byte_identical(tmp_path: Path) -> None:
    """`nngraph-datasets cnn-zoo fit` SIGKILLed at random moments (once it has written `k` of
    its 6 shards, k uniform in 0..5, after a further random delay of up to one shard's time),
    then rerun: byte-identical to an uninterrupted build every time. Only kills that interrupt
    the build count as points; one that lands after the finished zoo was moved into place (the
    process still exiting) is checked the same way but drawn again."""
    points = int(os.environ.get("NNGRAPH_KILL_POINTS", "2"))
    rng = random.Random(int(os.environ.get("NNGRAPH_KILL_SEED", "0")))
    ref = tmp_path / "ref"
    proc = subprocess.Popen(_fit_cmd(ref), env=_env())
    while not ref.with_name(".ref.partial").exists():
        assert proc.poll() is None
        time.sleep(0.002)
    t0 = time.monotonic()
    assert proc.wait(timeout=900) == 0
    duration = time.monotonic() - t0
    expected = _files(ref)
    seen: list[dict[str, Any]] = []
    late = 0  # kills that landed after the finished zoo was moved into place
    while len(seen) < points:
        out = tmp_path / f"z{len(seen)}-{late}"
        partial = out.with_name(f".{out.name}.partial")
        target, at = rng.randrange(6), rng.uniform(0.0, duration / 6)

        def ready(partial: Path = partial, target: int = target) -> bool:
            if not target:
                return partial.exists()
            return len(list(partial.glob("shard-*.safetensors"))) >= target

        killed, _ = kill_at(_fit_cmd(out), at, env=_env(), ready=ready)
        if not killed:
            shutil.rmtree(out, ignore_errors=True)
            continue
        shards = len(list(partial.glob("shard-*.safetensors"))) if partial.exists() else 0
        finished = (out / "manifest.json").exists()
        if not finished:
            done = subprocess.run(_fit_cmd(out), env=_env(), capture_output=True, text=True,
                                  timeout=900)  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
        same = _files(out) == expected and not partial.exists()
        assert same, f"killed with {shards} shards done ({target} + {at:.2f} s): the rerun differs"
        shutil.rmtree(out)
        if finished:  # the zoo was already in place when the kill landed: not a kill point
            late += 1
            assert late <= 10 * points, "the kills keep landing after the build has finished"
            continue
        seen.append({"after_shards": target, "delay_s": round(at, 3), "shards_done": shards,
                     "identical": same})  # fmt: skip
    folder = os.environ.get("NNGRAPH_KILL_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "kill-cnn-zoo.json").write_text(json.dumps(
            {"points": len(seen), "identical": sum(p["identical"] for p in seen),
             "late_kills_not_counted": late, "uninterrupted_s": round(duration, 2),
             "kills": seen}, indent=1))  # fmt: skip


# ----------------------------------------------------------------------------- published layout
_LAYOUT_NAMES = ["conv2d/kernel:0", "conv2d/bias:0", "conv2d_1/kernel:0", "conv2d_1/bias:0",
                 "conv2d_2/kernel:0", "conv2d_2/bias:0", "dense/kernel:0", "dense/bias:0"]  # fmt: skip
_METRIC_HEADER = ["config.activation", "config.w_init", "config.init_std", "config.optimizer",
                  "config.learning_rate", "config.l2reg", "config.dropout",
                  "config.train_fraction", "modeldir", "step", "train_accuracy", "test_accuracy",
                  "train_loss", "test_loss"]  # fmt: skip


def write_small_cnn_zoo(folder: Path, models: list[torch.nn.Module], gz: bool = True) -> None:
    """`models` (2 checkpoints each: the model, then its weights x 1.5) in the published layout:
    TF kernels [kh, kw, in, out] / [in, out], layout.csv, metrics.csv.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, layout, metric_rows = [], [], []
    for i, model in enumerate(models):
        for step, scale in ((0, 1.0), (1000, 1.5)):
            parts, start = [], 0
            for name, v in zip(_LAYOUT_NAMES, model.state_dict().values()):
                t = v.detach() * scale
                t = t.permute(2, 3, 1, 0) if t.dim() == 4 else (t.T if t.dim() == 2 else t)
                parts.append(t.reshape(-1))
                if i == 0 and step == 0:
                    layout.append([name, str(tuple(t.shape)), start, start + t.numel()])
                start += t.numel()
            rows.append(torch.cat(parts).numpy())
            act = "relu" if i % 2 == 0 else "tanh"
            metric_rows.append([act, "glorot_uniform", 0.1, "adam" if i < 2 else "sgd",
                                0.01 * (i + 1), 1e-4, 0.1, 0.5, f"runs/{i}", step,
                                0.1 + 0.1 * i + 0.01 * step / 1000, 0.1 + 0.1 * i, 2.3, 2.3])  # fmt: skip
    np.save(folder / "weights.npy", np.stack(rows).astype(np.float32))
    with open(folder / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "shape", "start_idx", "end_idx"])
        w.writerows(layout[::-1])  # any row order: sorted by start index
    buf = io.StringIO()
    csv.writer(buf).writerows([_METRIC_HEADER, *metric_rows])
    if gz:
        (folder / "metrics.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode(), mtime=0))
    else:
        (folder / "metrics.csv").write_text(buf.getvalue())


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, list[torch.nn.Module]]:
    torch.manual_seed(0)
    models = [nds.small_cnn("relu" if i % 2 == 0 else "tanh") for i in range(5)]
    write_small_cnn_zoo(tmp_path / "fmnist", models)
    return tmp_path / "fmnist", models


def test_small_cnn_zoo_round_trip(
    published: tuple[Path, list[torch.nn.Module]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TF-ordered rows come back as the torch layout: each converted row loads into a
    small_cnn that equals the original model."""
    from nngraph_datasets.cli import main

    src, models = published
    out = tmp_path / "conv"
    assert main(["cnn-zoo", "convert", "small-cnn-zoo", str(src), str(out)]) == 0
    zoo = nds.CnnZoo(out)
    nds.verify_cnn_zoo(out)
    m = zoo.metrics()
    assert len(zoo) == 10 and m["network"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert m["epoch"].tolist() == [0, 1000] * 5  # the published `step`
    template = zoo.template()
    for i, model in enumerate(models):
        assert torch.equal(zoo.params()[2 * i], template.flatten(model))
        assert torch.allclose(zoo.params()[2 * i + 1], template.flatten(model) * 1.5)
        act = zoo.categories["activation"][int(m["activation"][2 * i])]
        assert act == ("relu" if i % 2 == 0 else "tanh")
    assert zoo.categories["optimizer"] == ["adam", "sgd"]
    assert m["lr"][2].item() == pytest.approx(0.02)
    assert m["test_acc"][4].item() == pytest.approx(0.3)
    for split in zoo.splits.values():  # split by network
        nets = set(m["network"][split].tolist())
        assert all(set(m["network"][s].tolist()).isdisjoint(nets)
                   for s in zoo.splits.values() if s is not split)  # fmt: skip


def _break(folder: Path, case: str) -> None:
    w = np.load(folder / "weights.npy")
    if case == "1-D weights":
        np.save(folder / "weights.npy", w.reshape(-1))
    elif case == "object array":
        np.save(folder / "weights.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    elif case == "NaN weights":
        w[3, 17] = np.nan
        np.save(folder / "weights.npy", w)
    elif case == "fewer rows":
        np.save(folder / "weights.npy", w[:-1])
    elif case == "no metrics":
        (folder / "metrics.csv.gz").unlink()
    else:
        text = gzip.decompress((folder / "metrics.csv.gz").read_bytes()).decode()
        lines = text.splitlines()
        if case == "missing column":
            lines = [",".join(r.split(",")[:-3] + r.split(",")[-2:]) for r in lines]
        elif case == "NaN accuracy":
            lines[2] = ",".join([*lines[2].split(",")[:-3], "nan", "2.3", "2.3"])
        elif case == "bad layout":
            (folder / "layout.csv").write_text('varname,shape,start_idx,end_idx\nw,"(3, 3)",0,9\n')
        (folder / "metrics.csv.gz").write_bytes(gzip.compress("\n".join(lines).encode()))


@pytest.mark.parametrize("case, match", [
    ("1-D weights", "2-D float array"), ("object array", "not a plain numeric"),
    ("NaN weights", "NaN/inf weights"), ("fewer rows", "one row per checkpoint"),
    ("no metrics", "some are missing"), ("missing column", "missing columns"),
    ("NaN accuracy", "NaN/inf"), ("bad layout", "does not hold|cover"),
])  # fmt: skip
def test_malformed_small_cnn_zoo_is_a_typed_error(
    published: tuple[Path, list[torch.nn.Module]], tmp_path: Path, case: str, match: str
) -> None:
    src, _ = published
    _break(src, case)
    with pytest.raises(nds.ZooFormatError, match=match):
        nds.convert_small_cnn_zoo(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- held-out images
def test_heldout_images_are_the_images_no_network_saw(tiny_zoo: Path) -> None:
    from nngraph_datasets.cnn_zoo import _as_zoo_inputs, _data_rows
    from nngraph_datasets.images import load_raw

    zoo = nds.CnnZoo(tiny_zoo)
    x, y, ids = nds.heldout_images(zoo)
    raw, labels, all_ids = load_raw("digits")
    recipe = nds.CnnRecipe.named("tiny")
    pool, test, _ = _data_rows(all_ids, "digits", recipe.train_pool, recipe.eval_test, 0)
    seen = set(all_ids[np.concatenate([pool, test])].tolist())
    assert len(ids) == len(all_ids) - recipe.train_pool - recipe.eval_test  # type: ignore[operator]
    assert not seen & set(ids.tolist())
    # the inputs the networks would see: [0, 1] pixels, the 8x8 digits padded to 16x16
    assert x.shape == (len(ids), 1, 16, 16) and x.dtype == torch.float32
    rows = ids.numpy()
    torch.testing.assert_close(x, _as_zoo_inputs(raw[rows], "digits"), rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(labels[rows]))
    # the manifest dict works as well as the zoo
    assert torch.equal(nds.heldout_images(zoo.manifest)[2], ids)


def test_heldout_images_refuse_zoos_without_or_with_other_images(tiny_zoo: Path) -> None:
    manifest = dict(nds.CnnZoo(tiny_zoo).manifest)
    tampered = {**manifest, "data": {**manifest["data"], "pool_ids": "0" * 64}}
    with pytest.raises(nds.ZooFormatError, match="pool_ids"):
        nds.heldout_images(tampered)
    other_seed = {**manifest, "seed": int(manifest["seed"]) + 1}
    with pytest.raises(nds.ZooFormatError, match="not those the zoo was built from"):
        nds.heldout_images(other_seed)
    with pytest.raises(nds.ZooFormatError, match="does not record"):
        nds.heldout_images({k: v for k, v in manifest.items() if k != "data"})
    everything = {**manifest, "recipe": {**manifest["recipe"], "train_pool": None,
                                         "eval_test": None}}  # fmt: skip
    everything["data"] = _hashes_for(everything)
    with pytest.raises(nds.ZooFormatError, match="no held-out image"):
        nds.heldout_images(everything)


def _hashes_for(manifest: dict[str, Any]) -> dict[str, Any]:
    """The `data` entry a build with this manifest's recipe would record (pool / test hashes)."""
    import hashlib

    from nngraph_datasets.cnn_zoo import _data_rows
    from nngraph_datasets.images import load_raw

    _, _, ids = load_raw(manifest["dataset"])
    r = manifest["recipe"]
    pool, test, _ = _data_rows(ids, manifest["dataset"], r["train_pool"], r["eval_test"],
                               int(manifest["seed"]))  # fmt: skip
    return {**manifest["data"], "pool_ids": hashlib.sha256(ids[pool].tobytes()).hexdigest(),
            "test_ids": hashlib.sha256(ids[test].tobytes()).hexdigest()}  # fmt: skip
