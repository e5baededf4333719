"""Lightning tasks on INR zoos: classification and editing (dilation).

Each task follows torchgeo's order: `__init__` saves the hyper-parameters, then calls
`configure_models`, `configure_losses` and `configure_metrics`. The optimiser is
the paper's recipe (Kofinas et al., ICLR 2024): AdamW (lr 1e-3, weight decay 5e-4, amsgrad) with a
linear learning-rate warm-up; gradient clipping is the Trainer's `gradient_clip_val` (10 for
classification, 1 for editing in the shipped configs).

Batches from [`InrDataModule`][nngraph_apps.InrDataModule] carry flat parameters `[B, P]`; the task
turns them into graphs with one gather (`template.batch(params)`) and, for graph models with
`use_probes`, computes probe features inside the module (so learned probes are trained).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

import nngraph_core as ngc
import nngraph_datasets as nds
from nngraph_probe import ProbeFeatures, ProbeMLP

from .checkpoint import check_against_task
from .data import inr_template
from .errors import ConfigError
from .models import GRAPH_MODELS, build_model, fit_normalization

__all__ = [
    "InrClassificationTask",
    "InrEditingTask",
    "InrTask",
    "NonFiniteLossError",
    "WeightSpaceTask",
]


class NonFiniteLossError(ngc.NNGraphError, RuntimeError):
    """The loss or the gradients became NaN / inf; the run is stopped before the optimiser step,
    so no checkpoint with non-finite weights is written."""


class WeightSpaceTask(pl.LightningModule):
    """What every task of the apps shares: the paper's optimiser (AdamW with a linear warm-up),
    the non-finite loss / gradient checks, and the random states in checkpoints (a resumed run is
    bit-identical), with every checkpoint entry checked before it is loaded.

    Subclasses: [`InrTask`][nngraph_apps.InrTask] (INR classification and editing) and
    [`GeneralizationTask`][nngraph_apps.GeneralizationTask] (CNN accuracy prediction). They set
    `monitor` / `monitor_mode` (the CLI's model selection) and save `lr`, `weight_decay`,
    `amsgrad` and `warmup_steps` among their hyper-parameters.
    """

    #: metric used for model selection and its direction (read by the CLI's ModelCheckpoint)
    monitor: str = "val/loss"
    monitor_mode: Literal["min", "max"] = "min"

    # -- optimiser --------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(
            self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"]
        )
        warm = max(int(hp["warmup_steps"]), 0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- reliability ------------------------------------------------------------------------------
    def _check_loss(self, loss: Tensor) -> None:
        if not bool(torch.isfinite(loss)):
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss)}) at step {self.global_step}, epoch "
                f"{self.current_epoch}; stopped before the optimiser step, no checkpoint was "
                "written. Lower --model.lr, raise --model.warmup_steps or set "
                "--trainer.gradient_clip_val, then resume from the last good checkpoint "
                "(--ckpt_path last)."
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            raise NonFiniteLossError(
                f"non-finite gradients at step {self.global_step}; stopped before the optimiser "
                "step, no checkpoint was written. Lower --model.lr or set "
                "--trainer.gradient_clip_val."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Dropout draws from the global RNGs: store them so a resumed run is bit-identical.
        # Tensors and plain numbers only, so the checkpoint loads with weights_only=True.
        np_state = np.random.get_state()
        py_version, py_state, py_gauss = random.getstate()
        checkpoint["nngraph_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "python": {
                "version": int(py_version),
                "state": torch.tensor(py_state, dtype=torch.int64),
                "gauss": py_gauss,
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint is outside data: check every entry that resuming consumes (weights,
        # optimiser, scheduler, loops, random states) before Lightning loads any of it.
        check_against_task(checkpoint, self)
        # Fitted normalisers have buffers of another shape than the unfitted (empty) ones.
        state = checkpoint.get("state_dict", {})
        for name, buf in list(self.named_buffers()):
            if name in state and state[name].shape != buf.shape:
                owner, _, attr = name.rpartition(".")
                module = self.get_submodule(owner) if owner else self
                module._buffers[attr] = torch.empty_like(state[name])
        rng = checkpoint.get("nngraph_rng")
        if rng is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(rng["torch"])
            n = rng["numpy"]
            keys = n["keys"].numpy().astype(np.uint32)
            np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
            py = rng["python"]
            random.setstate((py["version"], tuple(int(v) for v in py["state"]), py["gauss"]))


class InrTask(WeightSpaceTask):
    """Shared machinery of the INR tasks (model, probes, optimiser, checks, RNG in checkpoints)."""

    head: Literal["invariant", "equivariant"] = "invariant"
    #: metric used for model selection and its direction (read by the CLI's ModelCheckpoint)
    monitor: str = "val/loss"
    monitor_mode: Literal["min", "max"] = "min"

    def __init__(
        self,
        model: str = "ngnn",
        model_kwargs: dict[str, Any] | None = None,
        use_probes: bool = True,
        num_probes: int = 64,
        learned_probes: bool = True,
        probe_init: Literal["uniform", "grid"] = "uniform",
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        amsgrad: bool = True,
        warmup_steps: int = 1000,
        num_outputs: int = 10,
        inr_hidden: int = 32,
        inr_w0: float = 30.0,
        probe_generator: int | None = None,
        probe_branch: bool = False,
        branch_hidden: list[int] | None = None,
        branch_loss: float = 0.0,
        graph_drop: float = 0.0,
        branch_warmup_steps: int = 0,
        canonicalize: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.template = inr_template(inr_hidden, inr_w0)
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # -- torchgeo order ---------------------------------------------------------------------------
    def configure_models(self) -> None:
        """The model and, for graph models with `use_probes`, the probe-feature module."""
        hp = self.hparams
        probes = hp["use_probes"] and hp["model"] in GRAPH_MODELS
        self.model = build_model(
            hp["model"],
            self.template,
            hp["num_outputs"],
            head=self.head,
            dropout=hp["dropout"],
            use_probes=bool(hp["use_probes"]),
            num_probes=hp["num_probes"],
            learned_probes=hp["learned_probes"],
            probe_generator=hp.get("probe_generator"),
            kwargs=hp["model_kwargs"],
        )
        self.probe: ProbeFeatures | None = None
        if probes:
            self.probe = ProbeFeatures.for_graphs(
                self.template,
                hp["num_probes"],
                init=hp["probe_init"],
                learned=hp["learned_probes"],
                grid_size=(28, 28) if hp["probe_init"] == "grid" else None,
                generator_latent=hp.get("probe_generator"),
            )
        self.branch: ProbeMLP | None = None
        if hp.get("probe_branch"):
            if self.probe is None or self.head != "invariant":
                raise ConfigError(
                    "probe_branch needs a graph model (ngnn, ngt) with use_probes: true and an "
                    "invariant head (classification)"
                )
            if not 0.0 <= float(hp.get("graph_drop", 0.0)) < 1.0:
                raise ConfigError(f"graph_drop must be in [0, 1), got {hp['graph_drop']}")
            # Whether the graph readout is in use yet (a buffer: checkpoints and predict know).
            warm = int(hp.get("branch_warmup_steps", 0))
            self.register_buffer("graph_on", torch.tensor(warm <= 0))
            # The graph readout starts at zero: the sum starts as the probe reader, and the graph
            # model learns what the probe reader gets wrong.
            last = [m for m in self.model.head.modules() if isinstance(m, nn.Linear)][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            # The probe-only reader as a second readout that shares the probe inputs.
            self.branch = ProbeMLP(
                self.probe,
                self.template.spec.widths[-1],
                hp["num_outputs"],
                hidden=tuple(hp.get("branch_hidden") or (256, 256)),
                dropout=hp["dropout"],
            )

    def configure_losses(self) -> None:
        raise NotImplementedError

    def configure_metrics(self) -> None:
        raise NotImplementedError

    # -- data -> graphs ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check the zoo's architecture and fit the weight normaliser on the training split."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not getattr(dm, "splits", None):
            return
        arch = dm.manifest["architecture"]
        if int(arch["num_params"]) != self.template.num_params:
            raise ConfigError(
                f"the zoo's INRs have {arch['num_params']} parameters "
                f"({arch['layers']}), the task was built for {self.template.num_params} "
                f"(inr_hidden={self.hparams['inr_hidden']}): set --model.inr_hidden"
            )
        self.check_data(dm)
        fit_normalization(self.model, self.template, dm.train_params)

    def check_data(self, dm: Any) -> None:
        """Task-specific checks of the data module."""

    def graphs(self, params: Tensor) -> ngc.GraphBatch:
        """Flat parameters `[B, P]` -> a template batch (with probe features when used)."""
        batch = self.template.batch(self._canonical(params))
        if self.probe is not None:
            self.probe.attach(batch)
        return batch

    def _canonical(self, params: Tensor) -> Tensor:
        """The networks as the model reads them (canonical forms with `canonicalize`)."""
        if self.hparams.get("canonicalize"):
            return ngc.canonicalize(self.template.spec, params)
        return params

    def forward(self, params: Tensor) -> Any:
        if self.branch is None:
            return self.model(self.graphs(params))
        graph, function = self.branch_outputs(params)
        return graph + function

    def branch_outputs(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """With `probe_branch`: the graph model's and the probe reader's outputs, unsummed."""
        if self.branch is None:
            raise ConfigError("branch_outputs needs probe_branch: true")
        if not bool(self.graph_on):  # branch warm-up: the probe reader alone, outputs only
            function = self.branch(self.template.batch(self._canonical(params)))
            return torch.zeros_like(function), function
        batch = self.graphs(params)
        # the probe reader reads the output rows of the probe features the graph model gets
        t, k = self.template, batch.probe_features.shape[-1]
        dense = batch.probe_features.view(batch.num_graphs, t.num_nodes, k)
        function = self.branch.classify(dense[:, t.layer_nodes(t.spec.num_layers)])
        return self.model(batch), function

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        warm = int(self.hparams.get("branch_warmup_steps", 0))
        if self.branch is not None and not bool(self.graph_on) and self.global_step >= warm:
            self.graph_on.fill_(True)


class InrClassificationTask(InrTask):
    r"""Classify INRs by the class of the image they represent (cross-entropy, accuracy).

    Args:
        model: `ngnn`, `ngt`, `flat_mlp`, `deepsets`, `nfn` or `probe_mlp`.
        model_kwargs: further constructor arguments of the model (e.g. `hidden_channels`,
            `num_layers`; `attention` for ngt).
        use_probes: graph models add probe features (paper: K=64); ignored by baselines that do
            not read them (must be `false` for them).
        num_probes: `K`.
        learned_probes: train the probe inputs with the model.
        probe_init: `uniform` (random points in [-1, 1]^2) or `grid` (the 28x28 pixel grid,
            `num_probes` ignored).
        dropout: dropout of the model (paper: 0.2).
        lr: AdamW learning rate (paper: 1e-3).
        weight_decay: AdamW weight decay (paper: 5e-4).
        amsgrad: AdamW's AMSGrad variant (paper: true).
        warmup_steps: linear warm-up of the learning rate (paper: 1,000).
        num_outputs: classes.
        inr_hidden: hidden width of the INR architecture (benchmark: 32).
        inr_w0: sine frequency of the INR architecture (benchmark: 30).
        probe_generator: latent width of ProbeGen-style generated probes (a shared deep linear
            generator of per-probe latent codes) instead of free learned probes; `None`: off.
        probe_branch: graph models: add the probe-only reader (an MLP on the output nodes'
            values at the probes, sharing the probe inputs) as a second readout whose logits
            are added to the graph model's. The graph model's last linear layer starts at zero,
            so the sum starts as the probe reader and the graph model learns corrections.
        branch_hidden: hidden widths of that reader (default `[256, 256]`).
        branch_loss: weight of each readout's own cross-entropy added to the loss of the sum
            (deep supervision), so neither readout leans on the other; 0: off.
        graph_drop: probability of dropping the graph readout of an INR in training (the kept
            ones scaled by $1/(1-p)$), so the probe reader must classify on its own.
        branch_warmup_steps: with `probe_branch`, train the probe reader alone for this many
            optimiser steps (~30x cheaper per step than a graph model) before the graph readout
            joins; 0: both from the start.
        canonicalize: map every input network to its canonical form
            ([`canonicalize`][nngraph_core.canonicalize]: sine phases in $[0, \pi/2]$, hidden
            neurons sorted) before the model reads it, in fit, test and predict alike, so the
            model is invariant to sign flips, phase shifts and hidden permutations by
            construction.
    """

    head = "invariant"
    monitor = "val/acc"
    monitor_mode = "max"

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss()

    def configure_metrics(self) -> None:
        k = int(self.hparams["num_outputs"])
        self.train_acc = MulticlassAccuracy(k, average="micro")
        self.val_acc = MulticlassAccuracy(k, average="micro")
        self.test_acc = MulticlassAccuracy(k, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.test_confusion = MulticlassConfusionMatrix(k)
        # with probe_branch: the accuracy of each readout alone
        self.branch_acc = nn.ModuleDict(
            {
                f"{split}_{part}": MulticlassAccuracy(k, average="micro")
                for split in ("val", "test")
                for part in ("graph", "probe")
            }
        )
        self.confusion: np.ndarray | None = None

    def check_data(self, dm: Any) -> None:
        if dm.num_classes > int(self.hparams["num_outputs"]):
            raise ConfigError(
                f"the zoo has {dm.num_classes} classes, the model {self.hparams['num_outputs']} "
                "outputs: set --model.num_outputs"
            )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        labels = batch["label"]
        if self.branch is None:
            logits = self(batch["params"])
            loss = self.criterion(logits, labels)
        else:
            graph, function = self.branch_outputs(batch["params"])
            drop = float(self.hparams["graph_drop"])
            if drop > 0:
                # drop the graph readout of whole INRs (inverted: kept ones scaled by 1/(1-p))
                keep = torch.rand(len(labels), 1, device=graph.device) >= drop
                graph_used = graph * keep.to(graph.dtype) / (1.0 - drop)
            else:
                graph_used = graph
            logits = graph_used + function
            loss = self.criterion(logits, labels)
            aux = float(self.hparams["branch_loss"])
            if aux > 0 and bool(self.graph_on):
                # each readout also learns on its own (deep supervision)
                loss = loss + aux * (
                    self.criterion(graph, labels) + self.criterion(function, labels)
                )
        self._check_loss(loss)
        self.train_acc(logits.detach(), batch["label"])
        b = len(batch["label"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=b)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=b)  # type: ignore[union-attr]
        return loss

    def _eval_step(self, batch: dict[str, Tensor], acc: Any, loss_m: Any, prefix: str) -> Tensor:
        if self.branch is None:
            logits = self(batch["params"])
        else:
            graph, function = self.branch_outputs(batch["params"])
            logits = graph + function
            for name, part in (("graph", graph), ("probe", function)):
                if name == "graph" and not bool(self.graph_on):
                    continue
                metric = self.branch_acc[f"{prefix}_{name}"]
                metric(part, batch["label"])
                self.log(f"{prefix}/acc_{name}", metric, on_epoch=True, batch_size=len(part))
        loss = self.criterion(logits, batch["label"])
        b = len(batch["label"])
        acc(logits, batch["label"])
        loss_m(loss, b)
        self.log(f"{prefix}/acc", acc, on_epoch=True, prog_bar=True, batch_size=b)
        self.log(f"{prefix}/loss", loss_m, on_epoch=True, batch_size=b)
        return logits

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, self.val_loss, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_acc, self.test_loss, "test")
        self.test_confusion(logits, batch["label"])

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self.confusion = self.test_confusion.compute().cpu().numpy()


class InrEditingTask(InrTask):
    """Edit INRs: dilate the image an INR represents (Kofinas et al., ICLR 2024, §5).

    The model's equivariant head predicts new parameters (input + scaled deltas); the loss is the
    MSE between the edited INR's rendering ([`nngraph_datasets.render`][nngraph_datasets.render],
    28x28) and the dilated source image. Logged metric: that MSE averaged per image, in units of
    1e-2 (`*/mse`); the test also reports the do-nothing baseline (the unedited INR against the
    target, `test/mse_identity`). Model selection on `val/mse` (lower is better).

    Arguments as [`InrClassificationTask`][nngraph_apps.InrClassificationTask] (`model` must be
    `ngnn` or `ngt`; paper recipe for editing: warm-up 10,000 steps, gradient clip 1.0).
    """

    head = "equivariant"
    monitor = "val/mse"
    monitor_mode = "min"
    num_examples = 8

    def configure_losses(self) -> None:
        self.criterion = nn.MSELoss()

    def configure_metrics(self) -> None:
        self.val_mse = MeanMetric()
        self.test_mse = MeanMetric()
        self.test_mse_identity = MeanMetric()
        self.examples: dict[str, np.ndarray] | None = None
        self._image_size = (28, 28)

    def check_data(self, dm: Any) -> None:
        if dm.targets != "dilated":
            raise ConfigError("the editing task needs --data.targets dilated")
        aug = getattr(dm, "augment", None)
        if aug is not None and aug.changes_function:
            raise ConfigError(
                "editing takes only the function-preserving augmentations (augment.signs, "
                "augment.phases, augment.permute): geometric maps and noise change the input "
                "image but not its dilated target"
            )
        self._image_size = dm.image_size

    def render(self, params: Tensor) -> Tensor:
        h, w = self._image_size
        return nds.render(params, h, w, w0=float(self.hparams["inr_w0"]))

    def _edit(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        new = self(batch["params"])
        pred = self.render(new)
        per_image = (pred - batch["target"]).square().flatten(1).mean(1)
        return new, pred, per_image

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        _, _, per_image = self._edit(batch)
        loss = per_image.mean()
        self._check_loss(loss)
        b = len(per_image)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)
        self.log("train/mse", loss * 100, on_step=False, on_epoch=True, batch_size=b)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=b)  # type: ignore[union-attr]
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        _, _, per_image = self._edit(batch)
        self.val_mse(per_image * 100)
        self.log("val/mse", self.val_mse, on_epoch=True, prog_bar=True, batch_size=len(per_image))

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        _, pred, per_image = self._edit(batch)
        inputs = self.render(batch["params"])
        ident = (inputs - batch["target"]).square().flatten(1).mean(1)
        b = len(per_image)
        self.test_mse(per_image * 100)
        self.test_mse_identity(ident * 100)
        self.log("test/mse", self.test_mse, on_epoch=True, batch_size=b)
        self.log("test/mse_identity", self.test_mse_identity, on_epoch=True, batch_size=b)
        self._collect_examples(batch, inputs, pred, first=batch_idx == 0)

    def _collect_examples(
        self, batch: dict[str, Tensor], inputs: Tensor, pred: Tensor, first: bool
    ) -> None:
        """Keep `num_examples` test examples for the report: one per class first (the test
        split is stored class by class), in the order they come."""
        if first:
            self.examples = None
        ex = self.examples
        have = 0 if ex is None else len(ex["original"])
        if have >= self.num_examples:
            return
        labels = batch.get("label")
        seen = set() if ex is None else set(ex["label"].tolist())
        rows = []
        for i in range(len(inputs)):
            lab = int(labels[i]) if labels is not None else -1
            if labels is None or lab not in seen:
                rows.append(i)
                seen.add(lab)
            if have + len(rows) >= self.num_examples:
                break
        if not rows:
            return
        idx = torch.tensor(rows, device=inputs.device)
        new = {
            "original": batch["image"][idx].cpu().numpy(),
            "input": inputs[idx].detach().cpu().numpy(),
            "prediction": pred[idx].detach().cpu().numpy(),
            "target": batch["target"][idx].cpu().numpy(),
            "label": (labels[idx] if labels is not None else torch.full((len(rows),), -1))
            .cpu()
            .numpy(),
        }
        self.examples = new if ex is None else {k: np.concatenate([ex[k], new[k]]) for k in new}
