"""Assertions for equivariance, invariance and graph isomorphism, with tolerances by dtype."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

import nngraph_core as ngc

__all__ = [
    "TOLERANCES",
    "assert_close_by_dtype",
    "assert_differs",
    "assert_equivariant",
    "assert_graphs_isomorphic",
    "assert_invariant",
    "assert_same_function",
    "assert_sensitive",
    "tolerance",
]

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (1e-3, 1e-3),
}
"""`dtype -> (rtol, atol)` used by every assertion here."""


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """`(rtol, atol)` for `dtype`."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"no tolerance defined for {dtype}") from None


def assert_close_by_dtype(
    actual: Tensor, expected: Tensor, msg: str = "", *, scale: float = 1.0
) -> None:
    """`torch.testing.assert_close` with the [`TOLERANCES`][nngraph_testing.TOLERANCES] of
    `actual`'s dtype.

    `scale` multiplies both tolerances (e.g. for long reductions); keep it small.
    """
    rtol, atol = tolerance(actual.dtype)
    torch.testing.assert_close(
        actual,
        expected,
        rtol=rtol * scale,
        atol=atol * scale,
        msg=(lambda m: f"{msg}\n{m}") if msg else None,
    )


def assert_same_function(a: nn.Module, b: nn.Module, x: Tensor, *, scale: float = 1.0) -> None:
    """`a` and `b` compute the same function on inputs `x` (tolerance by `x`'s dtype)."""
    with torch.no_grad():
        assert_close_by_dtype(
            b(x), a(x), "the two networks compute different functions", scale=scale
        )


def assert_invariant(
    fn: Callable[[object], Tensor],
    x: object,
    transform: Callable[[object], object],
    *,
    scale: float = 1.0,
) -> None:
    """`fn(transform(x)) == fn(x)`."""
    expected = fn(x)
    actual = fn(transform(x))
    assert_close_by_dtype(
        actual, expected, "output is not invariant under the transformation", scale=scale
    )


def assert_equivariant(
    fn: Callable[[object], Tensor],
    x: object,
    transform_in: Callable[[object], object],
    transform_out: Callable[[Tensor], Tensor],
    *,
    scale: float = 1.0,
) -> None:
    """`fn(transform_in(x)) == transform_out(fn(x))`.

    The output action runs in float64 and the result is cast back, so the comparison measures
    the model's error, not the action's.
    """
    y = fn(x)
    expected = transform_out(y.double()).to(y.dtype)
    actual = fn(transform_in(x))
    assert_close_by_dtype(
        actual, expected, "output is not equivariant under the transformation", scale=scale
    )


def assert_differs(a: Tensor, b: Tensor, msg: str = "", *, factor: float = 10.0) -> None:
    """`a` and `b` differ by more than `factor` times the dtype's tolerance."""
    rtol, atol = tolerance(a.dtype)
    diff = float((a - b).abs().max())
    bound = factor * (atol + rtol * float(b.abs().max()))
    assert diff > bound, f"{msg or 'tensors do not differ'} (max diff {diff:.3g} <= {bound:.3g})"


def assert_sensitive(
    fn: Callable[[object], Tensor],
    x: object,
    transform: Callable[[object], object],
    *,
    factor: float = 10.0,
) -> None:
    """`fn(transform(x))` differs from `fn(x)` by clearly more than the dtype's tolerance.

    Used with an *illegal* transformation (an uncoupled permutation, swapped outputs) to prove that
    an invariance test has power: a model that ignores its input would pass invariance trivially.
    """
    assert_differs(
        fn(transform(x)),
        fn(x),
        "output did not change under an illegal transformation",
        factor=factor,
    )


def assert_graphs_isomorphic(
    permuted: ngc.NeuralGraph, original: ngc.NeuralGraph, node_perm: Tensor
) -> None:
    """Node `v` of `permuted` is node `node_perm[v]` of `original`, and the map carries node
    features, node attributes, edges and edge features over exactly (bit for bit)."""
    n = original.num_nodes
    assert permuted.num_nodes == n, f"node counts differ: {permuted.num_nodes} vs {n}"
    assert permuted.num_edges == original.num_edges, "edge counts differ"
    sigma = node_perm.to(original.device)
    assert torch.equal(sigma.sort().values, torch.arange(n, device=sigma.device)), (
        "node_perm is not a permutation"
    )
    for name in ("node_features", "node_layer", "node_role", "node_activation"):
        a, b = getattr(permuted, name), getattr(original, name)[sigma]
        assert torch.equal(a, b), f"{name} is not carried over by the node permutation"
    # Edge (s, d) of the permuted graph must be edge (sigma[s], sigma[d]) of the original.
    mapped = sigma[permuted.edge_index]
    key_p = mapped[0] * n + mapped[1]
    key_o = original.edge_index[0] * n + original.edge_index[1]
    order_p, order_o = torch.argsort(key_p), torch.argsort(key_o)
    assert torch.equal(key_p[order_p], key_o[order_o]), (
        "edge sets differ under the node permutation"
    )
    assert torch.unique(key_o).numel() == key_o.numel(), "the original graph has parallel edges"
    assert torch.equal(permuted.edge_features[order_p], original.edge_features[order_o]), (
        "edge features are not carried over by the node permutation"
    )
    if permuted.node_type is not None and original.node_type is not None:
        assert torch.equal(permuted.node_type, original.node_type[sigma]), (
            "node types are not carried over by the node permutation"
        )
    if permuted.edge_type is not None and original.edge_type is not None:
        assert torch.equal(permuted.edge_type[order_p], original.edge_type[order_o]), (
            "edge types are not carried over by the node permutation"
        )
