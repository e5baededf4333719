"""CNN generalisation prediction at an equal training budget: every model x every seed.

    python benchmarks/ablate_gen.py --list                          # the models
    python benchmarks/ablate_gen.py --seeds 0 1 2 --minutes 4       # all models, 3 seeds
    python benchmarks/ablate_gen.py --models statnn,ngnn --minutes 2
    python benchmarks/ablate_gen.py --summary-only                  # table of what has run

Each run is `nngraph-train fit --config fmnist_cnn_gen_<model> --seed_everything <seed>
--trainer.max_time <budget> --num_threads 1` in its own process (`--jobs` at once, one torch
thread each), on the cached default Fashion-MNIST CNN zoo (built on first use), with model
selection on validation Kendall tau and the test at the best validation checkpoint, as every
`nngraph-train` run. The `wild_*` models train on the default Fashion-MNIST wild park zoo
(CNNs of many architectures, `fmnist_wild_*` configs, `WildParkTask`). An epoch budget
(`--epochs N`, `--epochs-for MODEL=N`) replaces the time budget where runs share a loaded
machine. Runs already finished (a `results.json` in their folder) are not run again,
so the script can be stopped and restarted. The summary (`summary.md`, `summary.json` and the
plot `summary.png` in `--summary-out`, default `--out`) gives per model: test tau per seed,
mean +- std, tau over the trained checkpoints only (epoch >= 1, from each run's
predictions.csv), test R2 (mean), best validation tau (mean), optimiser steps and epochs done,
the training time (mean over seeds; the runs' own `fit_seconds`), and the difference of test
tau to the `--reference` model (default StatNN) over the seeds both ran, with a 95% interval
from resampling the test networks (1,000 draws, every checkpoint of a drawn network together,
the same draws for both models); the machine heads it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _machine import cpu_model, gemm_gflops
from _plots import seed_bars

#: the shipped NG-T config's model_kwargs (a CLI dict replaces the config's whole dict)
NGT_KWARGS = (
    "node_dim: 32, edge_channels: 16, attention_dim: 32, node_hidden_dim: 64, "
    "edge_hidden_dim: 32, num_layers: 3, heads: 4, out_hidden_dim: 64"
)

#: the reference code's weight-space augmentation for CNN zoos (noise, weight dropout)
AUG = ["--data.augment.noise", "0.1", "--data.augment.weight_dropout", "0.01"]

# name -> (config, extra CLI arguments, what it is)
MODELS: dict[str, tuple[str, list[str], str]] = {
    "statnn": ("fmnist_cnn_gen_statnn", [], "StatNN: MLP on per-tensor weight statistics"),
    "ngnn": ("fmnist_cnn_gen_ngnn", [], "NG-GNN on the CNN's neural graph"),
    "ngt": ("fmnist_cnn_gen_ngt", [], "NG-T on the CNN's neural graph"),
    "nfn": ("fmnist_cnn_gen_nfn", [], "NFN_HNP (nfn package)"),
    "deepsets": ("fmnist_cnn_gen_deepsets", [], "DeepSets over all weights and biases"),
    "flat_mlp": ("fmnist_cnn_gen_mlp", [], "MLP on the flat weights"),
    "probe_mlp": ("fmnist_cnn_gen_probe_mlp", [], "MLP on the logits on 16 probe images"),
    "ngnn_probes": (
        "fmnist_cnn_gen_ngnn_probes",
        [],
        "NG-GNN + probe features (mean/std/max of 16 probe images)",
    ),
    "statnn_kinds": (
        "fmnist_cnn_gen_statnn",
        ["--model.model_kwargs", "{hidden: [256, 256], kind_features: true}"],
        "StatNN + the network's activation (one-hot)",
    ),
    "ngnn_kinds": (
        "fmnist_cnn_gen_ngnn",
        ["--model.model_kwargs", "{kind_embeddings: true}"],
        "NG-GNN + activation / node / edge type embeddings",
    ),
    "ngnn_layers": (
        "fmnist_cnn_gen_ngnn",
        ["--model.model_kwargs", "{pooling: layers}"],
        "NG-GNN, readout of every node layer's mean + the output neurons",
    ),
    "ngnn_probes_layers": (
        "fmnist_cnn_gen_ngnn_probes",
        ["--model.model_kwargs", "{pooling: layers}"],
        "NG-GNN + probe features, readout of layer means + the output neurons",
    ),
    "wild_statnn": (
        "fmnist_wild_statnn",
        [],
        "wild park zoo: StatNN on statistics aligned by tensor role",
    ),
    "wild_ngnn": ("fmnist_wild_ngnn", [], "wild park zoo: NG-GNN + kind embeddings, mixed batches"),
    "wild_ngt": ("fmnist_wild_ngt", [], "wild park zoo: NG-T + kind embeddings, mixed batches"),
    "ngt_kinds": (
        "fmnist_cnn_gen_ngt",
        ["--model.model_kwargs", "{" + NGT_KWARGS + ", kind_embeddings: true}"],
        "NG-T + activation / node / edge type embeddings",
    ),
    "ngnn_probes_heldout": (
        "fmnist_cnn_gen_ngnn_probes",
        ["--model.probe_images", "heldout"],
        "NG-GNN + probe features of 16 real images no network saw (held-out Fashion-MNIST)",
    ),
    "probe_mlp_heldout": (
        "fmnist_cnn_gen_probe_mlp",
        ["--model.probe_images", "heldout"],
        "MLP on the logits on 16 real images no network saw (held-out Fashion-MNIST)",
    ),
    "ngt_layers": (
        "fmnist_cnn_gen_ngt",
        ["--model.model_kwargs", "{" + NGT_KWARGS + ", pooling: layers}"],
        "NG-T, readout of every node layer's mean + the output neurons",
    ),
    "ngt_probes": (
        "fmnist_cnn_gen_ngt_probes",
        [],
        "NG-T + probe features (mean/std/max of 16 probe images)",
    ),
    "statnn_aug": (
        "fmnist_cnn_gen_statnn",
        [*AUG],
        "StatNN, training batches augmented (noise 0.1 std, weight dropout 0.01)",
    ),
    "ngnn_layers_aug": (
        "fmnist_cnn_gen_ngnn",
        ["--model.model_kwargs", "{pooling: layers}", *AUG],
        "NG-GNN, per-layer readout, training batches augmented (noise 0.1 std, weight dropout 0.01)",
    ),
    "statnn_signs": (
        "fmnist_cnn_gen_statnn",
        ["--data.augment.signs", "true"],
        "StatNN, training batches augmented with random sign flips of tanh networks' channels",
    ),
    "ngnn_layers_signs": (
        "fmnist_cnn_gen_ngnn",
        ["--model.model_kwargs", "{pooling: layers}", "--data.augment.signs", "true"],
        "NG-GNN, per-layer readout, random sign flips of tanh networks' channels",
    ),
    "ngt_signs": (
        "fmnist_cnn_gen_ngt",
        ["--data.augment.signs", "true"],
        "NG-T, training batches augmented with random sign flips of tanh networks' channels",
    ),
    "ngt_aug": (
        "fmnist_cnn_gen_ngt",
        [*AUG],
        "NG-T, training batches augmented (noise 0.1 std, weight dropout 0.01)",
    ),
}


def run_one(name: str, seed: int, args: argparse.Namespace) -> Path:
    config, extra, _ = MODELS[name]
    run_dir = args.out / f"{name}-seed{seed}"
    if (run_dir / "results.json").exists():
        return run_dir
    minutes = int(args.minutes)
    seconds = round((args.minutes - minutes) * 60)
    epochs = _epochs(name, args)
    cmd = [
        "nngraph-train", "fit", "--config", config, *extra,
        "--seed_everything", str(seed),
        "--trainer.max_time", f"00:{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}",
        *(["--trainer.max_epochs", str(epochs)] if epochs else []),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--num_threads", str(args.threads),
        "--run_dir", str(run_dir),
        *args.cli,
    ]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(run_dir / "stdout.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    took = time.time() - started
    state = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    print(f"[ablate_gen] {name} seed {seed}: {state} in {took / 60:.1f} min", flush=True)
    return run_dir


def _epochs(name: str, args: argparse.Namespace) -> int | None:
    """The epoch budget of model `name` (`--epochs-for name=N`, else `--epochs`; `None`: the
    time budget alone)."""
    for item in args.epochs_for:
        model, _, n = item.partition("=")
        if model == name:
            return int(n)
    return args.epochs  # type: ignore[no-any-return]


def _budget(args: argparse.Namespace, names: list[str]) -> str:
    if args.epochs is None and not args.epochs_for:
        return f"{args.minutes:g} min of training per run"
    per = {n: _epochs(n, args) for n in names}
    parts = sorted({e for e in per.values() if e is not None})
    desc = ", ".join(
        f"{e} epochs ({', '.join(n for n, v in per.items() if v == e)})" for e in parts
    )
    return f"an epoch budget per run: {desc}; at most {args.minutes:g} min each"


def _best_val(run_dir: Path) -> float | None:
    best = None
    for csv in sorted(run_dir.glob("logs/**/metrics.csv")):
        header, *rows = csv.read_text().splitlines()
        cols = header.split(",")
        if "val/tau" not in cols:
            continue
        i = cols.index("val/tau")
        for row in rows:
            cells = row.split(",")
            if i < len(cells) and cells[i]:
                v = float(cells[i])
                best = v if best is None else max(best, v)
    return best


def _test_predictions(run_dir: Path) -> dict[str, np.ndarray] | None:
    """prediction, target, network and epoch of a run's test checkpoints, from
    `predictions.csv` (`None` without one)."""
    f = run_dir / "predictions.csv"
    if not f.exists():
        return None
    data = np.genfromtxt(f, delimiter=",", names=True)
    return {
        "prediction": data["prediction"], "target": data["target"],
        "network": data["network"].astype(np.int64), "epoch": data["epoch"].astype(np.int64),
    }  # fmt: skip


def _tau_trained(run_dir: Path) -> float | None:
    """Test tau over the trained checkpoints only (epoch >= 1), from `predictions.csv`: the
    initialisations sit at chance accuracy, where ranking them is noise."""
    from nngraph_apps import kendall_tau

    pred = _test_predictions(run_dir)
    if pred is None:
        return None
    trained = pred["epoch"] >= 1
    if int(trained.sum()) < 2:
        return None
    return kendall_tau(pred["prediction"][trained], pred["target"][trained])


def _pair_terms(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kendall tau_b's pair matrices: concordance sx*sy, |sx|, |sy| (s = sign of differences)."""
    sx = np.sign(pred[:, None] - pred[None, :])
    sy = np.sign(target[:, None] - target[None, :])
    return sx * sy, np.abs(sx), np.abs(sy)


def _weighted_tau(terms: tuple[np.ndarray, ...], w: np.ndarray) -> np.ndarray:
    """tau_b of every bootstrap sample, `w` `[R, n]` the multiplicity of each checkpoint."""
    num, dx, dy = (((w @ t) * w).sum(1) for t in terms)
    return num / np.sqrt(dx * dy)


def delta_vs_reference(
    runs: dict[int, Path], reference: dict[int, Path], *, resamples: int = 1000, seed: int = 0
) -> dict[str, float] | None:
    """Test tau of a model minus the reference model's (mean over the seeds both ran), with a
    95% interval from resampling the test *networks* (all checkpoints of a drawn network
    together; the same draw for both models): how much the gap depends on which networks are
    in the test split. `None` without common seeds or predictions."""
    seeds = sorted(set(runs) & set(reference))
    loaded = [(_test_predictions(runs[s]), _test_predictions(reference[s])) for s in seeds]
    loaded = [(a, b) for a, b in loaded if a is not None and b is not None]
    if not loaded:
        return None
    nets = loaded[0][0]["network"]
    ids, index = np.unique(nets, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
    counts = np.zeros((resamples, len(ids)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    w = counts[:, index]  # [R, n]: each checkpoint weighted by its network's draws
    deltas = np.zeros(resamples)
    point = 0.0
    for mine, ref in loaded:
        same = all(np.array_equal(x["network"], nets) for x in (mine, ref))
        if not (same and np.array_equal(mine["target"], ref["target"])):
            return None  # not the same test checkpoints in the same order
        a = _pair_terms(mine["prediction"], mine["target"])
        b = _pair_terms(ref["prediction"], ref["target"])
        deltas += _weighted_tau(a, w) - _weighted_tau(b, w)
        ones = np.ones((1, len(nets)))
        point += float(_weighted_tau(a, ones)[0] - _weighted_tau(b, ones)[0])
    deltas /= len(loaded)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {
        "delta": point / len(loaded), "lo": float(lo), "hi": float(hi),
        "p_ge_0": float((deltas >= 0).mean()), "seeds": len(loaded),
    }  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(args: argparse.Namespace, names: list[str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name in names:
        per_seed = []
        for seed in args.seeds:
            f = args.out / f"{name}-seed{seed}" / "results.json"
            if not f.exists():
                continue
            r = json.loads(f.read_text())
            test = r["test"]
            per_seed.append(
                {
                    "seed": seed,
                    "tau": test.get("test/tau"),
                    "r2": test.get("test/r2"),
                    "mse": test.get("test/mse"),
                    "val_tau": _best_val(f.parent),
                    "tau_trained": _tau_trained(f.parent),
                    "epochs": r["epochs"],
                    "steps": r["steps"],
                    "fit_seconds": r.get("fit_seconds"),
                    "parameters": r.get("num_parameters"),
                    "split_sizes": r.get("split_sizes"),
                }
            )
        if per_seed:
            rows.append({"model": name, "what": MODELS[name][2], "runs": per_seed})
    machine = {"cpu": cpu_model(), "fp32_gflops": round(gemm_gflops(), 1)}
    out = {"machine": machine, "minutes": args.minutes, "threads": args.threads, "rows": rows}
    dest = args.summary_out or args.out
    dest.mkdir(parents=True, exist_ok=True)
    sizes = next((r["runs"][0]["split_sizes"] for r in rows), None)  # type: ignore[index]
    lines = [
        f"Machine: {machine['cpu']}, fp32 GEMM {machine['fp32_gflops']} GFLOP/s (measured when "
        f"this summary was written); {_budget(args, names)}, {args.threads} "
        f"torch thread(s), {args.jobs} runs at a time; zoo checkpoints train/val/test {sizes}.",
        "",
        "| model | what | test tau per seed | **tau mean ± std** | tau, epochs ≥ 1 | R² mean ± std "
        "| best val tau (mean) | steps (per seed) | epochs | training min (mean) | parameters "
        f"| tau − `{args.reference}` [95% interval] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dirs = {n: {s: args.out / f"{n}-seed{s}" for s in args.seeds} for n in names}
    ref = {s: d for s, d in dirs.get(args.reference, {}).items() if (d / "results.json").exists()}
    for row in rows:
        runs = row["runs"]
        taus = [float(r["tau"]) for r in runs if r["tau"] is not None]  # type: ignore[attr-defined]
        r2s = [float(r["r2"]) for r in runs if r["r2"] is not None]  # type: ignore[attr-defined]
        vals = [float(r["val_tau"]) for r in runs if r["val_tau"] is not None]  # type: ignore[attr-defined]
        trained = [float(r["tau_trained"]) for r in runs if r["tau_trained"] is not None]  # type: ignore[attr-defined]
        fits = [float(r["fit_seconds"]) / 60 for r in runs if r.get("fit_seconds")]  # type: ignore[attr-defined]
        tau_m, tau_s = _mean_std(taus)
        tt_m, tt_s = _mean_std(trained)
        r2_m, r2_s = _mean_std(r2s)
        mine = {s: d for s, d in dirs[str(row["model"])].items() if (d / "results.json").exists()}
        delta = delta_vs_reference(mine, ref) if row["model"] != args.reference else None
        row.update(tau_mean=tau_m, tau_std=tau_s, r2_mean=r2_m, r2_std=r2_s, delta=delta)
        gap = f"{delta['delta']:+.3f} [{delta['lo']:+.3f}, {delta['hi']:+.3f}]" if delta else "—"
        lines.append(
            f"| `{row['model']}` | {row['what']} | {' / '.join(f'{t:.3f}' for t in taus)} "
            f"| **{tau_m:.3f} ± {tau_s:.3f}** | {tt_m:.3f} ± {tt_s:.3f} | {r2_m:.3f} ± {r2_s:.3f} "
            f"| {statistics.mean(vals) if vals else float('nan'):.3f} "
            f"| {' / '.join(str(r['steps']) for r in runs)} "  # type: ignore[index]
            f"| {' / '.join(str(r['epochs']) for r in runs)} "  # type: ignore[index]
            f"| {statistics.mean(fits) if fits else float('nan'):.1f} | {runs[0]['parameters']:,} "  # type: ignore[index]
            f"| {gap} |"
        )
    (dest / "summary.json").write_text(json.dumps(out, indent=2))
    (dest / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, dest / "summary.png", _budget(args, names))
    return rows


def _plot(rows: list[dict[str, object]], path: Path, budget: str) -> None:
    """Test tau per model: a bar at the mean, a dot per seed, StatNN's mean as a line."""
    rows = [r for r in rows if r["runs"] and not math.isnan(float(r["tau_mean"]))]  # type: ignore[arg-type]
    if not rows:
        return
    taus = [[float(r["tau"]) for r in row["runs"] if r["tau"] is not None] for row in rows]  # type: ignore[attr-defined]
    statnn = [float(r["tau_mean"]) for r in rows if r["model"] == "statnn"]  # type: ignore[arg-type]
    lo, hi = min(min(t) for t in taus if t), max(max(t) for t in taus if t)
    seed_bars(
        [str(r["model"]) for r in rows], taus, path,
        errors=[float(r["tau_std"]) for r in rows],  # type: ignore[arg-type]
        xlim=(max(0.0, lo - 0.05), min(1.0, hi + 0.03)),
        xlabel="test Kendall tau; bars: mean ± std, dots: seeds",
        reference=(statnn[0], "StatNN mean") if statnn else None,
        title=budget,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--reference", default="statnn",
        help="the model every other is compared with in the summary (tau difference on the "
        "seeds both ran, 95%% interval from resampling the test networks)",
    )  # fmt: skip
    ap.add_argument("--minutes", type=float, default=4.0, help="training time per run")
    ap.add_argument(
        "--epochs", type=int, default=None,
        help="an epoch budget per run instead of a time budget (--minutes is then a cap)",
    )  # fmt: skip
    ap.add_argument(
        "--epochs-for", action="append", default=[], metavar="MODEL=N",
        help="the epoch budget of one model (repeatable), e.g. statnn=200",
    )  # fmt: skip
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation_gen"))
    ap.add_argument("--summary-out", type=Path, default=None, help="summary folder (default --out)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("cli", nargs="*", help="further nngraph-train arguments (after --)")
    args = ap.parse_args()
    if args.list:
        for name, (config, extra, what) in MODELS.items():
            print(f"{name:10s} {config:26s} {' '.join(extra):20s} {what}")
        return
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown models {unknown}; --list shows them")
    if not args.summary_only:
        os.environ.setdefault("MPLBACKEND", "Agg")
        # seeds outermost, so a partial run has every model at seed 0 first
        todo = [(n, s) for s in args.seeds for n in names]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda ns: run_one(ns[0], ns[1], args), todo))
    summarize(args, names)


if __name__ == "__main__":
    main()
