"""One layer of the relational transformer NG-T: relational attention, node MLP, edge update."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import _native
from ._native import Kernel
from .dropout import Dropout
from .relational_attention import BlockLayout, RelationalAttention

__all__ = ["EdgeUpdate", "RTLayer"]


def _flip_direction(t: Tensor) -> Tensor:
    return t.flip(1)


def _init_linears(*modules: nn.Module) -> None:
    """Xavier-uniform weights and zero biases (the reference code's initialisation)."""
    for lin in modules:
        assert isinstance(lin, nn.Linear)
        nn.init.xavier_uniform_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)


class EdgeUpdate(nn.Module):
    r"""Edge update of NG-T (post-LayerNorm), for a pair $j \to i$ with reverse $i \to j$:

    $$
    \begin{aligned}
        \mathbf{e}_{ij} &\leftarrow \mathrm{LN}\Big(\mathbf{e}_{ij} + \mathbf{W}_2\,
        \mathrm{GELU}\big(\mathbf{W}_e [\mathbf{e}_{ij} \Vert \mathbf{e}_{ji}] + \mathbf{W}_i
        \mathbf{n}_i + \mathbf{W}_j \mathbf{n}_j + \mathbf{b}_1\big) + \mathbf{b}_2\Big), \\
        \mathbf{e}_{ij} &\leftarrow \mathrm{LN}\big(\mathbf{e}_{ij} + \mathrm{MLP}(\mathbf{e}_{ij})\big),
    \end{aligned}
    $$

    where the second MLP is `Linear(no bias) -> GELU -> Linear` (Kofinas et al., ICLR 2024,
    reference code). $\mathbf{W}_e [\mathbf{e}_{ij} \Vert \mathbf{e}_{ji}]$ is computed
    as $\mathbf{W}_{e,1} \mathbf{e}_{ij} + \mathbf{W}_{e,2} \mathbf{e}_{ji}$ (one GEMM on
    $\mathbf{e}$, then the second half is read at the reverse pair).

    Args:
        node_dim: node width.
        edge_dim: edge width.
        hidden_dim: hidden width of both edge MLPs (paper: 64).
        dropout: dropout after each MLP.

    Shapes:
        - `edge_attr [..., d_edge]`, `reverse` a function mapping a pair tensor to its
          reverse, `node_term [..., hidden_dim]` -> `[..., d_edge]`.
    """

    def __init__(
        self, node_dim: int, edge_dim: int, hidden_dim: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.lin_pair = nn.Linear(edge_dim, 2 * hidden_dim)
        self.lin_nodes = nn.Linear(node_dim, 2 * hidden_dim, bias=False)
        self.lin_out = nn.Linear(hidden_dim, edge_dim)
        self.norm0 = nn.LayerNorm(edge_dim)
        self.mlp = nn.Sequential(
            nn.Linear(edge_dim, hidden_dim, bias=False),
            nn.GELU(),
            nn.Linear(hidden_dim, edge_dim),
            Dropout(dropout),
        )
        self.norm1 = nn.LayerNorm(edge_dim)
        self.act = nn.GELU()
        self.dropout = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_linears(self.lin_pair, self.lin_nodes, self.lin_out, self.mlp[0], self.mlp[2])
        self.norm0.reset_parameters()
        self.norm1.reset_parameters()

    def node_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(W_i x, W_j x)`: the receiver and sender terms, `[..., hidden_dim]` each."""
        a, b = self.lin_nodes(x).chunk(2, dim=-1)
        return a, b

    def forward(
        self, edge_attr: Tensor, reverse: Callable[[Tensor], Tensor], node_term: Tensor
    ) -> Tensor:
        h_self, h_rev = self.lin_pair(edge_attr).chunk(2, dim=-1)
        return self._finish(edge_attr, self.act(h_self + reverse(h_rev) + node_term))

    def _finish(self, edge_attr: Tensor, h: Tensor) -> Tensor:
        e = self.norm0(edge_attr + self.dropout(self.lin_out(h)))
        out: Tensor = self.norm1(e + self.mlp(e))
        return out

    def forward_blocks_native(
        self, blocks: Sequence[Tensor], a: Tensor, b: Tensor, node_offsets: Sequence[int]
    ) -> list[Tensor]:
        """The update of every `[B, 2, n_{l+1}, n_l, d]` block through the C kernels: the
        activation of both directions by `nngraph_layers._native.edge_gelu` (the pair
        GEMM without its bias, which goes into the node terms; no flip, no stacked node terms)
        and each residual + LayerNorm by `nngraph_layers._native.residual_layer_norm`."""
        weight, bias = self.lin_pair.weight, self.lin_pair.bias
        c = bias[: self.hidden_dim] + bias[self.hidden_dim :]
        out = []
        for layer, e_blk in enumerate(blocks):
            src = slice(node_offsets[layer], node_offsets[layer + 1])
            dst = slice(node_offsets[layer + 1], node_offsets[layer + 2])
            # direction 0 (source -> target): receiver term a at the target, sender b at the
            # source; direction 1 the other way round
            t_o = torch.stack([a[:, dst] + c, b[:, dst]], dim=1)
            t_i = torch.stack([b[:, src], a[:, src] + c], dim=1)
            h = _native.edge_gelu(F.linear(e_blk, weight), t_o, t_i)
            out.append(self._finish_native(e_blk, h))
        return out

    def _finish_native(self, edge_attr: Tensor, h: Tensor) -> Tensor:
        """`_finish` with bias + dropout + residual + LayerNorm as one kernel pass each
        (`nngraph_layers._native.residual_layer_norm`; its own dropout masks)."""
        first, act, second, drop = self.mlp
        assert isinstance(second, nn.Linear) and isinstance(drop, Dropout)
        p0 = self.dropout.p if self.training else 0.0
        p1 = drop.p if self.training else 0.0
        if max(p0, p1) >= 1.0:
            return self._finish(edge_attr, h)
        lin_out = self.lin_out
        e = _native.residual_layer_norm(
            F.linear(h, lin_out.weight), lin_out.bias, edge_attr, self.norm0, p0
        )
        z = F.linear(act(first(e)), second.weight)
        return _native.residual_layer_norm(z, second.bias, e, self.norm1, p1)


class RTLayer(nn.Module):
    r"""One NG-T layer (Kofinas et al., ICLR 2024): relational attention, then a node MLP, then
    an edge update, each with a residual connection and a post-LayerNorm:

    $$
    \begin{aligned}
        \mathbf{n}_i &\leftarrow \mathrm{LN}\big(\mathbf{n}_i +
        \mathrm{RelationalAttention}(\mathbf{n}, \mathbf{e})_i\big),
        \qquad
        \mathbf{n}_i \leftarrow \mathrm{LN}\big(\mathbf{n}_i + \mathrm{MLP}(\mathbf{n}_i)\big), \\
        \mathbf{e}_{ij} &\leftarrow \mathrm{EdgeUpdate}(\mathbf{e}_{ij}, \mathbf{e}_{ji},
        \mathbf{n}_i, \mathbf{n}_j)
    \end{aligned}
    $$

    (node MLP: `Linear(no bias) -> GELU -> Linear`; see [`EdgeUpdate`][nngraph_layers.EdgeUpdate]).

    Args:
        node_dim: node width (paper: 64).
        edge_dim: edge width (paper: 32).
        attention_dim: attention width over all heads (paper: 128).
        node_hidden_dim: node MLP width (paper: 128).
        edge_hidden_dim: edge MLP width (paper: 64).
        heads: attention heads (paper: 8).
        dropout: dropout after the attention output and after each MLP.
        update_edges: `False` skips the edge update (the reference does so in the last layer
            when only node features are read out).
        scale: attention temperature, see
            [`RelationalAttention`][nngraph_layers.RelationalAttention].
        modulate_values: multiplicative node-edge values, see
            [`RelationalAttention`][nngraph_layers.RelationalAttention].
        kernel: `"auto"`, `"native"` or `"torch"`: how the attention's block path runs
            (see [`RelationalAttention`][nngraph_layers.RelationalAttention]).
        checkpoint_edges: on the block path, recompute the edge update in the backward pass
            instead of keeping its per-pair intermediates (~8 per-pair tensors of width 32-128;
            the attention keeps only its inputs and each pair's softmax weights).

    Shapes:
        - general [`forward`][nngraph_layers.RTLayer.forward]: `x [N, d_node]`,
          `edge_attr [M, d_edge]`, `edge_index [2, M]`, `reverse [M]` ->
          `([N, d_node], [M, d_edge])`.
        - [`forward_blocks`][nngraph_layers.RTLayer.forward_blocks]: `x [B, N, d_node]`, `edge_attr`
          one `[B, 2, n_{l+1}, n_l, d_edge]` per layer.
        - [`forward_dense`][nngraph_layers.RTLayer.forward_dense]: `x [B, N, d_node]`,
          `edge_attr [B, N, N, d_edge]`.
    """

    def __init__(
        self,
        node_dim: int = 64,
        edge_dim: int = 32,
        attention_dim: int = 128,
        node_hidden_dim: int = 128,
        edge_hidden_dim: int = 64,
        heads: int = 8,
        dropout: float = 0.0,
        *,
        update_edges: bool = True,
        scale: Literal["attention", "head"] = "attention",
        modulate_values: bool = True,
        kernel: Kernel = "auto",
        checkpoint_edges: bool = False,
    ) -> None:
        super().__init__()
        self.checkpoint_edges = checkpoint_edges
        self.attention = RelationalAttention(
            node_dim,
            edge_dim,
            attention_dim,
            heads,
            scale=scale,
            modulate_values=modulate_values,
            kernel=kernel,
        )
        self.dropout = Dropout(dropout)
        self.norm0 = nn.LayerNorm(node_dim)
        self.node_mlp = nn.Sequential(
            nn.Linear(node_dim, node_hidden_dim, bias=False),
            nn.GELU(),
            nn.Linear(node_hidden_dim, node_dim),
            Dropout(dropout),
        )
        self.norm1 = nn.LayerNorm(node_dim)
        self.update_edges = update_edges
        self.edge_update = (
            EdgeUpdate(node_dim, edge_dim, edge_hidden_dim, dropout) if update_edges else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.attention.reset_parameters()
        _init_linears(self.node_mlp[0], self.node_mlp[2])
        self.norm0.reset_parameters()
        self.norm1.reset_parameters()
        if self.edge_update is not None:
            self.edge_update.reset_parameters()

    def _nodes(self, x: Tensor, attended: Tensor) -> Tensor:
        x = self.norm0(x + self.dropout(attended))
        out: Tensor = self.norm1(x + self.node_mlp(x))
        return out

    def forward(
        self, x: Tensor, edge_attr: Tensor, edge_index: Tensor, reverse: Tensor
    ) -> tuple[Tensor, Tensor]:
        """General path: `edge_index[0] -> edge_index[1]` pairs; `reverse[m]` is the index of
        the pair opposite to pair `m`."""
        x = self._nodes(x, self.attention(x, edge_attr, edge_index))
        if self.edge_update is None:
            return x, edge_attr
        a, b = self.edge_update.node_terms(x)
        node_term = a[edge_index[1]] + b[edge_index[0]]
        edge_attr = self.edge_update(edge_attr, lambda t: t[reverse], node_term)
        return x, edge_attr

    def forward_blocks(
        self, x: Tensor, edge_attr: Sequence[Tensor], layout: BlockLayout
    ) -> tuple[Tensor, list[Tensor]]:
        """Block path: real edges in both directions, one `[B, 2, n_{l+1}, n_l, d_edge]` tensor
        per layer (direction 0 along the weights, 1 reversed; see
        [`RelationalAttention.forward_blocks`][nngraph_layers.RelationalAttention.forward_blocks])."""
        x = self._nodes(x, self.attention.forward_blocks(x, edge_attr, layout))
        if self.edge_update is None:
            return x, list(edge_attr)
        a, b = self.edge_update.node_terms(x)
        native = _native.use_native(self.attention.kernel, [x, *edge_attr])
        args = (list(edge_attr), a, b, layout.node_offsets, native)
        if self.checkpoint_edges and torch.is_grad_enabled():
            out: list[Tensor] = checkpoint(self._edge_blocks, *args, use_reentrant=False)
        else:
            out = self._edge_blocks(*args)
        return x, out

    def _edge_blocks(
        self, edge_attr: list[Tensor], a: Tensor, b: Tensor, no: Sequence[int], native: bool
    ) -> list[Tensor]:
        assert self.edge_update is not None
        if native:
            return self.edge_update.forward_blocks_native(edge_attr, a, b, no)
        out = []
        for layer, e_blk in enumerate(edge_attr):
            src, dst = slice(no[layer], no[layer + 1]), slice(no[layer + 1], no[layer + 2])
            # direction 0: receiver = target (axis 1), sender = source (axis 2); 1: reversed
            node_term = torch.stack(
                [a[:, dst, None] + b[:, None, src], a[:, None, src] + b[:, dst, None]], dim=1
            )
            out.append(self.edge_update(e_blk, _flip_direction, node_term))
        return out

    def forward_dense(self, x: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """Dense path: all node pairs, `edge_attr[:, i, j]` is the pair `j -> i`."""
        x = self._nodes(x, self.attention.forward_dense(x, edge_attr))
        if self.edge_update is None:
            return x, edge_attr
        a, b = self.edge_update.node_terms(x)
        node_term = a[:, :, None] + b[:, None, :]
        edge_attr = self.edge_update(edge_attr, lambda t: t.transpose(1, 2), node_term)
        return x, edge_attr
