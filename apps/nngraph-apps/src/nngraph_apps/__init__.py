"""nngraph-apps: training and evaluation on model zoos with PyTorch Lightning.

* :class:`InrClassificationTask`, :class:`InrEditingTask` -- LightningModules (torchgeo order:
  ``configure_models / configure_losses / configure_metrics``) for every model of nngraph-layers
  and nngraph-probe, with or without probe features; the paper's recipe.
* :class:`InrDataModule` -- an INR zoo of nngraph-datasets, fitted on first use if missing.
* ``nngraph-train`` -- the LightningCLI (``fit``, ``validate``, ``test``) with YAML configs in
  ``nngraph_apps/configs`` (``nngraph-train --list-configs``).
"""

from .callbacks import SigtermCheckpoint, TimeBudget, Timer
from .checkpoint import AtomicCheckpointIO, SafeModelCheckpoint, read_checkpoint
from .cli import NNGraphCLI, config_path, list_configs, main
from .data import InrDataModule, TensorLoader, default_zoo_dir, inr_template
from .errors import CheckpointError, CheckpointWriteError, ConfigError, UnsafeCheckpointError
from .models import MODELS, build_model
from .report import aggregate_runs, write_aggregate, write_report
from .tasks import InrClassificationTask, InrEditingTask, InrTask, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "AtomicCheckpointIO",
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigError",
    "InrClassificationTask",
    "InrDataModule",
    "InrEditingTask",
    "InrTask",
    "NNGraphCLI",
    "NonFiniteLossError",
    "SafeModelCheckpoint",
    "SigtermCheckpoint",
    "TensorLoader",
    "TimeBudget",
    "Timer",
    "UnsafeCheckpointError",
    "__version__",
    "aggregate_runs",
    "build_model",
    "config_path",
    "default_zoo_dir",
    "inr_template",
    "list_configs",
    "main",
    "read_checkpoint",
    "write_aggregate",
    "write_report",
]
