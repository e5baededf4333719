"""`nngraph-train`: the LightningCLI of nngraph (`fit`, `validate`, `test`).

For example:

```bash
nngraph-train fit --config mnist5k_ngnn.yaml                 # a config shipped in the app
nngraph-train fit --config mnist5k_ngnn.yaml --trainer.max_epochs 3 --run_dir runs/try
nngraph-train fit --config mnist5k_ngnn.yaml --ckpt_path last  # resume an interrupted run
nngraph-train test --config mnist5k_ngnn.yaml --ckpt_path runs/mnist5k_ngnn/checkpoints/last.ckpt
nngraph-train --list-configs
nngraph-train predict runs/mnist5k_ngnn/checkpoints/last.ckpt my_inr.pth --out preds.json
```

Every run writes into `--run_dir` (default `runs/<config name>`): `checkpoints/` (the best
validation checkpoint and `last.ckpt`), `logs/csv` and `logs/tb` (TensorBoard),
`results.json` and `report.md` with PNG plots. `fit` ends by testing the best validation
checkpoint (`--test_after_fit false` skips it).

Exit codes: 0 done, 2 bad configuration, missing data, a checkpoint that cannot be resumed
from or written (full or read-only disk), 3 non-finite loss, 143 stopped by SIGTERM (a resumable
`last.ckpt` was saved). Checkpoints are written atomically and checked entry by entry when a
run resumes from them (`nngraph_apps.checkpoint`).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nngraph_core import NNGraphError

from .callbacks import SigtermCheckpoint, TimeBudget, Timer, process_start_time
from .checkpoint import AtomicCheckpointIO, SafeModelCheckpoint
from .data import InrDataModule
from .errors import ConfigError, find_config_error
from .generalization import CnnZooDataModule
from .report import machine_info, write_aggregate, write_report
from .tasks import NonFiniteLossError, WeightSpaceTask
from .wild_park import WildParkDataModule

__all__ = ["TASK_DATA", "NNGraphCLI", "config_path", "list_configs", "main"]

#: The data module of each task that does not read INR zoos (every other task:
#: [`InrDataModule`][nngraph_apps.InrDataModule]).
TASK_DATA: dict[str, type[pl.LightningDataModule]] = {
    "GeneralizationTask": CnnZooDataModule,
    "WildParkTask": WildParkDataModule,
}


def list_configs() -> list[str]:
    """Names of the YAML configs shipped in `nngraph_apps/configs`."""
    root = resources.files("nngraph_apps") / "configs"
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".yaml"))


def config_path(name: str) -> Path:
    """Path of a shipped config (`mnist5k_ngnn` or `mnist5k_ngnn.yaml`)."""
    fname = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = Path(str(resources.files("nngraph_apps") / "configs" / fname))
    if not path.is_file():
        raise ConfigError(
            f"no config {name!r}: not a file, and not one of the shipped configs "
            f"({', '.join(list_configs())})"
        )
    return path


def _resolve_configs(args: list[str]) -> list[str]:
    """`--config NAME` of a shipped config -> its path (a real file always wins)."""
    out = list(args)
    for i, a in enumerate(out):
        value = None
        if a == "--config" and i + 1 < len(out):
            value, j = out[i + 1], i + 1
        elif a.startswith("--config="):
            value, j = a.split("=", 1)[1], i
        if value is None or Path(value).exists() or "/" in value or value.lstrip().startswith("{"):
            continue
        p = str(config_path(value))
        out[j] = p if j != i else f"--config={p}"
    return out


def _task_in(value: str) -> str | None:
    """The task class named by a `--model` value or by the `model` entry of a config."""
    text = value.strip()
    if text.startswith("{"):
        node: Any = yaml.safe_load(text)
    elif "/" in text or text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return None
    else:
        return text.rsplit(".", 1)[-1] or None
    if isinstance(node, dict):
        cp = node.get("class_path")
        return str(cp).rsplit(".", 1)[-1] if cp else None
    return None


def _config_task(path: str) -> str | None:
    """The task class of a config file (`model.class_path` or `model: Name`)."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > 1 << 20:
            return None
        cfg = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError):
        return None  # the CLI's parser reports unreadable configs
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if isinstance(model, str):
        return model.rsplit(".", 1)[-1]
    if isinstance(model, dict) and model.get("class_path"):
        return str(model["class_path"]).rsplit(".", 1)[-1]
    return None


def task_name(args: Sequence[str]) -> str | None:
    """The task class a command line selects: the last of its configs' `model.class_path` and
    its `--model` / `--model.class_path` values (`None`: none named)."""
    name = None
    argv = list(args)
    for i, a in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        found = None
        if a == "--config" and nxt is not None:
            found = _config_task(nxt)
        elif a.startswith("--config="):
            found = _config_task(a.split("=", 1)[1])
        elif a in ("--model", "--model.class_path") and nxt is not None:
            found = _task_in(nxt)
        elif a.startswith(("--model=", "--model.class_path=")):
            found = _task_in(a.split("=", 1)[1])
        if found:
            name = found
    return name


class NNGraphCLI(LightningCLI):
    """LightningCLI with the run folder, the standard callbacks and loggers, test-after-fit and
    the report. Tasks: any [`WeightSpaceTask`][nngraph_apps.WeightSpaceTask]
    (`--model InrClassificationTask`, `InrEditingTask`, `GeneralizationTask` or `WildParkTask`);
    data: the task's data module (`TASK_DATA`: [`CnnZooDataModule`][nngraph_apps.CnnZooDataModule]
    for `GeneralizationTask`, [`WildParkDataModule`][nngraph_apps.WildParkDataModule] for
    `WildParkTask`, else [`InrDataModule`][nngraph_apps.InrDataModule]), chosen from
    the task the configs and arguments name."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        self.timer = Timer()
        self.budget: TimeBudget | None = None
        self.started = process_start_time()
        self.sigterm: SigtermCheckpoint | None = None
        self.run_dir = Path("runs/run")
        name = task_name(sys.argv[1:] if args is None else args)
        data_class = TASK_DATA.get(name or "", InrDataModule)
        super().__init__(
            WeightSpaceTask,
            data_class,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir", type=str | None, default=None,
            help="Run folder: checkpoints, logs, results.json, report.md (default runs/<config>).",
        )  # fmt: skip
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="After fit, test the best validation checkpoint and write the report.",
        )  # fmt: skip
        parser.add_argument(
            "--num_threads", type=int | None, default=None,
            help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine).",
        )  # fmt: skip
        parser.add_argument(
            "--checkpoint_every_n_steps", type=int, default=0,
            help="Also refresh checkpoints/last.ckpt every n training steps (0: epoch ends only).",
        )  # fmt: skip
        parser.add_argument(
            "--time_budget", type=float | None, default=None,
            help="Minutes of wall time for the whole job (INR fitting on first use included): "
            "training stops early enough to test and report within it (fit only).",
        )  # fmt: skip
        parser.add_argument(
            "--time_budget_start", type=float | None, default=None,
            help="Unix time at which the budget started (default: when this process started; "
            "nox passes its own start, so creating the environment counts too).",
        )  # fmt: skip

    def before_instantiate_classes(self) -> None:
        threads = self._sub().get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))

    # -- trainer ----------------------------------------------------------------------------------
    def _sub(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _choose_run_dir(self) -> Path:
        cfg = self._sub()
        if cfg.get("run_dir"):
            return Path(cfg["run_dir"])
        configs = cfg.get("config") or []
        if configs:
            return Path("runs") / Path(str(configs[-1])).stem
        model = cfg["model"]["init_args"].get("model", "model")
        return Path("runs") / f"{cfg['model']['class_path'].rsplit('.', 1)[-1]}-{model}"

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self.run_dir = self._choose_run_dir()
        cfg = self._sub()
        trainer_cfg = cfg.get("trainer", {})
        ckpt_dir = self.run_dir / "checkpoints"
        task = self.model
        extra: list[Callback] = [
            SafeModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best-{epoch}-{step}",
                monitor=getattr(task, "monitor", "val/loss"),
                mode=getattr(task, "monitor_mode", "min"),
                save_top_k=1,
                save_last=True,
                auto_insert_metric_name=False,
                # one last.ckpt, whichever callback writes it (not last-v1.ckpt beside it)
                enable_version_counter=False,
            ),
            self.timer,
        ]
        n = int(cfg.get("checkpoint_every_n_steps") or 0)
        if n > 0:
            extra.append(
                SafeModelCheckpoint(
                    dirpath=ckpt_dir,
                    filename="last",
                    every_n_train_steps=n,
                    enable_version_counter=False,
                )
            )
        self.sigterm = SigtermCheckpoint(ckpt_dir)
        extra.append(self.sigterm)
        budget = cfg.get("time_budget")
        if budget is not None and self.subcommand == "fit":
            try:
                self.budget = TimeBudget(float(budget) * 60, start=cfg.get("time_budget_start"))
            except ValueError as e:
                raise ConfigError(f"--time_budget: {e}") from e
            extra.append(self.budget)
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = [
                CSVLogger(self.run_dir / "logs", name="csv"),
                TensorBoardLogger(self.run_dir / "logs", name="tb"),
            ]
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        config_callbacks = [
            self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys
        ]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        # checkpoints are written atomically and read back with weights_only=True and checks
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            trainer_config["plugins"] = [*plugins, AtomicCheckpointIO()]
        if trainer_config.get("strategy") == "ddp":
            # Some models leave parameters without gradient in a step (e.g. the last layer's
            # edge update under an invariant head); plain DDP would stop with an error.
            trainer_config["strategy"] = "ddp_find_unused_parameters_true"
        return self._instantiate_trainer(trainer_config, [*config_callbacks, *extra])

    # -- after the subcommands --------------------------------------------------------------------
    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        if self._sub().get("test_after_fit", True):
            best = self.trainer.checkpoint_callback
            path = getattr(best, "best_model_path", "") if best is not None else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=path or None)
            self._report("fit", best_checkpoint=path or None)

    def after_test(self) -> None:
        self._report("test", best_checkpoint=self._sub().get("ckpt_path"))

    def after_validate(self) -> None:
        self._report("validate", best_checkpoint=self._sub().get("ckpt_path"))

    def _report(self, command: str, best_checkpoint: str | None) -> None:
        trainer, task, dm = self.trainer, self.model, self.datamodule
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        prefix = "val/" if command == "validate" else "test/"
        best = trainer.checkpoint_callback
        score = getattr(best, "best_model_score", None)
        cfg = self._sub()
        results: dict[str, Any] = {
            "name": self.run_dir.name,
            "command": command,
            "task": type(task).__name__,
            "model": task.hparams.get("model"),
            "use_probes": task.hparams.get("model") == "probe_mlp"
            or (
                bool(task.hparams.get("use_probes"))
                and task.hparams.get("model") in ("ngnn", "ngt")
            ),
            "num_parameters": sum(p.numel() for p in task.parameters()),
            # with probe_branch: whether the tested checkpoint already used the graph readout
            # (a checkpoint from the branch warm-up is the probe reader alone)
            "graph_readout_on": bool(task.graph_on) if hasattr(task, "graph_on") else None,
            "loss": task.hparams.get("loss"),
            "source": dm.source,
            "zoo_dir": str(dm.zoo_dir),
            "split_sizes": {k: len(next(iter(v.values()))) for k, v in dm.splits.items()},
            "monitor": getattr(task, "monitor", None),
            "best_score": float(score) if score is not None else None,
            "best_checkpoint": best_checkpoint,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "fit_seconds": round(self.timer.fit_seconds, 1),
            "test_seconds": round(self.timer.test_seconds, 1),
            # wall time of the whole job so far (from the budget's start, else this process's)
            "job_seconds": round(
                time.time() - (self.budget.start if self.budget else self.started), 1
            ),
            "time_budget_seconds": self.budget.seconds if self.budget else None,
            "train_inrs_per_second": round(self.timer.train_items / self.timer.train_seconds, 1)
            if self.timer.train_seconds > 0
            else None,
            "test": {k: v for k, v in metrics.items() if k.startswith(prefix)},
            "seed": cfg.get("seed_everything"),
            "machine": machine_info(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        report = write_report(self.run_dir, results, task=task)
        _print_table(results, report)


def _print_table(results: dict[str, Any], report: Path) -> None:
    rows = [(k, f"{v:.4f}") for k, v in sorted(results["test"].items())]
    rows += [
        ("model", str(results["model"])),
        ("epochs / steps", f"{results['epochs']} / {results['steps']}"),
        ("fit time", f"{results['fit_seconds']:.0f} s"),
        ("job time", f"{results['job_seconds'] / 60:.1f} min"),
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"nngraph results: {results['name']}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in rows:
            table.add_row(k, v)
        Console().print(table)
    except ImportError:  # pragma: no cover
        for k, v in rows:
            print(f"{k:>20}  {v}")
    print(f"report: {report}")


def _aggregate(argv: list[str]) -> int:
    """`nngraph-train aggregate RUN_DIR... [--out DIR]`: mean ± std over runs (seeds)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="nngraph-train aggregate",
        description="Mean ± std of the test metrics of finished runs (e.g. three seeds).",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with results.json")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: the first run's folder without -seed<k>, + -seeds",
    )
    a = parser.parse_args(argv)
    out = a.out or a.runs[0].with_name(re.sub(r"-seed\d+$", "", a.runs[0].name) + "-seeds")
    try:
        report = write_aggregate(out, a.runs)
    except (FileNotFoundError, ValueError) as e:
        print(f"nngraph-train aggregate: {e}", file=sys.stderr)
        return 2
    print(report.read_text())
    return 0


def _predict(argv: list[str]) -> int:
    """``nngraph-train predict CKPT FILE... [--out FILE]``: label INRs with a trained classifier."""
    import argparse

    from .inference import InputFileError, predict, write_predictions

    parser = argparse.ArgumentParser(
        prog="nngraph-train predict",
        description="Classify INRs (state-dict .pth/.pt/.safetensors files, or .safetensors "
        "batches with one 'params' tensor [B, P]) with a checkpoint of nngraph-train fit.",
    )
    parser.add_argument("checkpoint", type=Path, help="a checkpoint (.ckpt) of a classifier")
    parser.add_argument("inputs", nargs="+", type=Path, help="INR files")
    parser.add_argument("--out", type=Path, default=None, help="write the predictions as JSON")
    parser.add_argument("--batch_size", type=int, default=256)
    a = parser.parse_args(argv)
    try:
        result = predict(a.checkpoint, a.inputs, batch_size=a.batch_size)
    except (InputFileError, ConfigError) as e:
        print(f"nngraph-train predict: error: {e}", file=sys.stderr)
        return 2
    records = result.to_json()
    if a.out is not None:
        write_predictions(a.out, result)
    for r in records:
        print(f"{r['source']}\t{r['label']}\t{r['probability']:.4f}")
    if a.out is not None:
        print(f"predictions: {a.out} ({len(records)} networks)")
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of `nngraph-train`."""
    argv = list(sys.argv[1:] if args is None else args)
    if "--list-configs" in argv:
        print("\n".join(list_configs()))
        return 0
    if argv[:1] == ["aggregate"]:
        return _aggregate(argv[1:])
    if argv[:1] == ["predict"]:
        return _predict(argv[1:])
    ConfigError.last = None
    try:
        argv = _resolve_configs(argv)
        cli = NNGraphCLI(args=argv)
    except SIGTERMException:
        print(
            "nngraph-train: SIGTERM: saved a resumable checkpoint (checkpoints/last.ckpt); "
            "rerun the same command with --ckpt_path last to continue",
            file=sys.stderr,
        )
        return 143
    except SystemExit as e:  # jsonargparse's usage errors (exit 2) and --help (exit 0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except NonFiniteLossError as e:
        print(f"nngraph-train: stopped: {e}", file=sys.stderr)
        return 3
    except NNGraphError as e:  # bad settings or data, a checkpoint that cannot be resumed, ...
        print(f"nngraph-train: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        found = find_config_error(e)
        if found is None:
            raise
        print(f"nngraph-train: error: {found}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError) as e:
        print(f"nngraph-train: error: {e}", file=sys.stderr)
        return 2
    del cli
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
