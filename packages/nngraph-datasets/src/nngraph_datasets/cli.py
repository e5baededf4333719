"""`nngraph-datasets`: fit, inspect, verify and picture INR zoos and CNN zoos.

For example:

```bash
nngraph-datasets cnn-zoo fit --dataset fashion-mnist --recipe default --out zoos/cnn-fmnist
nngraph-datasets cnn-zoo info zoos/cnn-fmnist
nngraph-datasets cnn-zoo verify zoos/cnn-fmnist
nngraph-datasets cnn-zoo show zoos/cnn-fmnist --out cnn.png
nngraph-datasets wild-park-zoo fit --dataset fashion-mnist --recipe default --out zoos/wild-park
nngraph-datasets wild-park-zoo info zoos/wild-park
nngraph-datasets fit --source mnist-5k --out zoos/mnist5k
nngraph-datasets fit --source fashion-mnist --out zoos/fmnist --limit 1000
nngraph-datasets info zoos/fmnist
nngraph-datasets verify zoos/fmnist
nngraph-datasets show zoos/fmnist --out fmnist.png
nngraph-datasets convert mnist-inrs.zip --out zoos/mnist-published
```
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from .errors import DatasetError
from .inr import RECIPES

__all__ = ["main"]


class _Progress:
    """A one-line progress bar: INRs done, INR-steps/s, median PSNR, ETA (no dependencies)."""

    def __init__(self, steps: int, stream: TextIO | None = None) -> None:
        self.steps, self.t0 = steps, time.monotonic()
        self.first: tuple[int, float] | None = None
        self.stream: TextIO = stream or sys.stderr
        self.psnr: list[float] = []

    def __call__(self, done: int, total: int, batch_psnr: torch.Tensor) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (done - len(batch_psnr), now)  # resumed shards do not count for speed
        self.psnr += batch_psnr.tolist()
        fitted, dt = done - self.first[0], now - self.t0
        rate = fitted / dt if dt > 0 and fitted > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        med = float(torch.tensor(self.psnr).median()) if self.psnr else float("nan")
        width = 30
        fill = int(width * done / max(total, 1))
        line = (
            f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} INRs | "
            f"{rate * self.steps:,.0f} INR-steps/s | median PSNR {med:.1f} dB | ETA {_fmt(eta)}"
        )
        print(line, end="", file=self.stream, flush=True)
        if done >= total:
            print(file=self.stream)


def _fmt(sec: float) -> str:
    if sec != sec:
        return "?"
    m, s = divmod(int(sec), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _cmd_fit(a: argparse.Namespace) -> int:
    from .zoo import build_zoo

    recipe = RECIPES[a.recipe]
    changes = {
        k: v
        for k, v in (("steps", a.steps), ("stop_psnr", a.stop_psnr), ("lr", a.lr))
        if v is not None
    }
    if changes:
        recipe = dataclasses.replace(recipe, **changes)
    elif a.recipe == "benchmark" and a.source == "fashion-mnist":
        from .inr import FASHION_MNIST_BENCHMARK

        recipe = FASHION_MNIST_BENCHMARK
    if a.threads:
        torch.set_num_threads(a.threads)
    choices: dict[str, Any] = {"auto": "auto", "yes": True, "no": False}
    compile_: bool | str = choices[a.compile]
    if a.kernel != "auto" and compile_ != "auto":
        print("error: pass --kernel or --compile, not both", file=sys.stderr)
        return 2
    out = build_zoo(
        a.out, a.source, recipe, seed=a.seed, limit=a.limit, shard_size=a.shard_size,
        batch_size=a.batch_size, compile=compile_, kernel=a.kernel, root=a.root,
        overwrite=a.overwrite, progress=None if a.quiet else _Progress(recipe.steps),
    )  # fmt: skip
    print(f"wrote {out}")
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .stats import layer_stats
    from .zoo import Zoo

    zoo = Zoo(a.path)
    m = zoo.manifest
    psnr = zoo.column("psnr")
    steps = zoo.column("steps")
    info = {
        "path": str(zoo.path),
        "source": m["source"],
        "num_inrs": m["num_inrs"],
        "splits": {k: v[1] - v[0] for k, v in m["splits"].items()},
        "recipe": m["recipe"],
        "seed": m.get("seed"),
        "psnr_db": {"median": float(psnr.nanmedian()), "p10": float(psnr.nanquantile(0.1)),
                    "p90": float(psnr.nanquantile(0.9))} if len(psnr) else None,
        "stopped_early": int((steps < int(m["recipe"].get("steps", 0))).sum()) if "steps" in m["recipe"] else None,
        "layer_std": {k: round(v["std"], 4) for k, v in layer_stats(zoo.column("params")).items()},
        "shards": len(m["shards"]),
    }  # fmt: skip
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from .zoo import verify_zoo

    m = verify_zoo(a.path)
    print(f"OK: {len(m['shards'])} shards, {m['num_inrs']} INRs, every sha256 matches")
    return 0


def _cmd_show(a: argparse.Namespace) -> int:
    from .images import dilate
    from .png import image_grid, write_png
    from .zoo import Zoo

    zoo = Zoo(a.path)
    n = min(a.n, len(zoo))
    h, w = zoo.manifest["architecture"]["image_size"]
    from .inr import render

    recon = render(
        zoo.column("params", 0, n), h, w, w0=float(zoo.manifest["architecture"]["w0"])
    ).clamp(0, 1)
    rows = []
    if "images" in zoo.shards[0]:
        img = zoo.images(0, n)
        rows = [img.numpy(), recon.numpy()]
        if a.dilated:
            rows.append(dilate(img).numpy())
    else:
        rows = [recon.numpy()]
    out = Path(a.out or Path(a.path) / "preview.png")
    write_png(out, image_grid(rows, scale=a.scale))
    print(
        f"wrote {out} (rows: {'originals, reconstructions' + (', dilation targets' if a.dilated else '') if len(rows) > 1 else 'reconstructions'})"
    )
    return 0


def _cmd_convert(a: argparse.Namespace) -> int:
    from .published import convert_published

    out = convert_published(
        a.zip, a.out, a.kind, splits_json=a.splits, seed=a.seed, overwrite=a.overwrite
    )
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- CNN zoos
def _cmd_cnn_fit(a: argparse.Namespace) -> int:
    from .cnn_zoo import build_cnn_zoo, default_cnn_zoo_dir

    out = a.out or default_cnn_zoo_dir(a.dataset, a.recipe, a.seed)
    t0 = time.monotonic()
    path = build_cnn_zoo(
        out, dataset=a.dataset, recipe=a.recipe, seed=a.seed, num_networks=a.num_networks,
        progress=not a.quiet, overwrite=a.overwrite, data_root=a.root, threads=a.threads,
    )  # fmt: skip
    print(f"wrote {path} ({time.monotonic() - t0:.0f} s)")
    return 0


def _quantiles(x: torch.Tensor) -> dict[str, float] | None:
    if not len(x):
        return None
    q = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    vals = x.double().quantile(q.double()).tolist()
    return {
        k: round(v, 4) for k, v in zip(("min", "p10", "p25", "median", "p75", "p90", "max"), vals)
    }


def cnn_zoo_info(path: str | Path) -> dict[str, Any]:
    """The summary printed by `nngraph-datasets cnn-zoo info`."""
    from .cnn_zoo import CATEGORIES, CnnZoo

    zoo = CnnZoo(path)
    m = zoo.manifest
    met = zoo.metrics()
    last_epoch = int(met["epoch"].max()) if len(met["epoch"]) else 0
    final = met["epoch"] == last_epoch
    by_epoch = {
        int(e): round(float(met["test_acc"][met["epoch"] == e].double().median()), 4)
        for e in torch.unique(met["epoch"]).tolist()
    }
    ranges: dict[str, Any] = {}
    for col in ("init_std", "lr", "l2", "dropout", "train_fraction"):
        if col in met and len(met[col]):
            ranges[col] = [float(met[col].min()), float(met[col].max())]
    for col in CATEGORIES:
        names = zoo.categories.get(col, [])
        codes = met[col][final]
        ranges[col] = {names[c] if c < len(names) else str(c): int((codes == c).sum())
                       for c in torch.unique(codes).tolist()}  # fmt: skip
    stopped = int(met["stopped"][final].sum()) if "stopped" in met else None
    net = met["network"]
    return {
        "path": str(zoo.path),
        "dataset": m["dataset"],
        "recipe": m["recipe"].get("name", m["recipe"]),
        "seed": m.get("seed"),
        "num_networks": len(torch.unique(net)),
        "num_checkpoints": len(zoo),
        "epochs": sorted(by_epoch),
        "splits": {
            k: {"networks": len(torch.unique(net[v])), "checkpoints": len(v)}
            for k, v in zoo.splits.items()
        },
        "test_acc_final": _quantiles(met["test_acc"][final]),
        "test_acc_all": _quantiles(met["test_acc"]),
        "train_acc_final": _quantiles(met["train_acc"][final]),
        "median_test_acc_by_epoch": by_epoch,
        "stopped_networks": stopped,
        "hyperparameters": ranges,
        "evaluation": m.get("evaluation"),
        "shards": len(m["shards"]),
    }


def _cmd_cnn_info(a: argparse.Namespace) -> int:
    info = cnn_zoo_info(a.path)
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:>24}: {v}")
    return 0


def _cmd_cnn_verify(a: argparse.Namespace) -> int:
    from .cnn_zoo import verify_cnn_zoo

    m = verify_cnn_zoo(a.path)
    print(
        f"OK: {len(m['shards'])} shards, {m['num_networks']} networks, {m['num_checkpoints']} "
        "checkpoints, every sha256 matches"
    )
    return 0


def _cnn_figure(acc: torch.Tensor, epoch: torch.Tensor, network: torch.Tensor, curves: int) -> Any:
    """A greyscale picture: histogram of the final test accuracy (left), test accuracy against
    epoch for `curves` networks (right); both x axes and the right y axis span [0, 1]."""
    import numpy as np

    size, pad = 200, 10
    img = np.ones((size + 2 * pad, 2 * size + 3 * pad))
    final = acc[epoch == epoch.max()].numpy() if len(acc) else np.zeros(0)
    counts, _ = np.histogram(final, bins=20, range=(0, 1))
    left = img[pad : pad + size, pad : pad + size]
    left[:] = 0.92
    bar = size // 20
    for i, c in enumerate(counts):
        h = round(size * c / max(counts.max(), 1))
        if h:
            left[size - h :, i * bar : (i + 1) * bar - 1] = 0.25
    right = img[pad : pad + size, 2 * pad + size : 2 * pad + 2 * size]
    right[:] = 0.92
    epochs = torch.unique(epoch)
    emax = max(float(epochs.max()), 1.0) if len(epochs) else 1.0
    for n in torch.unique(network)[:curves].tolist():
        rows = torch.nonzero(network == n).flatten()
        xs = (epoch[rows].double() / emax * (size - 1)).numpy()
        ys = ((1 - acc[rows].double().clamp(0, 1)) * (size - 1)).numpy()
        for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1]), zip(xs[1:], ys[1:])):
            steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
            t = np.linspace(0, 1, steps)
            right[
                np.round(y0 + t * (y1 - y0)).astype(int), np.round(x0 + t * (x1 - x0)).astype(int)
            ] = 0.1
    return img


def _cmd_cnn_show(a: argparse.Namespace) -> int:
    from .cnn_zoo import CnnZoo
    from .png import write_png

    zoo = CnnZoo(a.path)
    met = zoo.metrics()
    img = _cnn_figure(met["test_acc"], met["epoch"], met["network"], a.curves)
    out = Path(a.out or Path(a.path) / "preview.png")
    write_png(out, img)
    print(
        f"wrote {out} (left: histogram of the final test accuracy over [0, 1]; right: test "
        f"accuracy against epoch, {min(a.curves, zoo.manifest['num_networks'])} networks)"
    )
    return 0


def _cmd_cnn_convert(a: argparse.Namespace) -> int:
    from .cnn_published import convert_small_cnn_zoo

    out = convert_small_cnn_zoo(
        a.src, a.out, input_size=a.input_size, seed=a.seed, overwrite=a.overwrite
    )
    print(f"wrote {out}")
    return 0


def _add_cnn_zoo(sub: Any) -> None:
    from .cnn_zoo import CNN_RECIPES

    cz = sub.add_parser(
        "cnn-zoo", help="CNN zoos (Small CNN Zoo protocol): fit, info, verify, show"
    )
    csub = cz.add_subparsers(dest="cnn_command", required=True)
    f = csub.add_parser("fit", help="train a CNN zoo (resumable; deterministic for a seed)")
    f.add_argument("--dataset", default="fashion-mnist",
                   choices=["fashion-mnist", "mnist", "mnist-5k", "digits"])  # fmt: skip
    f.add_argument("--recipe", default="default", choices=sorted(CNN_RECIPES))
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--num-networks", type=int, help="override the recipe's number of networks")
    f.add_argument("--out", help="zoo folder (default: the cache, $NNGRAPH_ZOOS)")
    f.add_argument("--root", help="folder of the IDX files (fashion-mnist / mnist)")
    f.add_argument("--threads", type=int, help="torch threads (recorded; same threads, same bytes)")
    f.add_argument("--overwrite", action="store_true")
    f.add_argument("--quiet", action="store_true", help="no progress line")
    f.set_defaults(func=_cmd_cnn_fit)
    i = csub.add_parser("info", help="counts, splits, accuracy quantiles, hyper-parameter ranges")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_cnn_info)
    v = csub.add_parser("verify", help="re-hash every shard, check it against the manifest")
    v.add_argument("path")
    v.set_defaults(func=_cmd_cnn_verify)
    s = csub.add_parser("show", help="PNG: test-accuracy histogram and accuracy against epoch")
    s.add_argument("path")
    s.add_argument("--out", help="PNG file (default PATH/preview.png)")
    s.add_argument("--curves", type=int, default=100, help="networks drawn on the right")
    s.set_defaults(func=_cmd_cnn_show)
    c = csub.add_parser("convert", help="convert a published zoo folder into a CNN zoo")
    c.add_argument("layout", choices=["small-cnn-zoo"], help="the published layout")
    c.add_argument("src", help="the published folder (weights.npy, layout.csv, metrics.csv[.gz])")
    c.add_argument("out", help="the zoo folder to create")
    c.add_argument("--input-size", type=int, default=28, help="image size (32: CIFAR-10, SVHN)")
    c.add_argument("--seed", type=int, default=0, help="seed of the split by network")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=_cmd_cnn_convert)


# ----------------------------------------------------------------------------- wild park zoos
def _cmd_wild_fit(a: argparse.Namespace) -> int:
    from .wild_park import build_wild_park_zoo, default_wild_park_zoo_dir

    out = a.out or default_wild_park_zoo_dir(a.dataset, a.recipe, a.seed)
    t0 = time.monotonic()
    path = build_wild_park_zoo(
        out, dataset=a.dataset, recipe=a.recipe, seed=a.seed, num_networks=a.num_networks,
        progress=not a.quiet, overwrite=a.overwrite, data_root=a.root, threads=a.threads,
    )  # fmt: skip
    print(f"wrote {path} ({time.monotonic() - t0:.0f} s)")
    return 0


def wild_park_zoo_info(path: str | Path) -> dict[str, Any]:
    """The summary printed by `nngraph-datasets wild-park-zoo info`."""
    from .wild_park import WildParkZoo

    zoo = WildParkZoo(path)
    m = zoo.manifest
    met = zoo.metrics()
    last_epoch = int(met["epoch"].max()) if len(met["epoch"]) else 0
    final = met["epoch"] == last_epoch
    net = met["network"]
    archs = []
    for j, arch in enumerate(zoo.architectures):
        sel = final & (met["architecture"] == j)
        acc = met["test_acc"][sel]
        archs.append({
            "id": j, "label": arch.label, "params": arch.num_params,
            "networks": len(torch.unique(net[met["architecture"] == j])),
            "median_final_test_acc": round(float(acc.double().median()), 4) if len(acc) else None,
        })  # fmt: skip
    by_col = {}
    for col in ("depth", "width", "kernel", "residual", "activation"):
        vals = {}
        for v in torch.unique(met[col]).tolist():
            acc = met["test_acc"][final & (met[col] == v)]
            names = zoo.categories["activation"] if col == "activation" else []
            name = names[v] if 0 <= v < len(names) else str(v)
            vals[name] = {"networks": len(torch.unique(net[final & (met[col] == v)])),
                          "median_final_test_acc": round(float(acc.double().median()), 4)}  # fmt: skip
        by_col[col] = vals
    return {
        "path": str(zoo.path),
        "dataset": m["dataset"],
        "recipe": m["recipe"].get("name", m["recipe"]),
        "seed": m.get("seed"),
        "num_networks": len(torch.unique(net)),
        "num_architectures": len(zoo.architectures),
        "num_checkpoints": len(zoo),
        "epochs": sorted(torch.unique(met["epoch"]).tolist()),
        "splits": {
            k: {"networks": len(torch.unique(net[v])), "checkpoints": len(v)}
            for k, v in zoo.splits.items()
        },
        "test_acc_final": _quantiles(met["test_acc"][final]),
        "test_acc_all": _quantiles(met["test_acc"]),
        "train_acc_final": _quantiles(met["train_acc"][final]) if "train_acc" in met else None,
        "stopped_networks": int(met["stopped"][final].sum()) if "stopped" in met else None,
        "by": by_col,
        "architectures": archs,
        "shards": len(m["shards"]),
    }


def _cmd_wild_info(a: argparse.Namespace) -> int:
    info = wild_park_zoo_info(a.path)
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            if k == "architectures":
                print(f"{k:>24}:")
                for e in v:
                    print(f"{'':>26}{e['id']:>3} {e['label']} | {e['params']} params | "
                          f"{e['networks']} networks | median final test acc "
                          f"{e['median_final_test_acc']}")  # fmt: skip
            else:
                print(f"{k:>24}: {v}")
    return 0


def _cmd_wild_verify(a: argparse.Namespace) -> int:
    from .wild_park import verify_wild_park_zoo

    m = verify_wild_park_zoo(a.path)
    print(
        f"OK: {len(m['shards'])} shards, {m['num_networks']} networks of "
        f"{len(m['architectures'])} architectures, {m['num_checkpoints']} checkpoints, every "
        "sha256 matches"
    )
    return 0


def _cmd_wild_show(a: argparse.Namespace) -> int:
    from .png import write_png
    from .wild_park import WildParkZoo

    zoo = WildParkZoo(a.path)
    met = zoo.metrics()
    img = _cnn_figure(met["test_acc"], met["epoch"], met["network"], a.curves)
    out = Path(a.out or Path(a.path) / "preview.png")
    write_png(out, img)
    print(
        f"wrote {out} (left: histogram of the final test accuracy over [0, 1]; right: test "
        f"accuracy against epoch, {min(a.curves, zoo.manifest['num_networks'])} networks)"
    )
    return 0


def _cmd_wild_convert(a: argparse.Namespace) -> int:
    from .wild_park_published import convert_cnn_wild_park

    out = convert_cnn_wild_park(
        a.src, a.out, splits_file=a.splits, input_size=a.input_size, overwrite=a.overwrite
    )
    print(f"wrote {out}")
    return 0


def _add_wild_park_zoo(sub: Any) -> None:
    from .wild_park import WILD_PARK_RECIPES

    wz = sub.add_parser(
        "wild-park-zoo",
        help="heterogeneous CNN zoos (CNN Wild Park style): fit, info, verify, show, convert",
    )
    wsub = wz.add_subparsers(dest="wild_command", required=True)
    f = wsub.add_parser("fit", help="train a wild park zoo (resumable; deterministic for a seed)")
    f.add_argument("--dataset", default="fashion-mnist",
                   choices=["fashion-mnist", "mnist", "mnist-5k", "digits"])  # fmt: skip
    f.add_argument("--recipe", default="default", choices=sorted(WILD_PARK_RECIPES))
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--num-networks", type=int, help="override the recipe's number of networks")
    f.add_argument("--out", help="zoo folder (default: the cache, $NNGRAPH_ZOOS)")
    f.add_argument("--root", help="folder of the IDX files (fashion-mnist / mnist)")
    f.add_argument("--threads", type=int, help="torch threads (recorded; same threads, same bytes)")
    f.add_argument("--overwrite", action="store_true")
    f.add_argument("--quiet", action="store_true", help="no progress line")
    f.set_defaults(func=_cmd_wild_fit)
    i = wsub.add_parser("info", help="counts, architectures, splits, accuracy quantiles")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_wild_info)
    v = wsub.add_parser("verify", help="re-hash every shard, check it against the manifest")
    v.add_argument("path")
    v.set_defaults(func=_cmd_wild_verify)
    s = wsub.add_parser("show", help="PNG: test-accuracy histogram and accuracy against epoch")
    s.add_argument("path")
    s.add_argument("--out", help="PNG file (default PATH/preview.png)")
    s.add_argument("--curves", type=int, default=100, help="networks drawn on the right")
    s.set_defaults(func=_cmd_wild_show)
    c = wsub.add_parser("convert", help="convert a CNN Wild Park folder (reference layout)")
    c.add_argument("layout", choices=["cnn-wild-park"], help="the published layout")
    c.add_argument("src", help="the data set folder (splits json + checkpoint.pt files)")
    c.add_argument("out", help="the zoo folder to create")
    c.add_argument("--splits", default="cnn_park_splits.json", help="the splits file in SRC")
    c.add_argument("--input-size", type=int, default=32, help="image size (32: CIFAR-10)")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=_cmd_wild_convert)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nngraph-datasets", description="INR and CNN model zoos: fit, inspect, verify."
    )
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit one INR per image and write a zoo (resumable)")
    f.add_argument(
        "--source", default="mnist-5k", choices=["mnist-5k", "fashion-mnist", "mnist", "digits"]
    )
    f.add_argument("--out", required=True, help="zoo folder to create")
    f.add_argument("--recipe", default="benchmark", choices=sorted(RECIPES))
    f.add_argument("--steps", type=int, help="override the recipe's step count")
    f.add_argument("--stop-psnr", type=float, help="override the early-stop PSNR (dB)")
    f.add_argument("--lr", type=float, help="override the learning rate")
    f.add_argument("--limit", type=int, help="fit only N INRs (splits shrunk in proportion)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--root", help="folder of the IDX files (fashion-mnist / mnist)")
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--shard-size", type=int, default=1024)
    f.add_argument(
        "--kernel",
        choices=["auto", "fused", "compiled", "eager"],
        default="auto",
        help="fitting step: fused C kernel (built on first use), torch.compile-d, eager "
        "(default auto: the first that works)",
    )
    f.add_argument(
        "--compile",
        choices=["auto", "yes", "no"],
        default="auto",
        help="older switch: yes = --kernel compiled, no = --kernel eager",
    )
    f.add_argument(
        "--threads", type=int, help="torch and fused-kernel threads (default: torch's choice)"
    )
    f.add_argument("--overwrite", action="store_true")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fit)
    i = sub.add_parser("info", help="summary of a zoo (splits, recipe, PSNR, per-layer std)")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)
    v = sub.add_parser("verify", help="check every shard's sha256")
    v.add_argument("path")
    v.set_defaults(func=_cmd_verify)
    s = sub.add_parser(
        "show", help="PNG grid: originals above reconstructions (and dilation targets)"
    )
    s.add_argument("path")
    s.add_argument("--out", help="PNG file (default PATH/preview.png)")
    s.add_argument("-n", type=int, default=16, help="number of INRs")
    s.add_argument("--scale", type=int, default=4)
    s.add_argument("--dilated", action="store_true", help="add a row of dilation targets")
    s.set_defaults(func=_cmd_show)
    c = sub.add_parser("convert", help="convert a published INR zip into a zoo")
    c.add_argument("zip")
    c.add_argument("--out", required=True)
    c.add_argument("--kind", choices=["mnist", "fashion-mnist"])
    c.add_argument("--splits", help="the published splits json")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=_cmd_convert)
    _add_cnn_zoo(sub)
    _add_wild_park_zoo(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
