r"""NG-T: the relational transformer on neural graphs (Kofinas et al., ICLR 2024)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import nngraph_core as ngc

from ._native import Kernel
from .heads import EquivariantHead, InvariantHead, Pooling
from .model import GraphEncoder, GraphModel, as_template
from .relational_attention import BlockLayout
from .rt_layer import RTLayer

__all__ = ["NGTransformer", "dense_pairs", "sparse_pairs"]

Attention = Literal["sparse", "dense"]
ReverseEdges = Literal["weight", "null"]
Head = Literal["invariant", "equivariant"]


def sparse_pairs(edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """Directed pairs of the sparse attention: every edge and its reverse.

    Returns `(pair_index [2, 2E], reverse [2E])`: pairs `0..E-1` are the edges
    (`source -> target`, along the weight), pairs `E..2E-1` their reverses.
    """
    e = edge_index.shape[1]
    pair_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    ar = torch.arange(e, device=edge_index.device)
    return pair_index, torch.cat([ar + e, ar])


def dense_pairs(batch: ngc.GraphBatch) -> tuple[Tensor, Tensor, Tensor]:
    """All ordered node pairs `(j -> i)` of every graph of `batch` (self pairs included).

    Returns `(pair_index [2, M], reverse [M], edge_pair [sum E])` with `M = sum_g N_g^2`;
    pair `off_g + i * N_g + j` is `j -> i` (receiver-major, like a `[N, N]` matrix), and
    `edge_pair[e]` is the pair of edge `e` (`source -> target`).
    """
    ptr = batch.node_ptr
    counts = ptr.diff()
    sq = counts * counts
    pair_off = torch.cat([sq.new_zeros(1), sq.cumsum(0)])
    total = int(pair_off[-1])
    dev = ptr.device
    graph = torch.repeat_interleave(torch.arange(batch.num_graphs, device=dev), sq)
    local = torch.arange(total, device=dev) - pair_off[:-1][graph]
    n = counts[graph]
    i, j = local // n + ptr[:-1][graph], local % n + ptr[:-1][graph]
    reverse = pair_off[:-1][graph] + (j - ptr[:-1][graph]) * n + (i - ptr[:-1][graph])
    src, dst = batch.edge_index
    g_e = batch.batch[src]
    edge_pair = pair_off[:-1][g_e] + (dst - ptr[:-1][g_e]) * counts[g_e] + (src - ptr[:-1][g_e])
    return torch.stack([j, i]), reverse, edge_pair


class NGTransformer(GraphModel):
    r"""NG-T: a relational transformer on neural graphs (Kofinas et al., ICLR 2024).

    $$
    (\mathbf{n}^{0}, \mathbf{e}^{0}) = \mathrm{Encoder}(G), \qquad
    (\mathbf{n}^{t+1}, \mathbf{e}^{t+1}) = \mathrm{RTLayer}_t(\mathbf{n}^{t}, \mathbf{e}^{t}),
    \qquad y = \mathrm{Head}(\mathbf{n}^{T}, \mathbf{e}^{T})
    $$

    The encoder ([`GraphEncoder`][nngraph_layers.GraphEncoder]) normalises weights and biases per
    layer, lifts them by random Fourier features (sigma 1) and adds positional embeddings (and
    projected probe features). Each [`RTLayer`][nngraph_layers.RTLayer] attends

    * `attention="sparse"` (default): over the real edges in both directions -- node `i`
      attends to the nodes it receives a weight from and to the nodes it sends a weight to;
    * `attention="dense"`: over all $N^2$ node pairs as in the paper; pairs that share
      no weight (same-layer and skip-layer pairs, self pairs) start from a learned "no edge"
      embedding $\mathbf{e}_\varnothing$.

    The pair `u -> w` along a weight starts from the weight's embedding
    $\mathbf{e}_{wu} = \mathrm{FF}(\hat w)$; its reverse `w -> u` from
    $\mathbf{e}_{wu} + \mathbf{r}$ with a learned direction vector $\mathbf{r}$
    (`reverse_edges="weight"`, default: every node sees all its incident weights from the
    first layer on), or from $\mathbf{e}_\varnothing$ (`reverse_edges="null"`: the
    reference code, whose dense tensor holds each weight in one direction only; the edge update
    then carries it over through $[\mathbf{e}_{ij} \Vert \mathbf{e}_{ji}]$).

    Both are permutation equivariant. The sparse model is the dense one with the attention
    restricted to pairs that share a weight. For a batch of one architecture (a
    [`GraphTemplate`][nngraph_core.GraphTemplate] batch) the sparse model runs without any edge
    index (one complete bipartite block per layer,
    [`RTLayer.forward_blocks`][nngraph_layers.RTLayer.forward_blocks]) and the dense one on
    `[B, N, N, d]` tensors; mixed batches take the general path (pair lists, PyG scatter softmax),
    which computes the same function (`fast_path=False` forces it).

    Heads: `"invariant"` concatenates the output neurons' final features and applies an MLP
    ([`InvariantHead`][nngraph_layers.InvariantHead]; the last layer then skips its unused edge
    update, as the reference does; `pooling="layers"` adds the mean of every node layer); `"equivariant"` predicts a delta per bias (node MLP) and per
    weight (edge MLP on the final features of both pairs of the weight,
    $[\mathbf{e}_{ij} \Vert \mathbf{e}_{ji}]$), scaled per layer (initial 0.01) and added to the
    input network ([`EquivariantHead`][nngraph_layers.EquivariantHead]).

    Args:
        edge_dim: kernel entries per edge (1 for MLPs).
        num_inputs: input nodes (positional embeddings).
        num_output_nodes: output nodes (positional embeddings, readout).
        num_hidden_layers: hidden node layers (positional embeddings).
        num_outputs: predicted values (invariant head).
        head: `"invariant"` or `"equivariant"`.
        attention: `"sparse"` or `"dense"`.
        reverse_edges: `"weight"` or `"null"`: initial features of the reverse pairs.
        node_dim: node width (paper: 64).
        edge_channels: edge width (paper: 32).
        attention_dim: total attention width (paper: 128).
        node_hidden_dim: hidden width of the node MLP (paper: 128).
        edge_hidden_dim: hidden width of the edge MLP (paper: 64).
        num_layers: transformer layers (paper: 4).
        heads: attention heads (paper: 8).
        out_hidden_dim: width of the invariant head's MLP (paper: 128).
        pooling: the invariant head's readout (see
            [`InvariantHead`][nngraph_layers.InvariantHead]): `"cat"` (paper) reads the output
            neurons, `"layers"` adds the mean of every node layer; `"mean"`, `"sum"`, `"max"`
            pool all nodes.
        dropout: dropout in the layers and the head (paper: 0.2 for INR classification).
        sigma: Fourier feature std (paper: 1 for NG-T).
        use_probes: add projected probe features `batch.probe_features [sum N, K]`.
        probe_dim: `K`, the width of the probe features.
        scale: `"attention"` (reference: divide the logits by the full attention width) or
            `"head"`.
        fast_path: use the block / dense-tensor paths for one-architecture batches.
        checkpoint_layers: recompute each layer's activations in the backward pass
            (activation checkpointing): less memory, about one extra forward of compute.
        chunk_size: on the fast paths, run a larger batch chunk by chunk (default 32 graphs):
            the same function, but the per-pair tensors of a chunk stay in the CPU caches
            (and with `checkpoint_layers` the recomputed activations of only one chunk's
            layer are alive at a time). `None`: the whole batch at once (e.g. on a GPU).
        checkpoint_edges: recompute only the edge updates in the backward pass (sparse block
            path): most of the memory of `checkpoint_layers` saved for a fraction of its extra
            compute.
        kernel: `"auto"` (default), `"native"` or `"torch"`: whether the sparse block path
            runs its attention through the C kernel (float32 CPU; see
            [`RelationalAttention`][nngraph_layers.RelationalAttention]).
        kind_embeddings: embed each node's activation kind and node type and each edge's
            type in the encoder (see [`GraphEncoder`][nngraph_layers.GraphEncoder]); for
            mixed-architecture batches and zoos whose networks differ in activation.

    Shapes:
        - **input:** [`GraphBatch`][nngraph_core.GraphBatch] (`B` graphs)
        - **output:** `[B, num_outputs]` (invariant); flat parameters `[B, P]` (equivariant,
          template batch) or an edited [`GraphBatch`][nngraph_core.GraphBatch] (mixed batch).
    """

    def __init__(
        self,
        edge_dim: int,
        num_inputs: int,
        num_output_nodes: int,
        num_hidden_layers: int,
        num_outputs: int = 10,
        *,
        head: Head = "invariant",
        attention: Attention = "sparse",
        reverse_edges: ReverseEdges = "weight",
        node_dim: int = 64,
        edge_channels: int = 32,
        attention_dim: int = 128,
        node_hidden_dim: int = 128,
        edge_hidden_dim: int = 64,
        num_layers: int = 4,
        heads: int = 8,
        out_hidden_dim: int = 128,
        pooling: Pooling = "cat",
        dropout: float = 0.2,
        sigma: float = 1.0,
        num_frequencies: int = 128,
        use_probes: bool = False,
        probe_dim: int = 64,
        scale: Literal["attention", "head"] = "attention",
        fast_path: bool = True,
        checkpoint_layers: bool = False,
        chunk_size: int | None = 32,
        checkpoint_edges: bool = False,
        kernel: Kernel = "auto",
        kind_embeddings: bool = False,
    ) -> None:
        super().__init__()
        if attention not in ("sparse", "dense"):
            raise ValueError(f"attention must be 'sparse' or 'dense', got {attention!r}")
        if head not in ("invariant", "equivariant"):
            raise ValueError(f"head must be 'invariant' or 'equivariant', got {head!r}")
        if reverse_edges not in ("weight", "null"):
            raise ValueError(f"reverse_edges must be 'weight' or 'null', got {reverse_edges!r}")
        self.attention = attention
        self.reverse_edges = reverse_edges
        self.head_kind = head
        self.fast_path = fast_path
        self.checkpoint_layers = checkpoint_layers
        self.chunk_size = chunk_size
        self.node_dim = node_dim
        self.edge_channels = edge_channels
        self.encoder = GraphEncoder(
            edge_dim,
            num_inputs,
            num_output_nodes,
            num_hidden_layers,
            node_dim,
            edge_channels,
            sigma=sigma,
            num_frequencies=num_frequencies,
            use_probes=use_probes,
            probe_dim=probe_dim,
            kind_embeddings=kind_embeddings,
        )
        #: learned features of a pair without a weight (dense non-edges; reverse pairs if "null").
        self.null_edge: nn.Parameter | None = None
        if attention == "dense" or reverse_edges == "null":
            self.null_edge = nn.Parameter(torch.empty(edge_channels))
        #: learned direction vector added to the weight embedding of reverse pairs ("weight").
        self.reverse_edge: nn.Parameter | None = None
        if reverse_edges == "weight":
            self.reverse_edge = nn.Parameter(torch.empty(edge_channels))
        invariant = head == "invariant"
        self.layers = nn.ModuleList(
            RTLayer(
                node_dim,
                edge_channels,
                attention_dim,
                node_hidden_dim,
                edge_hidden_dim,
                heads,
                dropout,
                update_edges=not (invariant and t == num_layers - 1),
                scale=scale,
                kernel=kernel,
                checkpoint_edges=checkpoint_edges,
            )
            for t in range(num_layers)
        )
        self.head: InvariantHead | EquivariantHead
        if invariant:
            self.head = InvariantHead(
                node_dim,
                num_outputs,
                num_output_nodes,
                hidden_channels=out_hidden_dim,
                dropout=dropout,
                pooling=pooling,
                num_node_layers=num_hidden_layers + 2,
            )
        else:
            self.head = EquivariantHead(
                node_dim,
                2 * edge_channels,
                edge_dim,
                num_hidden_layers + 1,
                hidden_channels=out_hidden_dim,
            )
        self.reset_pair_embeddings()

    def reset_pair_embeddings(self) -> None:
        for p in (self.null_edge, self.reverse_edge):
            if p is not None:
                nn.init.normal_(p, std=1.0)

    def _reverse_init(self, e: Tensor) -> Tensor:
        """Initial features of the reverse pairs of edges with features `e [..., d]`."""
        if self.reverse_edge is not None:
            return e + self.reverse_edge.to(e.dtype)
        assert self.null_edge is not None
        return self.null_edge.to(e.dtype).expand_as(e)

    def _null(self, dtype: torch.dtype) -> Tensor:
        assert self.null_edge is not None
        return self.null_edge.to(dtype)

    @classmethod
    def for_graphs(
        cls,
        example: ngc.GraphTemplate | ngc.GraphBatch | ngc.NeuralGraph | nn.Module,
        num_outputs: int = 10,
        **kwargs: object,
    ) -> NGTransformer:
        """An NG-T for graphs like `example` (a template, batch, graph or module); keyword
        arguments as in the constructor (`head`, `attention`, `use_probes`, `dropout`...)."""
        template = as_template(example)
        widths = template.spec.widths
        return cls(
            template.edge_dim,
            widths[0],
            widths[-1],
            len(widths) - 2,
            num_outputs,
            **kwargs,  # type: ignore[arg-type]
        )

    # -- running the layers -----------------------------------------------------------------------
    def _run(self, fn: Any, *args: object) -> tuple[Tensor, Any]:
        if self.checkpoint_layers and torch.is_grad_enabled():
            out: tuple[Tensor, Any] = checkpoint(fn, *args, use_reentrant=False)
        else:
            out = fn(*args)
        return out

    def _blocks(self, x: Tensor, e: Tensor, t: ngc.GraphTemplate, b: int) -> tuple[Tensor, Tensor]:
        widths = tuple(t.spec.widths)
        layout = BlockLayout(widths)
        xs = x.view(b, t.num_nodes, -1)
        e0 = e.view(b, t.num_edges, -1)
        blocks = []
        for layer in range(len(widths) - 1):
            fwd = e0[:, t.layer_edges(layer)].unflatten(1, (widths[layer + 1], widths[layer]))
            blocks.append(torch.stack([fwd, self._reverse_init(fwd)], dim=1))
        for rt in self.layers:
            xs, blocks = self._run(rt.forward_blocks, xs, blocks, layout)
        e_out = torch.cat([blk.movedim(1, -2).flatten(-2).flatten(1, 2) for blk in blocks], dim=1)
        return xs.reshape(-1, xs.shape[-1]), e_out.reshape(-1, e_out.shape[-1])

    def _dense(self, x: Tensor, e: Tensor, t: ngc.GraphTemplate, b: int) -> tuple[Tensor, Tensor]:
        n = t.num_nodes
        src, dst = t.edge_index.to(x.device)
        flat, flat_rev = dst * n + src, src * n + dst
        e0 = e.view(b, t.num_edges, -1)
        null = self._null(e0.dtype).expand(b, n * n, e0.shape[-1])
        ed = null.index_copy(1, flat, e0).index_copy(1, flat_rev, self._reverse_init(e0))
        ed = ed.view(b, n, n, -1)
        xs = x.view(b, n, -1)
        for layer in self.layers:
            xs, ed = self._run(layer.forward_dense, xs, ed)
        ed = ed.reshape(b, n * n, -1)
        e_out = torch.cat([ed.index_select(1, flat), ed.index_select(1, flat_rev)], dim=-1)
        return xs.reshape(-1, xs.shape[-1]), e_out.reshape(-1, e_out.shape[-1])

    def _general(self, x: Tensor, e: Tensor, batch: ngc.GraphBatch) -> tuple[Tensor, Tensor]:
        if self.attention == "sparse":
            pair_index, reverse = sparse_pairs(batch.edge_index)
            pe = torch.cat([e, self._reverse_init(e)])
            edge_pair = None
        else:
            pair_index, reverse, edge_pair = dense_pairs(batch)
            null = self._null(e.dtype).expand(reverse.numel(), e.shape[-1])
            pe = null.index_copy(0, edge_pair, e).index_copy(
                0, reverse[edge_pair], self._reverse_init(e)
            )
        for layer in self.layers:
            x, pe = self._run(layer, x, pe, pair_index, reverse)
        if edge_pair is None:
            e_out = torch.cat([pe[: e.shape[0]], pe[e.shape[0] :]], dim=-1)
        else:
            e_out = torch.cat([pe[edge_pair], pe[reverse[edge_pair]]], dim=-1)
        return x, e_out

    def forward(self, batch: ngc.GraphBatch) -> Tensor | ngc.GraphBatch:
        chunk = self.chunk_size
        fast = self.fast_path and batch.template is not None
        if chunk is not None and fast and batch.num_graphs > chunk:
            # Graphs are independent: run the batch chunk by chunk so the per-pair tensors of
            # a chunk stay cache-sized (the same function, faster on CPU).
            outs = [self._forward(part) for part in batch.split(chunk)]
            return torch.cat(outs)  # type: ignore[arg-type]
        return self._forward(batch)

    def _forward(self, batch: ngc.GraphBatch) -> Tensor | ngc.GraphBatch:
        x, e = self.encoder(batch)
        t = batch.template
        if t is not None and self.fast_path:
            if self.attention == "sparse":
                x, e = self._blocks(x, e, t, batch.num_graphs)
            else:
                x, e = self._dense(x, e, t, batch.num_graphs)
        else:
            x, e = self._general(x, e, batch)
        if isinstance(self.head, InvariantHead):
            out: Tensor = self.head(x, batch)
            return out
        edited: Tensor | ngc.GraphBatch = self.head(x, e, batch)
        return edited

    def extra_repr(self) -> str:
        return (
            f"attention={self.attention!r}, reverse_edges={self.reverse_edges!r}, "
            f"head={self.head_kind!r}, fast_path={self.fast_path}"
        )
