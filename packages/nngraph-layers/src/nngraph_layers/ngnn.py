r"""NG-GNN: the graph network of Kofinas et al., ICLR 2024, on neural graphs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from .edge_pna import EdgePNAConv, Kernel, avg_log_degree
from .heads import EquivariantHead, InvariantHead, Pooling
from .model import GraphEncoder, GraphModel, as_template

__all__ = ["NGGNN", "dense_edges", "sparse_edges"]

Fast = bool | Literal["auto"]


def dense_edges(e_fwd: Tensor, e_bwd: Tensor, template: ngc.GraphTemplate) -> list[Tensor]:
    """Edge features `[B, E, d]` of the forward and reverse edges -> per-layer dense
    `[B, 2, n_{l+1}, n_l, d]` (the layout of
    [`EdgePNAConv.forward_dense`][nngraph_layers.EdgePNAConv.forward_dense])."""
    widths = template.spec.widths
    out = []
    for k in range(len(widths) - 1):
        sl = template.layer_edges(k)
        shape = (e_fwd.shape[0], widths[k + 1], widths[k], e_fwd.shape[-1])
        out.append(torch.stack([e_fwd[:, sl].reshape(shape), e_bwd[:, sl].reshape(shape)], dim=1))
    return out


def sparse_edges(edges: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Inverse of [`dense_edges`][nngraph_layers.dense_edges]:
    `(e_fwd [B, E, d], e_bwd [B, E, d])`."""
    fwd = [e[:, 0].flatten(1, 2) for e in edges]
    bwd = [e[:, 1].flatten(1, 2) for e in edges]
    return torch.cat(fwd, dim=1), torch.cat(bwd, dim=1)


class NGGNN(GraphModel):
    r"""NG-GNN (Kofinas et al., ICLR 2024): a stack of [`EdgePNAConv`][nngraph_layers.EdgePNAConv]
    layers on the bidirectional neural graph, with an invariant or equivariant head.

    $$
    (\mathbf x^{0}, \mathbf e^{0}) = \mathrm{Encoder}(G), \qquad
    (\mathbf x^{t+1}, \mathbf e^{t+1}) = \mathrm{EdgePNA}_t(\mathbf x^{t}, \mathbf e^{t}),
    \qquad y = \mathrm{Head}(\mathbf x^{T}, \mathbf e^{T})
    $$

    The encoder ([`GraphEncoder`][nngraph_layers.GraphEncoder]) normalises per layer, applies
    Fourier features (sigma 3), adds positional embeddings and, with `use_probes`, projected probe
    features. Every weight becomes two directed edges (forward and reverse) that start from
    the same embedding and are updated separately; the equivariant head reads
    $[\mathbf e_{ij} \,\|\, \mathbf e_{ji}]$.

    Two execution paths compute the same function: the sparse path (PyG message passing, any
    batch, including mixed architectures) and the dense fast path for batches of one
    architecture ([`EdgePNAConv.forward_dense`][nngraph_layers.EdgePNAConv.forward_dense]).
    `fast="auto"` (default) takes the fast path whenever the batch has a template.

    On the fast path a batch larger than `chunk_size` graphs (default 32) runs chunk by
    chunk: graphs do not interact, so the result is the same, and the per-block message
    tensors `[b, 2, n_{l+1}, n_l, d]` of a small chunk stay in the CPU cache (measured on
    2 cores, batch 128: in one piece ~11 INRs/s with the torch code, in chunks of 16-32 ~100;
    `chunk_size=None` turns it off, e.g. on a GPU). On float32 CPU batches the layers run
    their elementwise work through a C kernel (`kernel="auto"`, see
    [`EdgePNAConv`][nngraph_layers.EdgePNAConv]), 1.6-1.9x the torch code's speed on 2 cores;
    `kernel="torch"` turns it off.

    Build it with [`for_graphs`][nngraph_layers.NGGNN.for_graphs]. Paper sizes: hidden 32, 4 layers,
    dropout 0.2. `pooling` picks the invariant readout (see
    [`InvariantHead`][nngraph_layers.InvariantHead]): `"cat"` (paper) reads the output neurons,
    `"layers"` adds the mean of every node layer. `kind_embeddings=True` adds embeddings of
    every node's activation kind and node type and every edge's type to the encoder's output (see
    [`GraphEncoder`][nngraph_layers.GraphEncoder]): for mixed-architecture batches and for zoos
    whose networks differ in their activation.

    Shapes:
        - **input:** [`GraphBatch`][nngraph_core.GraphBatch] (`probe_features` set when
          `use_probes`)
        - **output:** `[B, num_outputs]` (invariant), flat parameters `[B, P]`
          (equivariant; a [`GraphBatch`][nngraph_core.GraphBatch] for mixed batches)
    """

    def __init__(
        self,
        *,
        edge_dim: int,
        widths: Sequence[int],
        num_outputs: int = 10,
        head: Literal["invariant", "equivariant"] = "invariant",
        hidden_channels: int = 32,
        edge_channels: int | None = None,
        num_layers: int = 4,
        dropout: float = 0.2,
        sigma: float = 3.0,
        num_frequencies: int = 128,
        use_probes: bool = False,
        probe_dim: int = 64,
        pooling: Pooling = "cat",
        aggregators: Sequence[str] = ("mean", "min", "max", "std"),
        scalers: Sequence[str] = ("identity", "amplification"),
        fast: Fast = "auto",
        chunk_size: int | None = 32,
        kernel: Kernel = "auto",
        kind_embeddings: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        d = hidden_channels
        de = edge_channels if edge_channels is not None else hidden_channels
        self.widths = widths
        self.fast = fast
        self.chunk_size = chunk_size
        self.head_kind = head
        self.encoder = GraphEncoder(
            edge_dim,
            widths[0],
            widths[-1],
            len(widths) - 2,
            d,
            de,
            sigma=sigma,
            num_frequencies=num_frequencies,
            use_probes=use_probes,
            probe_dim=probe_dim,
            kind_embeddings=kind_embeddings,
        )
        delta = avg_log_degree(widths)
        self.convs = nn.ModuleList(
            EdgePNAConv(
                d, de, aggregators, scalers, avg_log_deg=delta, dropout=dropout, kernel=kernel
            )
            for _ in range(num_layers)
        )
        self.head: InvariantHead | EquivariantHead
        if head == "invariant":
            self.head = InvariantHead(
                d, num_outputs, widths[-1], pooling=pooling, dropout=dropout,
                num_node_layers=len(widths),
            )  # fmt: skip
        elif head == "equivariant":
            self.head = EquivariantHead(d, 2 * de, edge_dim, len(widths) - 1, hidden_channels=d)
        else:
            raise ValueError(f"head must be 'invariant' or 'equivariant', got {head!r}")

    @classmethod
    def for_graphs(
        cls,
        example: ngc.GraphTemplate | ngc.GraphBatch | ngc.NeuralGraph | nn.Module,
        num_outputs: int = 10,
        **kwargs: object,
    ) -> NGGNN:
        """Build for graphs like `example` (a template, batch, graph or module); the keyword
        arguments are those of the constructor."""
        template = as_template(example)
        return cls(
            edge_dim=template.edge_dim,
            widths=template.spec.widths,
            num_outputs=num_outputs,
            **kwargs,  # type: ignore[arg-type]
        )

    def use_fast_path(self, batch: ngc.GraphBatch) -> bool:
        """Whether `forward` takes the dense path for `batch`."""
        return bool(self.fast) and batch.template is not None

    def forward(self, batch: ngc.GraphBatch) -> Tensor | ngc.GraphBatch:
        chunk = self.chunk_size
        if chunk is not None and self.use_fast_path(batch) and batch.num_graphs > chunk:
            # Graphs are independent: run the batch chunk by chunk so every intermediate
            # tensor stays cache-sized (the same function; ~10x faster on CPU at batch 128).
            outs = [self._forward(part) for part in batch.split(chunk)]
            return torch.cat(outs)  # type: ignore[arg-type]
        return self._forward(batch)

    def _forward(self, batch: ngc.GraphBatch) -> Tensor | ngc.GraphBatch:
        x, e = self.encoder(batch)
        if self.use_fast_path(batch):
            x, e_pair = self._dense(x, e, batch)
        else:
            x, e_pair = self._sparse(x, e, batch)
        if isinstance(self.head, InvariantHead):
            return self.head(x, batch)
        return self.head(x, e_pair, batch)

    def _sparse(self, x: Tensor, e: Tensor, batch: ngc.GraphBatch) -> tuple[Tensor, Tensor]:
        ei = batch.edge_index
        n_e = e.shape[0]
        edge_index = torch.cat([ei, ei.flip(0)], dim=1)
        ee = torch.cat([e, e], dim=0)
        for conv in self.convs:
            x, ee = conv(x, edge_index, ee)
        return x, torch.cat([ee[:n_e], ee[n_e:]], dim=-1)

    def _dense(self, x: Tensor, e: Tensor, batch: ngc.GraphBatch) -> tuple[Tensor, Tensor]:
        t = batch.template
        assert t is not None
        widths = t.spec.widths
        b = batch.num_graphs
        xd = x.view(b, t.num_nodes, -1)
        e3 = e.view(b, t.num_edges, -1)
        edges = dense_edges(e3, e3, t)
        invariant = isinstance(self.head, InvariantHead)
        for k, conv in enumerate(self.convs):
            # the invariant head reads only nodes: the last layer's edge update is skipped
            last = k == len(self.convs) - 1
            xd, edges = conv.forward_dense(xd, edges, widths, update_edges=not (invariant and last))
        x_out = xd.reshape(-1, xd.shape[-1])
        if isinstance(self.head, InvariantHead):
            return x_out, e  # edge features unused by the invariant head
        pair = [ed.permute(0, 2, 3, 1, 4).flatten(3, 4).flatten(1, 2) for ed in edges]
        return x_out, torch.cat(pair, dim=1).reshape(b * t.num_edges, -1)
