"""The general neural-graph structure: node groups joined by edge blocks.

A layer chain (MLP, CNN) is a list of layers; any other network — residual connections,
normalization layers, attention, embeddings — is described by

* [`NodeGroup`][nngraph_core.NodeGroup]s: sets of nodes created by one operation (the output
  neurons of a `Linear`, the channels of a `Conv2d`, the normalised neurons of a `BatchNorm2d`,
  the query dimensions of an attention block, ...), each with its
  [`NodeType`][nngraph_core.NodeType] and where its node features live in the state dict;
* [`EdgeBlock`][nngraph_core.EdgeBlock]s: the edges between two groups — all pairs (a weight
  matrix or a set of kernels), one edge per index (a residual connection, a normalization scale)
  or group membership (an attention dimension and its head) — each with its
  [`EdgeType`][nngraph_core.EdgeType] and where its edge features live;
* [`HiddenSet`][nngraph_core.HiddenSet]s: the node groups that a symmetry permutes together
  (channels joined by a residual add, a layer and its normalization), derived from the blocks.

The graph conventions of every layer kind are listed in the "Bring your own network" page of the
documentation.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

__all__ = [
    "EdgeBlock",
    "EdgeType",
    "HiddenSet",
    "NodeGroup",
    "NodeRole",
    "NodeType",
    "ParamSlice",
    "node_depths",
    "op_name",
]

#: ``(state-dict key, offset)``: entries ``offset, offset + 1, ...`` of the flattened tensor.
ParamSlice = tuple[str, int]

# Parameter-free operations that change nothing about the computation at evaluation time (or only
# the layout of a tensor); they do not count as activations.
IGNORED_OP_NAMES = {
    "Identity",
    "Flatten",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "AlphaDropout",
    "flatten",
    "view",
    "reshape",
    "dropout",
    "contiguous",
    "clone",
    "to",
    "float",
    "double",
    "type",
    "identity",
}


def op_name(m: nn.Module) -> str:
    """Readable name of a parameter-free operation: ``relu``, ``sine(w0=30.0)``, ``gelu``."""
    name_fn = getattr(m, "nngraph_op_name", None)
    if callable(name_fn):
        return str(name_fn())
    extra = m.extra_repr()
    name = type(m).__name__.lower()
    return f"{name}({extra})" if extra else name


def activation_name(ops: Sequence[nn.Module]) -> str:
    """The ``+``-joined names of ``ops`` that compute something (``"identity"`` if none)."""
    names = [
        op_name(m)
        for m in ops
        if type(m).__name__ not in IGNORED_OP_NAMES
        and getattr(m, "nngraph_op_kind", "") not in IGNORED_OP_NAMES
    ]
    return "+".join(names) if names else "identity"


class NodeRole(enum.IntEnum):
    """Role of a node: inputs and outputs have fixed identities, hidden neurons are permutable."""

    INPUT = 0
    HIDDEN = 1
    OUTPUT = 2


class NodeType(enum.IntEnum):
    """What a node stands for. Stored per node as ``node_type``.

    Attributes:
        INPUT: an input feature or input channel of the network.
        LINEAR: an output neuron of a `Linear` layer (attention output projections included).
        CONV: an output channel of a `Conv2d`.
        NORM: a neuron after a normalization layer (`BatchNorm`, `LayerNorm`, `GroupNorm`); its
            bias slot holds the shift $\\beta$, and with BatchNorm's running statistics its slots 1
            and 2 hold the running mean and variance.
        NORM_GROUP: the statistics (mean, variance) of one `LayerNorm` / `GroupNorm` group; no
            parameters.
        QUERY: one query dimension of an attention block (bias: the query bias).
        KEY: one key dimension of an attention block.
        VALUE: one value dimension of an attention block.
        HEAD: one attention head (its softmax); no parameters.
        EMBEDDING: one row of a parameter added to (or concatenated with) the activations — a
            positional-embedding position, a class token; a fixed input of the graph.
        SUM: the sum of several values when no operand can hold it (both are used elsewhere); no
            parameters.
        ACTIVATION: an elementwise operation applied to a value that is also used elsewhere
            unchanged; no parameters.
    """

    INPUT = 0
    LINEAR = 1
    CONV = 2
    NORM = 3
    NORM_GROUP = 4
    QUERY = 5
    KEY = 6
    VALUE = 7
    HEAD = 8
    EMBEDDING = 9
    SUM = 10
    ACTIVATION = 11


class EdgeType(enum.IntEnum):
    """What an edge stands for. Stored per edge as ``edge_type``.

    Attributes:
        LINEAR: a weight of a `Linear` layer (incl. attention output projections).
        CONV: a kernel of a `Conv2d`.
        RESIDUAL: an operand of an add (a residual connection): a fixed identity kernel (1 at
            the centre of the window), no parameter.
        NORM: the scale $\\gamma$ of a normalization layer (1 when it has no affine scale),
            from a neuron to its normalised copy.
        NORM_GROUP: membership of a neuron in a normalization group; no parameter.
        QUERY: a weight of the query projection.
        KEY: a weight of the key projection.
        VALUE: a weight of the value projection.
        QK: joins query dimension $i$ to key dimension $i$ of the same head (they are
            multiplied); no parameter.
        HEAD: membership of a query / key / value dimension in its head; no parameter.
        EMBEDDING: an entry of an added / concatenated parameter (positional embedding, class
            token).
        IDENTITY: a copy (fixed 1) of a value that is also used elsewhere unchanged, into an
            `ACTIVATION` node; no parameter.
    """

    LINEAR = 0
    CONV = 1
    RESIDUAL = 2
    NORM = 3
    NORM_GROUP = 4
    QUERY = 5
    KEY = 6
    VALUE = 7
    QK = 8
    HEAD = 9
    EMBEDDING = 10
    IDENTITY = 11


@dataclass(frozen=True, eq=False)
class NodeGroup:
    """Nodes created by one operation of the network.

    Args:
        name: where the nodes come from (module path, e.g. ``"layer1.0.bn2"``).
        type: the [`NodeType`][nngraph_core.NodeType] of every node of the group.
        size: number of nodes.
        role: input, hidden or output.
        bias: where node feature slot 0 lives (the bias, or a normalization's shift), or `None`.
        stats: where slots 1 and 2 live (BatchNorm running mean and variance), or `None`.
        ops: the parameter-free operations applied to the nodes' values (activation, pooling).
        config: the operation's hyper-parameters (e.g. a normalization's `eps`), compared when
            deciding whether two networks have one architecture.
    """

    name: str
    type: NodeType
    size: int
    role: NodeRole = NodeRole.HIDDEN
    bias: ParamSlice | None = None
    stats: tuple[ParamSlice, ParamSlice] | None = None
    ops: tuple[nn.Module, ...] = field(default=(), repr=False)
    config: str = ""

    @property
    def activation(self) -> str:
        """Readable name of the operations after the nodes (``"identity"`` if none)."""
        return activation_name(self.ops)

    def signature(self) -> tuple[object, ...]:
        return (
            self.name,
            int(self.type),
            self.size,
            int(self.role),
            self.bias,
            self.stats,
            self.activation,
            self.config,
        )


BlockPattern = Literal["dense", "diag", "member"]


@dataclass(frozen=True, eq=False)
class EdgeBlock:
    """The edges from node group ``src`` to node group ``dst``.

    Patterns:

    * ``"dense"``: every source to every target, in target-major order (edge
      `o * n_src + i` joins source `i` to target `o`): a weight matrix or a set of kernels.
    * ``"diag"``: source `i` to target `i` (equal sizes): a residual connection, a
      normalization scale.
    * ``"member"``: between a group and a smaller group of "parents" (heads, normalization
      groups), node `j` of the larger side joined to node `j // b` of the smaller one
      (`b` = size ratio), in the larger side's order.

    Args:
        src: index of the source group.
        dst: index of the target group.
        type: the [`EdgeType`][nngraph_core.EdgeType] of every edge of the block.
        pattern: ``"dense"``, ``"diag"`` or ``"member"``.
        weight: where the edge features live, or `None` (no parameter).
        layout: memory order of a dense block's values: ``"out_in"`` (`[n_dst, n_src, kh, kw]`,
            a weight) or ``"in_out"`` (`[n_src, n_dst]`, an embedding table).
        kernel: `(kh, kw)` of each edge's kernel, centred in the network's kernel window.
        const: fixed feature at the window's centre for an edge without parameter (1.0 for
            identity edges), or `None` (zeros).
        config: hyper-parameters of the operation (stride, padding, ...).
    """

    src: int
    dst: int
    type: EdgeType
    pattern: BlockPattern
    weight: ParamSlice | None = None
    layout: Literal["out_in", "in_out"] = "out_in"
    kernel: tuple[int, int] = (1, 1)
    const: float | None = None
    config: str = ""

    def num_edges(self, groups: Sequence[NodeGroup]) -> int:
        n_src, n_dst = groups[self.src].size, groups[self.dst].size
        if self.pattern == "dense":
            return n_src * n_dst
        return max(n_src, n_dst)

    def signature(self) -> tuple[object, ...]:
        return (
            self.src,
            self.dst,
            int(self.type),
            self.pattern,
            self.weight,
            self.layout,
            self.kernel,
            self.const,
            self.config,
        )


@dataclass(frozen=True)
class HiddenSet:
    """Node groups that one hidden permutation acts on together.

    Every group of the set is permuted by the same permutation of `size` entries (its nodes are
    coupled one to one by residual connections, normalizations or query-key pairing).

    Args:
        name: name of the set's first group.
        size: nodes per group.
        groups: indices of the groups.
        parent: index (into the spec's hidden sets) of the set whose nodes own blocks of `block`
            consecutive nodes of this one (attention heads, normalization groups): a permutation
            must move whole blocks with their parent and may reorder nodes inside a block;
            `-1` when the parent is fixed (only moves inside blocks); `None` when free.
        block: nodes per parent node.
    """

    name: str
    size: int
    groups: tuple[int, ...]
    parent: int | None = None
    block: int = 1


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def _member_sides(block: EdgeBlock, groups: Sequence[NodeGroup]) -> tuple[int, int, int]:
    """``(child group, parent group, nodes per parent)`` of a member block."""
    n_src, n_dst = groups[block.src].size, groups[block.dst].size
    if n_src >= n_dst:
        return block.src, block.dst, n_src // n_dst
    return block.dst, block.src, n_dst // n_src


def hidden_sets(groups: Sequence[NodeGroup], blocks: Sequence[EdgeBlock]) -> tuple[HiddenSet, ...]:
    """The permutable sets of a structure, ordered by their first group.

    Groups joined one-to-one (``"diag"`` blocks, and ``"member"`` blocks of equal sizes) form
    one set. A set is fixed (left out) when it holds an input, an output or an embedding group,
    or when it would need two incompatible block structures; a parent is fixed with its child.
    """
    uf = _UnionFind(len(groups))
    for b in blocks:
        if b.pattern == "diag" or (
            b.pattern == "member" and groups[b.src].size == groups[b.dst].size
        ):
            uf.union(b.src, b.dst)
    fixed_roots: set[int] = set()
    for i, g in enumerate(groups):
        if g.role != NodeRole.HIDDEN or g.type == NodeType.EMBEDDING:
            fixed_roots.add(uf.find(i))
    # parent relations between sets; parents of one child with one block size move together
    changed = True
    relations: dict[int, set[tuple[int, int]]] = {}
    while changed:
        changed = False
        relations = {}
        for b in blocks:
            if b.pattern != "member" or groups[b.src].size == groups[b.dst].size:
                continue
            child, owner, per = _member_sides(b, groups)
            relations.setdefault(uf.find(child), set()).add((uf.find(owner), per))
        for rels in relations.values():
            by_size: dict[int, list[int]] = {}
            for owner, per in rels:
                by_size.setdefault(per, []).append(owner)
            for parents in by_size.values():
                for p in parents[1:]:
                    if uf.union(parents[0], p):
                        changed = True
        fixed_roots = {uf.find(r) for r in fixed_roots}
    # a child with two block sizes, or a fixed child, fixes its parents' freedom
    changed = True
    while changed:
        changed = False
        for child, rels in relations.items():
            sizes = {per for _, per in rels}
            if len(sizes) > 1 and child not in fixed_roots:
                fixed_roots.add(child)
                changed = True
            if child in fixed_roots:
                for owner, _ in rels:
                    if owner not in fixed_roots:
                        fixed_roots.add(owner)
                        changed = True
    members: dict[int, list[int]] = {}
    for i in range(len(groups)):
        root = uf.find(i)
        if root not in fixed_roots:
            members.setdefault(root, []).append(i)
    roots = sorted(members, key=lambda r: members[r][0])
    index = {r: k for k, r in enumerate(roots)}
    out = []
    for r in roots:
        idx = members[r]
        parent: int | None = None
        block = 1
        rels = relations.get(r, set())
        if rels:
            (p, per) = next(iter(rels))
            parent = index.get(p, -1)
            block = per
        out.append(HiddenSet(groups[idx[0]].name, groups[idx[0]].size, tuple(idx), parent, block))
    return tuple(out)


def _counts_for_depth(block: EdgeBlock, groups: Sequence[NodeGroup]) -> bool:
    """Whether a block adds a step of depth: query-key pairing and parent -> child membership
    edges are drawn beside their targets, not before them."""
    if block.type == EdgeType.QK:
        return False
    if block.pattern == "member":
        return groups[block.src].size >= groups[block.dst].size
    return True


def node_depths(groups: Sequence[NodeGroup], blocks: Sequence[EdgeBlock]) -> list[int]:
    """Depth of every group (the ``node_layer`` of its nodes): inputs and embeddings at 0, every
    other group one more than its deepest source (longest path)."""
    n = len(groups)
    incoming: list[list[int]] = [[] for _ in range(n)]
    weak: list[list[int]] = [[] for _ in range(n)]
    outgoing: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for b in blocks:
        (incoming if _counts_for_depth(b, groups) else weak)[b.dst].append(b.src)
        outgoing[b.src].append(b.dst)
        indegree[b.dst] += 1
    order = []
    ready = [i for i in range(n) if indegree[i] == 0]
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in outgoing[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if len(order) != n:
        raise AssertionError("internal error: the node groups have a cycle")
    depth = [0] * n
    for i in order:
        sources = incoming[i] or weak[i]
        depth[i] = max((depth[s] + 1 for s in sources), default=0)
    return depth
