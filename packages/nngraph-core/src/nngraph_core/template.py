"""The graph structure of one architecture, computed once and shared by a whole model zoo.

A [`GraphTemplate`][nngraph_core.GraphTemplate] holds, for one
[`NetworkSpec`][nngraph_core.NetworkSpec], the edge index, the node layers and roles, and two index
maps into the flat parameter vector:

* `node_param[v]` -- the position of node `v`'s bias (`-1`: no bias, e.g. inputs);
* `edge_param[e, k]` -- the position of entry `k` of edge `e`'s padded kernel (`-1`: padding).

Every parameter appears exactly once in the two maps, so a batch of flat parameter vectors
`[B, P]` becomes node and edge features with one gather each
([`GraphTemplate.batch`][nngraph_core.GraphTemplate.batch]), and features go back to parameters with
one scatter ([`GraphTemplate.params`][nngraph_core.GraphTemplate.params]).

Canonical order: nodes layer by layer (inputs first, outputs last), within a layer by neuron
index; edges layer by layer, within a layer in the weight's memory order (target-major:
edge `o * n_in + i` joins source `i` to target `o`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .errors import MissingKeyError, NonFiniteWeightsError, ShapeMismatchError, UnexpectedKeyError
from .spec import NetworkSpec, network_spec
from .structure import NodeRole

if TYPE_CHECKING:
    from .batch import GraphBatch
    from .graph import NeuralGraph
    from .permutation import HiddenPermutation

__all__ = ["GraphTemplate", "NodeRole", "check_finite"]

# Index structures depend only on the architecture's signature: share them between templates.
# (They are never modified in place.) Large structures (a ResNet's edge maps) count by size.
_STRUCTURE_CACHE: dict[tuple[object, ...], dict[str, object]] = {}
_STRUCTURE_CACHE_SIZE = 64
_STRUCTURE_CACHE_ELEMENTS = 400_000_000


def check_finite(params: Tensor, what: str = "parameters") -> None:
    """Raise [`NonFiniteWeightsError`][nngraph_core.NonFiniteWeightsError] if `params` (`[P]` or
    `[B, P]`) has NaN/Inf.

    Uses one fast row reduction; only when that is not finite (NaN, Inf, or an overflowing sum)
    the exact elementwise check runs to name the offending rows.
    """
    if params.numel() == 0:  # also an empty batch [0, P], which reshape(0, -1) rejects
        return
    rows = params.reshape(1, -1) if params.dim() == 1 else params.reshape(params.shape[0], -1)
    if bool(torch.isfinite(rows.sum(dim=1)).all()):
        return
    bad = (~torch.isfinite(rows)).any(dim=1).nonzero().flatten()
    if bad.numel():
        shown = ", ".join(str(int(i)) for i in bad[:10])
        more = "" if bad.numel() <= 10 else f" (+{bad.numel() - 10} more)"
        where = "" if params.dim() == 1 else f" in rows {shown}{more}"
        raise NonFiniteWeightsError(
            f"{what} contain NaN or Inf{where}; pass allow_nonfinite=True to accept them"
        )


class GraphTemplate:
    """The neural-graph structure of one architecture.

    Args:
        spec: the architecture (see [`network_spec`][nngraph_core.network_spec]).

    Examples:
        >>> template = GraphTemplate.from_module(mlp)
        >>> params = torch.stack([template.flatten(m) for m in zoo])   # [B, P]
        >>> g = template.batch(params)                                  # GraphBatch
        >>> torch.equal(template.params(g.node_features, g.edge_features), params)
        True
    """

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        key = spec.signature()
        cached = _STRUCTURE_CACHE.get(key)
        if cached is None:
            self._build()
            entry = {k: v for k, v in vars(self).items() if k != "spec"}
            while _STRUCTURE_CACHE and (
                len(_STRUCTURE_CACHE) >= _STRUCTURE_CACHE_SIZE
                or _cache_elements() + _elements(entry) > _STRUCTURE_CACHE_ELEMENTS
            ):
                _STRUCTURE_CACHE.pop(next(iter(_STRUCTURE_CACHE)))
            _STRUCTURE_CACHE[key] = entry
        else:
            vars(self).update(cached)

    @classmethod
    def from_module(
        cls, module: nn.Module, *, input_shape: tuple[int, ...] | None = None
    ) -> GraphTemplate:
        """The template of `module`'s architecture (see
        [`network_spec`][nngraph_core.network_spec])."""
        return cls(network_spec(module, input_shape=input_shape))

    # -- construction ----------------------------------------------------------------------
    def _build(self) -> None:
        spec = self.spec
        groups, blocks = spec.structure
        depths = spec.group_depths
        poff = spec.param_offsets()
        kh_max, kw_max = spec.kernel_shape
        d_edge = kh_max * kw_max
        d_node = spec.node_dim
        sizes = [g.size for g in groups]
        offsets = [0]
        for w in sizes:
            offsets.append(offsets[-1] + w)
        self.node_offsets: tuple[int, ...] = tuple(offsets)
        n_nodes = offsets[-1]
        names = spec.activation_names

        node_param = torch.full((n_nodes, d_node), -1, dtype=torch.long)
        node_layer = torch.empty(n_nodes, dtype=torch.long)
        node_role = torch.empty(n_nodes, dtype=torch.long)
        node_type = torch.empty(n_nodes, dtype=torch.long)
        node_act = torch.zeros(n_nodes, dtype=torch.long)
        node_set = torch.full((n_nodes,), -1, dtype=torch.long)
        for k, hs in enumerate(spec.hidden_sets):
            for gi in hs.groups:
                node_set[offsets[gi] : offsets[gi + 1]] = k
        for gi, g in enumerate(groups):
            lo, hi = offsets[gi], offsets[gi + 1]
            node_layer[lo:hi] = depths[gi]
            node_role[lo:hi] = int(g.role)
            node_type[lo:hi] = int(g.type)
            node_act[lo:hi] = names.index(g.activation)
            if g.bias is not None:
                node_param[lo:hi, 0] = poff[g.bias[0]][0] + g.bias[1] + torch.arange(g.size)
            if g.stats is not None:
                for k_slot, (key, start) in enumerate(g.stats, start=1):
                    node_param[lo:hi, k_slot] = poff[key][0] + start + torch.arange(g.size)

        n_edges = sum(b.num_edges(groups) for b in blocks)
        edge_param = torch.full((n_edges, d_edge), -1, dtype=torch.long)
        n_valid = sum(
            b.num_edges(groups) * b.kernel[0] * b.kernel[1] for b in blocks if b.weight is not None
        )
        # positions (in the flattened [E, d_edge] features) of the entries that hold a parameter,
        # and the parameter each holds
        edge_valid = torch.empty(n_valid, dtype=torch.long)
        edge_targets = torch.empty(n_valid, dtype=torch.long)
        v0 = 0
        src = torch.empty(n_edges, dtype=torch.long)
        dst = torch.empty(n_edges, dtype=torch.long)
        edge_type = torch.empty(n_edges, dtype=torch.long)
        const_pos: list[Tensor] = []
        const_val: list[float] = []
        edge_offsets = [0]
        e0 = 0
        for blk in blocks:
            n_src, n_dst = sizes[blk.src], sizes[blk.dst]
            m = blk.num_edges(groups)
            if blk.pattern == "dense":
                o = torch.arange(n_dst).repeat_interleave(n_src)
                i = torch.arange(n_src).repeat(n_dst)
            elif blk.pattern == "diag":
                o = i = torch.arange(n_src)
            elif n_src >= n_dst:  # member: child -> parent
                i = torch.arange(n_src)
                o = torch.div(i, n_src // n_dst, rounding_mode="floor")
            else:  # member: parent -> child
                o = torch.arange(n_dst)
                i = torch.div(o, n_dst // n_src, rounding_mode="floor")
            sl = slice(e0, e0 + m)
            src[sl] = offsets[blk.src] + i
            dst[sl] = offsets[blk.dst] + o
            edge_type[sl] = int(blk.type)
            kh, kw = blk.kernel
            # Position of each kernel entry inside the centred, padded (Kh, Kw) window.
            r0, c0 = (kh_max - kh) // 2, (kw_max - kw) // 2
            rows = torch.arange(kh).view(kh, 1) + r0
            cols = torch.arange(kw).view(1, kw) + c0
            slot = (rows * kw_max + cols).flatten()  # [kh*kw]
            if blk.weight is not None:
                base = poff[blk.weight[0]][0] + blk.weight[1]
                kk = kh * kw
                vs = slice(v0, v0 + m * kk)
                v0 = vs.stop
                if blk.pattern == "dense" and blk.layout == "out_in":
                    # Weight memory order is [out, in, kh, kw] for both conv and linear.
                    torch.arange(base, base + m * kk, out=edge_targets[vs])
                elif blk.pattern == "dense":
                    torch.add(i * n_dst + o, base, out=edge_targets[vs])
                else:
                    torch.arange(base, base + m, out=edge_targets[vs])
                rows = torch.arange(e0 * d_edge, (e0 + m) * d_edge, d_edge).view(m, 1)
                torch.add(rows, slot.view(1, kk), out=edge_valid[vs].view(m, kk))
            elif blk.const is not None:
                const_pos.append(torch.arange(e0, e0 + m) * d_edge + int(slot[0]))
                const_val.append(blk.const)
            e0 += m
            edge_offsets.append(e0)

        edge_param.view(-1)[edge_valid] = edge_targets

        self.edge_offsets: tuple[int, ...] = tuple(edge_offsets)
        self._node_param2 = node_param
        self.node_param = node_param[:, 0] if d_node == 1 else node_param
        self.edge_param = edge_param
        self.edge_index = torch.stack([src, dst])
        self.node_layer = node_layer
        self.node_role = node_role
        self.node_activation = node_act
        self.node_type = node_type
        self.edge_type = edge_type
        self.node_set = node_set

        n_params = spec.num_params
        flat_n = node_param.flatten()
        valid_n = flat_n >= 0
        covered = torch.cat([flat_n[valid_n], edge_targets])
        counts = torch.bincount(covered, minlength=n_params)
        if covered.numel() != n_params or counts.numel() != n_params or bool((counts != 1).any()):
            raise AssertionError(
                "internal error: the parameter maps do not cover every parameter once"
            )

        # Flat gather indices with padding redirected to a valid position; the padded columns
        # are zeroed after the gather (few columns, cheap). When most of the edge features are
        # padding (large kernel windows), the edge features are scattered into zeros instead.
        self._node_idx = flat_n.clamp(min=0)
        self._node_pad = (~valid_n).nonzero().flatten()
        self._node_valid = valid_n.nonzero().flatten()
        self._node_targets = flat_n[self._node_valid]
        self._edge_valid = edge_valid
        self._edge_targets = edge_targets
        if 2 * edge_valid.numel() >= edge_param.numel():
            flat_e = edge_param.flatten()
            self._edge_idx: Tensor | None = flat_e.clamp(min=0)
            self._edge_pad = (flat_e < 0).nonzero().flatten()
        else:
            self._edge_idx = None
            self._edge_pad = torch.empty(0, dtype=torch.long)
        self._edge_const_pos = (
            torch.cat(const_pos) if const_pos else torch.empty(0, dtype=torch.long)
        )
        self._edge_const_val = (
            torch.cat(
                [
                    torch.full((p.numel(),), v, dtype=torch.float64)
                    for p, v in zip(const_pos, const_val)
                ]
            )
            if const_pos
            else torch.empty(0, dtype=torch.float64)
        )
        self._edge_keys: Tensor | None = None

    # -- sizes -----------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.spec.num_nodes

    @property
    def num_edges(self) -> int:
        return self.spec.num_edges

    @property
    def num_params(self) -> int:
        return self.spec.num_params

    @property
    def node_dim(self) -> int:
        return self.spec.node_dim

    @property
    def edge_dim(self) -> int:
        return self.spec.edge_dim

    def layer_nodes(self, layer: int) -> slice:
        """Node slice of node layer `layer` (0 = inputs, `L` = outputs)."""
        return slice(self.node_offsets[layer], self.node_offsets[layer + 1])

    def layer_edges(self, layer: int) -> slice:
        """Edge slice of parameterised layer `layer` (0-based: edges from node layer `layer`)."""
        return slice(self.edge_offsets[layer], self.edge_offsets[layer + 1])

    def __repr__(self) -> str:
        return (
            f"GraphTemplate(nodes={self.num_nodes}, edges={self.num_edges}, params={self.num_params}, "
            f"edge_dim={self.edge_dim}, layers=[{self.spec.describe()}])"
        )

    # -- parameters <-> flat vectors ---------------------------------------------------------
    def flatten(
        self, source: nn.Module | Mapping[str, Tensor], *, allow_nonfinite: bool = False
    ) -> Tensor:
        """Flat parameter vector `[P]` of a module or state dict of this architecture.

        Key order in `source` does not matter; missing, unexpected or mis-shaped entries raise
        [`MissingKeyError`][nngraph_core.MissingKeyError],
        [`UnexpectedKeyError`][nngraph_core.UnexpectedKeyError],
        [`ShapeMismatchError`][nngraph_core.ShapeMismatchError].
        """
        sd = source.state_dict() if isinstance(source, nn.Module) else source
        if not isinstance(sd, Mapping):
            raise ShapeMismatchError(
                f"expected a module or a state dict (a mapping), got {type(sd).__name__}"
            )
        missing = [k for k in self.spec.param_keys if k not in sd]
        if missing:
            raise MissingKeyError(
                f"state dict lacks {missing} (architecture: {self.spec.describe()})"
            )
        known = set(self.spec.param_keys) | {k for k, _, _ in self.spec.buffers}
        unexpected = [k for k in sd if k not in known]
        if unexpected:
            raise UnexpectedKeyError(
                f"state dict has keys the architecture does not know: {unexpected}"
            )
        parts = []
        dtype: torch.dtype | None = None
        for key, shape in zip(self.spec.param_keys, self.spec.param_shapes, strict=True):
            t = sd[key]
            if not isinstance(t, Tensor):
                raise ShapeMismatchError(f"{key!r} is a {type(t).__name__}, not a tensor")
            if t.layout != torch.strided or t.is_meta:
                raise ShapeMismatchError(
                    f"{key!r} is a {t.layout} tensor on {t.device}, expected a dense tensor "
                    "with data"
                )
            dtype = t.dtype if dtype is None else dtype
            if tuple(t.shape) != shape:
                raise ShapeMismatchError(f"{key!r} has shape {tuple(t.shape)}, expected {shape}")
            if not t.is_floating_point():
                raise ShapeMismatchError(f"{key!r} has dtype {t.dtype}, expected a floating dtype")
            if t.dtype != dtype:
                raise ShapeMismatchError(
                    f"{key!r} has dtype {t.dtype}, other parameters have {dtype}"
                )
            parts.append(t.detach().reshape(-1))
        flat = torch.cat(parts)
        if not allow_nonfinite:
            check_finite(flat)
        return flat

    def unflatten(self, params: Tensor) -> dict[str, Tensor]:
        """State dict from flat parameters: `[P]` -> shapes as stored; `[B, P]` -> `[B, *shape]`."""
        self._check_params(params)
        lead = params.shape[:-1]
        out: dict[str, Tensor] = {}
        for key, (offset, shape) in self.spec.param_offsets().items():
            out[key] = params[..., offset : offset + math.prod(shape)].reshape(*lead, *shape)
        return out

    def _check_params(self, params: Tensor) -> None:
        if not isinstance(params, Tensor):
            raise ShapeMismatchError(
                f"expected a tensor of flat parameters, got {type(params).__name__}"
            )
        if params.dim() not in (1, 2) or params.shape[-1] != self.num_params:
            raise ShapeMismatchError(
                f"expected flat parameters of shape [P] or [B, P] with P={self.num_params}, "
                f"got {tuple(params.shape)}"
            )

    # -- the gather and the scatter ------------------------------------------------------------
    def features(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """Dense node and edge features `[B, N, 1]` and `[B, E, d_edge]` of `params [B, P]`."""
        self._check_params(params)
        if params.dim() == 1:
            params = params.unsqueeze(0)
        b = params.shape[0]
        dev = params.device
        idx_n = self._node_idx.to(dev)
        nodes = torch.index_select(params, 1, idx_n)
        if self._node_pad.numel():
            nodes[:, self._node_pad.to(dev)] = 0
        if self._edge_idx is not None:
            edges = torch.index_select(params, 1, self._edge_idx.to(dev))
            if self._edge_pad.numel():
                edges[:, self._edge_pad.to(dev)] = 0
        else:
            edges = params.new_zeros(b, self.num_edges * self.edge_dim)
            edges.index_copy_(
                1,
                self._edge_valid.to(dev),
                torch.index_select(params, 1, self._edge_targets.to(dev)),
            )
        if self._edge_const_pos.numel():
            edges[:, self._edge_const_pos.to(dev)] = self._edge_const_val.to(
                dtype=params.dtype, device=dev
            )
        return nodes.view(b, self.num_nodes, self.node_dim), edges.view(
            b, self.num_edges, self.edge_dim
        )

    def batch(self, params: Tensor, *, allow_nonfinite: bool = False) -> GraphBatch:
        """A [`GraphBatch`][nngraph_core.GraphBatch] of `B` graphs from flat parameters `[B, P]`.

        One gather for the node features and one for the edge features; the edge index, batch
        vector and node attributes are produced lazily from the template when asked for.
        """
        from .batch import GraphBatch

        self._check_params(params)
        if params.dim() == 1:
            params = params.unsqueeze(0)
        if not allow_nonfinite:
            check_finite(params)
        nodes, edges = self.features(params)
        return GraphBatch.from_template(self, nodes, edges)

    def params(self, node_features: Tensor, edge_features: Tensor) -> Tensor:
        """Flat parameters `[B, P]` from node and edge features (dense `[B, N, 1]` / `[B, E, d]`
        or flat `[B*N, 1]` / `[B*E, d]`): the exact inverse of
        [`batch`][nngraph_core.GraphTemplate.batch].

        Padding entries of the edge features (outside the centred kernels) are ignored.
        """
        n, e, d = self.num_nodes, self.num_edges, self.edge_dim
        dn = self.node_dim
        if node_features.shape[-1] != dn or node_features.numel() % (n * dn):
            raise ShapeMismatchError(
                f"node features {tuple(node_features.shape)} do not fit {n} nodes x {dn}"
            )
        b = node_features.numel() // (n * dn)
        if edge_features.shape[-1] != d or edge_features.numel() != b * e * d:
            raise ShapeMismatchError(
                f"edge features {tuple(edge_features.shape)} do not fit {b} graphs x {e} edges x {d}"
            )
        nodes = node_features.reshape(b, n * dn)
        edges = edge_features.reshape(b, e * d)
        out = torch.empty(
            b, self.num_params, dtype=node_features.dtype, device=node_features.device
        )
        dev = node_features.device
        # index_copy_ along dim 1 is the fast scatter; columns without a parameter (inputs,
        # kernel padding) are dropped first (skipped when there are none).
        if self._node_pad.numel():
            nodes = nodes[:, self._node_valid.to(dev)]
        if self._edge_valid.numel() != e * d:
            edges = edges[:, self._edge_valid.to(dev)]
        out.index_copy_(1, self._node_targets.to(dev), nodes)
        out.index_copy_(1, self._edge_targets.to(dev), edges)
        return out

    # -- single graphs and permutations ------------------------------------------------------------
    def graph(
        self,
        params: Tensor,
        *,
        allow_nonfinite: bool = False,
        buffers: Mapping[str, Tensor] | None = None,
    ) -> NeuralGraph:
        """The [`NeuralGraph`][nngraph_core.NeuralGraph] of one flat parameter vector `[P]`."""
        from .graph import NeuralGraph

        self._check_params(params)
        if params.dim() != 1:
            raise ShapeMismatchError(
                f"graph() takes one vector [P]; got {tuple(params.shape)} (use batch())"
            )
        if not allow_nonfinite:
            check_finite(params)
        nodes, edges = self.features(params)
        return NeuralGraph(
            node_features=nodes[0],
            edge_index=self.edge_index.to(params.device),
            edge_features=edges[0],
            node_layer=self.node_layer.to(params.device),
            node_role=self.node_role.to(params.device),
            node_activation=self.node_activation.to(params.device),
            node_param=self.node_param.to(params.device),
            edge_param=self.edge_param.to(params.device),
            spec=self.spec,
            node_type=self.node_type.to(params.device),
            edge_type=self.edge_type.to(params.device),
            buffers=dict(buffers or {}),
        )

    def node_permutation(self, perm: HiddenPermutation) -> Tensor:
        """Induced node permutation `sigma` [N]: node `v` of the permuted network is node
        `sigma[v]` of the original. Inputs and outputs are fixed points."""
        perm.check(self.spec)
        sigma = torch.arange(self.num_nodes)
        for p, hs in zip(perm.perms, self.spec.hidden_sets, strict=True):
            for g in hs.groups:
                lo = self.node_offsets[g]
                sigma[lo : lo + hs.size] = p.cpu() + lo
        return sigma

    def edge_permutation(self, perm: HiddenPermutation) -> Tensor:
        """Induced edge permutation [E]: edge `e` of the permuted network is edge `tau[e]`."""
        tau, found = self._edge_lookup(self.node_permutation(perm))
        if not bool(found.all()):  # pragma: no cover - a hidden permutation is an automorphism
            raise AssertionError("internal error: a hidden permutation does not map edges to edges")
        return tau

    def _edge_lookup(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """For every edge `(s, d)`: the edge `(sigma[s], sigma[d])` (if it exists)."""
        n = self.num_nodes
        if self._edge_keys is None:
            keys = self.edge_index[0] * n + self.edge_index[1]
            order = torch.argsort(keys)
            self._edge_keys = keys[order]
            self._edge_order = order
        want = sigma[self.edge_index[0]] * n + sigma[self.edge_index[1]]
        pos = torch.searchsorted(self._edge_keys, want).clamp(max=self.num_edges - 1)
        found = self._edge_keys[pos] == want
        tau = torch.where(found, self._edge_order[pos], torch.arange(self.num_edges))
        return tau, found

    def param_permutation(self, perm: HiddenPermutation) -> Tensor:
        """Index `pi` [P] with `params_permuted = params[..., pi]`: a hidden permutation acting
        on flat parameter vectors (rows of `W_l`, `b_l` and columns of `W_{l+1}`)."""
        return self.relabel_index(self.node_permutation(perm))

    def relabel_index(self, sigma: Tensor) -> Tensor:
        """Index `pi` [P] of the network whose node `v` is node `sigma[v]` of this one:
        `params[..., pi]`.

        For a hidden permutation's `sigma` this is
        [`param_permutation`][nngraph_core.GraphTemplate.param_permutation]. Any other node
        relabelling works as long as it maps every edge that carries parameters to an edge
        (edges without parameters, such as residual connections, may be broken): that is how
        tests build *illegal* permutations, e.g. permuting one side of a residual add only.

        Raises:
            ShapeMismatchError: `sigma` is not a permutation, or moves an edge with parameters
                onto a non-edge.
        """
        n = self.num_nodes
        sigma = sigma.cpu()
        if sigma.shape != (n,) or not torch.equal(sigma.sort().values, torch.arange(n)):
            raise ShapeMismatchError(f"expected a permutation of {n} nodes")
        tau, found = self._edge_lookup(sigma)
        d = self.edge_dim
        edge = torch.div(self._edge_valid, d, rounding_mode="floor")  # edges with parameters
        if not bool(found[edge].all()):
            raise ShapeMismatchError(
                "the relabelling moves edges that carry parameters onto non-edges"
            )
        pi = torch.arange(self.num_params)
        nodes = self._node_param2
        nv = nodes >= 0
        pi[nodes[nv]] = nodes[sigma][nv]
        moved = tau[edge] * d + self._edge_valid % d
        pi[self._edge_targets] = self.edge_param.view(-1)[moved]
        return pi

    def permute(self, params: Tensor, perm: HiddenPermutation) -> Tensor:
        """Apply a hidden permutation to flat parameters `[P]` or `[B, P]`."""
        self._check_params(params)
        return params[..., self.param_permutation(perm).to(params.device)]

    # -- state dicts -------------------------------------------------------------------------------
    def state_dict(
        self, params: Tensor, buffers: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The full state dict of one flat parameter vector ``[P]``, in the network's key order.

        Non-floating entries (BatchNorm's ``num_batches_tracked``) are not parameters: they come
        from ``buffers`` when given, else they are zeros (their value at construction).
        """
        sd = self.unflatten(params)
        if not self.spec.buffers:
            return sd
        extra = dict(buffers or {})
        for key, shape, dtype in self.spec.buffers:
            extra.setdefault(key, torch.zeros(shape, dtype=dtype, device=params.device))
        return {k: sd[k] if k in sd else extra[k] for k in self.spec.state_keys}


def _elements(entry: Mapping[str, object]) -> int:
    return sum(v.numel() for v in entry.values() if isinstance(v, Tensor))


def _cache_elements() -> int:
    return sum(_elements(e) for e in _STRUCTURE_CACHE.values())
