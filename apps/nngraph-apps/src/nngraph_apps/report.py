"""Run reports: `results.json`, `report.md` and PNG plots in the run folder."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "aggregate_runs",
    "generalization_breakdown",
    "kendall_tau",
    "machine_info",
    "read_metrics",
    "write_aggregate",
    "write_report",
]


def machine_info() -> dict[str, Any]:
    """CPU model, cores and torch threads (stated beside every speed figure)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def read_metrics(csv_root: Path) -> list[dict[str, float]]:
    """Every row of every `metrics.csv` under `csv_root` (versions of resumed runs in order),
    as floats; empty cells dropped."""
    rows: list[dict[str, float]] = []
    files = sorted(
        csv_root.glob("**/metrics.csv"),
        key=lambda p: (len(p.parent.name), p.parent.name),
    )
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                vals = {}
                for k, v in row.items():
                    if v not in ("", None):
                        with contextlib.suppress(ValueError):
                            vals[k] = float(v)
                rows.append(vals)
    return rows


def _series(
    rows: list[dict[str, float]], key: str, x: str = "step"
) -> tuple[list[float], list[float]]:
    pts = sorted({(r[x], r[key]) for r in rows if key in r and x in r})
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot_curves(rows: list[dict[str, float]], monitor: str, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = monitor.split("/", 1)[1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    drawn = False
    for key, label in (("train/loss_step", "train (step)"), ("train/loss_epoch", "train (epoch)"),
                       ("val/loss", "val")):  # fmt: skip
        xs, ys = _series(rows, key)
        if xs:
            axes[0].plot(xs, ys, label=label, lw=1 if "step" in key else 2)
            drawn = True
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    for key, label in ((f"train/{metric}", "train"), (f"val/{metric}", "val")):
        xs, ys = _series(rows, key, "epoch")
        if xs:
            axes[1].plot([x + 1 for x in xs], ys, marker="o", ms=3, label=label)
            drawn = True
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(metric + (" (x1e-2)" if metric == "mse" else ""))
    axes[1].legend()
    fig.tight_layout()
    if drawn:
        fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def _plot_confusion(cm: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(5, 4.4))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    fig.colorbar(im, fraction=0.046)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_examples(ex: dict[str, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["original", "input", "prediction", "target"]
    titles = ["original image", "input INR", "edited INR", "target (dilated)"]
    k = len(ex["original"])
    fig, axes = plt.subplots(4, k, figsize=(1.3 * k, 5.6), squeeze=False)
    for r, (name, title) in enumerate(zip(names, titles)):
        for c in range(k):
            ax = axes[r][c]
            ax.imshow(np.clip(ex[name][c], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            if r == 0 and "label" in ex and int(ex["label"][c]) >= 0:
                ax.set_title(f"class {int(ex['label'][c])}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def kendall_tau(x: np.ndarray, y: np.ndarray, *, chunk: int = 512) -> float:
    r"""Kendall's $\tau_b$ of two 1-D arrays (ties corrected, as `scipy.stats.kendalltau` and
    torchmetrics' `KendallRankCorrCoef`): $\sum_{i,j} s^x_{ij} s^y_{ij} /
    \sqrt{\sum_{i,j} (s^x_{ij})^2 \sum_{i,j} (s^y_{ij})^2}$ with $s_{ij} = \mathrm{sign}(v_i - v_j)$;
    `nan` for fewer than two points or a constant array. Memory `chunk * n`."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau: arrays of different lengths {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    num = den_x = den_y = 0.0
    for s in range(0, len(x), chunk):
        dx = np.sign(x[s : s + chunk, None] - x[None, :])
        dy = np.sign(y[s : s + chunk, None] - y[None, :])
        num += float((dx * dy).sum())
        den_x += float(np.abs(dx).sum())
        den_y += float(np.abs(dy).sum())
    if den_x == 0 or den_y == 0:
        return float("nan")
    return num / math.sqrt(den_x * den_y)


#: Hyper-parameters of the breakdown: categorical ones by name, numeric ones in quartile bins.
_CATEGORICAL = ("activation", "initializer", "optimizer")
_BINNED = ("epoch", "train_fraction", "lr", "depth", "width", "kernel", "residual")


def _groups(
    values: np.ndarray, column: str, names: list[str] | None
) -> list[tuple[str, np.ndarray]]:
    """(label, mask) per group of a column: its categories, its distinct values when there are
    few (epochs), else quartile bins."""
    if column in _CATEGORICAL:
        codes = values.astype(np.int64)
        return [
            (names[c] if names and 0 <= c < len(names) else str(c), codes == c)
            for c in sorted(set(codes.tolist()))
        ]
    distinct = np.unique(values)
    if len(distinct) <= 8:
        return [
            (_fmt(float(v)) if column != "epoch" else str(int(v)), values == v) for v in distinct
        ]
    edges = np.unique(np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0]))
    out = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        last = i == len(edges) - 2
        mask = (values >= lo) & ((values <= hi) if last else (values < hi))
        out.append((f"[{lo:.3g}, {hi:.3g}{']' if last else ')'}", mask))
    return out


def generalization_breakdown(
    outputs: dict[str, np.ndarray], categories: dict[str, list[str]] | None = None
) -> list[dict[str, Any]]:
    """Errors of a generalisation predictor per hyper-parameter group.

    Args:
        outputs: `prediction` and `target` (test accuracies) and per-checkpoint columns
            (`activation`, `initializer`, `optimizer` as integer codes; `epoch`,
            `train_fraction`, `lr`), all 1-D of one length.
        categories: the names of the codes of the categorical columns.

    Returns:
        One row per (hyper-parameter, group): `factor`, `group`, `n`, `mae` (mean absolute
        error), `bias` (mean of prediction minus target), `tau` (Kendall's $\tau_b$ inside the
        group; `nan` when undefined).
    """
    pred = np.asarray(outputs["prediction"], dtype=np.float64)
    target = np.asarray(outputs["target"], dtype=np.float64)
    cats = categories or {}
    rows: list[dict[str, Any]] = []
    for column in (*_CATEGORICAL, *_BINNED):
        if column not in outputs:
            continue
        values = np.asarray(outputs[column])
        for label, mask in _groups(values, column, cats.get(column)):
            n = int(mask.sum())
            if n == 0:
                continue
            err = pred[mask] - target[mask]
            rows.append(
                {
                    "factor": column,
                    "group": label,
                    "n": n,
                    "mae": float(np.abs(err).mean()),
                    "bias": float(err.mean()),
                    "tau": kendall_tau(pred[mask], target[mask]),
                }
            )
    return rows


def _plot_scatter(outputs: dict[str, np.ndarray], tau: float, r2: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred, target = outputs["prediction"], outputs["target"]
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    color = outputs.get("epoch")
    sc = ax.scatter(
        target, pred, s=6, alpha=0.6, c=color, cmap="viridis" if color is not None else None
    )
    if color is not None:
        fig.colorbar(sc, fraction=0.046, label="epoch")
    lo = float(min(np.min(pred), np.min(target)))
    hi = float(max(np.max(pred), np.max(target)))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--")
    ax.set_xlabel("true test accuracy")
    ax.set_ylabel("predicted test accuracy")
    ax.set_title(f"test: Kendall tau {tau:.3f}, R2 {r2:.3f}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_breakdown(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = list(dict.fromkeys(r["factor"] for r in rows))
    fig, axes = plt.subplots(1, len(factors), figsize=(2.6 * len(factors), 3.4), squeeze=False)
    for ax, factor in zip(axes[0], factors):
        part = [r for r in rows if r["factor"] == factor]
        xs = np.arange(len(part))
        ax.bar(xs, [r["mae"] for r in part], color="tab:blue")
        for x, r in zip(xs, part):
            tau = "" if math.isnan(r["tau"]) else f"{r['tau']:.2f}"
            ax.text(x, r["mae"], tau, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels([r["group"] for r in part], rotation=45, ha="right", fontsize=7)
        ax.set_title(factor, fontsize=9)
    axes[0][0].set_ylabel("mean absolute error (labels: tau)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _write_generalization(
    run_dir: Path, results: dict[str, Any], outputs: dict[str, np.ndarray], categories: Any
) -> tuple[list[tuple[str, str]], list[str]]:
    """Scatter plot, per-hyper-parameter breakdown (markdown + PNG + JSON rows) and the test
    predictions (CSV) of a generalisation run; returns the plots and the report lines."""
    test = results.get("test", {})
    tau = float(test.get("test/tau", kendall_tau(outputs["prediction"], outputs["target"])))
    r2 = float(test.get("test/r2", float("nan")))
    _plot_scatter(outputs, tau, r2, run_dir / "scatter.png")
    rows = generalization_breakdown(outputs, categories)
    plots = [("Predicted vs true test accuracy (test split)", "scatter.png")]
    if rows:
        _plot_breakdown(rows, run_dir / "breakdown.png")
        plots.append(("Error per hyper-parameter (bars: MAE; labels: tau)", "breakdown.png"))
    table = [
        "| hyper-parameter | group | checkpoints | MAE | mean error | Kendall tau |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['factor']} | {r['group']} | {r['n']} | {r['mae']:.4f} | {r['bias']:+.4f} | "
        f"{_fmt(r['tau'])} |"
        for r in rows
    ]
    _write_text(
        run_dir / "breakdown.md", "\n".join(["# Test errors per hyper-parameter", "", *table, ""])
    )
    results["breakdown"] = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in rows
    ]
    cols = list(outputs)
    with open(run_dir / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i in range(len(outputs["prediction"])):
            w.writerow(
                [
                    _fmt(float(outputs[c][i]))
                    if outputs[c].dtype.kind == "f"
                    else int(outputs[c][i])
                    for c in cols
                ]
            )
    lines = [
        "## Breakdown per hyper-parameter (test split)",
        "",
        "Mean absolute error, mean signed error (prediction - truth) and Kendall tau inside each "
        "group (`breakdown.md`; predictions in `predictions.csv`).",
        "",
        *table,
        "",
    ]
    return plots, lines


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_report(run_dir: Path, results: dict[str, Any], *, task: Any = None) -> Path:
    """Write `results.json`, the plots and `report.md` into `run_dir`; returns the report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run_dir / "logs" / "csv")
    plots: list[tuple[str, str]] = []
    monitor = results.get("monitor", "val/loss")
    if rows and _plot_curves(rows, monitor, run_dir / "learning_curves.png"):
        plots.append(("Learning curves", "learning_curves.png"))
    cm = getattr(task, "confusion", None)
    if cm is not None:
        _plot_confusion(cm, run_dir / "confusion_matrix.png")
        plots.append(("Confusion matrix (test)", "confusion_matrix.png"))
        results["confusion_matrix"] = cm.astype(int).tolist()
    ex = getattr(task, "examples", None)
    if ex is not None:
        _plot_examples(ex, run_dir / "editing_examples.png")
        plots.append(("Editing examples (test)", "editing_examples.png"))
    gen_lines: list[str] = []
    outputs = getattr(task, "test_outputs", None)
    if outputs is not None and len(outputs.get("prediction", ())) > 0:
        gen_plots, gen_lines = _write_generalization(
            run_dir, results, outputs, getattr(task, "categories", None)
        )
        plots += gen_plots
    _write_text(run_dir / "results.json", json.dumps(results, indent=1, default=str) + "\n")

    lines = [f"# nngraph run: {results.get('name', run_dir.name)}", ""]
    lines += [
        f"- task: `{results.get('task')}`, model: `{results.get('model')}`, probes: "
        f"`{results.get('use_probes')}`",
        f"- data: `{results.get('source')}` zoo at `{results.get('zoo_dir')}` "
        f"(train/val/test {results.get('split_sizes')})",
        f"- stopped after {results.get('epochs')} epochs / {results.get('steps')} steps; "
        f"fit {results.get('fit_seconds', 0):.0f} s, test {results.get('test_seconds', 0):.0f} s, "
        f"whole job {results.get('job_seconds', 0) / 60:.1f} min"
        + (
            f" (budget {results['time_budget_seconds'] / 60:.1f} min)"
            if results.get("time_budget_seconds")
            else ""
        ),
        f"- model selection: best `{monitor}` = {_fmt(results.get('best_score'))} "
        f"(checkpoint `{results.get('best_checkpoint')}`)",
        f"- machine: {results.get('machine', {}).get('cpu')}, "
        f"{results.get('machine', {}).get('torch_threads')} torch threads",
        "",
        "## Test metrics (best validation checkpoint)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k, v in sorted(results.get("test", {}).items()):
        lines.append(f"| {k} | {_fmt(v)} |")
    lines.append("")
    for title, png in plots:
        lines += [f"## {title}", "", f"![{title}]({png})", ""]
    lines += gen_lines
    report = run_dir / "report.md"
    _write_text(report, "\n".join(lines))
    return report


def _write_text(path: Path, text: str) -> None:
    """Write `text` atomically (a temporary file renamed over `path`)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def aggregate_runs(run_dirs: list[Path]) -> dict[str, Any]:
    """Mean and standard deviation (over runs, ddof 1) of every test metric of finished runs.

    Args:
        run_dirs: run folders, each with the `results.json` of a `fit` or `test` command
            (typically one configuration with different `seed_everything`).

    Returns:
        `{"runs": [...], "seeds": [...], "metrics": {name: {"mean", "std", "values"}}}`;
        a metric missing from a run is an error (the runs are not comparable).

    Raises:
        FileNotFoundError: a folder has no `results.json`.
        ValueError: fewer than one run, or the runs differ in their metrics or configuration.
    """
    if not run_dirs:
        raise ValueError("aggregate_runs needs at least one run folder")
    results = []
    for d in run_dirs:
        f = Path(d) / "results.json"
        if not f.is_file():
            raise FileNotFoundError(f"{d} has no results.json (not a finished run)")
        results.append(json.loads(f.read_text()))
    names = set(results[0].get("test", {}))
    for d, r in zip(run_dirs, results):
        if set(r.get("test", {})) != names:
            raise ValueError(
                f"{d} has test metrics {sorted(r.get('test', {}))}, the first run "
                f"{sorted(names)}: not comparable"
            )
        for key in ("task", "model", "source", "use_probes"):
            if r.get(key) != results[0].get(key):
                raise ValueError(
                    f"{d} has {key}={r.get(key)!r}, the first run {results[0].get(key)!r}"
                )
    metrics = {}
    for name in sorted(names):
        values = [float(r["test"][name]) for r in results]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        metrics[name] = {"mean": float(np.mean(values)), "std": std, "values": values}
    return {
        "runs": [str(d) for d in run_dirs],
        "seeds": [r.get("seed") for r in results],
        "task": results[0].get("task"),
        "model": results[0].get("model"),
        "source": results[0].get("source"),
        "epochs": [r.get("epochs") for r in results],
        "job_seconds": [r.get("job_seconds") for r in results],
        "metrics": metrics,
    }


def write_aggregate(out: Path, run_dirs: list[Path]) -> Path:
    """[`aggregate_runs`][nngraph_apps.aggregate_runs] -> `out/aggregate.json` and
    `out/aggregate.md`; returns the
    markdown file."""
    agg = aggregate_runs(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "aggregate.json", json.dumps(agg, indent=1) + "\n")
    lines = [
        f"# {agg['model']} on {agg['source']}: {len(agg['runs'])} runs (seeds {agg['seeds']})",
        "",
        "| metric | mean ± std | runs |",
        "|---|---|---|",
    ]
    for name, m in agg["metrics"].items():
        values = ", ".join(_fmt(v) for v in m["values"])
        lines.append(f"| {name} | {_fmt(m['mean'])} ± {_fmt(m['std'])} | {values} |")
    lines += ["", "Runs: " + ", ".join(f"`{r}`" for r in agg["runs"]), ""]
    report = out / "aggregate.md"
    _write_text(report, "\n".join(lines))
    return report
