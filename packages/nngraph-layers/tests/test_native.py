"""The native (C) kernels (dense NG-GNN layer, NG-T block attention) against the torch code they
replace."""

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
    NGTransformer,
    RelationalAttention,
    _native,
    dense_edges,
)

WIDTHS = (2, 5, 3, 1)


@pytest.fixture(scope="module")
def native() -> None:
    from nngraph_core._native import compiler

    if compiler() is None:
        pytest.skip("no C compiler on this machine")
    _native.load()  # a machine with a compiler must build it: failing here is a real failure


def _grads(out: tuple[Tensor, ...], weights: tuple[Tensor, ...], inputs: tuple[Tensor, ...]):  # type: ignore[no-untyped-def]
    loss = sum((o * w).sum() for o, w in zip(out, weights, strict=True))
    return torch.autograd.grad(loss, inputs)


#: block sizes: graphs, targets, sources, channels (not a multiple of the vector width), seed
SIZES = {
    "b": st.integers(1, 3),
    "no": st.integers(1, 6),
    "ni": st.integers(1, 6),
    "d": st.integers(1, 37),
    "seed": st.integers(0, 2**16),
}


def _close_to_exact(got: tuple[Tensor, ...], exact: tuple[Tensor, ...], tol: float = 2e-5) -> None:
    """float32 results against a float64 reference, relative to each tensor's largest entry
    (the kernels sum the GEMMs in another order than MKL)."""
    for x, r in zip(got, exact, strict=True):
        scale = 1.0 + float(r.detach().abs().max())
        torch.testing.assert_close(x.detach().double(), r.detach(), rtol=1e-4, atol=tol * scale)


def _float64(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(t.detach().double().requires_grad_() for t in inputs)


#: NG-GNN layers: node-layer widths (2 to 4 layers, single nodes included), channels, edge width
LAYERS = {
    "widths": st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple),
    "b": st.integers(1, 3),
    "d": st.integers(1, 37),
    "seed": st.integers(0, 2**16),
}


def _blocks(g: torch.Generator, b: int, widths: tuple[int, ...], de: float, scale: float = 1.0):  # type: ignore[no-untyped-def]
    return [
        (torch.randn(b, 2, widths[k + 1], widths[k], int(de), generator=g) * scale).requires_grad_()
        for k in range(len(widths) - 1)
    ]


@settings(max_examples=25, deadline=None)
@given(**LAYERS, de=st.one_of(st.just(32), st.integers(1, 37)))
def test_layer_message_stats_equals_torch(
    native: None, widths: tuple[int, ...], b: int, d: int, de: int, seed: int
) -> None:
    """All blocks of a layer: the FiLM GEMM, messages and every node's statistics over both of
    its blocks; values and gradients of the weights, node terms and every block's edges."""
    g = torch.Generator().manual_seed(seed)
    n = sum(widths)
    edges = _blocks(g, b, widths, de)
    w = (torch.randn(2 * d, de, generator=g) * de**-0.5).requires_grad_()
    bias, a, bn = (
        torch.randn(*s, generator=g).requires_grad_() for s in ((2 * d,), (b, n, d), (b, n, d))
    )
    inputs = (w, bias, a, bn, *edges)
    exact = _float64(inputs)
    weight = torch.randn(b, n, 4, d, generator=g)
    out = _native.layer_message_stats(edges, w, bias, a, bn, widths)
    ref = _native.reference_layer_message_stats(exact[4:], *exact[:4], widths)
    _close_to_exact((out,), (ref,))
    _close_to_exact(_grads((out,), (weight,), inputs), _grads((ref,), (weight.double(),), exact))


@settings(max_examples=25, deadline=None)
@given(**LAYERS, scale=st.sampled_from([1.0, 10.0, 60.0]))
def test_layer_edge_update_equals_torch(
    native: None, widths: tuple[int, ...], b: int, d: int, scale: float, seed: int
) -> None:
    """All blocks of a layer: both GEMMs, SiLU through the polynomial exponential (also far in
    the tails), bias and residual; values and gradients of everything."""
    g = torch.Generator().manual_seed(seed)
    n = sum(widths)
    edges = _blocks(g, b, widths, d, scale)
    w_edge, w_out = ((torch.randn(d, d, generator=g) * d**-0.5).requires_grad_() for _ in range(2))
    b_out = torch.randn(d, generator=g).requires_grad_()
    u, v = ((torch.randn(b, n, d, generator=g) * scale).requires_grad_() for _ in range(2))
    inputs = (w_edge, w_out, b_out, u, v, *edges)
    exact = _float64(inputs)
    weights = tuple(torch.randn(e.shape, generator=g) for e in edges)
    out = tuple(_native.layer_edge_update(edges, *inputs[:5], widths))
    ref = tuple(_native.reference_layer_edge_update(exact[5:], *exact[:5], widths))
    _close_to_exact(out, ref)
    wd = tuple(w.double() for w in weights)
    _close_to_exact(_grads(out, weights, inputs), _grads(ref, wd, exact))


def test_silu_on_a_dense_grid_of_inputs(native: None) -> None:
    """The exponential's polynomial over the whole float range that matters (and beyond): with
    zero edges and an identity output map the edge update of a source's edge is SiLU of the
    source's node term."""
    x = torch.linspace(-120.0, 120.0, 240_002)
    widths = (x.numel(), 1)
    e = torch.zeros(1, 2, 1, x.numel(), 1)
    eye, zero = torch.ones(1, 1), torch.zeros(1)
    u = torch.cat([x, torch.zeros(1)]).view(1, -1, 1)  # sender terms: the sources' values
    v = torch.zeros_like(u)
    (out,) = _native.layer_edge_update([e], eye, eye, zero, u, v, widths)
    got = out[0, 0, 0, :, 0].double()  # direction 0: source i -> the target
    want = torch.nn.functional.silu(x.double())
    err = (got - want).abs() / want.abs().clamp(min=1e-30)
    assert float(err[want.abs() > 1e-30].max()) < 1e-6


def test_min_max_gradient_goes_to_the_argument(native: None) -> None:
    """The min / max gradient reaches exactly the message that is the min / max: three sources
    with one-hot edges, so the FiLM beta of source i is w[1, i] (gamma 0)."""
    widths = (3, 1)
    e = torch.zeros(1, 2, 1, 3, 3)
    e[0, :, 0] = torch.eye(3)
    w = torch.zeros(2, 3)
    w[1] = torch.tensor([0.5, -2.0, 3.0])
    w.requires_grad_()
    a, bn = torch.zeros(1, 4, 1), torch.zeros(1, 4, 1)
    stats = _native.layer_message_stats([e], w, torch.zeros(2), a, bn, widths)
    target = stats[0, 3]  # node 3: the target, over its three sources
    assert target[:, 0].tolist() == [1.5, 0.25 + 4.0 + 9.0, -2.0, 3.0]
    (target[2, 0] + 10 * target[3, 0]).backward()  # min + 10 max
    # only the target's statistics are in the loss: the sources' messages get no gradient
    assert w.grad is not None
    assert torch.equal(w.grad[1], torch.tensor([0.0, 1.0, 10.0]))


def _layer_inputs(seed: int, b: int = 3, d: int = 6, de: int = 5):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, sum(WIDTHS), d, generator=g).requires_grad_()
    edges = [
        torch.randn(b, 2, WIDTHS[k + 1], WIDTHS[k], de, generator=g).requires_grad_()
        for k in range(len(WIDTHS) - 1)
    ]
    return x, edges


@pytest.mark.parametrize("scalers", [("identity", "amplification"), ("attenuation",)])
def test_dense_layer_native_equals_torch(native: None, scalers: tuple[str, ...]) -> None:
    """The whole layer: outputs, input gradients and every parameter gradient."""
    torch.manual_seed(0)
    conv = EdgePNAConv(6, 5, scalers=scalers, avg_log_deg=1.3)
    x, edges = _layer_inputs(1)
    results = []
    for kernel in ("native", "torch"):
        conv.kernel = kernel
        conv.zero_grad()
        xo, eo = conv.forward_dense(x, edges, WIDTHS)
        g = torch.Generator().manual_seed(2)
        loss = (xo * torch.randn(xo.shape, generator=g)).sum() + sum(
            (e * torch.randn(e.shape, generator=g)).sum() for e in eo
        )
        grads = torch.autograd.grad(loss, [x, *edges, *conv.parameters()])
        results.append([xo, *eo, *grads])
    for a, r in zip(*results, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_native_is_independent_of_the_thread_count(native: None) -> None:
    torch.manual_seed(0)
    conv = EdgePNAConv(6, 5, kernel="native")
    x, edges = _layer_inputs(3, b=5)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xo, eo = conv.forward_dense(x, edges, WIDTHS)
            outs.append([xo, *eo, *torch.autograd.grad(xo.sum() + eo[1].sum(), [x, *edges])])
    finally:
        torch.set_num_threads(before)
    for a, r in zip(*outs, strict=True):
        assert torch.equal(a, r)


def test_model_uses_the_kernel_only_where_it_applies(native: None) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    template = ngc.GraphTemplate.from_module(net)
    params = torch.randn(4, template.num_params)
    torch.manual_seed(0)
    model = NGGNN.for_graphs(template, num_outputs=3, hidden_channels=8, num_layers=2).eval()
    conv = model.convs[0]
    assert conv.kernel == "auto"
    x = torch.zeros(1, 1, 8)
    assert conv._use_native(x)
    assert not conv._use_native(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv._use_native(x)
    with torch.no_grad():
        auto = model(template.batch(params))
        for c in model.convs:
            c.kernel = "torch"
        plain = model(template.batch(params))
    torch.testing.assert_close(auto, plain, rtol=1e-5, atol=1e-5)
    conv.kernel = "native"
    with pytest.raises(ValueError, match="float32 CPU"):
        conv._use_native(x.double())
    with pytest.raises(ValueError, match="kernel must be"):
        EdgePNAConv(4, 4, kernel="cuda")  # type: ignore[arg-type]


def test_without_a_compiler_auto_warns_once_and_uses_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_native, "_LIB", [])
    monkeypatch.setattr(_native, "_ERROR", [])
    monkeypatch.setattr(_native, "_WARNED", [])
    monkeypatch.setattr(_native, "compiler", lambda: None)
    conv = EdgePNAConv(6, 5)
    x, edges = _layer_inputs(4)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        xo, _ = conv.forward_dense(x, edges, WIDTHS)
    with torch.no_grad():  # warned once: later calls are silent
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            conv.forward_dense(x, edges, WIDTHS)
    conv.kernel = "torch"
    torch.testing.assert_close(xo, conv.forward_dense(x, edges, WIDTHS)[0])
    conv.kernel = "native"
    with pytest.raises(_native.NativeKernelError, match="no C compiler"):
        conv.forward_dense(x, edges, WIDTHS)


def test_kernel_source_ships_inside_the_package() -> None:
    assert _native._SOURCE.is_file()
    assert _native._SOURCE.parent.name == "nngraph_layers"


def test_dense_edges_feed_the_kernel(native: None) -> None:
    """The layout dense_edges produces is what the kernel reads (contiguous float32)."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    template = ngc.GraphTemplate.from_module(net)
    e = torch.randn(2, template.num_edges, 4)
    for block in dense_edges(e, e, template):
        assert block.is_contiguous() and block.dtype == torch.float32


def test_first_use_inside_inference_mode(native: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build check needs autograd; a first call under inference_mode must still work."""
    monkeypatch.setattr(_native, "_LIB", [])
    monkeypatch.setattr(_native, "_ERROR", [])
    conv = EdgePNAConv(6, 5, kernel="native")
    x, edges = _layer_inputs(5)
    with torch.inference_mode():
        xo, _ = conv.forward_dense(x, edges, WIDTHS)
    assert _native._LIB and torch.isfinite(xo).all()


def test_first_use_inside_a_checkpointed_forward(
    native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first call inside activation checkpointing: the build check's backward must not run
    the checkpoint's recomputation (which re-enters the loader: a deadlock before the fix)."""
    monkeypatch.setattr(_native, "_LIB", [])
    monkeypatch.setattr(_native, "_ERROR", [])
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    template = ngc.GraphTemplate.from_module(net)
    model = _ngt_model(template, checkpoint_layers=True)
    out = model(template.batch(torch.randn(3, template.num_params)))
    out.sum().backward()
    assert _native._LIB and all(p.grad is not None for p in model.layers[0].attention.parameters())


# -- NG-T: relational attention over one block ------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    b=SIZES["b"],
    no=SIZES["no"],
    ni=SIZES["ni"],
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 19),
    de=st.one_of(st.just(32), st.integers(1, 37)),
    spare=st.integers(0, 3),
    scale=st.sampled_from([0.05, 1.0, 4.0]),
    seed=SIZES["seed"],
)
def test_attention_block_equals_torch(
    native: None,
    b: int,
    no: int,
    ni: int,
    heads: int,
    head_dim: int,
    de: int,
    spare: int,
    scale: float,
    seed: int,
) -> None:
    """Values and gradients of the pair features, pair weights and node terms, any sizes
    (widths not a multiple of the vector width, d_e = 32 and not, single nodes, other nodes
    around the block, large scores)."""
    g = torch.Generator().manual_seed(seed)
    a, n = heads * head_dim, ni + no + spare
    src_off = spare // 2
    inputs = tuple(
        (torch.randn(*s, generator=g) * f).requires_grad_()
        for s, f in (((b, 2, no, ni, de), 1.0), ((3 * a, de), de**-0.5), ((b, n, 3 * a), 1.0))
    )
    exact = tuple(t.detach().double().requires_grad_() for t in inputs)
    args = (src_off, src_off + ni, heads, scale)
    out = _native.attention_block(*inputs, *args)
    ref = _native.reference_attention_block(*exact, *args)  # float64: the kernel sums in
    weights = tuple(torch.randn(o.shape, generator=g) for o in ref)  # another order than MKL
    grads = _grads(out, weights, inputs)
    exact_grads = _grads(ref, tuple(w.double() for w in weights), exact)
    for x, r in zip([*out, *grads], [*ref, *exact_grads], strict=True):
        # error relative to the largest entry: large scores make single entries ill-conditioned
        scale_r = 1.0 + float(r.detach().abs().max())
        torch.testing.assert_close(x.detach().double(), r.detach(), rtol=1e-4, atol=2e-5 * scale_r)


def test_attention_block_rejects_bad_inputs(native: None) -> None:
    w, e, qkv = torch.zeros(24, 4), torch.zeros(1, 2, 2, 3, 4), torch.zeros(1, 5, 24)
    with pytest.raises(ValueError, match="float32"):
        _native.attention_block(e.double(), w, qkv, 0, 3, 2, 1.0)
    with pytest.raises(ValueError, match="offsets"):
        _native.attention_block(e, w, qkv, 0, 4, 2, 1.0)
    with pytest.raises(ValueError, match="widths"):
        _native.attention_block(e, w, qkv, 0, 3, 3, 1.0)
    with pytest.raises(ValueError, match="w_pair"):
        _native.attention_block(e, torch.zeros(24, 5), qkv, 0, 3, 2, 1.0)


def _ngt_model(template: ngc.GraphTemplate, **kwargs: object) -> NGTransformer:
    torch.manual_seed(0)
    small = {"node_dim": 12, "edge_channels": 6, "attention_dim": 12, "heads": 3}
    small |= {"node_hidden_dim": 8, "edge_hidden_dim": 8, "out_hidden_dim": 8, "dropout": 0.0}
    return NGTransformer.for_graphs(template, num_outputs=3, **(small | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
def test_ngt_native_equals_torch(native: None, head: str) -> None:
    """The whole model in training mode: outputs and every parameter gradient."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    template = ngc.GraphTemplate.from_module(net)
    params = torch.randn(3, template.num_params, generator=torch.Generator().manual_seed(1))
    results = []
    for kernel in ("native", "torch"):
        model = _ngt_model(template, head=head, kernel=kernel)
        out = model(template.batch(params))
        assert isinstance(out, Tensor)
        out.square().sum().backward()
        grads = [p.grad for p in model.parameters()]
        results.append([out, *[g for g in grads if g is not None]])
    assert len(results[0]) == len(results[1])
    for a, r in zip(*results, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_ngt_chunks_compute_the_same_function(native: None) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    template = ngc.GraphTemplate.from_module(net)
    params = torch.randn(5, template.num_params, generator=torch.Generator().manual_seed(2))
    results = []
    for chunk in (2, None):
        model = _ngt_model(template, chunk_size=chunk)
        out = model(template.batch(params))
        out.square().sum().backward()
        results.append([out, *[p.grad for p in model.parameters() if p.grad is not None]])
    for a, r in zip(*results, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_ngt_uses_the_kernel_only_where_it_applies(native: None) -> None:
    att = RelationalAttention(8, 4, 8, 2)
    assert att.kernel == "auto"
    x, blocks = torch.zeros(1, 3, 8), [torch.zeros(1, 2, 1, 2, 4)]
    assert att._use_native(x, blocks)
    assert not att._use_native(x.double(), [b.double() for b in blocks])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not att._use_native(x, blocks)
    additive = RelationalAttention(8, 4, 8, 2, modulate_values=False)
    assert not additive._use_native(x, blocks)
    with pytest.raises(ValueError, match="modulate_values"):
        RelationalAttention(8, 4, 8, 2, modulate_values=False, kernel="native")
    with pytest.raises(ValueError, match="kernel must be"):
        RelationalAttention(8, 4, kernel="gpu")  # type: ignore[arg-type]
    assert "kernel='auto'" in repr(att)


# -- NG-T: edge-update activation -----------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(**SIZES, scale=st.sampled_from([1.0, 4.0, 30.0]))
def test_edge_gelu_equals_torch(
    native: None, b: int, no: int, ni: int, d: int, scale: float, seed: int
) -> None:
    """Both directions, values and gradients of all three inputs, also far in the tails."""
    g = torch.Generator().manual_seed(seed)
    inputs = tuple(
        (scale * torch.randn(*s, generator=g)).requires_grad_()
        for s in ((b, 2, no, ni, 2 * d), (b, 2, no, d), (b, 2, ni, d))
    )
    weights = (torch.randn(b, 2, no, ni, d, generator=g),)
    out = _native.edge_gelu(*inputs)
    ref = _native.reference_edge_gelu(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for a, r in zip(_grads((out,), weights, inputs), _grads((ref,), weights, inputs), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_gelu_on_a_dense_grid_of_inputs(native: None) -> None:
    """The erfc fit and the polynomial exponential against torch's exact GELU and its
    derivative over [-20, 20] (and the extremes of float32)."""
    x = torch.cat([torch.linspace(-20, 20, 240_001), torch.tensor([-3e38, -88.0, 88.0, 3e38])])
    pair = torch.zeros(1, 2, 1, x.numel(), 2)
    pair[0, 0, 0, :, 0] = x
    pair.requires_grad_()
    t_o, t_i = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, x.numel(), 1)
    out = _native.edge_gelu(pair, t_o, t_i)
    (grad,) = torch.autograd.grad(out[0, 0, 0, :, 0].sum(), pair)
    xd = x.double().requires_grad_()
    exact = torch.nn.functional.gelu(xd)
    (dexact,) = torch.autograd.grad(exact.sum(), xd)
    torch.testing.assert_close(out[0, 0, 0, :, 0].double(), exact.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad[0, 0, 0, :, 0].double(), dexact, rtol=1e-5, atol=1e-6)


# -- NG-T: residual + dropout + LayerNorm -----------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 600),
    c=st.integers(4, 40),
    p=st.sampled_from([0.0, 0.1, 0.5, 0.95]),
    seed=st.integers(0, 2**32 - 1),
)
def test_residual_layer_norm_equals_torch(
    native: None, rows: int, c: int, p: float, seed: int
) -> None:
    """Values and gradients of all five tensors against the torch formula with the same hash
    mask, computed in float64 (rows across several parallel blocks, channels not a multiple of
    the vector width)."""
    g = torch.Generator().manual_seed(seed % 2**16)
    inputs = tuple(
        torch.randn(*s, generator=g).requires_grad_()
        for s in ((rows, c), (c,), (rows, c), (c,), (c,))
    )
    exact = tuple(t.detach().double().requires_grad_() for t in inputs)
    out = _native._res_ln(*inputs, 1e-5, p, seed)
    ref = _native.reference_residual_layer_norm(*exact, 1e-5, p, seed)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    weights = (torch.randn(rows, c, generator=g),)
    grads = _grads((out,), weights, inputs)
    for a, r in zip(grads, _grads((ref,), (weights[0].double(),), exact), strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-4)


def test_hash_dropout_statistics_and_seed() -> None:
    """The hash mask drops the asked fraction, independently between neighbours, and the
    public function draws its seed from torch's generator (reproducible, fresh per call)."""
    threshold, scale = _native._dropout_threshold(0.3)
    keep = _native.hash_keep_mask(1_000_000, 77, threshold)
    assert abs(1 - keep.float().mean().item() - 0.3) < 3e-3
    pairs = keep.view(-1, 2)
    assert abs((~pairs[:, 0] & ~pairs[:, 1]).float().mean().item() - 0.09) < 3e-3
    assert scale == pytest.approx(1 / 0.7, rel=1e-6)
    assert not torch.equal(keep, _native.hash_keep_mask(1_000_000, 78, threshold))


def test_residual_layer_norm_module_form(native: None) -> None:
    norm = torch.nn.LayerNorm(8)
    z, b, r = torch.randn(50, 8), torch.randn(8), torch.randn(50, 8)
    torch.testing.assert_close(_native.residual_layer_norm(z, b, r, norm), norm(r + z + b))
    torch.manual_seed(3)
    a = _native.residual_layer_norm(z, b, r, norm, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, _native.residual_layer_norm(z, b, r, norm, 0.5))
    assert not torch.equal(a, _native.residual_layer_norm(z, b, r, norm, 0.5))
    with pytest.raises(ValueError, match="drop probability"):
        _native.residual_layer_norm(z, b, r, norm, 1.0)
    with pytest.raises(ValueError, match="affine"):
        _native.residual_layer_norm(z, b, r, torch.nn.LayerNorm(8, elementwise_affine=False))


# -- Fourier features ---------------------------------------------------------------------------------
def test_fourier_sincos_on_a_dense_grid(native: None) -> None:
    """Against the float64 sine / cosine of the same float32 argument: |t| up to 2e4 on the
    polynomial path, beyond 1e5 through libm, NaN and Inf passed on."""
    import math

    t = torch.cat([torch.linspace(-2e4, 2e4, 400_001), torch.linspace(-3, 3, 10_001)])
    t = torch.cat([t, torch.tensor([2e5, -3e7, float("nan"), float("inf")])])
    x = (t / (2 * math.pi)).view(-1, 1)
    sin, cos = _native.fourier_sincos(x, torch.ones(1, 1))
    arg = (x * (2 * math.pi)).double()  # the float32 argument the kernel sees
    finite = torch.isfinite(arg)
    assert float((sin.double() - arg.sin())[finite].abs().max()) < 2e-7
    assert float((cos.double() - arg.cos())[finite].abs().max()) < 2e-7
    assert torch.isnan(sin[-2:]).all() and torch.isnan(cos[-2:]).all()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 600), k=st.integers(1, 9), f=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_fourier_features_native_equals_torch(
    native: None, n: int, k: int, f: int, seed: int
) -> None:
    """The module in float32 (kernel) against float64 (torch), output and every gradient."""
    from nngraph_layers import FourierFeatures

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ff = FourierFeatures(k, 5, num_frequencies=f, sigma=3.0)
    ff64 = FourierFeatures(k, 5, num_frequencies=f).double()
    ff64.load_state_dict(ff.state_dict())
    x = torch.randn(n, k, generator=g).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out, ref = ff(x), ff64(x64)
    w = torch.randn(n, 5, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (x, *ff.parameters()))
    exact = torch.autograd.grad((ref * w.double()).sum(), (x64, *ff64.parameters()))
    # The parameter gradients sum n float32 terms (in another order than torch): their rounding
    # error grows like sqrt(n), so the tolerance does too (n = 561 once read 7.4e-4 against 6.2e-4).
    _close_to_exact((out, *grads), (ref, *exact), tol=1e-5 * max(1.0, (n / 64) ** 0.5))


def test_ngt_kernels_are_independent_of_the_thread_count(native: None) -> None:
    """The NG-T kernels split their work by graph or by fixed row blocks: one and two threads
    give bit-identical outputs and gradients (torch's own GEMMs need not, so the kernels are
    compared on their own)."""
    g = torch.Generator().manual_seed(4)
    b, no, ni, a, h, de, n = 5, 4, 3, 12, 3, 6, 9
    e, w, qkv = (
        torch.randn(*s, generator=g).requires_grad_()
        for s in ((b, 2, no, ni, de), (3 * a, de), (b, n, 3 * a))
    )
    pair, t_o, t_i = (
        torch.randn(*s, generator=g).requires_grad_()
        for s in ((b, 2, no, ni, 2 * de), (b, 2, no, de), (b, 2, ni, de))
    )
    z, bias, res, lw, lb = (
        torch.randn(*s, generator=g).requires_grad_()
        for s in ((700, de), (de,), (700, de), (de,), (de,))
    )
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs = [*_native.attention_block(e, w, qkv, 1, 5, h, 0.4)]
            outs.append(_native.edge_gelu(pair, t_o, t_i))
            outs.append(_native._res_ln(z, bias, res, lw, lb, 1e-5, 0.2, 77))
            loss = sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
            grads = torch.autograd.grad(loss, (e, w, qkv, pair, t_o, t_i, z, bias, res, lw, lb))
            results.append([*outs, *grads])
    finally:
        torch.set_num_threads(before)
    for x, y in zip(*results, strict=True):
        assert torch.equal(x, y)
