"""Ablations of INR classification at an equal training budget: every variant x every seed.

    python benchmarks/ablate_cls.py --list                       # the variants
    python benchmarks/ablate_cls.py --variants probe_mlp,ngnn,ngnn_branch --seeds 0 1 2 --minutes 5
    python benchmarks/ablate_cls.py --summary-only               # table + plot of what has run

Each run is `nngraph-train fit --config <config> <args> --seed_everything <seed>
--trainer.max_time <budget> --num_threads 1` in its own process (`--jobs` at once, one torch
thread each), on the cached zoo of the config (built on first use), with model selection on
validation accuracy and the test at the best validation checkpoint, as every `nngraph-train` run.
Runs already finished (a `results.json` in their folder) are not run again, so the script can be
stopped and restarted. The summary (`summary.md`, `summary.json`, `summary.png` in `--out`) gives
per variant: test accuracy per seed, mean +- std, epochs reached, and the best validation
accuracy; the machine (CPU model, fp32 GEMM rate measured when the summary is written) heads it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _machine import cpu_model, gemm_gflops
from _plots import seed_bars

# name -> (config, extra CLI arguments, what it is)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "probe_mlp": ("mnist5k_probe_mlp", [], "probe-only MLP, 64 learned probes"),
    "ngnn": ("mnist5k_ngnn_paper", [], "NG-GNN + 64 learned probes (the paper's model)"),
    "ngnn_branch": (
        "mnist5k_ngnn_paper",
        ["--model.probe_branch", "true"],
        "NG-GNN + probes, probe reader as a second readout (logits summed)",
    ),
    "ngnn_branch_aux": (
        "mnist5k_ngnn_paper",
        ["--model.probe_branch", "true", "--model.branch_loss", "1.0"],
        "... + each readout's own loss (deep supervision)",
    ),
    "ngnn_branch_drop": (
        "mnist5k_ngnn_paper",
        ["--model.probe_branch", "true", "--model.graph_drop", "0.5"],
        "... + graph readout dropped for half of the INRs in training",
    ),
    "ngnn_branch_aux_drop": (
        "mnist5k_ngnn_paper",
        [
            "--model.probe_branch",
            "true",
            "--model.branch_loss",
            "1.0",
            "--model.graph_drop",
            "0.5",
        ],
        "... + deep supervision + graph readout dropped for half of the INRs",
    ),
    "ngnn_bw": (
        "mnist5k_ngnn_paper",
        ["--model.probe_branch", "true", "--model.branch_warmup_steps", "8000"],
        "NG-GNN + probes + probe readout; the probe reader alone for the first 8,000 steps",
    ),
    "ngnn_bw_aux": (
        "mnist5k_ngnn_paper",
        [
            "--model.probe_branch",
            "true",
            "--model.branch_warmup_steps",
            "8000",
            "--model.branch_loss",
            "1.0",
        ],
        "... + deep supervision",
    ),
    "ngt": ("mnist5k_ngt_paper", [], "NG-T + 64 learned probes (sparse attention)"),
    "ngt_bw": (
        "mnist5k_ngt_paper",
        ["--model.probe_branch", "true", "--model.branch_warmup_steps", "8000"],
        "NG-T + probes + probe readout; the probe reader alone for the first 8,000 steps",
    ),
    "ngt_branch_aux": (
        "mnist5k_ngt_paper",
        ["--model.probe_branch", "true", "--model.branch_loss", "1.0"],
        "NG-T + probes, probe readout branch + deep supervision",
    ),
}


# The augmentation of the results table: mild geometric maps + sign / phase flips (the paper
# code's magnitudes, 45 degrees / 0.25 / 20%, cost 15-20 points in a budget of minutes).
AUG = [
    "--data.augment.rotation", "10", "--data.augment.translation", "0.05",
    "--data.augment.scale", "0.05", "--data.augment.signs", "true",
    "--data.augment.phases", "true",
]  # fmt: skip
CANON = ["--model.canonicalize", "true"]
for _base in ("probe_mlp", "ngnn", "ngnn_bw", "ngt", "ngt_bw"):
    _config, _extra, _what = VARIANTS[_base]
    VARIANTS[f"{_base}_aug"] = (_config, [*_extra, *AUG], f"{_what}; augmentation")
    VARIANTS[f"{_base}_aug_canon"] = (
        _config, [*_extra, *AUG, *CANON], f"{_what}; augmentation + canonical inputs"
    )  # fmt: skip
for _base in ("ngnn_bw", "probe_mlp", "probe_mlp_aug"):
    _config, _extra, _what = VARIANTS[_base]
    VARIANTS[f"{_base}_fixed"] = (
        _config, [*_extra, "--model.learned_probes", "false"], f"{_what}; fixed probes"
    )  # fmt: skip
    VARIANTS[f"{_base}_gen"] = (
        _config, [*_extra, "--model.probe_generator", "32"], f"{_what}; generated probes"
    )  # fmt: skip
VARIANTS["ngt_dense"] = (
    "mnist5k_ngt_paper",
    ["--model.model_kwargs", "{attention: dense}"],
    "NG-T + 64 learned probes, dense attention over all node pairs (as the paper)",
)
VARIANTS["ngt_bw_dense"] = (
    "mnist5k_ngt_paper",
    [*VARIANTS["ngt_bw"][1], "--model.model_kwargs", "{attention: dense}"],
    "NG-T as ngt_bw, dense attention over all node pairs",
)


def parse_extra(text: str) -> tuple[str, tuple[str, list[str], str]]:
    """``name=config:arg1,arg2,...`` -> a variant defined on the command line."""
    name, _, rest = text.partition("=")
    config, _, args = rest.partition(":")
    extra = [a for a in args.split(",") if a]
    return name, (config, extra, " ".join(extra) or config)


def run_one(name: str, seed: int, args: argparse.Namespace) -> Path:
    config, extra, _ = VARIANTS[name]
    run_dir = args.out / f"{name}-seed{seed}"
    if (run_dir / "results.json").exists():
        return run_dir
    minutes = int(args.minutes)
    seconds = round((args.minutes - minutes) * 60)
    cmd = [
        "nngraph-train", "fit", "--config", config, *extra,
        "--seed_everything", str(seed),
        "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}",
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
    print(f"[ablate] {name} seed {seed}: {state} in {took / 60:.1f} min", flush=True)
    return run_dir


def _best_val(run_dir: Path) -> float | None:
    best = None
    for csv in sorted(run_dir.glob("logs/**/metrics.csv")):
        header, *rows = csv.read_text().splitlines()
        cols = header.split(",")
        if "val/acc" not in cols:
            continue
        i = cols.index("val/acc")
        for row in rows:
            cells = row.split(",")
            if i < len(cells) and cells[i]:
                v = float(cells[i])
                best = v if best is None else max(best, v)
    return best


def _graph_on(results: dict[str, object], run_dir: Path) -> bool | None:
    """Whether the tested (best) checkpoint used the graph readout (probe_branch runs)."""
    if results.get("graph_readout_on") is not None:
        return bool(results["graph_readout_on"])
    best = results.get("best_checkpoint")
    if not best or not Path(str(best)).exists():
        return None
    import torch

    state = torch.load(str(best), map_location="cpu", weights_only=True)["state_dict"]
    return bool(state["graph_on"]) if "graph_on" in state else None


def summarize(args: argparse.Namespace, names: list[str]) -> None:
    rows = []
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
                    "test_acc": test.get("test/acc"),
                    "test_acc_graph": test.get("test/acc_graph"),
                    "test_acc_probe": test.get("test/acc_probe"),
                    "val_acc": _best_val(f.parent),
                    "epochs": r["epochs"],
                    "steps": r["steps"],
                    "inrs_per_s": r.get("train_inrs_per_second"),
                    "graph_readout_on": _graph_on(r, f.parent),
                }
            )
        if per_seed:
            rows.append({"variant": name, "what": VARIANTS[name][2], "runs": per_seed})
    machine = {"cpu": cpu_model(), "fp32_gflops": round(gemm_gflops(), 1)}
    out = {"machine": machine, "minutes": args.minutes, "threads": args.threads, "rows": rows}
    dest = args.summary_out or args.out
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "summary.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"Machine: {machine['cpu']}, fp32 GEMM {machine['fp32_gflops']} GFLOP/s (2 threads, "
        f"measured when this summary was written); {args.minutes} min of training per run, "
        f"{args.threads} torch thread(s), {args.jobs} runs at a time.",
        "",
        "| variant | what | test acc per seed | **mean ± std** | best val (mean) | epochs "
        "| graph readout in the tested checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        accs = [100 * r["test_acc"] for r in row["runs"] if r["test_acc"] is not None]
        vals = [100 * r["val_acc"] for r in row["runs"] if r["val_acc"] is not None]
        mean = statistics.mean(accs) if accs else float("nan")
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        row["mean"], row["std"] = mean, std
        seeds = " / ".join(f"{a:.1f}" for a in accs)
        epochs = " / ".join(str(r["epochs"]) for r in row["runs"])
        val = f"{statistics.mean(vals):.1f}" if vals else "—"
        on = [r["graph_readout_on"] for r in row["runs"] if r["graph_readout_on"] is not None]
        used = f"{sum(on)} of {len(on)} seeds" if on else "—"
        lines.append(
            f"| `{row['variant']}` | {row['what']} | {seeds} | **{mean:.1f} ± {std:.1f}** "
            f"| {val} | {epochs} | {used} |"
        )
    (dest / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, dest / "summary.png", args.minutes)


def _plot(rows: list[dict[str, object]], path: Path, minutes: float) -> None:
    """Test accuracy per variant: a bar at the mean, a dot per seed."""
    accs = [[100 * r["test_acc"] for r in row["runs"]] for row in rows]  # type: ignore[attr-defined, index]
    if not any(accs):
        return
    seed_bars(
        [str(r["variant"]) for r in rows], accs, path,
        xlim=(max(0.0, min(min(a) for a in accs if a) - 5), 100),
        xlabel=f"test accuracy (%), {minutes:g} min of training; dots: seeds",
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variants", default="probe_mlp,ngnn,ngnn_branch_aux")
    ap.add_argument("--define", action="append", default=[], metavar="NAME=CONFIG:ARGS",
                    help="an extra variant, e.g. x=mnist5k_ngnn:--model.dropout,0.3")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=5.0, help="training time per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--summary-out", type=Path, default=None, help="summary folder (default --out)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("cli", nargs="*", help="further nngraph-train arguments (after --)")
    args = ap.parse_args()
    for text in args.define:
        name, variant = parse_extra(text)
        VARIANTS[name] = variant
    if args.list:
        for name, (config, extra, what) in VARIANTS.items():
            print(f"{name:24s} {config:20s} {' '.join(extra):60s} {what}")
        return
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; --list shows them")
    if not args.summary_only:
        os.environ.setdefault("MPLBACKEND", "Agg")
        # seeds outermost, so a partial run has every variant at seed 0 first
        todo = [(n, s) for s in args.seeds for n in names]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda ns: run_one(ns[0], ns[1], args), todo))
    summarize(args, names)


if __name__ == "__main__":
    main()
