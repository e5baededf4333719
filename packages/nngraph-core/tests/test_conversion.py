"""Unit tests of graph construction: layouts, conventions, supported and rejected modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nngraph_core as ngc


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return module


class Siren(nn.Module):
    """The INR benchmark layout: keys seq.{0,1,2}.{weight,bias}, sines applied in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(2, 32), nn.Linear(32, 32), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sin(30 * self.seq[0](x))
        x = torch.sin(30 * self.seq[1](x))
        return self.seq[2](x) + 0.5

    def nngraph_layers(self) -> list[nn.Module]:
        return [self.seq[0], ngc.Sine(30.0), self.seq[1], ngc.Sine(30.0), self.seq[2]]


def test_mlp_layout() -> None:
    mlp = _seeded(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    g = ngc.from_module(mlp)
    assert (g.num_nodes, g.num_edges) == (3 + 4 + 2, 3 * 4 + 4 * 2)
    assert g.node_features.shape == (9, 1) and g.edge_features.shape == (20, 1)
    # Inputs carry 0, the other nodes their bias.
    assert torch.equal(g.node_features[:3, 0], torch.zeros(3))
    assert torch.equal(g.node_features[3:7, 0], mlp[0].bias)
    assert torch.equal(g.node_features[7:, 0], mlp[2].bias)
    # Edge o * n_in + i of a layer joins input i to output o and carries W[o, i].
    w = mlp[0].weight
    for o in range(4):
        for i in range(3):
            e = o * 3 + i
            assert g.edge_index[:, e].tolist() == [i, 3 + o]
            assert g.edge_features[e, 0] == w[o, i]
    assert g.node_role.tolist() == [0] * 3 + [1] * 4 + [2] * 2
    assert g.node_layer.tolist() == [0] * 3 + [1] * 4 + [2] * 2
    names = g.spec.activation_names
    assert [names[i] for i in g.node_activation.tolist()] == ["identity"] * 3 + ["relu"] * 4 + [
        "identity"
    ] * 2


def test_siren_with_custom_layer_order() -> None:
    siren = _seeded(Siren())
    g = ngc.from_module(siren)
    assert (g.num_nodes, g.num_edges) == (67, 1120)
    assert g.spec.param_keys == tuple(siren.state_dict())
    assert g.spec.num_params == 1185
    assert g.spec.layers[0].activation == "sine(w0=30.0)"
    sd = ngc.to_state_dict(g)
    assert all(torch.equal(sd[k], v) for k, v in siren.state_dict().items())


def test_linear_without_bias_and_subclass() -> None:
    class MyLinear(nn.Linear):
        pass

    mlp = _seeded(nn.Sequential(MyLinear(2, 3, bias=False), nn.Tanh(), nn.Linear(3, 1)))
    g = ngc.from_module(mlp)
    assert torch.equal(g.node_features[2:5, 0], torch.zeros(3))
    assert (g.node_param[2:5] == -1).all()
    sd = ngc.to_state_dict(g)
    assert list(sd) == ["0.weight", "2.weight", "2.bias"]


def test_conv_kernels_are_padded_centred() -> None:
    cnn = _seeded(
        nn.Sequential(
            nn.Conv2d(1, 2, 3),
            nn.ReLU(),
            nn.Conv2d(2, 2, (5, 1)),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2, 3),
        )
    )
    g = ngc.from_module(cnn)
    assert g.spec.kernel_shape == (5, 3)
    assert g.edge_features.shape == (1 * 2 + 2 * 2 + 2 * 3, 15)
    k0 = g.edge_features[0].view(5, 3)
    assert torch.equal(k0[1:4, :], cnn[0].weight[0, 0])
    assert k0[0].abs().sum() == 0 and k0[4].abs().sum() == 0
    k1 = g.edge_features[2].view(5, 3)  # first edge of the (5, 1) conv: W[0, 0]
    assert torch.equal(k1[:, 1], cnn[2].weight[0, 0, :, 0])
    assert k1[:, [0, 2]].abs().sum() == 0
    lin = g.edge_features[6].view(5, 3)  # linear weights sit in the centre of the window
    assert lin[2, 1] == cnn[6].weight[0, 0] and lin.abs().sum() == lin[2, 1].abs()


def test_flatten_needs_input_shape_and_carries_spatial_weights() -> None:
    cnn = _seeded(
        nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    )
    with pytest.raises(ngc.ArchitectureError, match="input_shape"):
        ngc.from_module(cnn)
    g = ngc.from_module(cnn, input_shape=(1, 6, 6))
    assert g.spec.layers[1].kernel_size == (4, 4) and g.spec.layers[1].flattened
    assert g.spec.kernel_shape == (4, 4)
    # Edge (channel c -> neuron o) carries W[o, c*16:(c+1)*16] as a 4x4 map.
    w = cnn[3].weight.view(2, 3, 4, 4)
    e = 3 + 1 * 3 + 2  # after 3 conv edges: o=1, c=2
    assert torch.equal(g.edge_features[e].view(4, 4), w[1, 2])
    sd = ngc.to_state_dict(g)
    assert all(torch.equal(sd[k], v) for k, v in cnn.state_dict().items())


def test_flatten_size_read_from_adaptive_pooling() -> None:
    cnn = _seeded(
        nn.Sequential(
            nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(), nn.Linear(12, 1)
        )
    )
    g = ngc.from_module(cnn)
    assert g.spec.layers[1].kernel_size == (2, 3)


def test_permuted_flatten_network_is_the_same_function() -> None:
    cnn = _seeded(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
        )
    )
    spec = ngc.network_spec(cnn, input_shape=(2, 5, 5))
    perm = ngc.random_hidden_permutation(spec, torch.Generator().manual_seed(3))
    other = ngc.permute_hidden(cnn, perm, spec=spec)
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(other(x), cnn(x), rtol=1e-5, atol=1e-6)
    assert not torch.equal(other[0].weight, cnn[0].weight)


@pytest.mark.parametrize(
    ("module", "error", "match"),
    [
        (
            nn.Sequential(nn.Linear(2, 3), nn.PReLU(3), nn.Linear(3, 1)),
            ngc.UnsupportedLayerError,
            "PReLU",
        ),
        (
            nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten()),
            ngc.UnsupportedLayerError,
            "grouped",
        ),
        (
            nn.Sequential(nn.Linear(2, 3), nn.Linear(4, 1)),
            ngc.ArchitectureError,
            "expects 4 features",
        ),
        (
            nn.Sequential(nn.Linear(2, 4), nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 1, 1)),
            ngc.UnsupportedLayerError,
            "Unflatten",
        ),
        (nn.Sequential(nn.ReLU()), ngc.ArchitectureError, "no Linear or Conv2d"),
        (nn.LSTM(2, 3), ngc.UnsupportedLayerError, "LSTM"),
        (
            nn.Sequential(nn.Linear(4, 2), nn.Flatten(), nn.Conv2d(1, 1, 1)),
            ngc.ArchitectureError,
            "Conv2d after a Linear",
        ),
    ],
)
def test_unsupported_modules_raise_typed_errors(
    module: nn.Module, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ngc.from_module(module)
    assert issubclass(error, ngc.NNGraphError)


def test_shared_layer_is_rejected() -> None:
    lin = nn.Linear(3, 3)
    with pytest.raises(ngc.ArchitectureError, match=r"used twice|same tensor"):
        ngc.from_module(nn.Sequential(lin, nn.ReLU(), lin))


def test_nonfinite_weights() -> None:
    mlp = _seeded(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    with torch.no_grad():
        mlp[1].weight[0, 1] = float("nan")
    with pytest.raises(ngc.NonFiniteWeightsError, match="NaN or Inf"):
        ngc.from_module(mlp)
    g = ngc.from_module(mlp, allow_nonfinite=True)
    assert torch.isnan(g.edge_features).sum() == 1
    template = ngc.GraphTemplate(g.spec)
    params = torch.zeros(5, template.num_params)
    params[3, 0] = float("inf")
    with pytest.raises(ngc.NonFiniteWeightsError, match="rows 3"):
        template.batch(params)
    # Huge but finite values whose sum overflows are accepted (the fast check is only a filter).
    big = torch.full((1, template.num_params), 3e38)
    assert template.batch(big).num_graphs == 1


def test_state_dict_errors_name_the_key() -> None:
    mlp = _seeded(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    spec = ngc.network_spec(mlp)
    sd = dict(mlp.state_dict())
    with pytest.raises(ngc.MissingKeyError, match=r"1\.bias"):
        ngc.from_state_dict({k: v for k, v in sd.items() if k != "1.bias"}, spec)
    with pytest.raises(ngc.UnexpectedKeyError, match="extra"):
        ngc.from_state_dict({**sd, "extra": torch.zeros(1)}, spec)
    with pytest.raises(ngc.ShapeMismatchError, match=r"0\.weight.*\(3, 3\)"):
        ngc.from_state_dict({**sd, "0.weight": torch.zeros(3, 3)}, spec)
    with pytest.raises(ngc.ShapeMismatchError, match="dtype"):
        ngc.from_state_dict({**sd, "0.weight": torch.zeros(3, 2, dtype=torch.long)}, spec)
    with pytest.raises(ngc.ShapeMismatchError, match="P=13"):
        ngc.GraphTemplate(spec).batch(torch.zeros(2, 12))


def test_graph_to_dtype_and_permute_nodes() -> None:
    mlp = _seeded(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)))
    g = ngc.from_module(mlp).to(dtype=torch.float64)
    assert g.node_features.dtype == torch.float64 and g.edge_index.dtype == torch.long
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(0))
    relabelled = g.permute_nodes(perm)
    # Relabelling nodes is the same network.
    assert torch.equal(relabelled.params(), g.params())
    with pytest.raises(ngc.ShapeMismatchError):
        g.permute_nodes(torch.zeros(g.num_nodes, dtype=torch.long))


def test_hidden_permutation_validation() -> None:
    mlp = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    spec = ngc.network_spec(mlp)
    with pytest.raises(ngc.ShapeMismatchError, match="not a permutation"):
        ngc.permute_hidden(mlp, ngc.HiddenPermutation.from_lists([[0, 0, 1]]))
    with pytest.raises(ngc.ShapeMismatchError, match="hidden layers"):
        ngc.permute_hidden(mlp, ngc.HiddenPermutation.from_lists([[0, 1, 2], [0, 1]]))
    p = ngc.random_hidden_permutation(spec, torch.Generator().manual_seed(0))
    assert p.compose(p.inverse()).is_identity()


def test_template_unflatten_batched() -> None:
    mlp = _seeded(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)))
    t = ngc.GraphTemplate.from_module(mlp)
    params = torch.stack([t.flatten(mlp), 2 * t.flatten(mlp)])
    sd = t.unflatten(params)
    assert sd["0.weight"].shape == (2, 3, 2)
    assert torch.equal(sd["2.bias"][1], 2 * mlp[2].bias)
    gb = t.batch(params)
    assert gb.dense_nodes().shape == (2, 7, 1) and gb.dense_edges().shape == (2, 12, 1)
    assert torch.equal(gb.batch, torch.tensor([0] * 7 + [1] * 7))
    assert repr(t).startswith("GraphTemplate(nodes=7")
    # Parameter maps of a template batch and of the same graphs batched as a mixed batch agree.
    mixed = ngc.batch(gb.to_graphs())
    assert torch.equal(gb.node_param, mixed.node_param)
    assert torch.equal(gb.edge_param, mixed.edge_param)
    doubled = gb.with_features(2 * gb.node_features, 2 * gb.edge_features)
    assert torch.equal(doubled.params(), 2 * params) and doubled.template is t
    with pytest.raises(ngc.ShapeMismatchError):
        gb.with_features(gb.node_features[:3], gb.edge_features)
    parts = gb.split(1)
    assert [p.num_graphs for p in parts] == [1, 1]
    assert torch.equal(torch.cat([p.params() for p in parts]), params)
    gb.probe_features = torch.arange(14.0).view(14, 1)
    assert torch.equal(gb.split(1)[1].probe_features, torch.arange(7.0, 14.0).view(7, 1))


def test_to_pyg() -> None:
    pyg = pytest.importorskip("torch_geometric")
    mlp = _seeded(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)))
    data = ngc.from_module(mlp).to_pyg()
    assert isinstance(data, pyg.data.Data)
    assert data.num_nodes == 7 and data.edge_attr.shape == (12, 1)
    t = ngc.GraphTemplate.from_module(mlp)
    b = t.batch(torch.stack([t.flatten(mlp)] * 3)).to_pyg()
    assert b.num_graphs == 3 and b.edge_index.shape == (2, 36)


def test_batch_pads_kernels_to_a_requested_shape_and_back() -> None:
    from nngraph_core.batch import batch

    torch.manual_seed(0)
    cnn3 = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3))
    cnn5 = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Tanh(), nn.Conv2d(2, 2, 1))
    graphs = [ngc.from_module(cnn3), ngc.from_module(cnn5)]
    b = batch(graphs, kernel_shape=(7, 7))
    assert b.edge_features.shape[1] == 49
    # every kernel sits centred in the 7x7 window; the way back gives the same tensors
    back = b.to_graphs()
    for g, m in zip(back, (cnn3, cnn5), strict=True):
        sd = ngc.to_state_dict(g)
        for k, v in m.state_dict().items():
            assert torch.equal(sd[k], v)
    centre = b.edge_features[: graphs[0].num_edges].view(-1, 7, 7)
    assert torch.equal(centre[:, 2:5, 2:5].reshape(-1, 9), graphs[0].edge_features)
    border = centre.clone()
    border[:, 2:5, 2:5] = 0
    assert not border.any()
    # without the argument the batch's largest kernel decides
    assert batch(graphs).edge_features.shape[1] == 25
    with pytest.raises(ngc.ShapeMismatchError, match="centre"):
        batch(graphs, kernel_shape=(6, 6))
