"""The neural graph of one network, and the conversions network <-> graph."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import ShapeMismatchError
from .spec import NetworkSpec, network_spec
from .template import GraphTemplate, NodeRole

if TYPE_CHECKING:
    from .permutation import HiddenPermutation

__all__ = ["NeuralGraph", "from_module", "from_state_dict", "to_state_dict"]


@dataclass(frozen=True)
class NeuralGraph:
    """A network as a graph: neurons are nodes carrying their bias, weights are edges.

    Attributes:
        node_features: `[N, 1]` the bias of every node (0 for inputs and bias-free layers).
        edge_index: `[2, E]` long; row 0 the source (layer `l`), row 1 the target (`l + 1`).
        edge_features: `[E, Kh * Kw]` the weight of every edge; a conv kernel zero-padded,
            centred, to the network's largest kernel `(Kh, Kw)` and flattened.
        node_layer: `[N]` node layer index (0 = inputs, `L` = outputs).
        node_role: `[N]` [`NodeRole`][nngraph_core.NodeRole] values (input, hidden, output).
        node_activation: `[N]` index into `spec.activation_names` of the nonlinearity that
            follows the node (`identity` for inputs and linear outputs).
        node_param: `[N]` position of each node's bias in the flat parameter vector (-1: none).
        edge_param: `[E, Kh * Kw]` position of each edge-feature entry (-1: padding).
        spec: the architecture, for the way back to parameters.
        node_type: ``[N]`` [`NodeType`][nngraph_core.NodeType] values.
        edge_type: ``[E]`` [`EdgeType`][nngraph_core.EdgeType] values.
        buffers: state-dict entries that are not parameters and not features (BatchNorm's
            integer ``num_batches_tracked``), returned by [`to_state_dict`][nngraph_core.to_state_dict].

    With normalization layers that carry running statistics, nodes have 3 feature slots
    (bias, running mean, running variance): ``node_features`` is ``[N, 3]`` and
    ``node_param`` ``[N, 3]``.

    The graph is immutable; methods return new graphs.
    """

    node_features: Tensor
    edge_index: Tensor
    edge_features: Tensor
    node_layer: Tensor
    node_role: Tensor
    node_activation: Tensor
    node_param: Tensor
    edge_param: Tensor
    spec: NetworkSpec
    node_type: Tensor | None = None
    edge_type: Tensor | None = None
    buffers: Mapping[str, Tensor] = field(default_factory=dict)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return int(self.node_features.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def kernel_shape(self) -> tuple[int, int]:
        return self.spec.kernel_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.node_features.dtype

    @property
    def device(self) -> torch.device:
        return self.node_features.device

    def __repr__(self) -> str:
        return (
            f"NeuralGraph(nodes={self.num_nodes}, edges={self.num_edges}, "
            f"edge_dim={self.edge_features.shape[-1]}, dtype={self.dtype}, layers=[{self.spec.describe()}])"
        )

    # -- moving ------------------------------------------------------------------------------
    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> NeuralGraph:
        """Move to `device` and/or cast the features to the floating `dtype`."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                target_dtype = dtype if (dtype is not None and v.is_floating_point()) else None
                changes[f.name] = v.to(device=device, dtype=target_dtype)
        changes["buffers"] = {k: v.to(device=device) for k, v in self.buffers.items()}
        return replace(self, **changes)

    # -- symmetries ------------------------------------------------------------------------------
    def permute_nodes(self, perm: Tensor) -> NeuralGraph:
        """Relabel the nodes: node `v` of the result is node `perm[v]` of `self`.

        Any relabelling is allowed (the graph stays the same network;
        [`to_state_dict`][nngraph_core.to_state_dict] of the result returns the same parameters).
        Edge order is kept; the edge index is remapped.
        """
        n = self.num_nodes
        perm = perm.to(self.device)
        if perm.shape != (n,) or not torch.equal(
            perm.sort().values, torch.arange(n, device=self.device)
        ):
            raise ShapeMismatchError(f"expected a permutation of {n} nodes")
        inv = torch.argsort(perm)
        return replace(
            self,
            node_features=self.node_features[perm],
            edge_index=inv[self.edge_index],
            node_layer=self.node_layer[perm],
            node_role=self.node_role[perm],
            node_activation=self.node_activation[perm],
            node_param=self.node_param[perm],
            node_type=None if self.node_type is None else self.node_type[perm],
        )

    def permute_hidden(self, perm: HiddenPermutation) -> NeuralGraph:
        """The canonical graph of the network with hidden neurons permuted by `perm`."""
        template = GraphTemplate(self.spec)
        return template.graph(
            template.permute(self.params(), perm), allow_nonfinite=True, buffers=self.buffers
        )

    # -- back to parameters ------------------------------------------------------------------------
    def params(self) -> Tensor:
        """Flat parameter vector `[P]` (state-dict order)."""
        template = GraphTemplate(self.spec)
        if (
            self.edge_param.data_ptr() == template.edge_param.data_ptr()
            and self.node_param.data_ptr() == template.node_param.data_ptr()
        ):  # canonical layout (the template's own maps): its scatter
            return template.params(self.node_features, self.edge_features)[0]
        flat = torch.empty(self.spec.num_params, dtype=self.dtype, device=self.device)
        node_param = self.node_param.view(self.num_nodes, -1)
        nv = node_param >= 0
        flat[node_param[nv]] = self.node_features[nv]
        ev = self.edge_param >= 0
        flat[self.edge_param[ev]] = self.edge_features[ev]
        return flat

    def to_state_dict(self) -> dict[str, Tensor]:
        """The network's state dict: same keys, same shapes, bit-identical values."""
        return to_state_dict(self)

    # -- interop ------------------------------------------------------------------------------
    def to_pyg(self) -> Any:
        """A `torch_geometric.data.Data` (`x`, `edge_index`, `edge_attr`, `node_layer`,
        `node_role`). Requires `pip install nngraph-core[pyg]`."""
        try:
            from torch_geometric.data import Data
        except ImportError as exc:  # pragma: no cover - exercised only without PyG
            raise ImportError(
                "to_pyg() needs torch-geometric: pip install 'nngraph-core[pyg]'"
            ) from exc
        return Data(
            x=self.node_features,
            edge_index=self.edge_index,
            edge_attr=self.edge_features,
            node_layer=self.node_layer,
            node_role=self.node_role,
            node_activation=self.node_activation,
            node_type=self.node_type,
            edge_type=self.edge_type,
        )

    def role_mask(self, role: NodeRole) -> Tensor:
        return self.node_role == int(role)


def from_module(
    module: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    allow_nonfinite: bool = False,
    fold_batchnorm: bool = False,
) -> NeuralGraph:
    """The neural graph of `module`.

    Args:
        module: an MLP or CNN (`Linear` / `Conv2d` layers with parameter-free modules between
            them); see [`network_spec`][nngraph_core.network_spec] for what is supported.
        input_shape: one input's shape without batch, needed only for a conv map that is
            flattened into a linear layer without pooling.
        allow_nonfinite: accept NaN/Inf parameters instead of raising
            [`NonFiniteWeightsError`][nngraph_core.NonFiniteWeightsError].
        fold_batchnorm: first fold every eval-mode BatchNorm into the layer before it
            ([`fold_batchnorm`][nngraph_core.fold_batchnorm]); the graph is then that of the
            folded network (its state dict has the folded weights and no BatchNorm entries).

    Examples:
        >>> mlp = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
        >>> g = from_module(mlp)
        >>> g.num_nodes, g.num_edges
        (35, 96)
    """
    if fold_batchnorm:
        from .trace import fold_batchnorm as fold

        module = fold(module, input_shape=input_shape)
    spec = network_spec(module, input_shape=input_shape)
    template = GraphTemplate(spec)
    sd = module.state_dict()
    return template.graph(
        template.flatten(sd, allow_nonfinite=allow_nonfinite),
        allow_nonfinite=True,
        buffers=_buffers_of(spec, sd),
    )


def from_state_dict(
    state_dict: Mapping[str, Tensor],
    spec: NetworkSpec | nn.Module,
    *,
    allow_nonfinite: bool = False,
) -> NeuralGraph:
    """The neural graph of a state dict of architecture `spec` (a spec, or a module of that
    architecture). Key order does not matter; missing, unexpected and mis-shaped entries raise
    typed errors naming the key."""
    if isinstance(spec, nn.Module):
        spec = network_spec(spec)
    template = GraphTemplate(spec)
    return template.graph(
        template.flatten(state_dict, allow_nonfinite=allow_nonfinite),
        allow_nonfinite=True,
        buffers=_buffers_of(spec, state_dict),
    )


def _buffers_of(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: state_dict[k].clone() for k, _, _ in spec.buffers if k in state_dict}


def to_state_dict(graph: NeuralGraph) -> dict[str, Tensor]:
    """The exact inverse of [`from_module`][nngraph_core.from_module] /
    [`from_state_dict`][nngraph_core.from_state_dict]: the same keys in state-dict
    order, the same shapes, bit-identical values (in the graph's dtype and device)."""
    template = GraphTemplate(graph.spec)
    return {k: v.clone() for k, v in template.state_dict(graph.params(), graph.buffers).items()}
