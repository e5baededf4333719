r"""Generalisation prediction on a heterogeneous CNN zoo (networks of many architectures).

The CNN Wild Park benchmark of Kofinas et al. (ICLR 2024, Table 2): CNNs of different depths,
widths, kernel sizes, activations, with and without residual connections, each checkpoint one
example with its test accuracy as the target; the metric is Kendall's $\tau$ on held-out
networks. Only models that read any architecture take part: NG-GNN and NG-T on mixed batches of
neural graphs (with kind embeddings, so a relu neuron, a tanh neuron, a conv kernel and a
residual edge are told apart), and StatNN on per-tensor statistics aligned by the tensor's role.

* [`WildParkDataModule`][nngraph_apps.WildParkDataModule] -- a wild park zoo
  (`nngraph_datasets.WildParkZoo`, built on first use) as batches of mixed-architecture
  [`GraphBatch`][nngraph_core.GraphBatch]es, targets and hyper-parameters; splits by network.
* [`WildParkTask`][nngraph_apps.WildParkTask] -- the
  [`GeneralizationTask`][nngraph_apps.GeneralizationTask] recipe (BCE on the accuracy, model
  selection on validation $\tau$, the same report) for mixed batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

import nngraph_core as ngc
import nngraph_datasets as nds
from nngraph_core.batch import batch as batch_graphs
from nngraph_layers.baselines.statnn import NUM_STATS, weight_statistics

from .data import DataConfigError, TensorLoader
from .errors import ConfigError
from .generalization import (
    HYPERPARAMETERS,
    CnnZooDataModule,
    GeneralizationTask,
)

__all__ = [
    "WILD_HYPERPARAMETERS",
    "GraphBatchLoader",
    "WildParkDataModule",
    "WildParkTask",
    "WildStatNN",
    "aligned_statistics",
    "fit_graph_normalizer",
    "mixed_params",
    "num_statistics",
]

WILD_HYPERPARAMETERS = (*HYPERPARAMETERS, "architecture", "depth", "width", "kernel", "residual")
"""Per-checkpoint columns of a wild park batch beside `graphs` and `target` (for the report)."""
WILD_MODELS = ("ngnn", "ngt", "statnn")
"""Models that read networks of any architecture."""


# ------------------------------------------------------------------------------------------
# StatNN on many architectures
# ------------------------------------------------------------------------------------------
def _slot(key: str, max_depth: int) -> int:
    """The statistics slot of a parameter tensor of a wild park CNN: conv layer `i`'s weight
    and bias -> `2i`, `2i + 1`; shortcut projection `i` -> `2 * max_depth + i`; the classifier's
    weight and bias -> the last two."""
    parts = key.split(".")
    try:
        if parts[0] == "layers" and parts[2] in ("weight", "bias"):
            i = int(parts[1])
            if i < max_depth:
                return 2 * i + (parts[2] == "bias")
        elif parts[0] == "shortcuts" and parts[2] == "weight":
            i = int(parts[1])
            if i < max_depth:
                return 2 * max_depth + i
        elif parts[0] == "fc" and parts[1] in ("weight", "bias"):
            return 3 * max_depth + (parts[1] == "bias")
    except (IndexError, ValueError):
        pass
    raise ConfigError(
        f"parameter {key!r} has no StatNN slot: the wild park StatNN reads `layers.<i>`, "
        f"`shortcuts.<i>` (i < max_depth={max_depth}) and `fc` tensors"
    )


def num_statistics(max_depth: int) -> int:
    """Width of [`aligned_statistics`][nngraph_apps.aligned_statistics]: 7 statistics per
    slot and one presence flag per slot."""
    slots = 3 * max_depth + 2
    return slots * (NUM_STATS + 1)


def aligned_statistics(params: Tensor, spec: ngc.NetworkSpec, max_depth: int) -> Tensor:
    """StatNN's statistics of networks of one architecture, placed in fixed slots so that
    networks of different depths share one feature vector: the 7 statistics of
    [`weight_statistics`][nngraph_layers.baselines.weight_statistics] of every tensor go to the
    slot of its role (conv layer `i` weight / bias, shortcut projection `i`, classifier weight /
    bias); slots a network does not have are 0, and a presence flag per slot says which are
    real.

    Args:
        params: flat parameters `[n, P]` of `spec`.
        spec: the architecture (state-dict keys `layers.<i>.*`, `shortcuts.<i>.weight`, `fc.*`).
        max_depth: conv-layer slots (the zoo's deepest network).

    Returns:
        `[n, num_statistics(max_depth)]`.
    """
    stats = weight_statistics(params, spec).view(len(params), -1, NUM_STATS)
    slots = 3 * max_depth + 2
    out = params.new_zeros(len(params), slots, NUM_STATS)
    present = params.new_zeros(slots)
    for t, key in enumerate(spec.param_keys):
        s = _slot(key, max_depth)
        out[:, s] = stats[:, t]
        present[s] = 1
    return torch.cat([out.flatten(1), present.expand(len(params), -1)], 1)


def mixed_params(batch: ngc.GraphBatch) -> list[tuple[ngc.NetworkSpec, Tensor, Tensor]]:
    """The flat parameters of a mixed batch, architecture by architecture:
    `(spec, graph ids [n], params [n, P])` for each distinct spec, in order of appearance.

    Every parameter is one node or edge feature entry (`node_param` / `edge_param` give its
    position in its graph's flat vector): one scatter of the whole batch into the concatenated
    flat vectors, then one gather per architecture.
    """
    if batch.template is not None:
        return [(batch.template.spec, torch.arange(batch.num_graphs), batch.params())]
    dev = batch.node_features.device
    sizes = torch.tensor([s.num_params for s in batch.specs], dtype=torch.long, device=dev)
    offset = torch.cumsum(sizes, 0) - sizes
    flat = batch.node_features.new_zeros(int(sizes.sum()))
    node_param = batch.node_param
    node_param = node_param if node_param.dim() == 2 else node_param[:, None]
    node_feats = batch.node_features[:, : node_param.shape[1]]
    edge_graph = torch.repeat_interleave(
        torch.arange(batch.num_graphs, device=dev), batch.edge_ptr.diff()
    )
    for feats, param, graph in (
        (node_feats, node_param, batch.batch),
        (batch.edge_features, batch.edge_param, edge_graph),
    ):
        keep = param >= 0
        pos = (offset[graph][:, None] + param)[keep]
        flat[pos] = feats[keep]
    groups: dict[ngc.NetworkSpec, list[int]] = {}
    for i, spec in enumerate(batch.specs):
        groups.setdefault(spec, []).append(i)
    out = []
    for spec, ids in groups.items():
        gid = torch.tensor(ids, dtype=torch.long, device=dev)
        idx = offset[gid][:, None] + torch.arange(spec.num_params, device=dev)
        out.append((spec, gid, flat[idx]))
    return out


class WildStatNN(nn.Module):
    r"""StatNN for networks of many architectures: an MLP on
    [`aligned_statistics`][nngraph_apps.aligned_statistics] (standardised with the training
    networks' mean and std, `fit_normalization`), computed from the graphs of a mixed batch.

    Args:
        max_depth: conv-layer slots.
        num_outputs: targets.
        hidden: widths of the MLP's hidden layers.
        dropout: dropout after each hidden activation.
    """

    feature_mean: Tensor
    feature_std: Tensor

    def __init__(
        self, max_depth: int, num_outputs: int = 1, *, hidden: tuple[int, ...] = (256, 256),
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.max_depth = max_depth
        width = num_statistics(max_depth)
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        layers: list[nn.Module] = []
        d = width
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, num_outputs))
        self.mlp = nn.Sequential(*layers)

    def features(self, batch: ngc.GraphBatch) -> Tensor:
        """Raw aligned statistics `[B, F]` of a (mixed) batch."""
        out = batch.node_features.new_zeros(batch.num_graphs, num_statistics(self.max_depth))
        for spec, ids, params in mixed_params(batch):
            out[ids] = aligned_statistics(params, spec, self.max_depth)
        return out

    @torch.no_grad()
    def fit_normalization(self, features: Tensor, *, eps: float = 1e-8) -> WildStatNN:
        """Mean and std of every feature over training networks' raw statistics `[n, F]`."""
        f = features.to(self.feature_mean.dtype)
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0, unbiased=False).clamp_min(eps))
        return self

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        f = self.features(batch)
        f = (f - self.feature_mean.to(f.dtype)) / self.feature_std.to(f.dtype)
        out: Tensor = self.mlp(f)
        return out


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
class GraphBatchLoader:
    """A [`TensorLoader`][nngraph_apps.TensorLoader] over checkpoint rows whose batches also
    carry `graphs`: the rows' networks as one mixed [`GraphBatch`][nngraph_core.GraphBatch]
    (kernels padded to `kernel_shape`). Order, resuming and DDP shares are the tensor loader's.

    Args:
        loader: yields dicts with a `row` column (global checkpoint indices).
        graphs_fn: rows `[b]` -> the batch of their networks.
    """

    def __init__(self, loader: TensorLoader, graphs_fn: Any) -> None:
        self.loader = loader
        self.graphs_fn = graphs_fn

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.loader:
            yield {**item, "graphs": self.graphs_fn(item["row"])}


class WildParkDataModule(CnnZooDataModule):
    """A wild park zoo as train / val / test batches for generalisation prediction.

    Batches are dicts: `graphs` (the checkpoints' networks as one mixed
    [`GraphBatch`][nngraph_core.GraphBatch], kernels padded to `kernel_shape`), `target` (test
    accuracy in [0, 1]), `row` (the checkpoint's index in the zoo) and the columns of
    [`WILD_HYPERPARAMETERS`][nngraph_apps.wild_park.WILD_HYPERPARAMETERS] (architecture id,
    depth, width, kernel, residual, activation, the training hyper-parameters, epoch). Splits
    are the zoo's, by network (checked).

    The zoo is `zoo_dir` (written by `nngraph_datasets.build_wild_park_zoo`,
    `write_wild_park_zoo` or the CNN Wild Park converter) or the cached zoo of `dataset` /
    `recipe` / `zoo_seed` (`nngraph_datasets.load_wild_park_zoo`), built on first use when
    `build` is true.

    Args:
        dataset: image data set of the zoo (`fashion-mnist`).
        recipe: the zoo recipe (`default`).
        zoo_seed: seed of the zoo build.
        zoo_dir: use this zoo folder instead of the cache.
        root: folder of the IDX files (for building).
        build: build a missing zoo.
        checkpoints: `all` or `final` (the last epoch of each network).
        min_epoch: drop checkpoints before this epoch.
        batch_size: checkpoints per training batch.
        eval_batch_size: batch size of validation and test (default `batch_size`).
        seed: seed of the shuffling.
    """

    zoo_kind = "wild park zoo"
    zoo_class = nds.WildParkZoo
    zoo_loader = staticmethod(nds.load_wild_park_zoo)
    columns = WILD_HYPERPARAMETERS

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
    ) -> None:
        super().__init__(
            dataset, recipe, zoo_seed, zoo_dir, root, build, checkpoints, min_epoch, batch_size,
            eval_batch_size, seed,
        )  # fmt: skip
        self.templates: list[ngc.GraphTemplate] = []
        #: kernel window of every batch (default: the zoo's largest kernel; the task sets its own)
        self.kernel_shape: tuple[int, int] | None = None
        self._arch_params: dict[int, Tensor] = {}
        self._row_arch = torch.zeros(0, dtype=torch.long)
        self._row_pos = torch.zeros(0, dtype=torch.long)

    @property
    def train_params(self) -> Tensor:
        raise DataConfigError(
            "a wild park zoo has no flat parameter matrix: its networks have different sizes"
        )

    @property
    def max_depth(self) -> int:
        """Conv layers of the zoo's deepest network."""
        return max(a.depth for a in self.zoo.architectures)

    @property
    def zoo_kernel_shape(self) -> tuple[int, int]:
        """The largest kernel window of the zoo's networks."""
        return (
            max(t.spec.kernel_shape[0] for t in self.templates),
            max(t.spec.kernel_shape[1] for t in self.templates),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        zoo = self._open()
        self.zoo = zoo
        self.manifest = dict(zoo.manifest)
        self.categories = {k: list(v) for k, v in dict(zoo.categories).items()}
        self.templates = zoo.templates()
        n = len(zoo)
        self._row_arch = torch.full((n,), -1, dtype=torch.long)
        self._row_pos = torch.full((n,), -1, dtype=torch.long)
        for a, (rows, params) in zoo.params_by_architecture(None).items():
            self._row_arch[rows] = a
            self._row_pos[rows] = torch.arange(len(rows))
            self._arch_params[a] = params.float()
        metrics = zoo.metrics(None)
        owner: dict[int, str] = {}
        for name in ("train", "val", "test"):
            if name not in zoo.splits:
                raise DataConfigError(f"{zoo.path}: the zoo has no {name!r} split")
            rows = zoo.rows(name)
            m = {k: v[rows] for k, v in metrics.items()}
            self.splits[name] = self._part(zoo, name, m, {"row": rows}, owner)
        if self.kernel_shape is None:
            self.kernel_shape = self.zoo_kernel_shape

    def graphs(self, rows: Tensor) -> ngc.GraphBatch:
        """The networks of checkpoint rows `[b]` as one mixed batch (kernels padded to
        `kernel_shape`)."""
        arch, pos = self._row_arch[rows].tolist(), self._row_pos[rows].tolist()
        graphs = [
            self.templates[a].graph(self._arch_params[a][p]) for a, p in zip(arch, pos, strict=True)
        ]
        return batch_graphs(graphs, kernel_shape=self.kernel_shape)

    def train_batches(self, limit: int | None = None) -> Iterator[ngc.GraphBatch]:
        """The training networks, batch by batch in stored order (to fit normalisations)."""
        rows = self.splits["train"]["row"]
        if limit is not None:
            rows = rows[:limit]
        for i in range(0, len(rows), 256):
            yield self.graphs(rows[i : i + 256])

    def train_dataloader(self) -> GraphBatchLoader:  # type: ignore[override]
        return GraphBatchLoader(super().train_dataloader(), self.graphs)

    def _eval(self, split: str) -> GraphBatchLoader:  # type: ignore[override]
        return GraphBatchLoader(super()._eval(split), self.graphs)

    def val_dataloader(self) -> GraphBatchLoader:
        return self._eval("val")

    def test_dataloader(self) -> GraphBatchLoader:
        return self._eval("test")


# ------------------------------------------------------------------------------------------
# Task
# ------------------------------------------------------------------------------------------
class WildParkTask(GeneralizationTask):
    r"""Predict the test accuracy of CNNs of many architectures from their weights.

    The recipe, metrics, model selection and report are those of
    [`GeneralizationTask`][nngraph_apps.GeneralizationTask]; the input is a mixed
    [`GraphBatch`][nngraph_core.GraphBatch] instead of flat parameters of one architecture.
    Models: `ngnn` and `ngt` (general paths, kind embeddings on by default: each node's
    activation kind and node type, each edge's type) and `statnn`
    ([`WildStatNN`][nngraph_apps.wild_park.WildStatNN]: StatNN on statistics aligned by the
    tensor's role).

    Args:
        model: `ngnn`, `ngt` or `statnn`.
        model_kwargs: further constructor arguments of the model.
        loss: `bce` (sigmoid output) or `mse`.
        dropout: dropout of the model.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        amsgrad: AdamW's AMSGrad variant.
        warmup_steps: linear warm-up of the learning rate.
        in_channels: input channels of the zoo's CNNs.
        num_classes: classes of the zoo's CNNs.
        kernel_size: the kernel window every graph is padded to (at least the zoo's largest
            kernel; the reference pads to 7x7).
        max_depth: conv-layer slots of StatNN and the hidden-layer positions of the graph
            models (at least the zoo's deepest network).
        width: a typical width (the degree scaler of NG-GNN's aggregation).
        kind_embeddings: graph models embed activation kinds and node / edge types.
    """

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
        kernel_size: int = 7,
        max_depth: int = 5,
        width: int = 16,
        kind_embeddings: bool = True,
    ) -> None:
        if model not in WILD_MODELS:
            raise ConfigError(
                f"model {model!r} does not read networks of many architectures; choose one of "
                f"{', '.join(WILD_MODELS)}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if max_depth < 1:
            raise ConfigError(f"max_depth must be >= 1, got {max_depth}")
        self._wild = {
            "kernel_size": kernel_size, "max_depth": max_depth, "width": width,
            "kind_embeddings": kind_embeddings,
        }  # fmt: skip
        super().__init__(
            model=model, model_kwargs=model_kwargs, loss=loss, dropout=dropout, lr=lr,
            weight_decay=weight_decay, amsgrad=amsgrad, warmup_steps=warmup_steps,
            in_channels=in_channels, num_classes=num_classes,
        )  # fmt: skip
        self.save_hyperparameters()

    def configure_models(self) -> None:
        w = self._wild
        hp = self.hparams
        kw = dict(hp.get("model_kwargs") or {})
        k = int(w["kernel_size"])
        # node layers of a traced residual CNN: inputs, per conv its output (and the sum when
        # it has a shortcut), the classifier: at most 2 * depth hidden layers
        widths = (int(hp["in_channels"]), *([int(w["width"])] * (2 * int(w["max_depth"]))),
                  int(hp["num_classes"]))  # fmt: skip
        self.probe = None
        name = hp["model"]
        try:
            if name == "ngnn":
                from nngraph_layers import NGGNN

                self.model: nn.Module = NGGNN(
                    edge_dim=k * k, widths=widths, num_outputs=1, dropout=hp["dropout"],
                    kind_embeddings=bool(w["kind_embeddings"]), **kw,
                )  # fmt: skip
            elif name == "ngt":
                from nngraph_layers import NGTransformer

                self.model = NGTransformer(
                    k * k, widths[0], widths[-1], len(widths) - 2, 1, dropout=hp["dropout"],
                    kind_embeddings=bool(w["kind_embeddings"]), **kw,
                )  # fmt: skip
            else:
                self.model = WildStatNN(int(w["max_depth"]), 1, dropout=hp["dropout"], **kw)
        except TypeError as e:
            raise ConfigError(f"bad model_kwargs for {name!r}: {e}") from e

    def setup(self, stage: str) -> None:
        """Check the zoo against the task (kernel window, depth, classes), set the data module's
        kernel window to the task's, and fit the model's normalisation on the training
        networks."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not getattr(dm, "splits", None):
            return
        w = self._wild
        k = int(w["kernel_size"])
        zk = dm.zoo_kernel_shape
        if max(zk) > k:
            raise ConfigError(
                f"the zoo has {zk[0]}x{zk[1]} kernels; set --model.kernel_size to at least "
                f"{max(zk)}"
            )
        if dm.max_depth > int(w["max_depth"]):
            raise ConfigError(
                f"the zoo has networks of depth {dm.max_depth}; set --model.max_depth to at "
                f"least {dm.max_depth}"
            )
        for t in dm.templates:
            outs = int((t.node_role == int(ngc.NodeRole.OUTPUT)).sum())
            if outs != int(self.hparams["num_classes"]):
                raise ConfigError(
                    f"the zoo's CNNs have {outs} outputs; set --model.num_classes to {outs}"
                )
        dm.kernel_shape = (k, k)
        self.categories = dict(dm.categories)
        if isinstance(self.model, WildStatNN):
            feats = torch.cat([self.model.features(b) for b in dm.train_batches()])
            self.model.fit_normalization(feats)
        else:
            layers = max(int(t.node_layer.max()) for t in dm.templates)
            encoder: Any = self.model.encoder
            encoder.normalizer = fit_graph_normalizer(dm.train_batches(), layers).to(self.device)

    def forward(self, graphs: ngc.GraphBatch, activation: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Raw outputs `[B]` (logits with `loss: bce`) of a (mixed) batch of CNN graphs."""
        out: Tensor = self.model(graphs)
        return out.squeeze(-1)

    report_columns = WILD_HYPERPARAMETERS

    def _batch_outputs(self, batch: dict[str, Any]) -> Tensor:
        return self(batch["graphs"])


def fit_graph_normalizer(batches: Iterator[ngc.GraphBatch], num_layers: int) -> Any:
    """A [`WeightNormalizer`][nngraph_layers.WeightNormalizer] fitted on mixed batches: per
    parameterised layer index (the node layer an edge leaves, clamped to `num_layers - 1`),
    the mean and std of the real weights and of the biases of the nodes it enters; layers
    without values get mean 0, std 1."""
    from nngraph_layers import WeightNormalizer
    from nngraph_layers._graph import edge_layer, edge_valid_mask, hidden_layer_slot

    sums = torch.zeros(4, num_layers, dtype=torch.float64)  # w sum, w sq, b sum, b sq
    counts = torch.zeros(2, num_layers, dtype=torch.float64)
    for b in batches:
        el = edge_layer(b).clamp(max=num_layers - 1)
        valid = edge_valid_mask(b)
        e = b.edge_features.double()
        per_edge = valid.sum(1).double()
        sums[0].index_add_(0, el, (e * valid).sum(1))
        sums[1].index_add_(0, el, (e.square() * valid).sum(1))
        counts[0].index_add_(0, el, per_edge)
        param = b.node_param if b.node_param.dim() == 1 else b.node_param[:, 0]
        has_bias = (b.node_role != int(ngc.NodeRole.INPUT)) & (param >= 0)
        # the bias index WeightNormalizer.forward uses for the node
        nl = (hidden_layer_slot(b.node_layer, b.node_role, num_layers + 1) - 1).clamp(min=0)
        v = b.node_features[:, 0].double()
        sums[2].index_add_(0, nl, v * has_bias)
        sums[3].index_add_(0, nl, v.square() * has_bias)
        counts[1].index_add_(0, nl, has_bias.double())
    out = []
    for k in (0, 1):
        c = counts[k]
        mean = torch.where(c > 0, sums[2 * k] / c.clamp(min=1), torch.zeros_like(c))
        var = torch.where(
            c > 0, sums[2 * k + 1] / c.clamp(min=1) - mean.square(), torch.ones_like(c)
        )
        std = var.clamp(min=0).sqrt()
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        out += [mean.float(), std.float()]
    return WeightNormalizer(out[0], out[1], out[2], out[3])
