r"""CNN generalisation prediction: regress a trained CNN's test accuracy from its weights.

The benchmark of Unterthiner et al. (2020, "Predicting Neural Network Accuracy from Weights") and
Kofinas et al. (ICLR 2024, Table 2): every checkpoint of a CNN zoo
(`nngraph_datasets.CnnZoo`) is one example, its flat parameters the
input and its test accuracy $y \in [0, 1]$ the target; the metric is Kendall's $\tau$ between
predicted and true accuracies on held-out networks (also $R^2$ and the MSE).

* [`CnnZooDataModule`][nngraph_apps.CnnZooDataModule] -- a CNN zoo (built on first use) as
  batches of flat parameters, target accuracy and the hyper-parameters of each network; splits
  by network.
* [`GeneralizationTask`][nngraph_apps.GeneralizationTask] -- the LightningModule (BCE on the
  accuracy with a sigmoid output, as in the paper, or MSE), model selection on validation
  $\tau$.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.regression import KendallRankCorrCoef, MeanSquaredError, R2Score

import nngraph_core as ngc
import nngraph_datasets as nds
from nngraph_probe import ProbeFeatures, select_probe_images

from .augment import Augmentation, AugmentedTrainingBatches, augment_params
from .data import DataConfigError, TensorLoader
from .errors import ConfigError
from .models import GRAPH_MODELS, build_model, fit_normalization
from .tasks import WeightSpaceTask

__all__ = ["HYPERPARAMETERS", "CnnZooDataModule", "GeneralizationTask", "cnn_template"]

#: Per-checkpoint columns every batch carries beside `params` and `target` (for the report).
HYPERPARAMETERS = (
    "network", "epoch", "train_acc", "activation", "initializer", "optimizer", "init_std", "lr",
    "l2", "dropout", "train_fraction",
)  # fmt: skip
#: Models of the task.
GEN_MODELS = ("ngnn", "ngt", "statnn", "nfn", "deepsets", "flat_mlp", "probe_mlp")


def cnn_template(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: int = 16,
    activation: str = "relu",
    input_size: int = 28,
) -> ngc.GraphTemplate:
    """The graph template of the Small CNN Zoo architecture
    (`nngraph_datasets.small_cnn`; the parameter layout is the
    same for ReLU and tanh networks, only the activation differs), for square inputs of
    `input_size` pixels."""
    net = nds.small_cnn(
        activation, in_channels=in_channels, num_classes=num_classes, channels=channels
    )
    return ngc.GraphTemplate.from_module(net, input_shape=(in_channels, input_size, input_size))


def select_checkpoints(
    metrics: dict[str, Tensor], checkpoints: str, min_epoch: int | None
) -> Tensor:
    """Boolean mask of the checkpoints to keep: `checkpoints="final"` keeps each network's
    last epoch only; `min_epoch` drops earlier epochs."""
    epoch, network = metrics["epoch"], metrics["network"]
    keep = torch.ones(len(epoch), dtype=torch.bool)
    if min_epoch is not None:
        keep &= epoch >= int(min_epoch)
    if checkpoints == "final":
        last = torch.full((int(network.max()) + 1,), -1, dtype=epoch.dtype)
        last = last.scatter_reduce(0, network, epoch, reduce="amax")
        keep &= epoch == last[network]
    return keep


class CnnZooDataModule(AugmentedTrainingBatches, pl.LightningDataModule):
    """A CNN zoo as train / val / test batches for generalisation prediction.

    Batches are dicts of `[B, ...]` tensors: `params` (flat float32 parameters, the zoo's
    layout), `target` (the checkpoint's test accuracy in [0, 1]) and the columns of
    [`HYPERPARAMETERS`][nngraph_apps.generalization.HYPERPARAMETERS] (network id, epoch, train
    accuracy and the sampled hyper-parameters, as integer codes or floats; the names of the codes
    are in `categories`), which the task passes to the report. Whole splits are held in memory
    and served by [`TensorLoader`][nngraph_apps.TensorLoader] (resumable mid-epoch, no worker
    processes: a batch is one index into a tensor).

    The zoo is either `zoo_dir` (a folder written by
    `nngraph_datasets.write_cnn_zoo` or the zoo builder), or
    the cached zoo of `dataset` / `recipe` / `zoo_seed`
    (`nngraph_datasets.load_cnn_zoo`), trained on first use with
    a progress bar when `build` is true. The zoo's splits are by network: all checkpoints of a
    network are in one split (checked).

    Args:
        dataset: image data set of the zoo (`fashion-mnist`).
        recipe: the zoo recipe (`default`).
        zoo_seed: seed of the zoo build.
        zoo_dir: use this zoo folder instead of the cache.
        root: folder of the Fashion-MNIST IDX files (for building; default: where Debian's
            `dataset-fashion-mnist` installs them). The zoo cache is `$NNGRAPH_ZOOS`.
        build: build a missing zoo (`False`: a missing zoo is an error).
        checkpoints: `all` (every saved epoch of every network) or `final` (the last epoch of
            each network only).
        min_epoch: drop checkpoints before this epoch (e.g. 1 to skip the initialisations).
        batch_size: checkpoints per training batch (paper: 128).
        eval_batch_size: batch size of validation and test (default `batch_size`).
        seed: seed of the shuffling and of the augmentation.
        augment: training-time augmentation of the flat training batches (never of validation
            or test): `noise` (Gaussian noise in units of each parameter tensor's std, per
            network), `weight_dropout` (each parameter zeroed with this probability), `signs`
            (random sign flips of the hidden channels of tanh networks: the same function, and
            for a zoo drawn from sign-symmetric initialisers an equally likely network) and
            `permute` (random hidden channel permutations; a no-op for the graph models, which
            are invariant to them), e.g. `--data.augment.noise 0.1`. See
            [`Augmentation`][nngraph_apps.Augmentation]; the geometric maps and phase shifts
            are INR-only and rejected here.
    """

    def __init__(
        self,
        dataset: str = "fashion-mnist",
        recipe: str = "default",
        zoo_seed: int = 0,
        zoo_dir: str | None = None,
        root: str | None = None,
        build: bool = True,
        checkpoints: Literal["all", "final"] = "all",
        min_epoch: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        augment: Augmentation | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams["augment"] = augment.describe() if augment is not None else None
        if augment is not None and (augment.geometric or augment.phases):
            raise ConfigError(
                "a CNN zoo takes the augmentations augment.noise, augment.weight_dropout, "
                "augment.signs and augment.permute; the geometric maps (rotation, translation, "
                "scale) and the phase shifts of sine neurons (phases) act on INRs"
            )
        self.augment = augment if augment is not None and augment.active else None
        if checkpoints not in ("all", "final"):
            raise DataConfigError(f"checkpoints must be 'all' or 'final', not {checkpoints!r}")
        if batch_size < 1:
            raise DataConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.recipe, self.zoo_seed = dataset, recipe, zoo_seed
        self.zoo_dir_arg = zoo_dir
        self.root, self.build = root, build
        self.checkpoints, self.min_epoch = checkpoints, min_epoch
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.splits: dict[str, dict[str, Tensor]] = {}
        self.manifest: dict[str, Any] = {}
        self.categories: dict[str, list[str]] = {}
        self.zoo: Any = None
        self._specs: dict[int, ngc.NetworkSpec] = {}

    # -- facts the CLI and the report read --------------------------------------------------------
    @property
    def source(self) -> str:
        """`<dataset> CNN zoo (recipe <recipe>)`, from the opened zoo's manifest when there is
        one (a `zoo_dir` may hold any zoo)."""
        if self.manifest:
            dataset = self.manifest.get("dataset", self.dataset)
            recipe = dict(self.manifest.get("recipe") or {}).get("name", "?")
            return f"{dataset} {self.zoo_kind} (recipe {recipe})"
        return f"{self.dataset} {self.zoo_kind} (recipe {self.recipe})"

    @property
    def zoo_dir(self) -> Path | None:
        if self.zoo is not None:
            return Path(self.zoo.path)
        return Path(self.zoo_dir_arg) if self.zoo_dir_arg else None

    @property
    def train_params(self) -> Tensor:
        return self.splits["train"]["params"]

    # -- zoo --------------------------------------------------------------------------------------
    #: what the source line calls the zoo
    zoo_kind = "CNN zoo"

    #: the zoo class that reads a zoo folder (`--data.zoo_dir`)
    zoo_class: Any = nds.CnnZoo
    #: the loader of the cached zoo of `dataset` / `recipe` / `zoo_seed`, built on first use
    zoo_loader: Any = staticmethod(nds.load_cnn_zoo)

    def _open(self) -> Any:
        if self.zoo_dir_arg is not None:
            path = Path(self.zoo_dir_arg)
            if not path.is_dir():
                raise FileNotFoundError(
                    f"no {self.zoo_kind} at {path}: pass another --data.zoo_dir, or leave it out "
                    f"to use (and build) the cached {self.dataset} zoo"
                )
            return self.zoo_class(path)
        t0 = time.monotonic()
        zoo = self.zoo_loader(
            self.dataset, self.recipe, self.zoo_seed, build=self.build, progress=True,
            data_root=self.root,
        )  # fmt: skip
        took = time.monotonic() - t0
        if took > 5:
            print(f"[nngraph] {self.zoo_kind} ready in {took:.0f} s: {zoo.path}", file=sys.stderr)
        return zoo

    def augment_batch(
        self, batch: dict[str, Tensor], augment: Augmentation, generator: torch.Generator
    ) -> Tensor:
        """Augmented `params` of a training batch (see
        [`AugmentedTrainingBatches`][nngraph_apps.AugmentedTrainingBatches])."""
        # noise and dropout act on the parameter layout, the same for every activation
        plain = replace(augment, signs=False, permute=False)
        out = augment_params(batch["params"], self._spec(0), plain, generator)
        if augment.symmetries:
            # each network with the symmetries of its own activation (`random_symmetry` flips
            # signs of odd activations only: tanh networks, not ReLU ones)
            codes = batch["activation"]
            out = out.clone()
            for code in codes.unique().tolist():
                rows = (codes == code).nonzero().squeeze(1)
                out[rows] = ngc.random_symmetry(
                    self._spec(int(code)), out[rows], generator, permute=augment.permute,
                    signs=augment.signs, phases=False,
                )  # fmt: skip
        return out

    def _spec(self, code: int) -> ngc.NetworkSpec:
        """The architecture of the zoo's networks of activation code `code`, built once, on the
        first batch that needs it. Building it leaves the global RNG as it was, so a resumed run
        draws the same dropout masks as an uninterrupted one."""
        if code not in self._specs:
            name = self.categories["activation"][code]
            with torch.random.fork_rng(devices=[]):
                net = self.zoo.architecture(name)
                self._specs[code] = ngc.GraphTemplate.from_module(net).spec
        return self._specs[code]

    def prepare_data(self) -> None:
        """Build the zoo if it is missing (rank 0 only under DDP)."""
        if self.zoo_dir_arg is None:
            self._open()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        zoo = self._open()
        self.zoo = zoo
        self.manifest = dict(zoo.manifest)
        self.categories = {k: list(v) for k, v in dict(zoo.categories).items()}
        owner: dict[int, str] = {}
        for name in ("train", "val", "test"):
            if name not in zoo.splits:
                raise DataConfigError(f"{zoo.path}: the zoo has no {name!r} split")
            inputs = {"params": zoo.params(name).float()}
            self.splits[name] = self._part(zoo, name, zoo.metrics(name), inputs, owner)

    #: per-checkpoint columns a batch carries beside the inputs and `target`
    columns: tuple[str, ...] = HYPERPARAMETERS

    def _part(
        self,
        zoo: Any,
        name: str,
        metrics: dict[str, Tensor],
        inputs: dict[str, Tensor],
        owner: dict[int, str],
    ) -> dict[str, Tensor]:
        """One split's tensors: `inputs` and the metric columns of the kept checkpoints, after
        checking the targets and that no network has checkpoints in another split (`owner`:
        network -> split, filled in)."""
        keep = self._select(metrics)
        if not bool(keep.any()):
            raise DataConfigError(
                f"{zoo.path}: no {name} checkpoints left (checkpoints={self.checkpoints!r}, "
                f"min_epoch={self.min_epoch})"
            )
        target = metrics["test_acc"].float()
        if not bool(((target >= 0) & (target <= 1)).all()):
            raise DataConfigError(
                f"{zoo.path}: test_acc must be accuracies in [0, 1] (the {name} split has "
                f"values in [{float(target.min())}, {float(target.max())}])"
            )
        part = {k: v[keep] for k, v in inputs.items()}
        part["target"] = target[keep]
        for col in self.columns:
            if col in metrics:
                part[col] = metrics[col][keep]
        for net in part["network"].unique().tolist():
            other = owner.setdefault(int(net), name)
            if other != name:
                raise DataConfigError(
                    f"{zoo.path}: network {net} has checkpoints in the {other} and the {name} "
                    "split; the splits must be by network"
                )
        return part

    def _select(self, metrics: dict[str, Tensor]) -> Tensor:
        return select_checkpoints(metrics, self.checkpoints, self.min_epoch)

    # -- loaders ----------------------------------------------------------------------------------
    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _position(self, loader: TensorLoader) -> tuple[int, int]:
        """(epoch, batches of it already trained) from the trainer's restored counters."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        done = int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        per_epoch = len(loader)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            per_epoch = min(per_epoch, limit)
        elif limit is not None:
            per_epoch = int(per_epoch * float(limit))
        return divmod(done, max(per_epoch, 1))

    def train_dataloader(self) -> TensorLoader:
        rank, world = self._dist()
        loader = TensorLoader(
            self.splits["train"], self.batch_size, shuffle=True, seed=self.seed, rank=rank,
            world_size=world,
        )  # fmt: skip
        loader.position_fn = lambda: self._position(loader)
        return loader

    def _eval(self, split: str) -> TensorLoader:
        rank, world = self._dist()
        return TensorLoader(self.splits[split], self.eval_batch_size, rank=rank, world_size=world)

    def val_dataloader(self) -> TensorLoader:
        return self._eval("val")

    def test_dataloader(self) -> TensorLoader:
        return self._eval("test")


class GeneralizationTask(WeightSpaceTask):
    r"""Predict a CNN's test accuracy from its weights (Kofinas et al., ICLR 2024, §5.2).

    The model reads the CNN as a graph (`ngnn`, `ngt`) or as flat parameters (the baselines) and
    outputs one number $z$; with `loss: bce` (the paper's choice) the prediction is
    $\hat y = \sigma(z)$ and the loss the binary cross-entropy against the accuracy
    $y \in [0, 1]$; with `loss: mse` $\hat y = z$ and the loss $(\hat y - y)^2$. Metrics, on
    $\hat y$: Kendall's $\tau$ (`val/tau`, `test/tau`; the model selection metric), $R^2$
    (`*/r2`) and the MSE (`*/mse`). The test's predictions, targets and hyper-parameters are
    kept in `test_outputs` for the report (scatter plot, per-hyper-parameter errors).

    Args:
        model: `ngnn`, `ngt`, `statnn`, `nfn`, `deepsets`, `flat_mlp` or `probe_mlp`.
        model_kwargs: further constructor arguments of the model.
        loss: `bce` (sigmoid output) or `mse` (linear output).
        dropout: dropout of the model (paper: 0.2).
        lr: AdamW learning rate (paper: 1e-3).
        weight_decay: AdamW weight decay (paper: 5e-4).
        amsgrad: AdamW's AMSGrad variant (paper: true).
        warmup_steps: linear warm-up of the learning rate (paper: 1,000).
        in_channels: input channels of the zoo's CNNs (1 for grey images).
        num_classes: classes of the zoo's CNNs.
        channels: channels of their conv layers (Small CNN Zoo: 16).
        input_size: height and width of their input images (28; the probe images' size).
        use_probes: graph models (`ngnn`, `ngt`) add probe features: every network runs, with
            its own activation (relu / tanh, from the batch's `activation` codes), on
            `num_probes` random normal probe images, and each node gets per-channel statistics
            of its feature map (`probe_stats`; the logits for the output nodes). See
            [`ProbeFeatures`][nngraph_probe.ProbeFeatures].
        num_probes: `K` probe images (graph models with `use_probes`, and `probe_mlp`, which
            reads only each network's logits on its probe images).
        learned_probes: train the probe images with the model.
        probe_stats: per-channel statistics of the probe features (default `["mean"]`; any of
            `mean`, `std`, `max`).
        probe_images: `"random"` (default): random normal probe images; `"heldout"`: real
            images of the zoo's data set that no network of the zoo saw -- neither in its
            training pool nor among the test images its accuracy was measured on
            ([`heldout_images`][nngraph_datasets.heldout_images]) -- `num_probes` of them,
            class-balanced ([`select_probe_images`][nngraph_probe.select_probe_images]), set
            when fitting starts and stored in the checkpoints. Needs a zoo built by
            nngraph-datasets and its image data set.
    """

    monitor = "val/tau"
    monitor_mode = "max"

    def __init__(
        self,
        model: str = "ngnn",
        model_kwargs: dict[str, Any] | None = None,
        loss: Literal["bce", "mse"] = "bce",
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        amsgrad: bool = True,
        warmup_steps: int = 1000,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: int = 16,
        input_size: int = 28,
        use_probes: bool = False,
        num_probes: int = 16,
        learned_probes: bool = False,
        probe_stats: list[Literal["mean", "std", "max"]] | None = None,
        probe_images: Literal["random", "heldout"] = "random",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if probe_images not in ("random", "heldout"):
            raise ConfigError(f"probe_images must be 'random' or 'heldout', not {probe_images!r}")
        if probe_images == "heldout" and not (use_probes or model == "probe_mlp"):
            raise ConfigError(
                "probe_images: heldout sets the probe images of a model that probes: "
                "use_probes: true (ngnn, ngt) or model: probe_mlp"
            )
        if model not in GEN_MODELS:
            raise ConfigError(
                f"model {model!r} does not predict generalisation; choose one of "
                f"{', '.join(GEN_MODELS)}"
            )
        if loss not in ("bce", "mse"):
            raise ConfigError(f"loss must be 'bce' or 'mse', not {loss!r}")
        if use_probes and model not in GRAPH_MODELS:
            raise ConfigError(
                f"use_probes applies to {', '.join(GRAPH_MODELS)}; {model!r} does not read probe "
                "features (probe_mlp always probes)"
            )
        self.template = cnn_template(in_channels, num_classes, channels, "relu", input_size)
        #: the architecture variants (one per activation code of the zoo, in code order)
        self.variants = [
            cnn_template(in_channels, num_classes, channels, a, input_size) for a in nds.ACTIVATIONS
        ]
        self.categories: dict[str, list[str]] = {}
        self.test_outputs: dict[str, np.ndarray] | None = None
        self._collected: list[dict[str, Tensor]] = []
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # -- torchgeo order ---------------------------------------------------------------------------
    def configure_models(self) -> None:
        """The model and, for graph models with `use_probes`, the CNN probe-feature module
        (random normal probe images; per-channel statistics `probe_stats` of the feature maps)."""
        hp = self.hparams
        stats = tuple(hp.get("probe_stats") or ("mean",))
        k = int(hp["num_probes"])
        self.probe: ProbeFeatures | None = None
        if hp["use_probes"]:
            try:
                self.probe = ProbeFeatures.for_graphs(
                    self.template, k, learned=hp["learned_probes"], stats=stats
                )
            except ValueError as e:
                raise ConfigError(f"probe settings: {e}") from e
        self.model = build_model(
            hp["model"],
            self.template,
            1,
            dropout=hp["dropout"],
            use_probes=bool(hp["use_probes"]),
            num_probes=k * len(stats) if hp["use_probes"] else k,
            learned_probes=hp["learned_probes"],
            kwargs=hp["model_kwargs"],
        )

    def configure_losses(self) -> None:
        self.criterion: nn.Module = (
            nn.BCEWithLogitsLoss() if self.hparams["loss"] == "bce" else nn.MSELoss()
        )

    def configure_metrics(self) -> None:
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{name}": metric()
                for split in ("val", "test")
                for name, metric in (
                    ("tau", KendallRankCorrCoef),
                    ("r2", R2Score),
                    ("mse", MeanSquaredError),
                    ("loss", MeanMetric),
                )
            }
        )

    # -- data ---------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check the zoo's architecture against the task's and fit the model's normalisation on
        the training split."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not getattr(dm, "splits", None):
            return
        zoo_spec = dm.zoo.template().spec
        if zoo_spec.param_shapes != self.template.spec.param_shapes:
            raise ConfigError(
                f"the zoo's CNNs ({zoo_spec.describe()}) are not the task's "
                f"({self.template.spec.describe()}): set --model.in_channels / num_classes / "
                "channels to the zoo's architecture"
            )
        self.categories = dict(dm.categories)
        names = self.categories.get("activation", list(nds.ACTIVATIONS))
        hp = self.hparams
        try:
            self.variants = [
                cnn_template(
                    hp["in_channels"], hp["num_classes"], hp["channels"], a, hp["input_size"]
                )
                for a in names
            ]
        except (KeyError, ValueError) as e:
            raise ConfigError(f"the zoo's activations {names} are not all known: {e}") from e
        fit_normalization(self.model, self.template, dm.train_params)
        if stage == "fit" and hp.get("probe_images", "random") == "heldout":
            self.set_heldout_probes(dm)

    def set_heldout_probes(self, dm: Any) -> None:
        """Set the probe images to `num_probes` class-balanced images of the zoo's data set that
        no network of the zoo saw (`probe_images: heldout`; a resumed run then loads the
        checkpoint's, which are these or, with `learned_probes`, their trained versions)."""
        try:
            images, labels, _ = nds.heldout_images(dm.zoo, data_root=dm.root)
        except (nds.DatasetError, FileNotFoundError) as e:
            raise ConfigError(f"probe_images: heldout: {e}") from e
        probes = [m for m in self.modules() if isinstance(m, ProbeFeatures)]
        for probe in probes:
            if probe.generated:
                raise ConfigError("probe_images: heldout cannot set generated (ProbeGen) probes")
            k = probe.num_probes
            if tuple(images.shape[1:]) != tuple(probe.probes.shape[1:]):
                raise ConfigError(
                    f"probe_images: heldout: the zoo's images are {tuple(images.shape[1:])}, the "
                    f"probes {tuple(probe.probes.shape[1:])}: set --model.input_size"
                )
            picked = select_probe_images(images, k, labels=labels, seed=0)
            with torch.no_grad():
                probe.probes.copy_(picked.to(probe.probes))

    def forward(self, params: Tensor, activation: Tensor | None = None) -> Tensor:
        """Raw outputs `[B]` (logits with `loss: bce`) of flat parameters `[B, P]`;
        `activation` `[B]`: each network's activation code (the zoo's `activation` column;
        used by the probe models, which run every network, and by models with kind embeddings;
        default: all the first variant)."""
        if activation is None:
            activation = torch.zeros(len(params), dtype=torch.long, device=params.device)
        # each graph with its own variant (models with kind embeddings read the activation)
        batch = self.template.batch(params).with_specs(
            [self.variants[i].spec for i in activation.tolist()]
        )
        if self.hparams["model"] == "probe_mlp":
            out: Tensor = self.model(batch, self.variants, spec_index=activation)
            return out.squeeze(-1)
        if self.probe is not None:
            self.probe.attach(batch, self.variants, spec_index=activation)
        out = self.model(batch)
        return out.squeeze(-1)

    def predict_accuracy(self, params: Tensor, activation: Tensor | None = None) -> Tensor:
        """Predicted test accuracies `[B]` of CNNs with flat parameters `[B, P]` (and their
        activation codes `[B]` for the probe models)."""
        return self.to_accuracy(self(params, activation))

    def to_accuracy(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out) if self.hparams["loss"] == "bce" else out

    # -- steps --------------------------------------------------------------------------------------
    #: per-checkpoint columns of a test batch kept for the report
    report_columns: tuple[str, ...] = HYPERPARAMETERS

    def _batch_outputs(self, batch: dict[str, Any]) -> Tensor:
        """Raw outputs `[B]` of a data-module batch (the inputs are the task's to pick)."""
        out: Tensor = self(batch["params"], batch.get("activation"))
        return out

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self._batch_outputs(batch)
        loss = self.criterion(out, batch["target"])
        self._check_loss(loss)
        b = len(out)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=b)  # type: ignore[union-attr]
        return loss

    def _eval_step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        return self._log_eval(self._batch_outputs(batch), batch["target"], split)

    def _log_eval(self, out: Tensor, target: Tensor, split: str) -> Tensor:
        """Update and log the split's metrics for raw outputs `out`; returns the predicted
        accuracies."""
        pred = self.to_accuracy(out)
        b = len(out)
        self.metrics[f"{split}_loss"](self.criterion(out, target), b)
        for name in ("tau", "r2", "mse"):
            metric = self.metrics[f"{split}_{name}"]
            metric(pred, target)
        for name in ("tau", "r2", "mse", "loss"):
            self.log(
                f"{split}/{name}", self.metrics[f"{split}_{name}"], on_epoch=True,
                prog_bar=name == "tau", batch_size=b,
            )  # fmt: skip
        return pred

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pred = self._eval_step(batch, "test")
        row = {"prediction": pred.detach(), "target": batch["target"]}
        row.update({k: v for k, v in batch.items() if k in self.report_columns})
        self._collected.append({k: v.cpu() for k, v in row.items()})

    def on_test_epoch_start(self) -> None:
        self._collected = []

    def on_test_epoch_end(self) -> None:
        if self._collected:
            self.test_outputs = {
                k: torch.cat([r[k] for r in self._collected]).numpy() for k in self._collected[0]
            }
        self._collected = []
