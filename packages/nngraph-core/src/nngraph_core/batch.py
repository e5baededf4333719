"""Batches of neural graphs.

A [`GraphBatch`][nngraph_core.GraphBatch] concatenates graphs PyG-style: node features
`[sum N, d_node]`, edge features `[sum E, d_edge]`, an edge index with per-graph node offsets, and a
`batch` vector giving each node's graph. Two ways to build one:

* [`GraphTemplate.batch`][nngraph_core.GraphTemplate.batch] for a zoo of ONE architecture:
  one gather; structure tensors (edge index, batch vector, node attributes) are produced lazily
  from the template, and [`GraphBatch.dense_nodes`][nngraph_core.GraphBatch.dense_nodes] /
  [`GraphBatch.dense_edges`][nngraph_core.GraphBatch.dense_edges] give `[B, N, d]` / `[B, E, d]`
  views without a copy.
* [`batch`][nngraph_core.batch.batch] for a list of graphs of any architectures (kernels re-padded
  to a common size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import ShapeMismatchError
from .graph import NeuralGraph
from .spec import NetworkSpec
from .template import GraphTemplate

__all__ = ["GraphBatch", "batch"]


class GraphBatch:
    """A batch of neural graphs (see the module docstring for the layout).

    Attributes:
        node_features: `[sum N, d_node]`.
        edge_features: `[sum E, d_edge]`.
        num_graphs: `B`.
        node_ptr, edge_ptr: `[B + 1]` offsets of each graph's nodes / edges.
        template: the shared [`GraphTemplate`][nngraph_core.GraphTemplate] when all graphs have one
            architecture and the batch came from
            [`GraphTemplate.batch`][nngraph_core.GraphTemplate.batch], else `None`.
        specs: the architecture of every graph (for a template batch, the template's spec
            unless [`with_specs`][nngraph_core.GraphBatch.with_specs] set per-graph variants).
        probe_features: optional `[sum N, K]` per-node features computed from forward passes
            (set by `nngraph_probe`); models use them when present. `None` by default.
    """

    def __init__(
        self,
        node_features: Tensor,
        edge_features: Tensor,
        *,
        num_graphs: int,
        node_ptr: Tensor,
        edge_ptr: Tensor,
        template: GraphTemplate | None = None,
        specs: Sequence[NetworkSpec] = (),
        structure: dict[str, Tensor] | None = None,
    ) -> None:
        self.node_features = node_features
        self.edge_features = edge_features
        self.num_graphs = num_graphs
        self.node_ptr = node_ptr
        self.edge_ptr = edge_ptr
        self.template = template
        self.specs: tuple[NetworkSpec, ...] = (
            tuple(specs) if specs else ((template.spec,) * num_graphs if template else ())
        )
        self._structure: dict[str, Tensor] = dict(structure or {})
        self.probe_features: Tensor | None = None

    @classmethod
    def from_template(cls, template: GraphTemplate, nodes: Tensor, edges: Tensor) -> GraphBatch:
        """Wrap dense features `[B, N, 1]` / `[B, E, d]` of one architecture."""
        b = nodes.shape[0]
        dev = nodes.device
        return cls(
            nodes.reshape(b * template.num_nodes, template.node_dim),
            edges.reshape(b * template.num_edges, template.edge_dim),
            num_graphs=b,
            node_ptr=torch.arange(b + 1, device=dev) * template.num_nodes,
            edge_ptr=torch.arange(b + 1, device=dev) * template.num_edges,
            template=template,
        )

    # -- structure (lazy for template batches) ---------------------------------------------------
    def _tiled(self, name: str) -> Tensor:
        if name not in self._structure:
            assert self.template is not None
            base: Tensor = getattr(self.template, name)
            dev = self.node_features.device
            reps = (self.num_graphs,) + (1,) * (base.dim() - 1)
            self._structure[name] = base.to(dev).repeat(*reps)
        return self._structure[name]

    @property
    def edge_index(self) -> Tensor:
        """`[2, sum E]` with per-graph node offsets (built on first access for template batches)."""
        if "edge_index" not in self._structure:
            t = self.template
            assert t is not None
            dev = self.node_features.device
            offsets = (torch.arange(self.num_graphs, device=dev) * t.num_nodes).repeat_interleave(
                t.num_edges
            )
            self._structure["edge_index"] = (
                t.edge_index.to(dev).repeat(1, self.num_graphs) + offsets
            )
        return self._structure["edge_index"]

    @property
    def batch(self) -> Tensor:
        """`[sum N]` graph id of every node."""
        if "batch" not in self._structure:
            counts = self.node_ptr.diff()
            self._structure["batch"] = torch.repeat_interleave(
                torch.arange(self.num_graphs, device=counts.device), counts
            )
        return self._structure["batch"]

    @property
    def node_layer(self) -> Tensor:
        return self._tiled("node_layer")

    @property
    def node_role(self) -> Tensor:
        return self._tiled("node_role")

    @property
    def node_activation(self) -> Tensor:
        return self._tiled("node_activation")

    @property
    def node_type(self) -> Tensor:
        """``[sum N]`` [`NodeType`][nngraph_core.NodeType] of every node."""
        return self._tiled("node_type")

    @property
    def edge_type(self) -> Tensor:
        """``[sum E]`` [`EdgeType`][nngraph_core.EdgeType] of every edge."""
        return self._tiled("edge_type")

    @property
    def node_param(self) -> Tensor:
        """`[sum N]` position of each node's bias in its network's flat parameters (-1: none)."""
        return self._tiled("node_param")

    @property
    def edge_param(self) -> Tensor:
        """`[sum E, d_edge]` position of each edge-feature entry in its network's flat
        parameters (-1: padding)."""
        if "edge_param" not in self._structure:
            assert self.template is not None
            base = self.template.edge_param.to(self.edge_features.device)
            self._structure["edge_param"] = base.repeat(self.num_graphs, 1)
        return self._structure["edge_param"]

    @property
    def num_nodes(self) -> int:
        return int(self.node_features.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_features.shape[0])

    def __len__(self) -> int:
        return self.num_graphs

    def __repr__(self) -> str:
        kind = "one architecture" if self.template is not None else "mixed"
        return (
            f"GraphBatch(graphs={self.num_graphs}, nodes={self.num_nodes}, edges={self.num_edges}, "
            f"edge_dim={self.edge_features.shape[-1]}, {kind})"
        )

    # -- dense views (one architecture) --------------------------------------------------------------
    def _require_template(self, what: str) -> GraphTemplate:
        if self.template is None:
            raise ShapeMismatchError(
                f"{what} needs a batch of one architecture (built by GraphTemplate.batch)"
            )
        return self.template

    def dense_nodes(self) -> Tensor:
        """`[B, N, d_node]` view of the node features."""
        t = self._require_template("dense_nodes()")
        return self.node_features.view(self.num_graphs, t.num_nodes, -1)

    def dense_edges(self) -> Tensor:
        """`[B, E, d_edge]` view of the edge features."""
        t = self._require_template("dense_edges()")
        return self.edge_features.view(self.num_graphs, t.num_edges, -1)

    # -- back to networks ---------------------------------------------------------------------------
    def params(self) -> Tensor:
        """Flat parameters `[B, P]` (one architecture): the exact inverse of `template.batch`."""
        t = self._require_template("params()")
        return t.params(self.node_features, self.edge_features)

    def to_graphs(self) -> list[NeuralGraph]:
        """Split into single [`NeuralGraph`][nngraph_core.NeuralGraph] objects (exact:
        `to_state_dict` of each gives
        back the network that went in)."""
        if self.template is not None:
            t = self.template
            return [t.graph(p, allow_nonfinite=True) for p in self.params()]
        out = []
        st = self._structure
        for i, spec in enumerate(self.specs):
            n0, n1 = int(self.node_ptr[i]), int(self.node_ptr[i + 1])
            e0, e1 = int(self.edge_ptr[i]), int(self.edge_ptr[i + 1])
            edge_index = st["edge_index"][:, e0:e1] - n0
            node_layer = st["node_layer"][n0:n1]
            kernel = self._kernel_shape()
            feats, param = _repad(
                self.edge_features[e0:e1],
                st["edge_param"][e0:e1],
                spec,
                kernel,
                spec.kernel_shape,
            )
            d = spec.node_dim
            node_param = st["node_param"][n0:n1]
            node_param = node_param.view(n1 - n0, -1)[:, :d]
            out.append(
                NeuralGraph(
                    node_features=self.node_features[n0:n1, :d],
                    edge_index=edge_index,
                    edge_features=feats,
                    node_layer=node_layer,
                    node_role=st["node_role"][n0:n1],
                    node_activation=st["node_activation"][n0:n1],
                    node_param=node_param[:, 0] if d == 1 else node_param,
                    edge_param=param,
                    spec=spec,
                    node_type=st["node_type"][n0:n1],
                    edge_type=st["edge_type"][e0:e1],
                )
            )
        return out

    def _kernel_shape(self) -> tuple[int, int]:
        stored = self._structure.get("kernel_shape")
        if stored is not None:  # padded beyond the graphs' own kernels (batch(kernel_shape=))
            return int(stored[0]), int(stored[1])
        return (
            max(s.kernel_shape[0] for s in self.specs),
            max(s.kernel_shape[1] for s in self.specs),
        )

    def split(self, size: int) -> list[GraphBatch]:
        """Consecutive sub-batches of at most `size` graphs (one architecture; the features
        are views, `probe_features` are split along). Models run large batches chunk by chunk
        this way to keep their working set in cache."""
        t = self._require_template("split()")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        nodes, edges = self.dense_nodes(), self.dense_edges()
        probes = (
            None
            if self.probe_features is None
            else self.probe_features.view(self.num_graphs, t.num_nodes, -1)
        )
        out = []
        for start in range(0, self.num_graphs, size):
            part = GraphBatch.from_template(
                t, nodes[start : start + size], edges[start : start + size]
            )
            if probes is not None:
                part.probe_features = probes[start : start + size].reshape(-1, probes.shape[-1])
            out.append(part)
        return out

    def with_features(self, node_features: Tensor, edge_features: Tensor) -> GraphBatch:
        """A batch of the same graphs (same structure) carrying new node and edge features,
        e.g. the networks an equivariant model predicts."""
        if node_features.shape[0] != self.num_nodes or edge_features.shape[0] != self.num_edges:
            raise ShapeMismatchError(
                f"new features {tuple(node_features.shape)} / {tuple(edge_features.shape)} do not "
                f"fit {self.num_nodes} nodes / {self.num_edges} edges"
            )
        return GraphBatch(
            node_features,
            edge_features,
            num_graphs=self.num_graphs,
            node_ptr=self.node_ptr,
            edge_ptr=self.edge_ptr,
            template=self.template,
            specs=self.specs,
            structure=self._structure,
        )

    def with_specs(self, specs: Sequence[NetworkSpec]) -> GraphBatch:
        """The same batch with one spec per graph: for a template batch, *variants* of the
        template that differ only in their parameter-free operations (a zoo of relu and tanh
        CNNs of one architecture). Features and structure are shared; models that read node
        attributes per graph (activation kinds, probes of mixed batches) read each graph's own.

        Raises:
            ShapeMismatchError: not one spec per graph, or a spec whose parameters are not laid
                out as the graph's (different keys or shapes).
        """
        specs = tuple(specs)
        if len(specs) != self.num_graphs:
            raise ShapeMismatchError(
                f"with_specs needs one spec per graph ({self.num_graphs}), got {len(specs)}"
            )
        seen: set[int] = set()
        for old, new in zip(self.specs, specs, strict=True):
            if id(new) in seen or new is old:
                continue
            seen.add(id(new))
            if new.param_keys != old.param_keys or new.param_shapes != old.param_shapes:
                raise ShapeMismatchError(
                    f"spec {new.describe()} does not lay out its parameters as the graph's "
                    f"({old.describe()})"
                )
        out = GraphBatch(
            self.node_features,
            self.edge_features,
            num_graphs=self.num_graphs,
            node_ptr=self.node_ptr,
            edge_ptr=self.edge_ptr,
            template=self.template,
            specs=specs,
            structure=self._structure,
        )
        out.probe_features = self.probe_features
        return out

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GraphBatch:
        """Move to `device` and/or cast the features to `dtype`."""
        structure = {k: v.to(device) for k, v in self._structure.items()}
        out = GraphBatch(
            self.node_features.to(device=device, dtype=dtype),
            self.edge_features.to(device=device, dtype=dtype),
            num_graphs=self.num_graphs,
            node_ptr=self.node_ptr.to(device),
            edge_ptr=self.edge_ptr.to(device),
            template=self.template,
            specs=self.specs,
            structure=structure,
        )
        if self.probe_features is not None:
            out.probe_features = self.probe_features.to(device=device, dtype=dtype)
        return out

    def to_pyg(self) -> Any:
        """A `torch_geometric.data.Batch` (`x`, `edge_index`, `edge_attr`, `batch`, `ptr`,
        `node_layer`, `node_role`). Requires `pip install nngraph-core[pyg]`."""
        try:
            from torch_geometric.data import Batch
        except ImportError as exc:  # pragma: no cover - exercised only without PyG
            raise ImportError(
                "to_pyg() needs torch-geometric: pip install 'nngraph-core[pyg]'"
            ) from exc
        out = Batch(
            x=self.node_features,
            edge_index=self.edge_index,
            edge_attr=self.edge_features,
            batch=self.batch,
            ptr=self.node_ptr,
            node_layer=self.node_layer,
            node_role=self.node_role,
            node_activation=self.node_activation,
        )
        return out


def _repad(
    features: Tensor,
    param: Tensor,
    spec: NetworkSpec,
    old: tuple[int, int],
    new: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Edge features and their parameter map moved from centred kernel window `old` to `new`
    (edges in the canonical order of `spec`: block by block)."""
    if old == new:
        return features, param
    e = features.shape[0]
    feats = torch.zeros(e, *new, dtype=features.dtype, device=features.device)
    index = torch.full((e, *new), -1, dtype=torch.long, device=features.device)
    old_f = features.reshape(e, *old)
    old_i = param.reshape(e, *old)
    groups, blocks = spec.structure
    e0 = 0
    for blk in blocks:
        sel = slice(e0, e0 + blk.num_edges(groups))
        e0 = sel.stop
        kh, kw = blk.kernel
        r0, c0 = (old[0] - kh) // 2, (old[1] - kw) // 2
        r1, c1 = (new[0] - kh) // 2, (new[1] - kw) // 2
        feats[sel, r1 : r1 + kh, c1 : c1 + kw] = old_f[sel, r0 : r0 + kh, c0 : c0 + kw]
        index[sel, r1 : r1 + kh, c1 : c1 + kw] = old_i[sel, r0 : r0 + kh, c0 : c0 + kw]
    return feats.reshape(e, -1), index.reshape(e, -1)


def batch(
    graphs: Sequence[NeuralGraph], *, kernel_shape: tuple[int, int] | None = None
) -> GraphBatch:
    """Concatenate graphs of any architectures into one [`GraphBatch`][nngraph_core.GraphBatch].

    Edge features are re-padded (centred) to the largest kernel among the graphs, so a batch of
    MLPs and CNNs with different kernel sizes shares one edge-feature width. All graphs must
    have one dtype and device.

    Args:
        graphs: the graphs, in batch order.
        kernel_shape: pad kernels to at least `(kh, kw)` (e.g. the largest kernel of a whole
            zoo, so every batch of it has the edge-feature width a model was built for).
    """
    if not graphs:
        raise ShapeMismatchError("batch() needs at least one graph")
    dtypes = {g.dtype for g in graphs}
    devices = {g.device for g in graphs}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ShapeMismatchError(f"graphs differ in dtype/device: {dtypes} {devices}")
    kh = max(g.kernel_shape[0] for g in graphs)
    kw = max(g.kernel_shape[1] for g in graphs)
    if kernel_shape is not None:
        if kernel_shape[0] % 2 != kh % 2 or kernel_shape[1] % 2 != kw % 2:
            raise ShapeMismatchError(
                f"kernel_shape {kernel_shape} cannot centre the batch's {kh}x{kw} kernels "
                "(an odd and an even size)"
            )
        kh, kw = max(kh, kernel_shape[0]), max(kw, kernel_shape[1])
    dev = graphs[0].device
    node_counts = torch.tensor([g.num_nodes for g in graphs], device=dev)
    edge_counts = torch.tensor([g.num_edges for g in graphs], device=dev)
    node_ptr = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), node_counts.cumsum(0)])
    edge_ptr = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), edge_counts.cumsum(0)])
    repadded = [
        _repad(g.edge_features, g.edge_param, g.spec, g.kernel_shape, (kh, kw)) for g in graphs
    ]
    offsets = node_ptr[:-1].repeat_interleave(edge_counts)
    d = max(g.node_features.shape[-1] for g in graphs)
    node_feats = [
        torch.nn.functional.pad(g.node_features, (0, d - g.node_features.shape[-1])) for g in graphs
    ]
    node_params = [
        torch.nn.functional.pad(
            g.node_param.view(g.num_nodes, -1), (0, d - g.node_features.shape[-1]), value=-1
        )
        for g in graphs
    ]
    structure = {
        "edge_index": torch.cat([g.edge_index for g in graphs], dim=1) + offsets,
        "node_layer": torch.cat([g.node_layer for g in graphs]),
        "node_role": torch.cat([g.node_role for g in graphs]),
        "node_activation": torch.cat([g.node_activation for g in graphs]),
        "node_param": torch.cat(node_params)[:, 0] if d == 1 else torch.cat(node_params),
        "edge_param": torch.cat([p for _, p in repadded]),
        "node_type": torch.cat([_types(g, "node") for g in graphs]),
        "edge_type": torch.cat([_types(g, "edge") for g in graphs]),
        "kernel_shape": torch.tensor([kh, kw]),
    }
    return GraphBatch(
        torch.cat(node_feats),
        torch.cat([f for f, _ in repadded]),
        num_graphs=len(graphs),
        node_ptr=node_ptr,
        edge_ptr=edge_ptr,
        specs=[g.spec for g in graphs],
        structure=structure,
    )


def _types(graph: NeuralGraph, what: str) -> Tensor:
    """``node_type`` / ``edge_type`` of a graph (from its template when the graph lacks them)."""
    t = graph.node_type if what == "node" else graph.edge_type
    if t is not None:
        return t
    template = GraphTemplate(graph.spec)
    base = template.node_type if what == "node" else template.edge_type
    return base.to(graph.device)
