r"""The input pipeline shared by the graph models (NG-GNN, NG-T) and their common base class."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from ._graph import ACTIVATION_KINDS, node_activation_kind
from .encoders import FourierFeatures, ProbeProjection, WeightNormalizer
from .positional import PositionalEmbedding

__all__ = ["GraphEncoder", "GraphModel", "as_template"]


def as_template(
    example: ngc.GraphTemplate | ngc.GraphBatch | ngc.NeuralGraph | nn.Module,
) -> ngc.GraphTemplate:
    """The [`GraphTemplate`][nngraph_core.GraphTemplate] of an example graph, batch, template or
    module."""
    if isinstance(example, ngc.GraphTemplate):
        return example
    if isinstance(example, ngc.GraphBatch):
        if example.template is not None:
            return example.template
        return ngc.GraphTemplate(example.specs[0])
    if isinstance(example, nn.Module):
        return ngc.GraphTemplate.from_module(example)
    spec = getattr(example, "spec", None)
    if isinstance(spec, ngc.NetworkSpec):
        return ngc.GraphTemplate(spec)
    raise TypeError(f"cannot derive a graph template from {type(example).__name__}")


class GraphEncoder(nn.Module):
    r"""Raw neural-graph features -> initial node and edge embeddings.

    $$
    \begin{aligned}
        \mathbf{x}_i &= \mathrm{FF}_n(\hat b_i) + \mathbf{p}_i
            + \big[\mathrm{LN}_{l(i)}(\mathbf{W}_{l(i)} \mathbf{q}_i)\big]_{\text{probes}} \\
        \mathbf{e}_{ij} &= \mathrm{FF}_e(\hat{\mathbf{w}}_{ij})
    \end{aligned}
    $$

    with $\hat b, \hat{\mathbf w}$ the per-layer normalised parameters
    ([`WeightNormalizer`][nngraph_layers.WeightNormalizer]), $\mathrm{FF}$ random Fourier features +
    linear ([`FourierFeatures`][nngraph_layers.FourierFeatures]), $\mathbf p_i$ the positional
    embedding ([`PositionalEmbedding`][nngraph_layers.PositionalEmbedding]) and $\mathbf q_i$ the
    node's probe features when the batch carries them and `use_probes`
    ([`ProbeProjection`][nngraph_layers.ProbeProjection]).

    With `kind_embeddings`, the graph's own vocabulary is embedded too, as the reference code's
    activation embedding and the node / edge types of mixed-architecture graphs:

    $$
    \mathbf{x}_i \mathrel{+}= \mathbf{A}_{a(i)} + \mathbf{T}_{t(i)}, \qquad
    \mathbf{e}_{ij} \mathrel{+}= \mathbf{S}_{s(ij)}
    $$

    with $a(i)$ the node's activation kind
    ([`ACTIVATION_KINDS`][nngraph_layers.ACTIVATION_KINDS]: relu, tanh, sine, ...), $t(i)$ its
    [`NodeType`][nngraph_core.NodeType] (conv channel, linear neuron, norm, ...) and $s(ij)$ the
    edge's [`EdgeType`][nngraph_core.EdgeType] (conv kernel, residual identity, ...). All three
    are attributes of a node or an edge, never of its position among its layer's neurons, so
    permutation equivariance is kept. A zoo of networks that differ in their activation (relu /
    tanh CNNs of one architecture) tells the model each network's activation this way: set
    `batch.specs` to each graph's variant.

    Args:
        edge_dim (int): kernel entries per edge.
        num_inputs (int): architecture sizes (positional).
        num_outputs (int): architecture sizes (positional).
        num_hidden_layers (int): architecture sizes (positional).
        node_channels (int): output widths.
        edge_channels (int): output widths.
        sigma (float): Fourier frequency std.
        num_frequencies (int): Fourier frequencies (128 -> 256 features).
        use_probes (bool): add projected probe features (the batch must carry them).
        probe_dim (int): $K$.
        normalizer (WeightNormalizer, optional): fitted statistics (default: identity; replace
            it with [`GraphModel.fit_normalizer`][nngraph_layers.GraphModel.fit_normalizer]).
        kind_embeddings (bool): add learned embeddings of each node's activation kind and node
            type and of each edge's type (default `False`: the paper's encoder).

    Shapes:
        - **input:** [`GraphBatch`][nngraph_core.GraphBatch]
        - **output:** `(x [sum N, node_channels], e [sum E, edge_channels])`
    """

    def __init__(
        self,
        edge_dim: int,
        num_inputs: int,
        num_outputs: int,
        num_hidden_layers: int,
        node_channels: int,
        edge_channels: int,
        sigma: float = 1.0,
        num_frequencies: int = 128,
        use_probes: bool = False,
        probe_dim: int = 64,
        normalizer: WeightNormalizer | None = None,
        kind_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.normalizer = normalizer if normalizer is not None else WeightNormalizer()
        self.node_ff = FourierFeatures(1, node_channels, num_frequencies, sigma)
        self.edge_ff = FourierFeatures(edge_dim, edge_channels, num_frequencies, sigma)
        self.positional = PositionalEmbedding(
            num_inputs, num_outputs, num_hidden_layers, node_channels
        )
        self.use_probes = use_probes
        self.probes = (
            ProbeProjection(num_hidden_layers + 2, probe_dim, node_channels) if use_probes else None
        )
        self.kind_embeddings = kind_embeddings
        self.activation_embedding: nn.Embedding | None = None
        self.node_type_embedding: nn.Embedding | None = None
        self.edge_type_embedding: nn.Embedding | None = None
        if kind_embeddings:
            self.activation_embedding = nn.Embedding(len(ACTIVATION_KINDS), node_channels)
            self.node_type_embedding = nn.Embedding(len(ngc.NodeType), node_channels)
            self.edge_type_embedding = nn.Embedding(len(ngc.EdgeType), edge_channels)
            for emb in (
                self.activation_embedding,
                self.node_type_embedding,
                self.edge_type_embedding,
            ):
                nn.init.normal_(emb.weight, std=0.1)

    @classmethod
    def for_template(cls, template: ngc.GraphTemplate, **kwargs: object) -> GraphEncoder:
        widths = template.spec.widths
        return cls(template.edge_dim, widths[0], widths[-1], len(widths) - 2, **kwargs)  # type: ignore[arg-type]

    def forward(self, batch: ngc.GraphBatch) -> tuple[Tensor, Tensor]:
        nodes, edges = self.normalizer(batch)
        x = self.node_ff(nodes)
        e = self.edge_ff(edges)
        pos = self.positional(batch).to(x.dtype)
        if batch.template is not None:
            x = (x.view(batch.num_graphs, -1, x.shape[-1]) + pos).view(-1, x.shape[-1])
        else:
            x = x + pos
        if self.probes is not None:
            if batch.probe_features is None:
                raise ValueError(
                    "the model was built with use_probes=True but the batch has no probe_features "
                    "(compute them with nngraph_probe)"
                )
            x = x + self.probes(batch.probe_features.to(x.dtype), batch)
        if self.kind_embeddings:
            x, e = self._add_kinds(x, e, batch)
        return x, e

    def _add_kinds(self, x: Tensor, e: Tensor, batch: ngc.GraphBatch) -> tuple[Tensor, Tensor]:
        assert self.activation_embedding is not None and self.node_type_embedding is not None
        assert self.edge_type_embedding is not None
        x = x + self.activation_embedding(node_activation_kind(batch)).to(x.dtype)
        t = batch.template
        if t is not None:
            # one structure: [N] / [E] embeddings broadcast over the batch
            dev = x.device
            nt = self.node_type_embedding(t.node_type.to(dev)).to(x.dtype)
            et = self.edge_type_embedding(t.edge_type.to(dev)).to(e.dtype)
            x = (x.view(batch.num_graphs, -1, x.shape[-1]) + nt).view(-1, x.shape[-1])
            e = (e.view(batch.num_graphs, -1, e.shape[-1]) + et).view(-1, e.shape[-1])
            return x, e
        x = x + self.node_type_embedding(batch.node_type).to(x.dtype)
        e = e + self.edge_type_embedding(batch.edge_type).to(e.dtype)
        return x, e


class GraphModel(nn.Module):
    """Base of the graph models: holds a [`GraphEncoder`][nngraph_layers.GraphEncoder] as
    `self.encoder`."""

    encoder: GraphEncoder

    def fit_normalizer(self, template: ngc.GraphTemplate, params: Tensor) -> GraphModel:
        """Fit the per-layer weight/bias statistics on a training split `params [n, P]`."""
        ref = next(self.parameters())
        norm = WeightNormalizer.fit(template, params).to(device=ref.device, dtype=ref.dtype)
        self.encoder.normalizer = norm
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
