"""Wild park (heterogeneous) CNN zoos: the architectures and their graphs, the batched trainer
against a plain loop, storage (determinism, integrity, resumption, splits by network), the
loader, the CLI, and the reader of the reference CNN Wild Park layout."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nngraph_datasets as nds
from nngraph_core import EdgeType, GraphBatch, GraphTemplate, NNGraphError
from nngraph_datasets.cnn_zoo import _load_data
from nngraph_datasets.wild_park import _init_wild_params, _plain_train_wild
from nngraph_testing.faults import kill_at

pytest.importorskip("sklearn")
TINY = nds.WildParkRecipe.named("tiny")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nds.build_wild_park_zoo(
        tmp_path_factory.mktemp("wild") / "z", dataset="digits", recipe="tiny", progress=False
    )


# ----------------------------------------------------------------------------- architectures
def test_wild_cnn_family() -> None:
    a = nds.wild_cnn(5, 8, 5, "gelu", residual=True)
    assert a.strides == (2, 2, 1, 1, 1) and a.residual == (-1, -1, -1, 1, 2)
    assert nds.wild_cnn(3, 8, 5, residual=True).residual == (-1, -1, -1)  # no same-size pair
    assert a.projections() == [] and a.activation == "gelu"
    model = a.module()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert list(model.state_dict()) == [k for k, _ in a.param_shapes()]
    assert a.num_params == sum(p.numel() for p in model.parameters())
    assert nds.WildCnnArch.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(ValueError, match="earlier layer"):
        dataclasses.replace(a, residual=(-1, -1, -1, 3, 2))
    with pytest.raises(ValueError, match="odd"):
        nds.wild_cnn(2, 8, 4)
    with pytest.raises(ValueError, match=r"size"):
        dataclasses.replace(a, residual=(-1, -1, 0, 1, 2)).check_input((28, 28))


@pytest.mark.parametrize("recipe", ["default", "full"])
def test_every_architecture_of_the_space_converts_to_a_graph(recipe: str) -> None:
    """`GraphTemplate.from_module` reads every architecture of the default zoo, and every
    (depth, kernel, activation, residual) of the full space at width 4 (the width changes no
    operation); the flat layout is the state-dict order (the zoo's `params` layout); each
    shortcut adds one residual edge per channel."""
    space = nds.WildParkRecipe.named(recipe).architectures(0)
    if recipe == "full":  # 4 depths x 4 widths x 3 kernels x 5 activations (+ residual: 4, 5)
        assert len(space) == 4 * 4 * 3 * 5 + 2 * 4 * 3 * 5
        space = [a for a in space if a.channels[0] == 4]
    assert len(space) == (16 if recipe == "default" else 90)
    for arch in space:
        model = arch.module()
        t = GraphTemplate.from_module(model, input_shape=(1, 28, 28))
        flat = t.flatten(model)
        assert t.num_params == arch.num_params
        assert torch.equal(flat, torch.cat([v.reshape(-1) for v in model.state_dict().values()]))
        n_res = sum(r >= 0 for r in arch.residual)
        residual_edges = int((t.edge_type == EdgeType.RESIDUAL).sum())
        assert residual_edges == n_res * arch.channels[-1], arch.label  # one per channel


def test_projection_shortcut_converts() -> None:
    arch = nds.WildCnnArch(3, (4, 8, 16, 8), (3, 5, 7, 3), (1, 1, 1, 1),
                           ("relu", "gelu", "sigmoid", "none"), (-1, -1, 0, 1))  # fmt: skip
    assert arch.projections() == [2] and arch.activation == "mixed"
    model = arch.module()
    t = GraphTemplate.from_module(model, input_shape=(3, 32, 32))
    assert t.num_params == arch.num_params
    assert torch.equal(
        t.flatten(model), torch.cat([v.reshape(-1) for v in model.state_dict().values()])
    )


# ----------------------------------------------------------------------------- batched training
def _problem(optimizer: str, arch: nds.WildCnnArch) -> dict[str, Any]:
    """4 networks of one residual architecture (different lr, l2, dropout), 16x16 images."""
    g = torch.Generator().manual_seed(3)
    B = 4
    dt = torch.float64
    hp = {
        "optimizer": np.full(B, nds.OPTIMIZERS.index(optimizer)),
        "lr": np.array([1e-3, 3e-3, 1e-2, 3e-2]),
        "l2": np.array([0.0, 1e-3, 1e-2, 1e-4]),
        "dropout": np.array([0.0, 0.2, 0.5, 0.1]),
    }
    init = [_init_wild_params(arch, "glorot_uniform", 0.1, g, dt) for _ in range(B)]
    x = torch.rand(40, 1, 16, 16, generator=g, dtype=dt)
    y = torch.randint(0, 10, (40,), generator=g)
    batches = np.random.default_rng(0).integers(0, 40, size=(3, 8, B))
    shapes = arch.feature_shapes((16, 16))
    masks_by_step = []
    for _ in range(3):
        ms = []
        for c, hw in zip(arch.channels[:-1], shapes[:-1]):
            keep = 1 - torch.as_tensor(hp["dropout"], dtype=dt).repeat_interleave(c)
            u = torch.rand((8, B * c, *hw), generator=g, dtype=dt)
            ms.append((u < keep.view(1, -1, 1, 1)).to(dt) / keep.view(1, -1, 1, 1))
        masks_by_step.append(ms)
    return {"init": init, "hp": hp, "x": x, "y": y, "batches": batches,
            "masks": lambda s: masks_by_step[s]}  # fmt: skip


@pytest.mark.parametrize("optimizer", nds.OPTIMIZERS)
def test_batched_training_of_a_residual_architecture_equals_a_plain_loop_in_float64(
    optimizer: str,
) -> None:
    """3 steps of 4 networks of a depth-5 residual gelu architecture with 5x5 kernels, trained
    at once (grouped convolutions, shortcut adds, dropout, vectorised updates), equal 4
    `WildCnn` modules each trained by its own `torch.optim` optimiser on the same batches."""
    arch = nds.wild_cnn(5, 4, 5, "gelu", residual=True)
    pr = _problem(optimizer, arch)
    params, metrics = nds.train_wild_cnns(
        arch, pr["init"], pr["hp"], pr["x"], pr["y"], pr["batches"], checkpoints=(0, 1),
        steps_per_epoch=3, dtype=torch.float64, masks=pr["masks"],
    )  # fmt: skip
    ref = _plain_train_wild(arch, pr["init"], pr["hp"], pr["x"], pr["y"], pr["batches"],
                            steps=3, dtype=torch.float64, masks=pr["masks"])  # fmt: skip
    assert params.shape == (2, 4, arch.num_params)
    start = torch.stack([torch.cat([v.reshape(-1) for v in sd.values()]) for sd in pr["init"]])
    assert torch.equal(params[0], start)
    assert (params[1] - start).abs().amax(1).min() > 1e-5
    torch.testing.assert_close(params[1], ref, rtol=0, atol=1e-10)
    assert bool(metrics["alive"].all())


# ----------------------------------------------------------------------------- zoo
def test_tiny_zoo_contents(tiny_zoo: Path) -> None:
    zoo = nds.WildParkZoo(tiny_zoo)
    C = len(TINY.checkpoints)
    assert len(zoo) == TINY.num_networks * C
    assert len(zoo.architectures) == TINY.num_architectures
    m = zoo.metrics()
    for col in ("network", "epoch", "architecture", "activation", "depth", "width", "kernel",
                "residual", "initializer", "optimizer", "stopped"):  # fmt: skip
        assert m[col].dtype == torch.int64, col
    for col in ("train_acc", "test_acc", "train_loss", "test_loss", "lr", "dropout"):
        assert m[col].dtype == torch.float32, col
    assert ((m["test_acc"] >= 0) & (m["test_acc"] <= 1)).all()
    for j, arch in enumerate(zoo.architectures):
        sel = m["architecture"] == j
        assert bool((m["depth"][sel] == arch.depth).all())
        assert bool((m["kernel"][sel] == max(arch.kernel_sizes)).all())
        assert {zoo.categories["activation"][c] for c in m["activation"][sel].tolist()} == {
            arch.activation
        }
    assert sorted(set(m["network"].tolist())) == list(range(TINY.num_networks))
    # hyper-parameters are per network: constant over its checkpoints
    for col in ("lr", "architecture", "dropout"):
        assert bool((m[col].view(-1, C) == m[col].view(-1, C)[:, :1]).all()), col
    assert any(a.residual != (-1,) * a.depth for a in zoo.architectures)  # a residual one


def test_stored_weights_reproduce_the_stored_test_accuracy(tiny_zoo: Path) -> None:
    """Every final checkpoint loaded into its architecture's module (through the
    GraphTemplate's layout) gives the recorded test accuracy and loss on the test images."""
    zoo = nds.WildParkZoo(tiny_zoo)
    _, _, test_x, test_y, _ = _load_data("digits", TINY, 0, None)  # type: ignore[arg-type]
    m = zoo.metrics()
    last = torch.nonzero(m["epoch"] == max(TINY.checkpoints)).flatten()
    for row, p in zip(last.tolist(), zoo.params(last)):
        a = int(m["architecture"][row])
        model = zoo.module(a).eval()
        model.load_state_dict(zoo.template(a).unflatten(p))
        with torch.no_grad():
            logits = model(test_x)
        acc = float((logits.argmax(1) == test_y).float().mean())
        assert acc == pytest.approx(float(m["test_acc"][row]), abs=1e-6)
        assert float(F.cross_entropy(logits, test_y)) == pytest.approx(
            float(m["test_loss"][row]), rel=1e-4
        )


def test_graph_batch_of_mixed_architectures(tiny_zoo: Path) -> None:
    zoo = nds.WildParkZoo(tiny_zoo)
    rows = zoo.rows("train")
    arch = zoo.architecture_ids("train")
    pick = torch.cat([rows[arch == a][:2] for a in torch.unique(arch)])
    g = zoo.graph_batch(pick)
    assert isinstance(g, GraphBatch) and g.num_graphs == len(pick)
    kmax = max(zoo.architectures[int(a)].kernel_sizes[0] for a in torch.unique(arch))
    assert g.edge_features.shape[1] == kmax * kmax  # re-padded to the largest kernel
    by_arch = zoo.params_by_architecture("train")
    assert sum(len(r) for r, _ in by_arch.values()) == len(rows)
    for a, (r, p) in by_arch.items():
        assert p.shape == (len(r), zoo.architectures[a].num_params)
        assert torch.equal(p[0], zoo.params(r[:1])[0])
        tb = zoo.template(a).batch(p[:3])
        assert tb.num_graphs == min(3, len(p))
    assert len(zoo.templates()) == len(zoo.architectures)
    assert zoo.activation(pick).tolist() == zoo.metrics()["activation"][pick].tolist()


def test_splits_are_by_network(tiny_zoo: Path) -> None:
    zoo = nds.WildParkZoo(tiny_zoo)
    net = zoo.metrics()["network"]
    rows = torch.cat(list(zoo.splits.values()))
    assert sorted(rows.tolist()) == list(range(len(zoo)))
    owners: dict[int, str] = {}
    for name, idx in zoo.splits.items():
        for n in net[idx].tolist():
            assert owners.setdefault(n, name) == name
    assert set(owners.values()) == {"train", "val", "test"}


def test_rebuild_is_byte_identical_and_verify_catches_a_flipped_byte(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    again = nds.build_wild_park_zoo(tmp_path / "z", dataset="digits", recipe="tiny", progress=False)
    assert _files(again) == _files(tiny_zoo)
    other = nds.build_wild_park_zoo(tmp_path / "s1", dataset="digits", recipe="tiny", seed=1,
                                    progress=False)  # fmt: skip
    assert _files(other)["manifest.json"] != _files(again)["manifest.json"]
    assert nds.verify_wild_park_zoo(again)["num_checkpoints"] == len(nds.WildParkZoo(again))
    shard = again / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(nds.IntegrityError, match=r"shard-00001\.safetensors: sha256 mismatch"):
        nds.verify_wild_park_zoo(again)


def test_interrupted_build_resumes_to_the_same_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop_after_two_shards(done: float, info: str) -> None:
        if done > 6:
            raise Stop

    out = tmp_path / "z"
    with pytest.raises(Stop):
        nds.build_wild_park_zoo(out, dataset="digits", recipe="tiny",
                                progress=stop_after_two_shards)  # fmt: skip
    partial = tmp_path / ".z.partial"
    assert len(list(partial.glob("shard-*"))) == 2
    nds.build_wild_park_zoo(out, dataset="digits", recipe="tiny", progress=False)
    assert _files(out) == _files(tiny_zoo) and not partial.exists()
    with pytest.raises(nds.ZooExistsError):
        nds.build_wild_park_zoo(out, dataset="digits", recipe="tiny", progress=False)
    p2 = tmp_path / ".y.partial"
    p2.mkdir()
    (p2 / "build.json").write_text(json.dumps({"seed": 5}))
    with pytest.raises(nds.ZooFormatError, match="different settings"):
        nds.build_wild_park_zoo(tmp_path / "y", dataset="digits", recipe="tiny", progress=False)


def test_load_wild_park_zoo_uses_the_cache(
    tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNGRAPH_ZOOS", str(tmp_path))
    path = nds.default_wild_park_zoo_dir("digits", "tiny", 0)
    assert path == tmp_path / "wild-park-digits-tiny-s0"
    with pytest.raises(nds.ZooFormatError, match="wild-park-zoo fit"):
        nds.load_wild_park_zoo("digits", "tiny", build=False)
    shutil.copytree(tiny_zoo, path)
    zoo = nds.load_wild_park_zoo("digits", "tiny", build=False)
    assert zoo.path == path and len(zoo) == len(nds.WildParkZoo(tiny_zoo))
    custom = dataclasses.replace(TINY, epochs=3, checkpoints=(0, 3))
    assert nds.default_wild_park_zoo_dir("digits", custom) != path
    shutil.copytree(tiny_zoo, nds.default_wild_park_zoo_dir("digits", custom))
    with pytest.raises(nds.ZooFormatError, match="another recipe"):
        nds.load_wild_park_zoo("digits", custom, build=False)


def test_reading_a_broken_zoo_is_a_typed_error(tiny_zoo: Path, tmp_path: Path) -> None:
    z = shutil.copytree(tiny_zoo, tmp_path / "z")
    mf = json.loads((z / "manifest.json").read_text())
    mf["architectures"][0]["num_params"] += 1
    (z / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(nds.ZooFormatError, match="num_params"):
        nds.WildParkZoo(z)
    mf["architectures"][0]["num_params"] -= 1
    mf["shards"][0]["architecture"] = 1
    (z / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(nds.ZooFormatError, match=r"params must be float32|architecture column"):
        nds.WildParkZoo(z).metrics()
    with pytest.raises(NNGraphError, match=r"no manifest\.json"):
        nds.WildParkZoo(tmp_path)


@pytest.mark.parametrize("case, match", [
    ("nan params", "NaN"), ("wrong width", r"params must be \[238\]"),
    ("missing column", "test_acc"), ("accuracy out of range", r"\[0, 1\]"),
    ("unknown architecture", "architecture ids"), ("overlapping splits", "shares"),
])  # fmt: skip
def test_write_wild_park_zoo_rejects_bad_input(tmp_path: Path, case: str, match: str) -> None:
    archs = [nds.wild_cnn(2, 4, 3), nds.wild_cnn(4, 4, 5, residual=True)]
    arch = torch.tensor([0, 0, 1, 1])
    params = [torch.zeros(archs[int(a)].num_params) for a in arch]
    metrics: dict[str, Any] = {"network": torch.tensor([0, 0, 1, 1]), "epoch": torch.tensor([0, 1, 0, 1]),
                               "architecture": arch, "test_acc": torch.full((4,), 0.5)}  # fmt: skip
    splits: dict[str, list[int]] | None = None
    if case == "nan params":
        params[1] = params[1].clone().fill_(float("nan"))
    elif case == "wrong width":
        params[0] = torch.zeros(10)
    elif case == "missing column":
        del metrics["test_acc"]
    elif case == "accuracy out of range":
        metrics["test_acc"] = torch.full((4,), 1.5)
    elif case == "unknown architecture":
        metrics["architecture"] = torch.tensor([0, 0, 2, 2])
    else:
        splits = {"train": [0, 1], "test": [1]}
    with pytest.raises(nds.ZooFormatError, match=match):
        nds.write_wild_park_zoo(tmp_path / "w", archs, params, metrics, input_shape=[1, 16, 16],
                                recipe={}, splits=splits)  # fmt: skip
    assert not any(tmp_path.iterdir())
    ok = nds.write_wild_park_zoo(tmp_path / "ok", archs, [torch.zeros(a.num_params) for a in
                                 (archs[0], archs[0], archs[1], archs[1])],
                                 {**metrics, "test_acc": torch.full((4,), 0.5),
                                  "architecture": arch}, input_shape=[1, 16, 16], recipe={})  # fmt: skip
    assert len(nds.WildParkZoo(ok)) == 4


def test_recipes_validate() -> None:
    default = nds.WildParkRecipe.named("default")
    # 4 depths x 3 widths x 3 kernels x 3 activations, and residual for depths 4 and 5
    assert len(default.space()) == 4 * 3 * 3 * 3 + 2 * 3 * 3 * 3
    assert nds.WildParkRecipe.from_dict(default.to_dict()) == default
    assert len({a for a in default.architectures(0)}) == default.num_architectures
    assert default.architectures(0) == default.architectures(0) != default.architectures(1)
    with pytest.raises(ValueError, match="activations"):
        dataclasses.replace(TINY, activations=("swish",))
    with pytest.raises(ValueError, match="num_architectures"):
        dataclasses.replace(TINY, num_architectures=100)
    with pytest.raises(ValueError, match="unknown"):
        nds.WildParkRecipe.named("huge")


# ----------------------------------------------------------------------------- CLI
def test_cli_fit_info_verify_show(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nngraph_datasets.cli import main

    out = tmp_path / "z"
    args = ["wild-park-zoo", "fit", "--dataset", "digits", "--recipe", "tiny", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "12.0/12 networks" in err and "ETA" in err
    assert _files(out) == _files(tiny_zoo)
    assert main(["wild-park-zoo", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_networks"] == 12 and info["num_architectures"] == 3
    assert sum(a["networks"] for a in info["architectures"]) == 12
    assert 0 <= info["test_acc_final"]["min"] <= info["test_acc_final"]["max"] <= 1
    assert set(info["by"]) == {"depth", "width", "kernel", "residual", "activation"}
    assert main(["wild-park-zoo", "info", str(out)]) == 0
    assert "median final test acc" in capsys.readouterr().out
    assert main(["wild-park-zoo", "verify", str(out)]) == 0
    assert "12 networks of 3 architectures, 36 checkpoints" in capsys.readouterr().out
    png = tmp_path / "p.png"
    assert main(["wild-park-zoo", "show", str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------- kill anywhere
def _fit_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "nngraph_datasets.cli", "wild-park-zoo", "fit", "--dataset",
            "digits", "--recipe", "tiny", "--out", str(out), "--threads", "1", "--quiet"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.kill
def test_wild_park_build_killed_anywhere_resumes_byte_identical(tmp_path: Path) -> None:
    """`nngraph-datasets wild-park-zoo fit` SIGKILLed once it has written `k` of its 5 shards
    (k uniform in 0..4) plus a random delay, then rerun: byte-identical to an uninterrupted
    build. Kills that land after the zoo was moved into place are drawn again. One point by
    default (a build takes a few seconds, most of it start-up); `nox -s kill` sets more."""
    points = int(os.environ.get("NNGRAPH_KILL_POINTS", "1"))
    rng = random.Random(int(os.environ.get("NNGRAPH_KILL_SEED", "0")))
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    subprocess.run(_fit_cmd(ref), env=_env(), check=True, timeout=900)
    duration = time.monotonic() - t0
    expected = _files(ref)
    n_shards = len(list(ref.glob("shard-*")))
    seen, late = 0, 0
    while seen < points:
        out = tmp_path / f"z{seen}-{late}"
        partial = out.with_name(f".{out.name}.partial")
        target, at = rng.randrange(n_shards), rng.uniform(0.0, duration / n_shards)

        def ready(partial: Path = partial, target: int = target) -> bool:
            if not target:
                return partial.exists()
            return len(list(partial.glob("shard-*.safetensors"))) >= target

        killed, _ = kill_at(_fit_cmd(out), at, env=_env(), ready=ready)
        finished = (out / "manifest.json").exists()
        if not finished:
            done = subprocess.run(_fit_cmd(out), env=_env(), capture_output=True, text=True,
                                  timeout=900)  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
        assert _files(out) == expected and not partial.exists(), (target, at)
        shutil.rmtree(out)
        if finished or not killed:
            late += 1
            assert late <= 10 * points
            continue
        seen += 1


# ----------------------------------------------------------------------------- reference layout
class _RefCnn(nn.Module):
    """The reference CNN Wild Park network, written from its description: conv, then the output
    of layer `residual[i]` added to the first min(c_r, c_i) channels, then the activation."""

    ACTS: ClassVar[dict[str, Any]] = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "leaky_relu": F.leaky_relu, "none": lambda x: x}  # fmt: skip

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg["channels"]
        self.layers = nn.ModuleList(
            nn.Conv2d(ch[i], ch[i + 1], k, stride=s, padding=k // 2)
            for i, (k, s) in enumerate(zip(cfg["kernel_size"], cfg["stride"]))
        )
        self.fc = nn.Linear(ch[-1], cfg["n_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            r = self.cfg["residual"][i]
            if r >= 0:
                c = min(x.shape[1], saved[r].shape[1])
                x = torch.cat([x[:, :c] + saved[r][:, :c], x[:, c:]], 1)
            x = self.ACTS[self.cfg["activation"][i]](x)
            if i in self.cfg["residual"]:
                saved[i] = x
        return self.fc(x.mean((2, 3)))


_CFGS = [
    {"channels": [3, 4, 8, 16, 8], "kernel_size": [3, 5, 7, 3], "residual": [-1, -1, 0, 1],
     "activation": ["relu", "gelu", "sigmoid", "none"]},
    {"channels": [3, 8, 8, 8], "kernel_size": [5, 3, 3], "residual": [-1, -1, 0],
     "activation": ["tanh", "tanh", "leaky_relu"]},
    {"channels": [3, 16, 4], "kernel_size": [7, 3], "residual": [-1, -1],
     "activation": ["relu", "relu"]},
]  # fmt: skip


def write_cnn_wild_park(
    folder: Path, networks: int = 5, epochs: tuple[int, ...] = (1, 2)
) -> list[_RefCnn]:
    """`networks` reference models (cycling through `_CFGS`), each saved at `epochs` (weights
    x 1.1 per epoch), in the reference layout: `cnn_park_splits.json` + trial folders of
    `checkpoint_<e>/checkpoint.pt` dicts with `model`, `config`, `iteration`, `last_result`."""
    torch.manual_seed(0)
    models, splits = (
        [],
        {s: {"path": [], "score": [], "step": []} for s in ("train", "val", "test")},
    )
    for n in range(networks):
        base = _CFGS[n % len(_CFGS)]
        k = len(base["kernel_size"])
        cfg = {"n_layers": k, "n_classes": 10, **base, "stride": [1] * k,
               "padding": [q // 2 for q in base["kernel_size"]]}  # fmt: skip
        model = _RefCnn(cfg)
        models.append(model)
        split = ("train", "train", "val", "test")[n % 4]
        for e in epochs:
            rel = f"zoo/trial_{n:03d}/checkpoint_{e:06d}/checkpoint.pt"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            sd = {key: v * 1.1 ** (e - epochs[0]) for key, v in model.state_dict().items()}
            torch.save({"model": sd, "config": cfg, "iteration": e,
                        "last_result": {"test/acc": 0.1 * (n % 9) + 0.01 * e}}, folder / rel)  # fmt: skip
            splits[split]["path"].append(rel)
            splits[split]["score"].append(0.1 * (n % 9) + 0.01 * e)
            splits[split]["step"].append(e)
    (folder / "cnn_park_splits.json").write_text(json.dumps(splits))
    return models


def test_cnn_wild_park_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reference-layout checkpoints convert to a wild park zoo whose modules compute the
    reference networks' functions (partial-channel shortcuts become 1x1 projections)."""
    from nngraph_datasets.cli import main

    src = tmp_path / "park"
    models = write_cnn_wild_park(src)
    out = tmp_path / "conv"
    assert main(["wild-park-zoo", "convert", "cnn-wild-park", str(src), str(out)]) == 0
    zoo = nds.WildParkZoo(out)
    nds.verify_wild_park_zoo(out)
    m = zoo.metrics()
    assert len(zoo) == 10 and len(zoo.architectures) == 3
    assert zoo.architectures[0].projections() == [2]  # 4 -> 16 channels: a projection
    x = torch.rand(3, 3, 32, 32)
    for row in range(len(zoo)):
        n, e = int(m["network"][row]), int(m["epoch"][row])
        assert float(m["test_acc"][row]) == pytest.approx(0.1 * (n % 9) + 0.01 * e)
        a = int(m["architecture"][row])
        model = zoo.module(a).eval()
        model.load_state_dict(zoo.template(a).unflatten(zoo.params([row])[0]))
        ref = models[n]
        with torch.no_grad():
            scaled = {k: v * 1.1 ** (e - 1) for k, v in ref.state_dict().items()}
            ref2 = _RefCnn(ref.cfg)
            ref2.load_state_dict(scaled)
            torch.testing.assert_close(model(x), ref2(x), rtol=1e-5, atol=1e-5)
    assert zoo.categories["activation"][int(m["activation"][0])] == "mixed"
    net = m["network"]
    assert sorted(set(net[zoo.splits["val"]].tolist())) == [2]
    assert sorted(set(net[zoo.splits["train"]].tolist())) == [0, 1, 4]
    g = zoo.graph_batch(torch.arange(len(zoo)))
    assert g.edge_features.shape[1] == 49  # kernels re-padded to 7x7


def _break_park(src: Path, case: str, canary: Path) -> None:
    ck = src / "zoo/trial_001/checkpoint_000002/checkpoint.pt"
    splits = json.loads((src / "cnn_park_splits.json").read_text())
    if case == "truncated":
        ck.write_bytes(ck.read_bytes()[:300])
    elif case in ("wrong shape", "NaN weights", "missing key"):
        obj = torch.load(ck, weights_only=True)
        if case == "wrong shape":
            obj["model"]["layers.0.weight"] = torch.zeros(8, 3, 3, 3)
        elif case == "NaN weights":
            obj["model"]["fc.bias"][3] = float("nan")
        else:
            del obj["model"]["fc.bias"]
        torch.save(obj, ck)
    elif case == "pickle payload":

        class Evil:
            def __reduce__(self) -> tuple[Any, ...]:
                return (Path.touch, (canary,))

        obj = torch.load(ck, weights_only=True)
        obj["config"]["activation"] = Evil()
        torch.save(obj, ck)
    elif case == "path outside":
        splits["train"]["path"][0] = "../../etc/passwd"
    elif case == "score out of range":
        splits["val"]["score"][0] = 1.5
    elif case == "missing file":
        ck.unlink()
    elif case == "bad json":
        (src / "cnn_park_splits.json").write_text("{not json")
        return
    elif case == "two splits":
        splits["test"]["path"].append(splits["train"]["path"][1])
        splits["test"]["score"].append(0.5)
        splits["test"]["step"].append(7)
    elif case == "bad config":
        obj = torch.load(ck, weights_only=True)
        obj["config"]["padding"] = [0] * len(obj["config"]["padding"])
        torch.save(obj, ck)
    (src / "cnn_park_splits.json").write_text(json.dumps(splits))


@pytest.mark.parametrize("case, error, match", [
    ("truncated", nds.CorruptFileError, "cannot be read"),
    ("wrong shape", nds.CorruptFileError, "layers.0.weight must be"),
    ("NaN weights", nds.CorruptFileError, "NaN"),
    ("missing key", nds.CorruptFileError, "model keys"),
    ("pickle payload", nds.UnsafeFileError, "refused to unpickle"),
    ("path outside", nds.ZooFormatError, "outside"),
    ("score out of range", nds.ZooFormatError, "not in"),
    ("missing file", nds.ZooFormatError, "missing"),
    ("bad json", nds.ZooFormatError, "JSON"),
    ("two splits", nds.ZooFormatError, "two splits|listed twice"),
    ("bad config", nds.CorruptFileError, "padding"),
])  # fmt: skip
def test_malformed_cnn_wild_park_is_a_typed_error(
    tmp_path: Path, case: str, error: type[Exception], match: str
) -> None:
    src = tmp_path / "park"
    write_cnn_wild_park(src, networks=3)
    canary = tmp_path / "canary"
    _break_park(src, case, canary)
    with pytest.raises(error, match=match):
        nds.convert_cnn_wild_park(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not canary.exists()


def test_malicious_corpus_against_the_cnn_wild_park_reader(tmp_path: Path) -> None:
    """Every payload of the malicious corpus in place of a checkpoint (and of the splits file):
    a typed error, no canary."""
    from nngraph_testing.malicious import malicious_corpus

    src = tmp_path / "park"
    write_cnn_wild_park(src, networks=2, epochs=(1,))
    corpus = malicious_corpus(tmp_path / "canaries")
    assert len(corpus) >= 25
    cwd = os.getcwd()
    rejected = 0
    try:
        for payload in corpus:
            for target in ("zoo/trial_001/checkpoint_000001/checkpoint.pt", "cnn_park_splits.json"):
                work = tmp_path / "runs" / payload.name / target.replace("/", "_")
                park = shutil.copytree(src, work / "park")
                (park / target).write_bytes(payload.data)
                os.chdir(work)
                with pytest.raises(NNGraphError):
                    nds.convert_cnn_wild_park(park, work / "out")
                assert not payload.canary.exists(), (payload.name, target)
                rejected += 1
    finally:
        os.chdir(cwd)
    assert rejected == 2 * len(corpus)
    assert not any((tmp_path / "canaries").iterdir())
