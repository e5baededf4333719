"""nngraph-apps: training and evaluation on model zoos with PyTorch Lightning.

* [`InrClassificationTask`][nngraph_apps.InrClassificationTask],
  [`InrEditingTask`][nngraph_apps.InrEditingTask] -- LightningModules (torchgeo order:
  `configure_models / configure_losses / configure_metrics`) for every model of nngraph-layers and
  nngraph-probe, with or without probe features; the paper's recipe.
* [`InrDataModule`][nngraph_apps.InrDataModule] -- an INR zoo of nngraph-datasets, fitted on first
  use if missing.
* [`GeneralizationTask`][nngraph_apps.GeneralizationTask] with
  [`CnnZooDataModule`][nngraph_apps.CnnZooDataModule] -- predict a CNN's test accuracy from its
  weights (CNN zoos of nngraph-datasets; Kendall tau, R2, report with scatter plot and
  per-hyper-parameter errors).
* [`WildParkTask`][nngraph_apps.WildParkTask] with
  [`WildParkDataModule`][nngraph_apps.WildParkDataModule] -- the same on heterogeneous CNN zoos
  (many architectures; mixed-architecture graph batches).
* `nngraph-train` -- the LightningCLI (`fit`, `validate`, `test`) with YAML configs in
  `nngraph_apps/configs` (`nngraph-train --list-configs`).
"""

from .augment import Augmentation, AugmentedTrainingBatches, augment_params
from .callbacks import SigtermCheckpoint, TimeBudget, Timer
from .checkpoint import AtomicCheckpointIO, SafeModelCheckpoint, read_checkpoint
from .cli import NNGraphCLI, config_path, list_configs, main
from .data import InrDataModule, TensorLoader, default_zoo_dir, inr_template
from .errors import CheckpointError, CheckpointWriteError, ConfigError, UnsafeCheckpointError
from .generalization import CnnZooDataModule, GeneralizationTask, cnn_template
from .inference import InputFileError, Predictions, load_inputs, predict
from .models import MODELS, build_model
from .report import (
    aggregate_runs,
    generalization_breakdown,
    kendall_tau,
    write_aggregate,
    write_report,
)
from .tasks import (
    InrClassificationTask,
    InrEditingTask,
    InrTask,
    NonFiniteLossError,
    WeightSpaceTask,
)
from .wild_park import WildParkDataModule, WildParkTask, aligned_statistics

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "AtomicCheckpointIO",
    "Augmentation",
    "AugmentedTrainingBatches",
    "CheckpointError",
    "CheckpointWriteError",
    "CnnZooDataModule",
    "ConfigError",
    "GeneralizationTask",
    "InputFileError",
    "InrClassificationTask",
    "InrDataModule",
    "InrEditingTask",
    "InrTask",
    "NNGraphCLI",
    "NonFiniteLossError",
    "Predictions",
    "SafeModelCheckpoint",
    "SigtermCheckpoint",
    "TensorLoader",
    "TimeBudget",
    "Timer",
    "UnsafeCheckpointError",
    "WeightSpaceTask",
    "WildParkDataModule",
    "WildParkTask",
    "__version__",
    "aggregate_runs",
    "aligned_statistics",
    "augment_params",
    "build_model",
    "cnn_template",
    "config_path",
    "default_zoo_dir",
    "generalization_breakdown",
    "inr_template",
    "kendall_tau",
    "list_configs",
    "load_inputs",
    "main",
    "predict",
    "read_checkpoint",
    "write_aggregate",
    "write_report",
]
