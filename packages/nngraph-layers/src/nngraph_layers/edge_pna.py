r"""The NG-GNN layer: PNA message passing with FiLM edge modulation and an edge update."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from . import _native
from ._native import Kernel
from .dropout import Dropout

__all__ = ["AGGREGATORS", "SCALERS", "EdgePNAConv", "Kernel", "avg_log_degree", "pna_combine"]


AGGREGATORS = ("mean", "min", "max", "std")
"""The PNA aggregators [`pna_combine`][nngraph_layers.pna_combine] knows, in their default order."""
SCALERS = ("identity", "amplification", "attenuation")
"""The PNA degree scalers [`pna_combine`][nngraph_layers.pna_combine] knows."""
_STD_EPS = 1e-5  # as torch_geometric.nn.aggr.StdAggregation


def pna_combine(
    total,
    total_sq,
    minimum,
    maximum,
    deg: Tensor,
    aggregators: Sequence[str],
    scalers: Sequence[str],
    avg_log_deg: float,
) -> Tensor:
    r"""PNA features from per-node message statistics (shared by the sparse and dense paths).

    $$
    \mu_i = \tfrac{1}{d_i}\textstyle\sum_j \mathbf m_{ij}, \quad
    \sigma_i = \sqrt{\mathrm{relu}\big(\tfrac{1}{d_i}\textstyle\sum_j \mathbf m_{ij}^2
        - \mu_i^2\big) + 10^{-5}}, \quad
    S_{\mathrm{amp}} = \frac{\log(d_i + 1)}{\delta}, \quad
    S_{\mathrm{att}} = \frac{\delta}{\log(d_i + 1)}
    $$

    Args:
        total (Tensor): `[*, n, d]` sum of each node's incoming messages.
        total_sq (Tensor): `[*, n, d]` sum of their squares.
        minimum (Tensor): `[*, n, d]` their minimum (0 for nodes without messages).
        maximum (Tensor): `[*, n, d]` their maximum (0 for nodes without messages).
        deg: `[*, n, 1]` (or broadcastable) in-degree $d_i$.
        aggregators: subset of [`AGGREGATORS`][nngraph_layers.AGGREGATORS] in output order.
        scalers: subset of [`SCALERS`][nngraph_layers.SCALERS] in output order.
        avg_log_deg: $\delta$, the mean of $\log(d + 1)$ over training graphs.

    Returns:
        `[*, n, len(aggregators) * len(scalers) * d]`.
    """
    deg_c = deg.clamp(min=1)
    mean = total / deg_c
    parts: list[Tensor] = []
    for name in aggregators:
        if name == "mean":
            parts.append(mean)
        elif name == "min":
            parts.append(minimum)
        elif name == "max":
            parts.append(maximum)
        elif name == "std":
            parts.append(torch.sqrt(torch.relu(total_sq / deg_c - mean * mean) + _STD_EPS))
        else:
            raise ValueError(f"unknown aggregator {name!r}")
    out = torch.cat(parts, dim=-1)
    log_deg = torch.log(deg_c + 1)
    scaled: list[Tensor] = []
    for name in scalers:
        if name == "identity":
            scaled.append(out)
        elif name == "amplification":
            scaled.append(out * (log_deg / avg_log_deg))
        elif name == "attenuation":
            scaled.append(out * (avg_log_deg / log_deg))
        else:
            raise ValueError(f"unknown scaler {name!r}")
    return torch.cat(scaled, dim=-1) if len(scaled) > 1 else scaled[0]


class EdgePNAConv(MessagePassing):
    r"""The NG-GNN layer of Kofinas et al., ICLR 2024 ("Graph Neural Networks for Learning
    Equivariant Representations of Neural Networks"): PNA message passing (Corso et al., 2020)
    whose messages are FiLM-modulated by the edge features, followed by an edge update.

    Messages $j \to i$ (both directions of every weight when the caller adds reverse
    edges):

    $$
    \begin{aligned}
        \boldsymbol\gamma_{ij}, \boldsymbol\beta_{ij} &= \mathbf W_{\mathrm{film}}\,\mathbf e_{ij}
            + \mathbf c_{\mathrm{film}} \\
        \mathbf m_{ij} &= \boldsymbol\gamma_{ij} \odot
            \big(\mathbf W_{\mathrm{msg}}[\mathbf x_i \,\|\, \mathbf x_j] + \mathbf c_{\mathrm{msg}}\big)
            + \boldsymbol\beta_{ij}
    \end{aligned}
    $$

    Aggregation: PNA aggregators (mean, min, max, std) times degree scalers (identity,
    amplification, optionally attenuation; see [`pna_combine`][nngraph_layers.pna_combine]) give
    $\mathbf a_i = \bigoplus_{j \in \mathcal N(i)} \mathbf m_{ij}$. Node update
    (residual, post-norm):

    $$
    \mathbf x_i' = \mathbf x_i + \mathrm{Dropout}\Big(\mathrm{SiLU}\big(\mathrm{LN}(
        \mathbf W_{\mathrm{upd}}[\mathbf x_i \,\|\, \mathbf a_i] + \mathbf c_{\mathrm{upd}})\big)\Big)
    $$

    Edge update (residual), with source $j$ and target $i$:

    $$
    \mathbf e_{ij}' = \mathbf e_{ij} + \mathbf W_{\mathrm{out}}\,\mathrm{SiLU}\big(
        \mathbf A \mathbf e_{ij} + \mathbf B \mathbf x'_j + \mathbf C \mathbf x'_i
        + \mathbf c\big) + \mathbf c_{\mathrm{out}}
    $$

    Every term is shared by all edges/nodes, so the layer is permutation equivariant and
    independent of the edge order. `forward` is the general sparse path (any graph);
    [`forward_dense`][nngraph_layers.EdgePNAConv.forward_dense] computes the same function for a
    batch of one architecture whose layers are complete bipartite graphs, with no edge index
    (DESIGN.md §4 "Fast path").

    On float32 CPU tensors [`forward_dense`][nngraph_layers.EdgePNAConv.forward_dense] runs its two
    elementwise-heavy parts (the FiLM messages with their four statistics, and the edge update's
    activation) through a C kernel compiled on first use (`nngraph_layers._native`): one pass over
    the per-edge tensors forward and one backward instead of ~25 torch operations. `kernel="torch"`
    keeps the torch code; without a C compiler `"auto"` falls back to it with a one-time warning.
    The only difference is the gradient of a min / max among exactly tied messages (the kernel
    gives it to the first, torch splits it).

    Args:
        in_channels (int): node width $d$.
        edge_channels (int): edge width $d_e$.
        aggregators (Sequence[str], optional): default `("mean", "min", "max", "std")`.
        scalers (Sequence[str], optional): default `("identity", "amplification")`.
        avg_log_deg (float, optional): $\delta = \mathrm{mean}\,\log(d+1)$ over the
            training graphs' nodes (default: `1.0`; [`NGGNN`][nngraph_layers.NGGNN] sets it
            from the template).
        dropout (float, optional): dropout on the node update (default: `0.0`).
        edge_update (bool, optional): update the edge features (default: `True`).
        kernel (str, optional): `"auto"` (default), `"native"` or `"torch"`: how
            [`forward_dense`][nngraph_layers.EdgePNAConv.forward_dense] runs (see above).

    Shapes:
        - **input:** node features `[N, d]`, edge index `[2, E]` (row 0 source, row 1
          target), edge features `[E, d_e]`
        - **output:** `(x' [N, d], e' [E, d_e])`
    """

    def __init__(
        self,
        in_channels: int,
        edge_channels: int,
        aggregators: Sequence[str] = ("mean", "min", "max", "std"),
        scalers: Sequence[str] = ("identity", "amplification"),
        avg_log_deg: float = 1.0,
        dropout: float = 0.0,
        edge_update: bool = True,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__(aggr=None, node_dim=0)
        if kernel not in ("auto", "native", "torch"):
            raise ValueError(f"kernel must be 'auto', 'native' or 'torch', got {kernel!r}")
        self.kernel = kernel
        for a in aggregators:
            if a not in AGGREGATORS:
                raise ValueError(f"unknown aggregator {a!r}; choose from {AGGREGATORS}")
        for s in scalers:
            if s not in SCALERS:
                raise ValueError(f"unknown scaler {s!r}; choose from {SCALERS}")
        self.in_channels = in_channels
        self.edge_channels = edge_channels
        self.aggregators = tuple(aggregators)
        self.scalers = tuple(scalers)
        self.avg_log_deg = float(avg_log_deg)
        d = in_channels
        # W_msg [x_i || x_j] is split into its two halves (same map, computed per node).
        self.lin_dst = nn.Linear(d, d)
        self.lin_src = nn.Linear(d, d, bias=False)
        self.film = nn.Linear(edge_channels, 2 * d)
        n_agg = len(self.aggregators) * len(self.scalers)
        self.lin_update = nn.Linear(d + n_agg * d, d)
        self.norm = nn.LayerNorm(d)
        self.dropout = Dropout(dropout)
        self.edge_update = edge_update
        if edge_update:
            self.edge_lin = nn.Linear(edge_channels, edge_channels)
            self.edge_src = nn.Linear(d, edge_channels, bias=False)
            self.edge_dst = nn.Linear(d, edge_channels, bias=False)
            self.edge_out = nn.Linear(edge_channels, edge_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    # -- sparse path -----------------------------------------------------------------------
    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        a = self.lin_dst(x)
        b = self.lin_src(x)
        agg = self.propagate(
            edge_index, a=a, b=b, edge_attr=edge_attr, size=(x.shape[0], x.shape[0])
        )
        x_new = self._update_nodes(x, agg)
        if not self.edge_update:
            return x_new, edge_attr
        src, dst = edge_index[0], edge_index[1]
        u = self.edge_src(x_new)
        v = self.edge_dst(x_new)
        h = self.edge_lin(edge_attr) + u.index_select(0, src) + v.index_select(0, dst)
        return x_new, edge_attr + self.edge_out(nn.functional.silu(h))

    def message(self, a_i: Tensor, b_j: Tensor, edge_attr: Tensor) -> Tensor:
        gamma, beta = self.film(edge_attr).chunk(2, dim=-1)
        return torch.addcmul(beta, gamma, a_i + b_j)

    def aggregate(
        self, inputs: Tensor, index: Tensor, ptr: Tensor | None = None, dim_size: int | None = None
    ) -> Tensor:
        n = dim_size
        total = scatter(inputs, index, 0, n, reduce="sum")
        total_sq = scatter(inputs * inputs, index, 0, n, reduce="sum")
        minimum = scatter(inputs, index, 0, n, reduce="min")
        maximum = scatter(inputs, index, 0, n, reduce="max")
        ones = torch.ones_like(index, dtype=inputs.dtype)
        deg = scatter(ones, index, 0, n, reduce="sum").unsqueeze(-1)
        return pna_combine(
            total, total_sq, minimum, maximum, deg, self.aggregators, self.scalers, self.avg_log_deg
        )

    def _update_nodes(self, x: Tensor, agg: Tensor) -> Tensor:
        # lin_update([x, agg]) as two products: no concatenation of the wide aggregates
        d, w = x.shape[-1], self.lin_update.weight
        h = nn.functional.linear(agg, w[:, d:]) + nn.functional.linear(
            x, w[:, :d], self.lin_update.bias
        )
        return x + self.dropout(nn.functional.silu(self.norm(h)))

    # -- dense fast path ----------------------------------------------------------------------
    def forward_dense(
        self, x: Tensor, edges: Sequence[Tensor], widths: Sequence[int], update_edges: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        r"""The same layer for `B` graphs of one architecture, without an edge index.

        Node layer $l$ has $n_l$ nodes (`widths`); the edges between layers
        $l$ and $l+1$ form a complete bipartite graph in both directions, stored as
        `edges[l][:, 0, o, i]` (forward edge $i \to o$) and `edges[l][:, 1, o, i]`
        (reverse edge $o \to i$). Messages of a layer are one broadcast tensor
        `[B, 2, n_{l+1}, n_l, d]`; aggregation reduces the source axis.

        Args:
            x: `[B, N, d]` node features, nodes layer by layer.
            edges: per parameterised layer `[B, 2, n_{l+1}, n_l, d_e]`.
            widths: $(n_0, \dots, n_L)$.
            update_edges: `False` returns the edges unchanged (for a last layer whose edges
                nobody reads).

        Returns:
            `(x' [B, N, d], edges')` in the same layout.
        """
        offsets = [0]
        for w in widths:
            offsets.append(offsets[-1] + w)
        native = self._use_native(x, edges)
        a = self.lin_dst(x)
        b = self.lin_src(x)
        if native:
            return self._forward_dense_native(x, a, b, edges, widths, update_edges)
        n_layers = len(widths)
        stats: list[list[tuple[Tensor, Tensor, Tensor, Tensor]]] = [[] for _ in range(n_layers)]
        for k, e in enumerate(edges):
            lo, mid, hi = offsets[k], offsets[k + 1], offsets[k + 2]
            a_s, a_t, b_s, b_t = a[:, lo:mid], a[:, mid:hi], b[:, lo:mid], b[:, mid:hi]
            # Target terms vary along the o axis (fwd) / i axis (bwd); source terms the other.
            t_o = torch.stack([a_t, b_t], dim=1)  # [B, 2, n_o, d]
            t_i = torch.stack([b_s, a_s], dim=1)  # [B, 2, n_i, d]
            gamma, beta = self.film(e).chunk(2, dim=-1)
            m = torch.addcmul(beta, gamma, t_o.unsqueeze(3) + t_i.unsqueeze(2))  # [B,2,n_o,n_i,d]
            fwd, bwd = m[:, 0], m[:, 1]
            stats[k + 1].append(_reduce(fwd, 2))  # to layer k+1, over sources i
            stats[k].append(_reduce(bwd, 1))  # to layer k, over targets o
        aggs = []
        for layer, parts in enumerate(stats):
            total, total_sq, mn, mx = parts[0]
            count = _count(layer, widths)
            for p in parts[1:]:
                total = total + p[0]
                total_sq = total_sq + p[1]
                mn = torch.minimum(mn, p[2])
                mx = torch.maximum(mx, p[3])
            deg_t = x.new_full((1, 1, 1), float(count))
            aggs.append(
                pna_combine(
                    total, total_sq, mn, mx, deg_t, self.aggregators, self.scalers, self.avg_log_deg
                )
            )
        x_new = self._update_nodes(x, torch.cat(aggs, dim=1))
        if not (self.edge_update and update_edges):
            return x_new, list(edges)
        u = self.edge_src(x_new)
        v = self.edge_dst(x_new)
        new_edges = []
        for k, e in enumerate(edges):
            lo, mid, hi = offsets[k], offsets[k + 1], offsets[k + 2]
            u_s, u_t, v_s, v_t = u[:, lo:mid], u[:, mid:hi], v[:, lo:mid], v[:, mid:hi]
            # fwd edge i -> o: source term on i, target on o; bwd edge o -> i: the reverse.
            t_o = torch.stack([v_t, u_t], dim=1)
            t_i = torch.stack([u_s, v_s], dim=1)
            h = self.edge_lin(e)
            act = nn.functional.silu(h + (t_o.unsqueeze(3) + t_i.unsqueeze(2)))
            new_edges.append(e + self.edge_out(act))
        return x_new, new_edges

    def _forward_dense_native(
        self,
        x: Tensor,
        a: Tensor,
        b: Tensor,
        edges: Sequence[Tensor],
        widths: Sequence[int],
        update_edges: bool,
    ) -> tuple[Tensor, list[Tensor]]:
        """[`forward_dense`][nngraph_layers.EdgePNAConv.forward_dense] through the C kernels: one
        call for all blocks' messages and statistics (every node's over both of its blocks), node
        update in torch on all nodes at
        once, one call for all blocks' edge updates."""
        stats = _native.layer_message_stats(
            edges, self.film.weight, self.film.bias, a, b, widths
        )  # [B, N, 4, d]
        deg = _degrees(widths, x)
        total, total_sq, mn, mx = stats.unbind(2)
        agg = pna_combine(
            total, total_sq, mn, mx, deg, self.aggregators, self.scalers, self.avg_log_deg
        )
        x_new = self._update_nodes(x, agg)
        if not (self.edge_update and update_edges):
            return x_new, list(edges)
        u = self.edge_src(x_new)
        v = self.edge_dst(x_new) + self.edge_lin.bias  # edge_lin's bias joins the node term
        new_edges = _native.layer_edge_update(
            edges, self.edge_lin.weight, self.edge_out.weight, self.edge_out.bias, u, v, widths
        )
        return x_new, new_edges

    def _use_native(self, x: Tensor, edges: Sequence[Tensor] = ()) -> bool:
        """Whether [`forward_dense`][nngraph_layers.EdgePNAConv.forward_dense] uses the C kernel for
        nodes `x` and `edges`."""
        return _native.use_native(self.kernel, [x, *edges])

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, edge_channels={self.edge_channels}, "
            f"aggregators={list(self.aggregators)}, scalers={list(self.scalers)})"
        )


def _reduce(m: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sum, sum of squares, min and max of messages `m` over axis `dim`."""
    return m.sum(dim), (m * m).sum(dim), m.amin(dim), m.amax(dim)


def _degrees(widths: Sequence[int], like: Tensor) -> Tensor:
    """`[1, N, 1]` in-degree of every node of a bidirectional neural graph."""
    counts = [float(_count(layer, widths)) for layer, w in enumerate(widths) for _ in range(w)]
    return torch.tensor(counts, dtype=like.dtype, device=like.device).view(1, -1, 1)


def _count(layer: int, widths: Sequence[int]) -> int:
    """In-degree of a node of node layer `layer` with edges in both directions."""
    prev = widths[layer - 1] if layer > 0 else 0
    nxt = widths[layer + 1] if layer + 1 < len(widths) else 0
    return prev + nxt


def avg_log_degree(widths: Sequence[int]) -> float:
    r"""$\delta = \frac1N \sum_i \log(d_i + 1)$ of a bidirectional neural graph."""
    total = sum(w * math.log(_count(layer, widths) + 1) for layer, w in enumerate(widths))
    return total / sum(widths)
