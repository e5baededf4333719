"""The fast-mask Dropout: distribution, unbiasedness, gradient, reproducibility, modes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nngraph_layers import Dropout
from nngraph_layers.dropout import dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_drop_fraction_and_scale(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p)
    dropped = (y == 0).float().mean().item()
    # binomial std at n=4e5 is < 1e-3; the quantised p is within 2**-16 of p
    assert abs(dropped - p) < 5e-3
    kept = y[y != 0]
    assert torch.allclose(kept, kept[0].expand_as(kept))
    # unbiased: the scale matches the quantised drop probability exactly
    p_used = round(p * 2**15) / 2**15
    assert kept[0].item() == pytest.approx(1 / (1 - p_used), rel=1e-6)


def test_mean_is_preserved() -> None:
    torch.manual_seed(1)
    x = torch.rand(200, 1000) + 0.5
    ys = torch.stack([dropout(x, 0.3) for _ in range(20)])
    assert torch.allclose(ys.mean(), x.mean(), rtol=3e-3)


def test_bits_are_not_correlated_between_neighbours() -> None:
    # the two 15-bit draws of one int32 must drop independently
    torch.manual_seed(2)
    y = dropout(torch.ones(400_000), 0.5).view(-1, 2) == 0
    both = (y[:, 0] & y[:, 1]).float().mean().item()
    assert abs(both - 0.25) < 5e-3


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    p=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_gradient_is_the_mask(shape: list[int], p: float, dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    y = dropout(x, p)
    assert y.dtype == dtype and y.shape == x.shape
    (g,) = torch.autograd.grad(y.sum(), x)
    nz = x.detach() != 0
    # where x != 0 the output is x * mask, so the gradient is y / x
    torch.testing.assert_close(g[nz], (y.detach() / x.detach())[nz])


def test_reproducible_with_the_seed_and_fresh_each_call() -> None:
    x = torch.randn(1000)
    torch.manual_seed(5)
    a, b = dropout(x, 0.2), dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.2), a)
    assert not torch.equal(a, b)


def test_module_modes_and_edge_cases() -> None:
    x = torch.randn(50, 50)
    m = Dropout(0.4)
    m.eval()
    assert m(x) is x
    m.train()
    assert (m(x) == 0).any()
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.count_nonzero(Dropout(1.0)(x)) == 0
    assert "p=0.4" in repr(m)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout probability"):
            Dropout(bad)
        with pytest.raises(ValueError, match="dropout probability"):
            dropout(x, bad)


def test_checkpoint_recomputes_the_same_mask() -> None:
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(7)
    plain = torch.autograd.grad(dropout(x * 2, 0.3).square().sum(), x)[0]
    torch.manual_seed(7)
    out = checkpoint(lambda t: dropout(t * 2, 0.3), x, use_reentrant=False)
    ckpt = torch.autograd.grad(out.square().sum(), x)[0]
    torch.testing.assert_close(plain, ckpt)
