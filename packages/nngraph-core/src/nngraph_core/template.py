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

import enum
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .errors import MissingKeyError, NonFiniteWeightsError, ShapeMismatchError, UnexpectedKeyError
from .spec import NetworkSpec, network_spec

if TYPE_CHECKING:
    from .batch import GraphBatch
    from .graph import NeuralGraph
    from .permutation import HiddenPermutation

__all__ = ["GraphTemplate", "NodeRole", "check_finite"]

# Index structures depend only on the architecture's signature: share them between templates.
# (They are never modified in place.)
_STRUCTURE_CACHE: dict[tuple[object, ...], dict[str, object]] = {}
_STRUCTURE_CACHE_SIZE = 64


class NodeRole(enum.IntEnum):
    """Role of a node: inputs and outputs have fixed identities, hidden neurons are permutable."""

    INPUT = 0
    HIDDEN = 1
    OUTPUT = 2


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
            if len(_STRUCTURE_CACHE) >= _STRUCTURE_CACHE_SIZE:
                _STRUCTURE_CACHE.pop(next(iter(_STRUCTURE_CACHE)))
            _STRUCTURE_CACHE[key] = {k: v for k, v in vars(self).items() if k != "spec"}
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
        widths = spec.widths
        offsets = [0]
        for w in widths:
            offsets.append(offsets[-1] + w)
        self.node_offsets: tuple[int, ...] = tuple(offsets)
        poff = spec.param_offsets()
        kh_max, kw_max = spec.kernel_shape
        n_nodes = spec.num_nodes

        node_param = torch.full((n_nodes,), -1, dtype=torch.long)
        node_layer = torch.empty(n_nodes, dtype=torch.long)
        node_role = torch.full((n_nodes,), int(NodeRole.HIDDEN), dtype=torch.long)
        node_act = torch.zeros(n_nodes, dtype=torch.long)
        names = spec.activation_names
        for layer_idx in range(len(widths)):
            node_layer[offsets[layer_idx] : offsets[layer_idx + 1]] = layer_idx
        node_role[: widths[0]] = int(NodeRole.INPUT)
        node_role[offsets[-2] :] = int(NodeRole.OUTPUT)

        src_parts, dst_parts, eparam_parts = [], [], []
        edge_offsets = [0]
        for idx, layer in enumerate(spec.layers):
            n_in, n_out = layer.in_features, layer.out_features
            lo, hi = offsets[idx + 1], offsets[idx + 2]
            node_act[lo:hi] = names.index(layer.activation)
            if layer.bias_key is not None:
                node_param[lo:hi] = poff[layer.bias_key][0] + torch.arange(n_out)
            kh, kw = layer.kernel_size
            # Position of each kernel entry inside the centred, padded (Kh, Kw) window.
            r0, c0 = (kh_max - kh) // 2, (kw_max - kw) // 2
            rows = torch.arange(kh).view(kh, 1) + r0
            cols = torch.arange(kw).view(1, kw) + c0
            slot = (rows * kw_max + cols).flatten()  # [kh*kw]
            base = poff[layer.weight_key][0]
            # Weight memory order is [out, in, kh, kw] for both conv and flattened linear.
            entry = base + torch.arange(n_out * n_in * kh * kw).view(n_out * n_in, kh * kw)
            eparam = torch.full((n_out * n_in, kh_max * kw_max), -1, dtype=torch.long)
            eparam[:, slot] = entry
            eparam_parts.append(eparam)
            o = torch.arange(n_out).repeat_interleave(n_in)
            i = torch.arange(n_in).repeat(n_out)
            src_parts.append(offsets[idx] + i)
            dst_parts.append(lo + o)
            edge_offsets.append(edge_offsets[-1] + n_out * n_in)

        self.edge_offsets: tuple[int, ...] = tuple(edge_offsets)
        self.node_param = node_param
        self.edge_param = torch.cat(eparam_parts)
        self.edge_index = torch.stack([torch.cat(src_parts), torch.cat(dst_parts)])
        self.node_layer = node_layer
        self.node_role = node_role
        self.node_activation = node_act

        n_params = spec.num_params
        covered = torch.cat(
            [self.node_param[self.node_param >= 0], self.edge_param[self.edge_param >= 0]]
        )
        if covered.numel() != n_params or not torch.equal(
            covered.sort().values, torch.arange(n_params)
        ):
            raise AssertionError(
                "internal error: the parameter maps do not cover every parameter once"
            )

        # Flat gather indices with padding redirected to a valid position; the padded columns
        # are zeroed after the gather (few columns, cheap).
        self._node_idx = node_param.clamp(min=0)
        self._node_pad = (node_param < 0).nonzero().flatten()
        flat_e = self.edge_param.flatten()
        self._edge_idx = flat_e.clamp(min=0)
        self._edge_pad = (flat_e < 0).nonzero().flatten()
        self._node_valid = (node_param >= 0).nonzero().flatten()
        self._edge_valid = (flat_e >= 0).nonzero().flatten()
        self._node_targets = node_param[self._node_valid]
        self._edge_targets = flat_e[self._edge_valid]

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
        return 1

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
        unexpected = [k for k in sd if k not in set(self.spec.param_keys)]
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
        idx_n = self._node_idx.to(params.device)
        idx_e = self._edge_idx.to(params.device)
        nodes = torch.index_select(params, 1, idx_n)
        edges = torch.index_select(params, 1, idx_e)
        if self._node_pad.numel():
            nodes[:, self._node_pad.to(params.device)] = 0
        if self._edge_pad.numel():
            edges[:, self._edge_pad.to(params.device)] = 0
        return nodes.view(b, self.num_nodes, 1), edges.view(b, self.num_edges, self.edge_dim)

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
        if node_features.shape[-1] != 1 or node_features.numel() % n:
            raise ShapeMismatchError(
                f"node features {tuple(node_features.shape)} do not fit {n} nodes x 1"
            )
        b = node_features.numel() // n
        if edge_features.shape[-1] != d or edge_features.numel() != b * e * d:
            raise ShapeMismatchError(
                f"edge features {tuple(edge_features.shape)} do not fit {b} graphs x {e} edges x {d}"
            )
        nodes = node_features.reshape(b, n)
        edges = edge_features.reshape(b, e * d)
        out = torch.empty(
            b, self.num_params, dtype=node_features.dtype, device=node_features.device
        )
        dev = node_features.device
        # index_copy_ along dim 1 is the fast scatter; columns without a parameter (inputs,
        # kernel padding) are dropped first (skipped when there are none).
        if self._node_pad.numel():
            nodes = nodes[:, self._node_valid.to(dev)]
        if self._edge_pad.numel():
            edges = edges[:, self._edge_valid.to(dev)]
        out.index_copy_(1, self._node_targets.to(dev), nodes)
        out.index_copy_(1, self._edge_targets.to(dev), edges)
        return out

    # -- single graphs and permutations ------------------------------------------------------------
    def graph(self, params: Tensor, *, allow_nonfinite: bool = False) -> NeuralGraph:
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
        )

    def node_permutation(self, perm: HiddenPermutation) -> Tensor:
        """Induced node permutation `sigma` [N]: node `v` of the permuted network is node
        `sigma[v]` of the original. Inputs and outputs are fixed points."""
        perm.check(self.spec)
        parts = [torch.arange(self.spec.widths[0]), *(p.cpu() for p in perm.perms)]
        parts.append(torch.arange(self.spec.widths[-1]))
        return torch.cat([part + self.node_offsets[layer] for layer, part in enumerate(parts)])

    def edge_permutation(self, perm: HiddenPermutation) -> Tensor:
        """Induced edge permutation [E]: edge `e` of the permuted network is edge `tau[e]`."""
        sigma = self.node_permutation(perm)
        tau = []
        for idx, layer in enumerate(self.spec.layers):
            n_in = layer.in_features
            sl = self.layer_edges(idx)
            src = sigma[self.edge_index[0, sl]] - self.node_offsets[idx]
            dst = sigma[self.edge_index[1, sl]] - self.node_offsets[idx + 1]
            tau.append(self.edge_offsets[idx] + dst * n_in + src)
        return torch.cat(tau)

    def param_permutation(self, perm: HiddenPermutation) -> Tensor:
        """Index `pi` [P] with `params_permuted = params[..., pi]`: a hidden permutation acting
        on flat parameter vectors (rows of `W_l`, `b_l` and columns of `W_{l+1}`)."""
        sigma = self.node_permutation(perm)
        tau = self.edge_permutation(perm)
        pi = torch.empty(self.num_params, dtype=torch.long)
        nv = self.node_param >= 0
        pi[self.node_param[nv]] = self.node_param[sigma][nv]
        ev = self.edge_param >= 0
        pi[self.edge_param[ev]] = self.edge_param[tau][ev]
        return pi

    def permute(self, params: Tensor, perm: HiddenPermutation) -> Tensor:
        """Apply a hidden permutation to flat parameters `[P]` or `[B, P]`."""
        self._check_params(params)
        return params[..., self.param_permutation(perm).to(params.device)]
