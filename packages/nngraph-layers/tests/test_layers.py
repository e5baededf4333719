"""Layer-level tests: edge-order invariance, fast == sparse, encoders, positional embeddings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import nngraph_core as ngc
from nngraph_layers import (
    NGGNN,
    EdgePNAConv,
    InvariantHead,
    PositionalEmbedding,
    ProbeProjection,
    WeightNormalizer,
    dense_edges,
    sparse_edges,
)
from nngraph_testing import STRUCTURAL_PROBE_DIM as PROBE_DIM
from nngraph_testing import assert_close_by_dtype, network_recipes, seeds
from nngraph_testing import batch_with_structural_probes as batch_with_probes

DTYPES = st.sampled_from([torch.float32, torch.float64])
RECIPES = st.one_of(
    network_recipes("mlp", max_width=5, max_layers=3, min_layers=2),
    network_recipes("cnn", max_channels=4, max_conv=2, max_linear=1, max_kernel=3),
)


def _setup(recipe, seed: int, dtype: torch.dtype, b: int = 3) -> tuple[ngc.GraphTemplate, Tensor]:  # type: ignore[no-untyped-def]
    nets = [recipe.build(seed + i, torch.float64) for i in range(b)]
    template = ngc.GraphTemplate.from_module(nets[0], input_shape=recipe.input_shape)
    return template, torch.stack([template.flatten(m) for m in nets]).to(dtype)


@given(
    num_nodes=st.integers(2, 12),
    num_edges=st.integers(1, 40),
    seed=seeds,
    dtype=DTYPES,
    scalers=st.sampled_from([("identity",), ("identity", "amplification", "attenuation")]),
)
def test_edge_pna_is_edge_order_invariant(
    num_nodes: int, num_edges: int, seed: int, dtype: torch.dtype, scalers: tuple[str, ...]
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, 6, generator=g, dtype=dtype)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    e = torch.randn(num_edges, 5, generator=g, dtype=dtype)
    perm = torch.randperm(num_edges, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv = EdgePNAConv(6, 5, scalers=scalers, avg_log_deg=1.3).to(dtype).eval()
    with torch.no_grad():
        x1, e1 = conv(x, edge_index, e)
        x2, e2 = conv(x, edge_index[:, perm], e[perm])
    assert_close_by_dtype(x2, x1, "node outputs depend on the edge order")
    assert_close_by_dtype(e2, e1[perm], "edge outputs do not follow the edge order")


@given(recipe=RECIPES, seed=seeds, dtype=DTYPES)
def test_edge_pna_dense_equals_sparse(recipe, seed: int, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    """The fast path computes the same layer as PyG message passing on the bidirectional graph."""
    template, _ = _setup(recipe, seed, dtype, b=1)
    b, n, d, de = 2, template.num_nodes, 6, 5
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=dtype)
    e_fwd = torch.randn(b, template.num_edges, de, generator=g, dtype=dtype)
    e_bwd = torch.randn(b, template.num_edges, de, generator=g, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv = EdgePNAConv(d, de, scalers=("identity", "amplification", "attenuation")).to(dtype)
    batch = template.batch(torch.zeros(b, template.num_params, dtype=dtype))
    ei = batch.edge_index
    with torch.no_grad():
        xs, es = conv(
            x.reshape(b * n, d),
            torch.cat([ei, ei.flip(0)], dim=1),
            torch.cat([e_fwd.reshape(-1, de), e_bwd.reshape(-1, de)]),
        )
        xd, ed = conv.forward_dense(x, dense_edges(e_fwd, e_bwd, template), template.spec.widths)
    fwd, bwd = sparse_edges(ed)
    assert_close_by_dtype(xd.reshape(b * n, d), xs, "dense and sparse node outputs differ")
    assert_close_by_dtype(torch.cat([fwd.reshape(-1, de), bwd.reshape(-1, de)]), es)


@settings(max_examples=50)
@given(
    recipe=RECIPES,
    seed=seeds,
    dtype=DTYPES,
    head=st.sampled_from(["invariant", "equivariant"]),
    probes=st.booleans(),
)
def test_ngnn_fast_sparse_and_mixed_agree(  # type: ignore[no-untyped-def]
    recipe, seed: int, dtype: torch.dtype, head: str, probes: bool
) -> None:
    """Same weights, same input: fast path == sparse path == a mixed (template-less) batch."""
    template, params = _setup(recipe, seed, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NGGNN.for_graphs(
            template, num_outputs=3, head=head, hidden_channels=8, num_layers=2,
            num_frequencies=8, use_probes=probes, probe_dim=PROBE_DIM, chunk_size=2,
        ).to(dtype).eval()  # fmt: skip
    model.fit_normalizer(template, params)
    batch = batch_with_probes(template, params)
    mixed = ngc.batch(batch.to_graphs())
    mixed.probe_features = batch.probe_features
    with torch.no_grad():
        model.fast = True
        fast = model(batch)  # 3 graphs in chunks of 2
        model.chunk_size = None
        whole = model(batch)
        model.fast = False
        sparse = model(batch)
        out_mixed = model(mixed)
    if isinstance(out_mixed, ngc.GraphBatch):
        out_mixed = torch.stack(
            [template.flatten(g.to_state_dict()) for g in out_mixed.to_graphs()]
        )
    assert_close_by_dtype(fast, whole, "chunked and whole-batch fast paths differ")
    assert_close_by_dtype(fast, sparse, "fast and sparse paths differ")
    assert_close_by_dtype(out_mixed, sparse, "template and mixed batches differ")


@given(recipe=RECIPES, seed=seeds)
def test_normalizer_statistics(recipe, seed: int) -> None:  # type: ignore[no-untyped-def]
    template, params = _setup(recipe, seed, torch.float64, b=4)
    norm = WeightNormalizer.fit(template, params).double()
    sd = template.unflatten(params)
    for k, layer in enumerate(template.spec.layers):
        w = sd[layer.weight_key]
        torch.testing.assert_close(norm.weight_mean[k], w.mean())
        if w.numel() > 1 and w.std(unbiased=False) > 1e-8:
            torch.testing.assert_close(norm.weight_std[k], w.std(unbiased=False))
    nodes, edges = norm(template.batch(params))
    # Normalised real weights of each layer have mean 0 (std 1 where the layer varies).
    e3 = edges.view(4, template.num_edges, -1)
    valid = template.edge_param >= 0
    for k in range(template.spec.num_layers):
        vals = e3[:, template.layer_edges(k)][:, valid[template.layer_edges(k)]]
        torch.testing.assert_close(vals.mean(), torch.tensor(0.0, dtype=torch.float64))
    # Padding and input nodes stay zero.
    assert torch.all(e3[:, ~valid] == 0)
    n3 = nodes.view(4, template.num_nodes)
    assert torch.all(n3[:, template.node_param < 0] == 0)


@given(recipe=RECIPES, seed=seeds, data=st.data())
def test_normalizer_commutes_with_permutations(recipe, seed: int, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    from nngraph_testing import hidden_permutations

    template, params = _setup(recipe, seed, torch.float64)
    perm = data.draw(hidden_permutations(template.spec))
    norm = WeightNormalizer.fit(template, params).double()
    n1, e1 = norm(template.batch(params))
    n2, e2 = norm(template.batch(template.permute(params, perm)))
    expected = template.permute(template.params(n1, e1), perm)
    torch.testing.assert_close(template.params(n2, e2), expected)


def test_unfitted_normalizer_is_identity() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    template = ngc.GraphTemplate.from_module(mlp)
    batch = template.batch(template.flatten(mlp).unsqueeze(0))
    nodes, edges = WeightNormalizer()(batch)
    assert nodes is batch.node_features and edges is batch.edge_features


@given(recipe=RECIPES, seed=seeds)
def test_positional_embedding_identities(recipe, seed: int) -> None:  # type: ignore[no-untyped-def]
    template, params = _setup(recipe, seed, torch.float64, b=2)
    pos = PositionalEmbedding.for_template(template, 4).double()
    table = pos(template.batch(params))  # [N, d]
    widths = template.spec.widths
    inputs, outputs = table[template.layer_nodes(0)], table[template.layer_nodes(len(widths) - 1)]
    # Every input and output neuron has its own vector; hidden neurons share their layer's.
    assert torch.unique(inputs, dim=0).shape[0] == widths[0]
    assert torch.unique(outputs, dim=0).shape[0] == widths[-1]
    for layer in range(1, len(widths) - 1):
        hidden = table[template.layer_nodes(layer)]
        assert torch.equal(hidden, hidden[:1].expand_as(hidden))
    # A mixed batch of the same graphs gets the same embeddings.
    mixed = pos(ngc.batch(template.batch(params).to_graphs()))
    torch.testing.assert_close(mixed, table.repeat(2, 1))


@given(recipe=RECIPES, seed=seeds)
def test_probe_projection_template_equals_mixed(recipe, seed: int) -> None:  # type: ignore[no-untyped-def]
    template, params = _setup(recipe, seed, torch.float64)
    proj = ProbeProjection(template.spec.num_layers + 1, PROBE_DIM, 5).double()
    batch = batch_with_probes(template, params)
    mixed = ngc.batch(batch.to_graphs())
    assert batch.probe_features is not None
    torch.testing.assert_close(proj(batch.probe_features, mixed), proj(batch.probe_features, batch))


def test_invariant_head_pooling_options_agree_on_mixed_batches() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    template = ngc.GraphTemplate.from_module(mlp)
    params = torch.randn(3, template.num_params, generator=torch.Generator().manual_seed(0))
    batch = template.batch(params)
    mixed = ngc.batch(batch.to_graphs())
    x = torch.randn(batch.num_nodes, 5, generator=torch.Generator().manual_seed(1))
    for pooling in ("cat", "mean", "sum", "max", "layers"):
        head = InvariantHead(5, 3, 2, pooling=pooling, num_node_layers=3)  # type: ignore[arg-type]
        torch.testing.assert_close(head(x, mixed), head(x, batch))


def test_layers_readout_reads_layer_means_and_outputs() -> None:
    """`pooling="layers"`: the MLP's input is [mean of each node layer, output nodes] (checked
    against the formula), it is invariant to a hidden permutation of the node features and a
    batch of another depth is refused by name."""
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    template = ngc.GraphTemplate.from_module(mlp)
    batch = template.batch(torch.randn(3, template.num_params))
    x = torch.randn(batch.num_nodes, 5, dtype=torch.float64)
    head = InvariantHead(5, 3, 2, pooling="layers", num_node_layers=3).double()
    seen: list[Tensor] = []
    head.mlp.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    out = head(x, batch)
    dense = x.view(3, template.num_nodes, 5)
    means = [dense[:, template.layer_nodes(layer)].mean(1) for layer in range(3)]
    outputs = dense[:, template.layer_nodes(2)].reshape(3, -1)
    torch.testing.assert_close(seen[0], torch.cat([*means, outputs], -1))
    hidden = template.layer_nodes(1)
    perm = torch.arange(template.num_nodes)
    perm[hidden] = perm[hidden][torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(head(dense[:, perm].reshape(-1, 5), batch), out)
    deeper = ngc.GraphTemplate.from_module(
        torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4),
                            torch.nn.Tanh(), torch.nn.Linear(4, 2))
    )  # fmt: skip
    other = deeper.batch(torch.randn(1, deeper.num_params))
    for b in (other, ngc.batch([*batch.to_graphs(), *other.to_graphs()])):
        with pytest.raises(ngc.ShapeMismatchError, match="3 node layers"):
            head(torch.randn(b.num_nodes, 5, dtype=torch.float64), b)
    with pytest.raises(ValueError, match="num_node_layers"):
        InvariantHead(5, 3, 2, pooling="layers")


def test_equivariant_head_starts_near_identity() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    template = ngc.GraphTemplate.from_module(mlp)
    params = torch.randn(2, template.num_params, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = NGGNN.for_graphs(template, head="equivariant", hidden_channels=8, num_layers=1)
    with torch.no_grad():
        model.head.bias_scale.zero_()  # type: ignore[union-attr]
        model.head.weight_scale.zero_()  # type: ignore[union-attr]
        out = model(template.batch(params))
    assert isinstance(out, Tensor)
    assert torch.equal(out, params)


def test_fourier_features_recompute_their_features_in_the_backward() -> None:
    """The features are not saved: values and gradients (input and both linear parameters)
    equal the plain formula, and gradcheck holds in float64."""
    import math

    from nngraph_layers.encoders import FourierFeatures, _FourierLinear

    torch.manual_seed(0)
    ff = FourierFeatures(3, 5, num_frequencies=4, sigma=2.0).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    out = ff(x)
    proj = 2 * math.pi * (x @ ff.frequencies)
    plain = ff.lin(torch.cat([proj.sin(), proj.cos()], dim=-1))
    torch.testing.assert_close(out, plain)
    w = torch.randn_like(out)
    params = (x, ff.lin.weight, ff.lin.bias)
    for a, b in zip(
        torch.autograd.grad((out * w).sum(), params),
        torch.autograd.grad((plain * w).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda x, wt, b: _FourierLinear.apply(x, ff.frequencies, wt, b), params
    )
