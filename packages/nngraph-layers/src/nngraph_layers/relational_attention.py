"""Relational attention: multi-head self-attention whose queries, keys and values see the edges.

The attention of the relational transformer (Diao & Loynd, ICLR 2023) as used by NG-T
(Kofinas et al., ICLR 2024). One module, three ways to run it on the same parameters:

* [`RelationalAttention.forward`][nngraph_layers.RelationalAttention.forward] -- the general path: a
  list of directed pairs (`edge_index`, PyG convention: messages flow
  `edge_index[0] -> edge_index[1]`), a softmax over each receiver's incoming pairs
  (`torch_geometric.utils.softmax`). Works for any graphs, mixed architectures included.
* [`RelationalAttention.forward_blocks`][nngraph_layers.RelationalAttention.forward_blocks] -- the
  fast path for a batch of ONE architecture attending over the real edges in both directions: the
  edges of parameterised layer `l` form a complete bipartite block, one tensor
  `[B, 2, n_{l+1}, n_l, d]` per layer (direction 0: the message `u -> w` along the weight, direction
  1: its reverse `w -> u`; the template's target-major edge order). A node's softmax runs over its
  in-block and its out-block together; nothing is gathered or scattered.
* [`RelationalAttention.forward_dense`][nngraph_layers.RelationalAttention.forward_dense] --
  attention over all `N^2` node pairs as in the paper, `[B, N, N, d]` pair features (entry `[i, j]`:
  the pair receiver `i`, sender `j`).

The block path and the general path compute the same function (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from . import _native
from ._native import Kernel

__all__ = ["BlockLayout", "RelationalAttention"]


@dataclass(frozen=True)
class BlockLayout:
    """Layer structure of one MLP/CNN architecture, for the block (no `edge_index`) path.

    Args:
        widths: nodes per node layer `(n_0, ..., n_L)`.

    The nodes of layer `k` are `node_offsets[k]:node_offsets[k + 1]`; the edges of
    parameterised layer `l` are `edge_offsets[l]:edge_offsets[l + 1]`, target-major
    (edge `o * n_l + i` joins node `i` of layer `l` to node `o` of layer `l + 1`),
    which is the order of [`GraphTemplate`][nngraph_core.GraphTemplate].
    """

    widths: tuple[int, ...]

    @property
    def num_nodes(self) -> int:
        return sum(self.widths)

    @property
    def num_edges(self) -> int:
        return sum(a * b for a, b in zip(self.widths[:-1], self.widths[1:]))

    @property
    def node_offsets(self) -> tuple[int, ...]:
        out = [0]
        for w in self.widths:
            out.append(out[-1] + w)
        return tuple(out)

    @property
    def edge_offsets(self) -> tuple[int, ...]:
        out = [0]
        for a, b in zip(self.widths[:-1], self.widths[1:]):
            out.append(out[-1] + a * b)
        return tuple(out)


class RelationalAttention(nn.Module):
    r"""Multi-head relational attention with a multiplicative node-edge interaction in the values.

    For a receiver $i$ and each sender $j$ it attends to, with pair (edge) features
    $\mathbf{e}_{ij}$ (the features of the message $j \to i$), per head $h$:

    $$
    \begin{aligned}
        \mathbf{q}_{ij} &= \mathbf{W}^{q}_{n} \mathbf{n}_i + \mathbf{W}^{q}_{e} \mathbf{e}_{ij},
        \qquad
        \mathbf{k}_{ij} = \mathbf{W}^{k}_{n} \mathbf{n}_j + \mathbf{W}^{k}_{e} \mathbf{e}_{ij}, \\
        \mathbf{v}_{ij} &= (\mathbf{W}^{v}_{n} \mathbf{n}_j) \odot (\mathbf{W}^{m}_{e} \mathbf{e}_{ij})
        + \mathbf{W}^{v}_{e} \mathbf{e}_{ij}, \\
        \alpha^{h}_{ij} &= \operatorname{softmax}_{j}\big(\langle \mathbf{q}^{h}_{ij},
        \mathbf{k}^{h}_{ij} \rangle / \sqrt{d}\big),
        \qquad
        \mathbf{n}'_i = \mathbf{W}_o \big\Vert_{h} \sum_j \alpha^{h}_{ij} \mathbf{v}^{h}_{ij}
        + \mathbf{b}_o,
    \end{aligned}
    $$

    with $d$ the full attention width (`scale="attention"`, as the reference code of
    Kofinas et al. does) or the head width (`scale="head"`, the usual transformer choice).

    Args:
        node_dim: node feature width $d_{node}$.
        edge_dim: pair feature width $d_{edge}$.
        attention_dim: total query/key/value width over all heads (default 128).
        heads: number of heads (must divide `attention_dim`; default 8).
        scale: `"attention"` (divide by $\sqrt{d_{attn}}$, reference) or `"head"`
            (divide by $\sqrt{d_{attn} / H}$).
        modulate_values: use the multiplicative term $(\mathbf{W}^v_n \mathbf{n}_j) \odot
            (\mathbf{W}^m_e \mathbf{e}_{ij})$; `False` gives the additive
            $\mathbf{W}^v_n \mathbf{n}_j + \mathbf{W}^v_e \mathbf{e}_{ij}$.
        kernel: how [`forward_blocks`][nngraph_layers.RelationalAttention.forward_blocks] runs:
            `"auto"` (default: the C kernel of `nngraph_layers._native` for float32 CPU tensors
            without autocast when it builds, else torch), `"native"` (the kernel or an error) or
            `"torch"`. The kernel computes the scores, the softmax sums and the weighted values of
            every receiver from the pair terms of one GEMM in one pass over the pairs (and one in
            the backward), instead of ~20 torch operations over per-pair tensors of the attention
            width. It needs `modulate_values=True`.

    Shapes:
        - general ([`forward`][nngraph_layers.RelationalAttention.forward]): `x [N, d_node]`,
          `edge_attr [M, d_edge]`, `edge_index [2, M]` -> `[N, d_node]`.
        - blocks ([`forward_blocks`][nngraph_layers.RelationalAttention.forward_blocks]):
          `x [B, N, d_node]`, `edge_attr` one `[B, 2, n_{l+1}, n_l, d_edge]` per layer ->
          `[B, N, d_node]`.
        - dense ([`forward_dense`][nngraph_layers.RelationalAttention.forward_dense]):
          `x [B, N, d_node]`, `edge_attr [B, N, N, d_edge]` -> `[B, N, d_node]`.

    A node without any incoming pair receives zero (then the output bias).
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        attention_dim: int = 128,
        heads: int = 8,
        *,
        scale: Literal["attention", "head"] = "attention",
        modulate_values: bool = True,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        if kernel not in ("auto", "native", "torch"):
            raise ValueError(f"kernel must be 'auto', 'native' or 'torch', got {kernel!r}")
        if kernel == "native" and not modulate_values:
            raise ValueError("kernel='native' needs modulate_values=True")
        self.kernel = kernel
        if attention_dim % heads:
            raise ValueError(f"attention_dim={attention_dim} is not divisible by heads={heads}")
        if scale not in ("attention", "head"):
            raise ValueError(f"scale must be 'attention' or 'head', got {scale!r}")
        self.node_channels = node_dim
        self.edge_channels = edge_dim
        self.attention_dim = attention_dim
        self.heads = heads
        self.head_dim = attention_dim // heads
        self.scale_by = scale
        self.scale = 1.0 / math.sqrt(attention_dim if scale == "attention" else self.head_dim)
        self.modulate_values = modulate_values
        self.edge_parts = 4 if modulate_values else 3
        self.lin_node = nn.Linear(node_dim, 3 * attention_dim, bias=False)
        self.lin_edge = nn.Linear(edge_dim, self.edge_parts * attention_dim, bias=False)
        self.lin_out = nn.Linear(attention_dim, node_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_node, self.lin_edge, self.lin_out):
            nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(self.lin_out.bias)

    # -- shared pieces ---------------------------------------------------------------------------
    def _node_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        qkv = self.lin_node(x).unflatten(-1, (3, self.heads, self.head_dim))
        q, k, v = qkv.unbind(-3)
        return q, k, v

    def _edge_qkv(self, edge_attr: Tensor) -> Tensor:
        """`[..., parts, H, dh]`: the edge terms of queries, keys, values (and modulation)."""
        out: Tensor = self.lin_edge(edge_attr)
        parts: Tensor = out.unflatten(-1, (self.edge_parts, self.heads, self.head_dim))
        return parts

    def _score(self, q_i: Tensor, k_j: Tensor, q_e: Tensor, k_e: Tensor) -> Tensor:
        return ((q_i + q_e) * (k_j + k_e)).sum(-1) * self.scale

    def _value(self, v_j: Tensor, e_parts: tuple[Tensor, ...]) -> Tensor:
        if self.modulate_values:
            return v_j * e_parts[3] + e_parts[2]
        return v_j + e_parts[2]

    def _out(self, agg: Tensor) -> Tensor:
        out: Tensor = self.lin_out(agg.flatten(-2))
        return out

    # -- general path ----------------------------------------------------------------------------
    def forward(self, x: Tensor, edge_attr: Tensor, edge_index: Tensor) -> Tensor:
        """Attention of every node over its incoming pairs `edge_index[0] -> edge_index[1]`
        (softmax per receiver with `torch_geometric.utils.softmax`, then a scatter-sum)."""
        q, k, v = self._node_qkv(x)
        j, i = edge_index[0], edge_index[1]
        messages = self.message(q[i], k[j], v[j], edge_attr, i, x.shape[0])
        agg = scatter(messages, i, dim=0, dim_size=x.shape[0], reduce="sum")
        return self._out(agg)

    def message(
        self,
        q_i: Tensor,
        k_j: Tensor,
        v_j: Tensor,
        edge_attr: Tensor,
        index: Tensor,
        num_nodes: int,
    ) -> Tensor:
        """`alpha_ij * v_ij` for every pair, `[M, H, dh]`."""
        parts = self._edge_qkv(edge_attr).unbind(-3)
        alpha: Tensor = softmax(
            self._score(q_i, k_j, parts[0], parts[1]), index, num_nodes=num_nodes
        )
        return alpha.unsqueeze(-1) * self._value(v_j, parts)

    # -- block path (one architecture, real edges in both directions) -------------------------------
    def forward_blocks(self, x: Tensor, edge_attr: Sequence[Tensor], layout: BlockLayout) -> Tensor:
        """Attention over in- and out-neighbours, one complete bipartite block per layer.

        `edge_attr[l]` is `[B, 2, n_{l+1}, n_l, d_edge]`: entry `[:, 0, o, i]` holds the
        message along the weight (node `i` of layer `l` -> node `o` of layer `l + 1`),
        entry `[:, 1, o, i]` its reverse (`o -> i`).
        """
        b = x.shape[0]
        heads, head_dim, width = self.heads, self.head_dim, self.attention_dim
        if self._use_native(x, edge_attr):
            return self._blocks_native(x, edge_attr, layout)
        q, k, v = self._node_qkv(x)  # [B, N, H, dh]
        # The term W^v_e e_ij of the values is linear in e_ij, so it is applied once per receiver
        # after the attention-weighted sum of the pair features: sum_j a_ij W e_ij =
        # W sum_j a_ij e_ij. Per pair only q_e, k_e (and the modulation m_e) are computed.
        weight = self.lin_edge.weight  # rows: [q_e | k_e | v_e | m_e]
        w_pair = weight[: 2 * width]
        if self.modulate_values:
            w_pair = torch.cat([w_pair, weight[3 * width :]])
        w_value = weight[2 * width : 3 * width].unflatten(0, (heads, head_dim))  # [H, dh, d_e]
        n_terms = w_pair.shape[0] // width
        no, widths = layout.node_offsets, layout.widths
        # Per node layer: (scores, node values, pair features, sender axis) of each of its blocks.
        pairs: list[list[tuple[Tensor, Tensor, Tensor, int]]] = [[] for _ in widths]
        for layer, e_blk in enumerate(edge_attr):
            src, dst = slice(no[layer], no[layer + 1]), slice(no[layer + 1], no[layer + 2])
            terms = F.linear(e_blk, w_pair).unflatten(-1, (n_terms, heads, head_dim))
            fwd, rev = (t.unbind(-3) for t in terms.unbind(1))
            e_fwd, e_rev = e_blk.unbind(1)
            # messages src -> dst: receivers on axis 1, senders on axis 2
            s_f = self._score(q[:, dst, None], k[:, None, src], fwd[0], fwd[1])
            v_f = v[:, None, src] * fwd[2] if self.modulate_values else v[:, None, src]
            pairs[layer + 1].append((s_f, v_f, e_fwd, 2))
            # messages dst -> src: receivers on axis 2, senders on axis 1
            s_r = self._score(q[:, None, src], k[:, dst, None], rev[0], rev[1])
            v_r = v[:, dst, None] * rev[2] if self.modulate_values else v[:, dst, None]
            pairs[layer].append((s_r, v_r, e_rev, 1))
        outs = []
        for parts in pairs:
            m = torch.stack([s.detach().amax(dim) for s, _, _, dim in parts]).amax(0)
            den: Tensor | None = None
            num: Tensor | None = None
            e_sum: Tensor | None = None
            for s, val, e, dim in parts:
                p = torch.exp(s - m.unsqueeze(dim))  # [B, *, *, H]
                d_ = p.sum(dim)
                n_ = (p.unsqueeze(-1) * val).sum(dim)
                spec = "bijh,bijd->bihd" if dim == 2 else "bjih,bjid->bihd"
                pe = torch.einsum(spec, p, e)  # [B, n, H, d_e]
                den = d_ if den is None else den + d_
                num = n_ if num is None else num + n_
                e_sum = pe if e_sum is None else e_sum + pe
            assert num is not None and den is not None and e_sum is not None
            num = num + torch.einsum("bnhd,hcd->bnhc", e_sum, w_value.to(e_sum.dtype))
            outs.append(num / den.unsqueeze(-1))
        agg = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return self._out(agg.reshape(b, layout.num_nodes, heads, head_dim))

    def _use_native(self, x: Tensor, edge_attr: Sequence[Tensor]) -> bool:
        if not self.modulate_values:
            return False
        return _native.use_native(self.kernel, [x, *edge_attr])

    def _blocks_native(self, x: Tensor, edge_attr: Sequence[Tensor], layout: BlockLayout) -> Tensor:
        """[`forward_blocks`][nngraph_layers.RelationalAttention.forward_blocks] through
        `nngraph_layers._native.attention_block`: per block the kernel for both directions (pair
        terms included), then each node layer's (at
        most two) partial softmax sums merged here on per-node tensors."""
        b, width, heads = x.shape[0], self.attention_dim, self.heads
        qkv = self.lin_node(x)  # [B, N, 3A]: q | k | v
        weight = self.lin_edge.weight  # rows: [q_e | k_e | v_e | m_e]
        w_pair = torch.cat([weight[: 2 * width], weight[3 * width :]])
        w_value = weight[2 * width : 3 * width].unflatten(0, (heads, self.head_dim))
        no = layout.node_offsets
        parts: list[list[tuple[Tensor, ...]]] = [[] for _ in layout.widths]
        for layer, e_blk in enumerate(edge_attr):
            stats = _native.attention_block(
                e_blk, w_pair, qkv, no[layer], no[layer + 1], heads, self.scale
            )
            parts[layer + 1].append(stats[:4])
            parts[layer].append(stats[4:])
        outs = []
        for node_parts in parts:
            if len(node_parts) == 1:
                _, den, num, es = node_parts[0]
            else:
                top = torch.stack([p[0] for p in node_parts]).amax(0)
                w = [torch.exp(p[0] - top) for p in node_parts]
                den = sum(wk * p[1] for wk, p in zip(w, node_parts))  # type: ignore[assignment]
                num = sum(
                    wk.repeat_interleave(self.head_dim, -1) * p[2] for wk, p in zip(w, node_parts)
                )  # type: ignore[assignment]
                es = sum(wk.unsqueeze(-1) * p[3] for wk, p in zip(w, node_parts))  # type: ignore[assignment]
            agg = num.unflatten(-1, (heads, self.head_dim)) + torch.einsum(
                "bnhc,hdc->bnhd", es, w_value
            )
            outs.append(agg / den.unsqueeze(-1))
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return self._out(out.reshape(b, layout.num_nodes, heads, self.head_dim))

    # -- dense path (all node pairs) ----------------------------------------------------------------
    def forward_dense(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        """Attention of every node over all nodes; `edge_attr[:, i, j]` is the pair `j -> i`."""
        q, k, v = self._node_qkv(x)  # [B, N, H, dh]
        parts = self._edge_qkv(edge_attr).unbind(-3)  # [B, N, N, H, dh] each
        s = self._score(q[:, :, None], k[:, None, :], parts[0], parts[1])  # [B, N, N, H]
        alpha = torch.softmax(s, dim=2)
        agg = (alpha.unsqueeze(-1) * self._value(v[:, None, :], parts)).sum(2)
        return self._out(agg)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(node_dim={self.node_channels}, edge_dim={self.edge_channels}, "
            f"attention_dim={self.attention_dim}, heads={self.heads}, scale={self.scale_by!r}, "
            f"modulate_values={self.modulate_values}, kernel={self.kernel!r})"
        )
