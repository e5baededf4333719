"""NG-T layers alone and its execution paths: edge-order invariance of the general path, block
path == general path (float32 and float64), dense tensors == dense pair lists, mixed batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_ngt_properties import TINY
from torch import Tensor

import nngraph_core as ngc
from nngraph_layers.ngt import NGTransformer, dense_pairs, sparse_pairs
from nngraph_layers.relational_attention import BlockLayout, RelationalAttention
from nngraph_layers.rt_layer import RTLayer
from nngraph_testing import assert_close_by_dtype, network_recipes, seeds

SMALL_LAYER = {"node_dim": 8, "edge_dim": 4, "attention_dim": 8, "node_hidden_dim": 8}
SMALL_LAYER |= {"edge_hidden_dim": 8, "heads": 2}
recipes = st.one_of(
    network_recipes("mlp", max_width=5, max_layers=3),
    network_recipes("cnn", max_channels=4, max_conv=2, max_linear=1, max_kernel=3),
)
dtypes = st.sampled_from([torch.float32, torch.float64])


def _template_and_params(recipe, seed: int, dtype: torch.dtype, b: int = 2):  # type: ignore[no-untyped-def]
    nets = [recipe.build(seed + i, torch.float64) for i in range(b)]
    template = ngc.GraphTemplate.from_module(nets[0], input_shape=recipe.input_shape)
    params = torch.stack([template.flatten(m) for m in nets]).to(dtype)
    return template, params


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _layer(seed: int, dtype: torch.dtype, **kwargs: object) -> RTLayer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RTLayer(**{**SMALL_LAYER, **kwargs}).to(dtype).eval()  # type: ignore[arg-type]


# -- the general path is edge-order invariant -------------------------------------------------------
@given(recipe=recipes, seed=seeds, dtype=dtypes, dense=st.booleans(), data=st.data())
def test_layer_general_path_is_edge_order_invariant(recipe, seed, dtype, dense, data) -> None:  # type: ignore[no-untyped-def]
    template, params = _template_and_params(recipe, seed, dtype)
    batch = template.batch(params)
    if dense:
        pair_index, reverse, _ = dense_pairs(batch)
    else:
        pair_index, reverse = sparse_pairs(batch.edge_index)
    m = reverse.numel()
    gen = torch.Generator().manual_seed(seed)
    x = _randn(gen, batch.num_nodes, 8, dtype=dtype)
    e = _randn(gen, m, 4, dtype=dtype)
    order = torch.tensor(data.draw(st.permutations(range(m)), label="pair order"))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(m)
    layer = _layer(seed, dtype)
    with torch.no_grad():
        x_out, e_out = layer(x, e, pair_index, reverse)
        # pair order[p] moves to position p; its reverse moves to inverse[reverse[order[p]]]
        x_p, e_p = layer(x, e[order], pair_index[:, order], inverse[reverse[order]])
        att = layer.attention(x, e, pair_index)
        att_p = layer.attention(x, e[order], pair_index[:, order])
    assert_close_by_dtype(x_p, x_out, "RTLayer nodes depend on the pair order")
    assert_close_by_dtype(e_p, e_out[order], "RTLayer pairs do not follow the pair order")
    assert_close_by_dtype(att_p, att, "RelationalAttention depends on the pair order")


# -- block path == general path ---------------------------------------------------------------------
@given(recipe=recipes, seed=seeds, dtype=dtypes, data=st.data())
def test_layer_block_path_matches_general_path(recipe, seed, dtype, data) -> None:  # type: ignore[no-untyped-def]
    template, params = _template_and_params(recipe, seed, dtype)
    b, n, widths = params.shape[0], template.num_nodes, tuple(template.spec.widths)
    layout = BlockLayout(widths)
    assert (layout.num_nodes, layout.num_edges) == (n, template.num_edges)
    gen = torch.Generator().manual_seed(seed)
    x = _randn(gen, b, n, 8, dtype=dtype)
    blocks = [
        _randn(gen, b, 2, widths[i + 1], widths[i], 4, dtype=dtype) for i in range(len(widths) - 1)
    ]
    layer = _layer(
        seed,
        dtype,
        update_edges=data.draw(st.booleans(), label="update_edges"),
        modulate_values=data.draw(st.booleans(), label="modulate_values"),
    )

    def to_pairs(blks: list[Tensor]) -> Tensor:
        fwd = torch.cat([blk[:, 0].flatten(1, 2) for blk in blks], 1).reshape(-1, 4)
        rev = torch.cat([blk[:, 1].flatten(1, 2) for blk in blks], 1).reshape(-1, 4)
        return torch.cat([fwd, rev])

    pair_index, reverse = sparse_pairs(template.batch(params).edge_index)
    with torch.no_grad():
        x_b, e_b = layer.forward_blocks(x, blocks, layout)
        x_g, e_g = layer(x.reshape(b * n, 8), to_pairs(blocks), pair_index, reverse)
    assert_close_by_dtype(x_b.reshape(b * n, 8), x_g, "block path != general path (nodes)")
    assert_close_by_dtype(to_pairs(e_b), e_g, "block path != general path (edges)")


@given(
    recipe=recipes,
    seed=seeds,
    dtype=dtypes,
    attention=st.sampled_from(["sparse", "dense"]),
    head=st.sampled_from(["invariant", "invariant-layers", "equivariant"]),
)
def test_model_fast_path_matches_general_path(recipe, seed, dtype, attention, head) -> None:  # type: ignore[no-untyped-def]
    """Sparse: blocks == pair lists; dense: ``[B, N, N, d]`` tensors == all-pairs lists (also
    with the per-layer readout)."""
    template, params = _template_and_params(recipe, seed, dtype)
    pooling = {"pooling": "layers"} if head == "invariant-layers" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NGTransformer.for_graphs(
            template,
            num_outputs=3,
            attention=attention,
            head=head.split("-")[0],
            **pooling,
            **TINY,
        ).to(dtype)
    model.eval()
    with torch.no_grad():
        fast = model(template.batch(params))
        model.fast_path = False
        general = model(template.batch(params))
    assert isinstance(fast, Tensor) and isinstance(general, Tensor)
    assert_close_by_dtype(fast, general, f"{attention} fast path != general path", scale=10.0)


# -- mixed batches --------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["cat", "layers"])
@pytest.mark.parametrize("attention", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_batch_matches_per_architecture(
    attention: str, dtype: torch.dtype, pooling: str
) -> None:
    torch.manual_seed(0)
    nets = [
        torch.nn.Sequential(torch.nn.Linear(2, w), torch.nn.Tanh(), torch.nn.Linear(w, 3))
        for w in (4, 6, 5)
    ]
    graphs = [ngc.from_module(net.to(dtype)) for net in nets]
    model = NGTransformer.for_graphs(
        graphs[0], num_outputs=2, attention=attention, pooling=pooling, **TINY
    )
    model = model.to(dtype).eval()
    with torch.no_grad():
        mixed = model(ngc.batch(graphs))
        alone = torch.cat([model(ngc.batch([g])) for g in graphs])
        templated = torch.cat(
            [
                model(
                    ngc.GraphTemplate.from_module(net).batch(
                        ngc.GraphTemplate.from_module(net).flatten(net)[None]
                    )
                )
                for net in nets
            ]
        )
    assert isinstance(mixed, Tensor)
    assert_close_by_dtype(mixed, alone, "a mixed batch changes each graph's output")
    assert_close_by_dtype(mixed, templated, "mixed batch (general path) != template batch")


# -- modes and options ----------------------------------------------------------------------------
def test_sparse_and_dense_are_different_models() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    template = ngc.GraphTemplate.from_module(net)
    params = torch.randn(2, template.num_params, generator=torch.Generator().manual_seed(0))
    outs = []
    for attention in ("sparse", "dense"):
        torch.manual_seed(0)
        model = NGTransformer.for_graphs(template, num_outputs=3, attention=attention, **TINY)
        with torch.no_grad():
            outs.append(model.eval()(template.batch(params)))
    assert not torch.allclose(outs[0], outs[1])


def test_attention_scale_options() -> None:
    torch.manual_seed(0)
    full = RelationalAttention(8, 4, attention_dim=16, heads=4)
    head = RelationalAttention(8, 4, attention_dim=16, heads=4, scale="head")
    assert full.scale == pytest.approx(16**-0.5)
    assert head.scale == pytest.approx(4**-0.5)
    head.load_state_dict(full.state_dict())
    x, e = torch.randn(5, 8), torch.randn(6, 4)
    index = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])
    assert not torch.allclose(full(x, e, index), head(x, e, index))
    with pytest.raises(ValueError, match="divisible"):
        RelationalAttention(8, 4, attention_dim=10, heads=4)
    with pytest.raises(ValueError, match="scale"):
        RelationalAttention(8, 4, scale="bad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attention"):
        NGTransformer(1, 2, 1, 1, attention="full")  # type: ignore[arg-type]


def test_paper_sizes_and_training_step() -> None:
    """Paper defaults on the MNIST INR architecture; one AdamW step gives finite gradients to
    every parameter (the null edge included); checkpointed layers give the same gradients."""
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 1)
    )
    template = ngc.GraphTemplate.from_module(net)
    params = 0.1 * torch.randn(2, template.num_params, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = NGTransformer.for_graphs(template, num_outputs=10, dropout=0.0)
    assert len(model.layers) == 4 and model.layers[0].attention.heads == 8
    assert model.layers[0].attention.attention_dim == 128
    assert model.layers[-1].edge_update is None  # unused by the invariant head
    out = model(template.batch(params))
    assert out.shape == (2, 10)
    out.square().sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]
    model.zero_grad()
    model.checkpoint_layers = True
    model(template.batch(params)).square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
