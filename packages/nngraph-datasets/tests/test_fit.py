from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nngraph_datasets import BENCHMARK, SIREN_INIT, fit_inrs, fit_inrs_autograd, psnr, render
from nngraph_datasets.fit import _mse, init_batch, siren_step


def _images(n: int, h: int = 6, w: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    hidden=st.sampled_from([3, 8, 32]),
    h=st.integers(2, 7),
    w=st.integers(2, 7),
)
def test_hand_gradient_matches_autograd_float64(seed: int, hidden: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b = 3
    recipe = dataclasses.replace(BENCHMARK, hidden=hidden)
    params = init_batch(range(b), seed, recipe, torch.float64)
    params = params + 0.05 * torch.randn(params.shape, generator=g, dtype=torch.float64)
    target = torch.rand(b, h * w, generator=g, dtype=torch.float64)
    from nngraph_datasets import grid

    xt = grid(h, w, dtype=torch.float64).t().contiguous()
    leaf = params.clone().requires_grad_(True)
    mse = _mse(leaf, target, xt, 30.0)
    (grad,) = torch.autograd.grad(mse.sum(), leaf)
    # one Adam step with lr=1 and beta1=0 exposes grad/sqrt(grad^2)... use SGD-like probe instead:
    # run the hand step with beta1=0, beta2=0 (then update = lr * g / (|g| + eps)); recover g's sign
    # and compare the loss; and compare exact gradients through the first-moment buffer.
    out = siren_step(params, torch.zeros_like(params), torch.zeros_like(params), torch.zeros(b, dtype=torch.float64),
                     torch.ones(b, dtype=torch.bool), target, xt, 1.0, 0.0, 0.999, 1e-8, -1.0, 30.0)  # fmt: skip
    new_avg, hand_mse = out[1], out[5]
    torch.testing.assert_close(hand_mse, mse.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(new_avg, grad, rtol=1e-10, atol=1e-12)


def test_fast_fit_equals_autograd_reference_float64() -> None:
    imgs = _images(6)
    recipe = dataclasses.replace(BENCHMARK, steps=25, stop_psnr=14.0)
    a = fit_inrs(imgs, recipe, batch_size=4, compile=False, dtype=torch.float64)
    b = fit_inrs_autograd(imgs, recipe, batch_size=4, dtype=torch.float64)
    torch.testing.assert_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(a.psnr, b.psnr)


def test_adam_matches_torch_optim_adam() -> None:
    imgs = _images(2)
    recipe = dataclasses.replace(BENCHMARK, steps=10, stop_psnr=1e9)
    res = fit_inrs(imgs, recipe, batch_size=2, compile=False, dtype=torch.float64)
    from nngraph_datasets import grid

    xt = grid(6, 5, dtype=torch.float64).t().contiguous()
    p = init_batch(range(2), 0, recipe, torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([p], lr=recipe.lr)
    for _ in range(10):
        opt.zero_grad()
        _mse(p, imgs.reshape(2, -1), xt, 30.0).sum().backward()
        opt.step()
    torch.testing.assert_close(res.params, p.detach().float(), rtol=1e-6, atol=1e-7)
    assert res.steps.tolist() == [10, 10]


def test_early_stop_freezes_the_inr() -> None:
    imgs = _images(4, seed=1)
    recipe = dataclasses.replace(SIREN_INIT, steps=200, stop_psnr=18.0)
    r = fit_inrs(imgs, recipe, batch_size=4, compile=False)
    assert (r.steps < 200).any()
    stopped = r.steps < 200
    assert (r.psnr[stopped] >= 18.0).all()
    # a stopped INR keeps exactly the parameters it had when it stopped
    short = fit_inrs(
        imgs, dataclasses.replace(recipe, steps=int(r.steps.max()) + 1), batch_size=4, compile=False
    )
    assert torch.equal(short.params[stopped], r.params[stopped])


def test_deterministic_and_independent_of_batching() -> None:
    imgs = _images(5).float()
    recipe = dataclasses.replace(BENCHMARK, steps=5)
    a = fit_inrs(imgs, recipe, seed=7, batch_size=5, compile=False)
    b = fit_inrs(imgs, recipe, seed=7, batch_size=5, compile=False)
    assert torch.equal(a.params, b.params)
    c = fit_inrs(imgs[2:], recipe, seed=7, indices=[2, 3, 4], batch_size=3, compile=False)
    torch.testing.assert_close(c.params, a.params[2:], rtol=1e-5, atol=1e-6)


def test_reported_psnr_is_the_reconstruction_psnr() -> None:
    imgs = _images(3).float()
    r = fit_inrs(imgs, dataclasses.replace(BENCHMARK, steps=3), compile=False)
    mse = ((render(r.params, 6, 5) - imgs) ** 2).mean((1, 2))
    torch.testing.assert_close(psnr(mse), r.psnr, rtol=1e-4, atol=1e-4)


def _broken_compile(monkeypatch: pytest.MonkeyPatch, *, at_call: bool) -> None:
    """Make ``torch.compile`` fail, either when called or when the compiled function first runs."""
    import nngraph_datasets.fit as fit_mod

    monkeypatch.setattr(fit_mod, "_COMPILED", {})
    monkeypatch.setattr(fit_mod, "_COMPILE_ERROR", [])

    def compile_(fn: object, **kw: object) -> object:
        if not at_call:
            raise RuntimeError("Compiler: cc not found")

        def run(*args: object) -> object:
            raise RuntimeError("InductorError: CppCompileError: C++ compile error")

        return run

    monkeypatch.setattr(torch, "compile", compile_)


@pytest.mark.parametrize("at_call", [False, True])
def test_compile_failure_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, at_call: bool
) -> None:
    _broken_compile(monkeypatch, at_call=at_call)
    imgs = _images(3).float()
    recipe = dataclasses.replace(BENCHMARK, steps=4)
    with pytest.warns(RuntimeWarning, match="torch.compile .* failed .*eager"):
        r = fit_inrs(imgs, recipe, batch_size=2, compile=True)
    eager = fit_inrs(imgs, recipe, batch_size=2, compile=False)
    assert r.kernel == "eager" and torch.equal(r.params, eager.params)
    with warnings.catch_warnings():  # warned once; later fits go straight to eager
        warnings.simplefilter("error")
        assert fit_inrs(imgs, recipe, batch_size=2, compile="auto").kernel == "eager"


def test_compile_failure_is_recorded_in_the_zoo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("sklearn")
    from nngraph_datasets import build_zoo, verify_zoo

    _broken_compile(monkeypatch, at_call=True)
    with pytest.warns(RuntimeWarning, match="eager"):
        out = build_zoo(tmp_path / "z", "digits", dataclasses.replace(BENCHMARK, steps=2),
                        limit=8, shard_size=8, batch_size=4, compile=True)  # fmt: skip
    assert verify_zoo(out)["kernel"] == "eager"
