"""Traced networks: ResNet-18 and a ViT-style encoder end to end, the graph of every new layer
kind, BatchNorm folding, and the typed errors of unsupported operations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import nngraph_core as ngc
from nngraph_testing import SmallViT, randomize_, resnet18

NT, ET = ngc.NodeType, ngc.EdgeType


def _same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for key in b:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def _symmetry_through_graph(
    module: nn.Module, graph: ngc.NeuralGraph, x: Tensor, seed: int, moved: str
) -> None:
    """A random symmetry applied to the graph, loaded back into the network: same outputs."""
    gen = torch.Generator().manual_seed(seed)
    perm = ngc.random_hidden_permutation(graph.spec, gen)
    while perm.is_identity():
        perm = ngc.random_hidden_permutation(graph.spec, gen)
    other = copy.deepcopy(module)
    other.load_state_dict(ngc.to_state_dict(graph.permute_hidden(perm)))
    with torch.no_grad():
        torch.testing.assert_close(other(x), module(x), rtol=1e-10, atol=1e-10)
    assert not torch.equal(other.state_dict()[moved], module.state_dict()[moved])


# -- the two reference networks ------------------------------------------------------------------


def test_resnet18_roundtrip_and_symmetry() -> None:
    net = randomize_(resnet18(), seed=0, dtype=torch.float64)
    graph = ngc.from_module(net)
    _same_state(ngc.to_state_dict(graph), net.state_dict())
    assert graph.buffers["bn1.num_batches_tracked"].dtype == torch.long
    groups, blocks = graph.spec.structure
    assert sum(b.type == ET.RESIDUAL for b in blocks) == 8  # one add per basic block
    assert sum(g.type == NT.NORM for g in groups) == 20  # bn1, 2 per block, 3 downsample
    assert graph.spec.kernel_shape == (7, 7)  # identity kernels padded like conv1's 7x7
    # One hidden set per stage stream (residual-coupled channels) and per block's inner conv.
    names = [hs.name for hs in graph.spec.hidden_sets]
    assert len(names) == 12 and names[0] == "conv1"
    assert graph.node_role[graph.node_type == NT.INPUT].eq(int(ngc.NodeRole.INPUT)).all()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _symmetry_through_graph(net, graph, x, seed=2, moved="fc.weight")


def test_small_vit_roundtrip_and_symmetry() -> None:
    vit = randomize_(SmallViT(dim=64, depth=2, heads=4, mlp_dim=128), seed=0)
    graph = ngc.from_module(vit, input_shape=vit.input_shape)
    _same_state(ngc.to_state_dict(graph), vit.state_dict())
    groups, _ = graph.spec.structure
    # The class token and every positional-embedding row are fixed embedding input nodes.
    embeddings = {g.name: g.size for g in groups if g.type == NT.EMBEDDING}
    assert embeddings == {"cls_token": 1, "pos_embedding": 17}
    assert sum(g.type == NT.HEAD for g in groups) == 2  # one group of 4 head nodes per block
    heads = [hs for hs in graph.spec.hidden_sets if groups[hs.groups[0]].type == NT.HEAD]
    assert [hs.size for hs in heads] == [4, 4]
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _symmetry_through_graph(vit, graph, x, seed=3, moved="blocks.0.self_attn.in_proj_weight")


# -- graph layout of the new kinds -------------------------------------------------------------------


class _Block(nn.Module):
    """stem conv -> [conv -> BatchNorm] + shortcut -> ReLU -> pool -> linear."""

    def __init__(self, projection: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.conv = nn.Conv2d(2, 3 if projection else 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3 if projection else 2)
        self.proj = nn.Conv2d(2, 3, 1, bias=False) if projection else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3 if projection else 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        shortcut = x if self.proj is None else self.proj(x)
        y = torch.relu(self.bn(self.conv(x)) + shortcut)
        return self.fc(torch.flatten(self.pool(y), 1))


def test_residual_and_batchnorm_layout() -> None:
    block = randomize_(_Block(projection=True), seed=0)
    g = ngc.from_module(block, input_shape=(1, 5, 5))
    groups, _ = g.spec.structure
    # stem, projection (computed first in forward), conv, BatchNorm, linear
    kinds = [NT.INPUT, NT.CONV, NT.CONV, NT.CONV, NT.NORM, NT.LINEAR]
    assert [grp.type for grp in groups] == kinds
    assert g.spec.node_dim == 3
    # BatchNorm nodes carry (shift, running mean, running variance); the scale is on the edge
    # from the conv channel to its normalised copy.
    bn = block.bn
    norm_nodes = (g.node_type == NT.NORM).nonzero().flatten()
    assert torch.equal(g.node_features[norm_nodes, 0], bn.bias)
    assert torch.equal(g.node_features[norm_nodes, 1], bn.running_mean)
    assert torch.equal(g.node_features[norm_nodes, 2], bn.running_var)
    assert g.spec.groups[4].activation == "relu+adaptiveavgpool2d(output_size=1)"
    centre = 4  # 3x3 window
    scale = g.edge_features[g.edge_type == ET.NORM]
    assert torch.equal(scale[:, centre], bn.weight) and scale.count_nonzero() == 3
    # The projection's channels join the normalised channels by identity kernels (no parameter).
    res = (g.edge_type == ET.RESIDUAL).nonzero().flatten()
    assert torch.equal(g.edge_features[res], torch.eye(9, dtype=torch.float64)[[centre] * 3])
    assert bool((g.edge_param[res] < 0).all())
    # The add lands on the normalised channels (computed last): projection channel i -> i.
    src, dst = g.edge_index[:, res]
    assert torch.equal(g.node_type[src], torch.full((3,), int(NT.CONV)))
    assert torch.equal(g.node_type[dst], torch.full((3,), int(NT.NORM)))
    offsets = ngc.GraphTemplate(g.spec).node_offsets
    assert torch.equal(dst - offsets[4], src - offsets[2])
    # The residual couples the projection, the conv and its BatchNorm into one hidden set.
    assert [set(hs.groups) for hs in g.spec.hidden_sets] == [{1}, {2, 3, 4}]
    _same_state(ngc.to_state_dict(g), block.state_dict())


def test_identity_shortcut_couples_block_input_and_output() -> None:
    block = randomize_(_Block(projection=False), seed=0)
    g = ngc.from_module(block, input_shape=(1, 5, 5))
    # stem channels (the block input) and the normalised channels the add lands on: one set
    assert [set(hs.groups) for hs in g.spec.hidden_sets] == [{1, 2, 3}]
    res = g.edge_index[:, g.edge_type == ET.RESIDUAL]
    assert torch.equal(g.node_type[res[0]], torch.full((2,), int(NT.CONV)))
    assert torch.equal(g.node_type[res[1]], torch.full((2,), int(NT.NORM)))
    x = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    _symmetry_through_graph(block, g, x, seed=0, moved="stem.weight")


def test_selecting_channels_is_rejected() -> None:
    class Slice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(2, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x)[:, :2])

    with pytest.raises(ngc.UnsupportedOperationError, match="selects the channels"):
        ngc.from_module(Slice())


def test_attention_layout() -> None:
    attn = nn.MultiheadAttention(6, 2, batch_first=True).double()
    randomize_(attn, seed=0)
    g = ngc.from_module(attn)
    groups, _ = g.spec.structure
    kinds = [grp.type for grp in groups]
    assert kinds == [NT.INPUT, NT.QUERY, NT.KEY, NT.VALUE, NT.HEAD, NT.LINEAR]
    count = {t: int((g.edge_type == t).sum()) for t in ET}
    assert count[ET.QUERY] == count[ET.KEY] == count[ET.VALUE] == 36
    assert count[ET.QK] == 6 and count[ET.HEAD] == 18 and count[ET.LINEAR] == 36
    # query / key / value edges carry the rows of in_proj_weight, value nodes its bias
    w = attn.in_proj_weight
    e_q = (g.edge_type == ET.QUERY).nonzero().flatten()
    assert torch.equal(g.edge_features[e_q, 0], w[:6].flatten())
    assert torch.equal(g.node_features[g.node_type == NT.VALUE, 0], attn.in_proj_bias[12:])
    # heads own blocks of 3 dimensions; queries and keys are one set, values another
    sets = g.spec.hidden_sets
    head = next(k for k, hs in enumerate(sets) if groups[hs.groups[0]].type == NT.HEAD)
    owned = [hs for hs in sets if hs.parent == head]
    assert sorted(len(hs.groups) for hs in owned) == [1, 2] and all(hs.block == 3 for hs in owned)
    _same_state(ngc.to_state_dict(g), attn.state_dict())


def test_layer_norm_and_group_norm_layout() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
        nn.LayerNorm(3),
        nn.Linear(3, 2),
    ).double()
    randomize_(net, seed=0)
    g = ngc.from_module(net)
    groups, _ = g.spec.structure
    stats = [grp for grp in groups if grp.type == NT.NORM_GROUP]
    assert [s.size for s in stats] == [2, 1]
    assert g.spec.node_dim == 1  # no running statistics
    # GroupNorm: channels are owned by their group's statistics node, in blocks of 2
    sets = g.spec.hidden_sets
    conv_set = next(hs for hs in sets if 1 in hs.groups)
    assert conv_set.block == 2 and conv_set.parent is not None
    with pytest.raises(ngc.ShapeMismatchError, match="blocks"):
        perms = [torch.arange(hs.size) for hs in sets]
        perms[sets.index(conv_set)] = torch.tensor([0, 2, 1, 3])
        ngc.HiddenPermutation(tuple(perms)).check(g.spec)
    _same_state(ngc.to_state_dict(g), net.state_dict())


def test_template_batch_of_traced_networks() -> None:
    nets = [randomize_(SmallViT(dim=8, depth=1, heads=2, mlp_dim=4), seed=s) for s in range(3)]
    template = ngc.GraphTemplate.from_module(nets[0], input_shape=nets[0].input_shape)
    params = torch.stack([template.flatten(n) for n in nets])
    batch = template.batch(params)
    assert torch.equal(batch.params(), params)
    assert batch.edge_type.shape == (3 * template.num_edges,)
    for net, graph in zip(nets, batch.to_graphs()):
        state = template.state_dict(graph.params(), net.state_dict())
        _same_state(state, net.state_dict())


def test_batchnorm_counter_is_a_buffer_not_a_feature() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    randomize_(net, seed=0)
    g = ngc.from_module(net)
    assert g.spec.buffers == (("1.num_batches_tracked", (), torch.long),)
    assert "1.num_batches_tracked" not in g.spec.param_keys
    assert torch.equal(g.buffers["1.num_batches_tracked"], net[1].num_batches_tracked)
    _same_state(ngc.to_state_dict(g), net.state_dict())
    # A graph built from flat parameters alone gets the counter's initial value (0).
    bare = ngc.GraphTemplate(g.spec).graph(g.params())
    assert int(ngc.to_state_dict(bare)["1.num_batches_tracked"]) == 0


# -- tracing reads what Sequential reads -------------------------------------------------------------------


class _FunctionalMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_traced_chain_gets_a_layer_spec() -> None:
    net = randomize_(_FunctionalMLP(), seed=0)
    traced = ngc.from_module(net)
    assert traced.spec.is_chain and traced.spec.widths == (3, 4, 2)
    assert traced.spec.layers[0].activation == "tanh"
    ref = ngc.from_module(nn.Sequential(net.a, nn.Tanh(), net.b))
    assert torch.equal(traced.node_features, ref.node_features)
    assert torch.equal(traced.edge_features, ref.edge_features)
    assert torch.equal(traced.edge_index, ref.edge_index)
    # and the recorded operation runs
    x = torch.randn(5, 3, dtype=torch.float64)
    op = traced.spec.layers[0].ops_after[0]
    assert torch.equal(op(x), torch.tanh(x))


# -- folding ------------------------------------------------------------------------------------------


def test_fold_batchnorm_preserves_function() -> None:
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3),
        nn.ReLU(),
        nn.BatchNorm2d(3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )
    randomize_(net, seed=0)
    folded = ngc.fold_batchnorm(net)
    x = torch.randn(4, 2, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-12, atol=1e-12)
    keys = list(folded.state_dict())
    assert "0.bias" in keys and not any(k.startswith("1.") for k in keys)
    assert any(k.startswith("5.") for k in keys)  # BatchNorm after an activation stays
    g = ngc.from_module(net, fold_batchnorm=True)
    assert int((g.node_type == NT.NORM).sum()) == 3
    _same_state(ngc.to_state_dict(g), folded.state_dict())
    assert isinstance(net[1], nn.BatchNorm2d)  # the original is untouched


def test_fold_batchnorm_resnet18_preserves_function() -> None:
    net = randomize_(resnet18(num_classes=10), seed=0)
    folded = ngc.fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-10, atol=1e-10)


# -- unsupported operations ----------------------------------------------------------------------------


class _Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.g = nn.Linear(3, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.a(x) * torch.sigmoid(self.g(x)))


class _Outer(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.block = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class _Matmul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return torch.matmul(h, h.transpose(-1, -2))


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.rnn = nn.LSTM(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(self.embed(x))[0]


class _ChannelCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3)
        self.b = nn.Conv2d(1, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return self.a(x)
        return -self.a(x)


@pytest.mark.parametrize(
    ("module", "op", "where"),
    [
        (_Gate(), "operator.mul", "_Gate.forward"),
        (_Outer(_Gate()), "operator.mul", "block"),
        (_Matmul(), "torch.matmul", "_Matmul.forward"),
        (_Recurrent(), "LSTM 'rnn'", "rnn"),
        (_ChannelCat(), "torch.cat", "_ChannelCat.forward"),
        (_Branchy(), "forward", "_Branchy"),
    ],
    ids=["gate", "nested-gate", "matmul", "lstm", "channel-cat", "control-flow"],
)
def test_unsupported_operation_names_op_and_module(module: nn.Module, op: str, where: str) -> None:
    with pytest.raises(ngc.UnsupportedOperationError) as info:
        ngc.from_module(
            module, input_shape=(3,) if not isinstance(module, _ChannelCat) else (1, 6, 6)
        )
    assert info.value.op == op and info.value.where == where
    assert op in str(info.value) and where in str(info.value)
    assert isinstance(info.value, ngc.UnsupportedLayerError)


def test_shared_layer_in_traced_forward_is_rejected() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.a(torch.tanh(self.a(x)))

    with pytest.raises(ngc.ArchitectureError, match="used twice"):
        ngc.from_module(Twice())
