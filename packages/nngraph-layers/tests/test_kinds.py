"""Activation kinds and the encoders' kind embeddings (activation, node type, edge type)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nngraph_core as ngc
from nngraph_core.batch import batch as batch_graphs
from nngraph_layers import (
    ACTIVATION_KINDS,
    NGGNN,
    NGTransformer,
    activation_kind,
    node_activation_kind,
)
from nngraph_layers.baselines import StatNN


def _cnn(act: type[nn.Module]) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), act(), nn.Conv2d(4, 5, 3, stride=2), act(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("relu", "relu"),
        ("tanh", "tanh"),
        ("sine(w0=30.0)", "sine"),
        ("maxpool2d(kernel_size=2)+relu", "relu"),
        ("relu+adaptiveavgpool2d(output_size=1)", "relu"),
        ("adaptiveavgpool2d(output_size=1)", "identity"),
        ("identity", "identity"),
        ("gelu(approximate='none')", "gelu"),
        ("hardswish", "other"),
        ("relu(inplace=False)+mean(dim=(2, 3), keepdim=False)", "relu"),
        ("mean(dim=(2, 3), keepdim=False)", "identity"),
    ],
)
def test_activation_kind_names(name: str, kind: str) -> None:
    assert ACTIVATION_KINDS[activation_kind(name)] == kind


def _variants() -> tuple[ngc.GraphTemplate, ngc.GraphTemplate, torch.Tensor]:
    relu, tanh = (
        ngc.GraphTemplate.from_module(_cnn(nn.ReLU)),
        ngc.GraphTemplate.from_module(_cnn(nn.Tanh)),
    )
    torch.manual_seed(0)
    params = torch.randn(4, relu.num_params, dtype=torch.float64)
    return relu, tanh, params


def test_template_batch_with_variant_specs_reads_each_graphs_activation() -> None:
    relu, tanh, params = _variants()
    order = [relu, tanh, tanh, relu]
    tb = relu.batch(params).with_specs([t.spec for t in order])
    mixed = batch_graphs([t.graph(p) for t, p in zip(order, params, strict=True)])
    kinds = node_activation_kind(tb)
    assert torch.equal(kinds, node_activation_kind(mixed))
    per_graph = kinds.view(4, -1)
    hidden = relu.node_role == int(ngc.NodeRole.HIDDEN)
    assert set(per_graph[0, hidden].tolist()) == {ACTIVATION_KINDS.index("relu")}
    assert set(per_graph[1, hidden].tolist()) == {ACTIVATION_KINDS.index("tanh")}
    # inputs and the linear outputs have no nonlinearity
    assert set(per_graph[:, ~hidden].flatten().tolist()) == {ACTIVATION_KINDS.index("identity")}


def test_with_specs_rejects_a_wrong_count_or_layout() -> None:
    relu, tanh, params = _variants()
    tb = relu.batch(params)
    with pytest.raises(ngc.ShapeMismatchError, match="one spec per graph"):
        tb.with_specs([tanh.spec] * 3)
    other = ngc.GraphTemplate.from_module(
        nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    )
    with pytest.raises(ngc.ShapeMismatchError, match="does not lay out"):
        tb.with_specs([other.spec] * 4)


@pytest.mark.parametrize("model_cls", [NGGNN, NGTransformer])
def test_kind_embeddings_fast_path_equals_mixed_batch_and_see_the_activation(
    model_cls: type[nn.Module],
) -> None:
    relu, tanh, params = _variants()
    order = [relu, tanh, tanh, relu]
    torch.manual_seed(1)
    model = model_cls.for_graphs(relu, 2, kind_embeddings=True, dropout=0.0).double().eval()  # type: ignore[attr-defined]
    tb = relu.batch(params).with_specs([t.spec for t in order])
    mixed = batch_graphs([t.graph(p) for t, p in zip(order, params, strict=True)])
    out_fast, out_mixed = model(tb), model(mixed)
    torch.testing.assert_close(out_fast, out_mixed, rtol=1e-10, atol=1e-10)
    # the same weights read as relu or as tanh networks give different outputs
    as_relu = model(relu.batch(params))
    assert not torch.allclose(out_fast[1:3], as_relu[1:3], atol=1e-6)
    torch.testing.assert_close(out_fast[[0, 3]], as_relu[[0, 3]], rtol=1e-10, atol=1e-10)


def test_without_kind_embeddings_the_activation_is_not_seen() -> None:
    relu, tanh, params = _variants()
    model = NGGNN.for_graphs(relu, 2, dropout=0.0).double().eval()
    tb = relu.batch(params)
    torch.testing.assert_close(model(tb.with_specs([tanh.spec] * 4)), model(tb))


def test_statnn_kind_features_one_hot_of_the_activation() -> None:
    relu, tanh, params = _variants()
    torch.manual_seed(2)
    model = StatNN.for_graphs(relu, 1, kind_features=True).double().eval()
    tb = relu.batch(params)
    mixed = tb.with_specs([relu.spec, tanh.spec, relu.spec, tanh.spec])
    out = model(mixed)
    torch.testing.assert_close(out[0], model(tb)[0])
    assert not torch.allclose(out[1], model(tb)[1])
    plain = StatNN.for_graphs(relu, 1).double()
    assert plain.mlp[0].in_features + len(ACTIVATION_KINDS) == model.mlp[0].in_features
