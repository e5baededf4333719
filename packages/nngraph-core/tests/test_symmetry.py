"""Unit tests of the symmetry maps: exact parameter layouts, applicability, typed errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import nngraph_core as ngc

F64 = torch.float64


def _seeded(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=F64))
    return module.eval()


def _mlp(act: Callable[[], nn.Module], widths: tuple[int, ...] = (2, 4, 3, 2), bias: bool = True):
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return _seeded(nn.Sequential(*layers).to(F64))


def _setup(module: nn.Module, input_shape: tuple[int, ...] | None = None):
    template = ngc.GraphTemplate.from_module(module, input_shape=input_shape)
    return template, template.spec, template.flatten(module)


def _run(module: nn.Module, template: ngc.GraphTemplate, params: Tensor, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.func.functional_call(module, template.unflatten(params), (x,))


def _x(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _same(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# -- flip_signs --------------------------------------------------------------------------------


def test_flip_signs_layout_and_function() -> None:
    mlp = _mlp(nn.Tanh)
    template, spec, p = _setup(mlp)
    signs = [torch.tensor([1, -1, 1, -1]), torch.tensor([-1.0, 1.0, 1.0])]
    q = ngc.flip_signs(spec, p, signs)
    sd, new = template.unflatten(p), template.unflatten(q)
    s0 = torch.tensor([1.0, -1, 1, -1], dtype=F64)
    s1 = torch.tensor([-1.0, 1, 1], dtype=F64)
    _same(new["0.weight"], sd["0.weight"] * s0[:, None])
    _same(new["0.bias"], sd["0.bias"] * s0)
    _same(new["2.weight"], sd["2.weight"] * s0[None, :] * s1[:, None])
    _same(new["2.bias"], sd["2.bias"] * s1)
    _same(new["4.weight"], sd["4.weight"] * s1[None, :])
    _same(new["4.bias"], sd["4.bias"])
    x = _x(16, 2)
    _same(_run(mlp, template, q, x), mlp(x).detach())
    # None leaves a layer alone; the input is never modified.
    before = p.clone()
    r = ngc.flip_signs(spec, p, [None, torch.tensor([-1, -1, -1])])
    assert torch.equal(p, before)
    assert torch.equal(template.unflatten(r)["0.weight"], sd["0.weight"])


def test_flip_signs_rejects_non_odd_activations() -> None:
    relu = _mlp(nn.ReLU)
    _, spec, p = _setup(relu)
    with pytest.raises(ngc.UnsupportedSymmetryError, match=r"hidden layer 1 .*'0'.*relu"):
        ngc.flip_signs(spec, p, [torch.ones(4), None])
    # A ReLU6 is a Hardtanh, but not a symmetric one; a symmetric Hardtanh and Softsign are odd.
    _, spec6, p6 = _setup(_mlp(nn.ReLU6))
    with pytest.raises(ngc.UnsupportedSymmetryError, match="relu6"):
        ngc.flip_signs(spec6, p6, [torch.ones(4), None])
    for act in (nn.Hardtanh, nn.Softsign, nn.Identity, lambda: ngc.Sine(30.0)):
        module = _mlp(act)
        template, spec_odd, p_odd = _setup(module)
        q = ngc.flip_signs(spec_odd, p_odd, [-torch.ones(4), -torch.ones(3)])
        x = _x(8, 2)
        _same(_run(module, template, q, x), module(x).detach())


def test_flip_signs_invalid_values_and_shapes() -> None:
    _, spec, p = _setup(_mlp(nn.Tanh))
    with pytest.raises(ngc.InvalidTransformError, match=r"\+1 or -1"):
        ngc.flip_signs(spec, p, [torch.tensor([1, 0, 1, 1]), None])
    with pytest.raises(ngc.InvalidTransformError):
        ngc.flip_signs(spec, p, [torch.ones(4, dtype=torch.bool), None])
    with pytest.raises(ngc.ShapeMismatchError, match="2 hidden layers"):
        ngc.flip_signs(spec, p, [torch.ones(4)])
    with pytest.raises(ngc.ShapeMismatchError, match="one tensor"):
        ngc.flip_signs(spec, p, torch.ones(4))  # type: ignore[arg-type]
    with pytest.raises(ngc.ShapeMismatchError, match=r"needs \[4\]"):
        ngc.flip_signs(spec, p, [torch.ones(5), None])
    with pytest.raises(ngc.ShapeMismatchError, match="one network"):
        ngc.flip_signs(spec, p, [torch.ones(2, 4), None])
    batch = torch.stack([p, p, p])
    with pytest.raises(ngc.ShapeMismatchError, match=r"for 2 networks .* hold 3"):
        ngc.flip_signs(spec, batch, [torch.ones(2, 4), None])
    with pytest.raises(ngc.ShapeMismatchError, match="P=35"):
        ngc.flip_signs(spec, p[:-1], [None, None])
    with pytest.raises(ngc.ShapeMismatchError, match="floating"):
        ngc.flip_signs(spec, p.long(), [None, None])
    bad = p.clone()
    bad[3] = math.nan
    with pytest.raises(ngc.NonFiniteWeightsError):
        ngc.flip_signs(spec, bad, [None, None])
    out = ngc.flip_signs(spec, bad, [None, None], allow_nonfinite=True)
    assert out.isnan().sum() == 1


def test_flip_signs_batched_and_broadcast() -> None:
    _, spec, p = _setup(_mlp(nn.Tanh))
    gen = torch.Generator().manual_seed(3)
    batch = p + 0.1 * torch.randn(5, p.numel(), generator=gen, dtype=F64)
    signs = [1 - 2 * torch.randint(0, 2, (5, n), generator=gen) for n in (4, 3)]
    out = ngc.flip_signs(spec, batch, signs)
    for i in range(5):
        _same(out[i], ngc.flip_signs(spec, batch[i], [s[i] for s in signs]))
    # One [n] sign vector acts on every network of the batch.
    shared = [torch.tensor([1, -1, -1, 1]), None]
    out = ngc.flip_signs(spec, batch, shared)
    for i in range(5):
        _same(out[i], ngc.flip_signs(spec, batch[i], shared))
    assert ngc.flip_signs(spec, batch[:0], shared).shape == (0, p.numel())


def _tanh_cnn(pool: str) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 4, (3, 2), stride=2),
        nn.Tanh(),
    ]
    layers += (
        [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)]
        if pool == "avg"
        else [nn.Flatten(), nn.Linear(4 * 2 * 3, 2)]
    )
    return _seeded(nn.Sequential(*layers).to(F64))


@pytest.mark.parametrize("pool", ["avg", "flatten"])
def test_flip_signs_of_conv_channels(pool: str) -> None:
    cnn = _tanh_cnn(pool)
    template, spec, p = _setup(cnn, input_shape=(2, 6, 6))
    s0 = torch.tensor([1, -1, -1])
    s1 = torch.tensor([-1, 1, 1, -1])
    q = ngc.flip_signs(spec, p, [s0, s1])
    sd, new = template.unflatten(p), template.unflatten(q)
    f0, f1 = s0.to(F64), s1.to(F64)
    _same(new["0.weight"], sd["0.weight"] * f0[:, None, None, None])
    _same(new["0.bias"], sd["0.bias"] * f0)
    _same(new["2.weight"], sd["2.weight"] * f1[:, None, None, None] * f0[None, :, None, None])
    last = sd["6.weight"] if pool == "avg" else sd["5.weight"]
    key = "6.weight" if pool == "avg" else "5.weight"
    # A flattened map: channel c owns the block of columns c*h*w ... (c+1)*h*w - 1.
    cols = f1.repeat_interleave(last.shape[1] // 4)
    _same(new[key], last * cols[None, :])
    x = _x(5, 2, 6, 6)
    _same(_run(cnn, template, q, x), cnn(x).detach())


def test_max_pooling_is_not_odd() -> None:
    cnn = _seeded(
        nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 1)
        ).to(F64)
    )
    _, spec, p = _setup(cnn, input_shape=(1, 6, 6))
    with pytest.raises(ngc.UnsupportedSymmetryError, match="maxpool2d"):
        ngc.flip_signs(spec, p, [torch.ones(3)])
    # ... but it is positively homogeneous after a ReLU.
    relu_cnn = _seeded(
        nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 1)
        ).to(F64)
    )
    template, spec, p = _setup(relu_cnn, input_shape=(1, 6, 6))
    q = ngc.rescale(spec, p, [torch.tensor([0.5, 2.0, 3.0])])
    x = _x(4, 1, 6, 6)
    _same(_run(relu_cnn, template, q, x), relu_cnn(x).detach())


# -- shift_phases --------------------------------------------------------------------------------


class Siren(nn.Module):
    """The INR benchmark layout: sines applied in forward, declared through nngraph_layers()."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(2, 5), nn.Linear(5, 4), nn.Linear(4, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.sin(30 * self.seq[0](x))
        x = torch.sin(30 * self.seq[1](x))
        return self.seq[2](x) + 0.5

    def nngraph_layers(self) -> list[nn.Module]:
        return [self.seq[0], ngc.Sine(30.0), self.seq[1], ngc.Sine(30.0), self.seq[2]]


def test_shift_phases_layout_and_function() -> None:
    siren = _seeded(Siren().to(F64), scale=0.05)
    template, spec, p = _setup(siren)
    k0 = torch.tensor([1, -1, 2, 0, -3])
    k1 = torch.tensor([0, 3, -2, 1])
    q = ngc.shift_phases(spec, p, [k0, k1])
    sd, new = template.unflatten(p), template.unflatten(q)
    sign0 = torch.tensor([-1.0, -1, 1, 1, -1], dtype=F64)
    sign1 = torch.tensor([1.0, -1, 1, -1], dtype=F64)
    _same(new["seq.0.bias"], sd["seq.0.bias"] + k0.to(F64) * math.pi / 30)
    _same(new["seq.0.weight"], sd["seq.0.weight"])
    _same(new["seq.1.weight"], sd["seq.1.weight"] * sign0[None, :])
    _same(new["seq.1.bias"], sd["seq.1.bias"] + k1.to(F64) * math.pi / 30)
    _same(new["seq.2.weight"], sd["seq.2.weight"] * sign1[None, :])
    x = _x(32, 2)
    torch.testing.assert_close(_run(siren, template, q, x), siren(x).detach(), rtol=1e-10, atol=0)


def test_shift_phases_reads_w0_and_rejects_other_layers() -> None:
    module = _mlp(lambda: ngc.Sine(2.5), widths=(3, 4, 2))
    template, spec, p = _setup(module)
    q = ngc.shift_phases(spec, p, [torch.ones(4, dtype=torch.int32)])
    _same(template.unflatten(q)["0.bias"], template.unflatten(p)["0.bias"] + math.pi / 2.5)
    with pytest.raises(ngc.InvalidTransformError, match="integer"):
        ngc.shift_phases(spec, p, [torch.ones(4)])
    with pytest.raises(ngc.InvalidTransformError, match="integer"):
        ngc.shift_phases(spec, p, [torch.ones(4, dtype=torch.bool)])
    _, spec_tanh, p_tanh = _setup(_mlp(nn.Tanh, widths=(3, 4, 2)))
    with pytest.raises(ngc.UnsupportedSymmetryError, match="tanh"):
        ngc.shift_phases(spec_tanh, p_tanh, [torch.ones(4, dtype=torch.long)])
    _, spec_nb, p_nb = _setup(_mlp(lambda: ngc.Sine(30.0), widths=(3, 4, 2), bias=False))
    with pytest.raises(ngc.UnsupportedSymmetryError, match="bias"):
        ngc.shift_phases(spec_nb, p_nb, [torch.ones(4, dtype=torch.long)])
    # Only a sine that comes first (before any other nonlinearity) can be shifted.
    _, spec_ts, p_ts = _setup(_mlp(lambda: nn.Sequential(nn.Tanh(), ngc.Sine(1.0)), (3, 4, 2)))
    with pytest.raises(ngc.UnsupportedSymmetryError):
        ngc.shift_phases(spec_ts, p_ts, [torch.ones(4, dtype=torch.long)])


# -- rescale ------------------------------------------------------------------------------------


def test_rescale_layout_and_errors() -> None:
    module = _mlp(nn.LeakyReLU, widths=(2, 3, 2))
    template, spec, p = _setup(module)
    a = torch.tensor([0.5, 2.0, 7.0], dtype=F64)
    q = ngc.rescale(spec, p, [a])
    sd, new = template.unflatten(p), template.unflatten(q)
    _same(new["0.weight"], sd["0.weight"] * a[:, None])
    _same(new["0.bias"], sd["0.bias"] * a)
    _same(new["2.weight"], sd["2.weight"] / a[None, :])
    x = _x(8, 2)
    _same(_run(module, template, q, x), module(x).detach())
    for bad in ([0.5, 0.0, 1.0], [1.0, -2.0, 1.0], [1.0, math.inf, 1.0], [1e-320, 1.0, 1.0]):
        with pytest.raises(ngc.InvalidTransformError, match="positive"):
            ngc.rescale(spec, p, [torch.tensor(bad, dtype=F64)])
    _, spec_tanh, p_tanh = _setup(_mlp(nn.Tanh, widths=(2, 3, 2)))
    with pytest.raises(ngc.UnsupportedSymmetryError, match="positively homogeneous"):
        ngc.rescale(spec_tanh, p_tanh, [torch.ones(3)])


# -- affine maps -------------------------------------------------------------------------------


def test_fold_input_affine() -> None:
    module = _mlp(nn.Tanh, widths=(3, 4, 2))
    template, spec, p = _setup(module)
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, generator=gen, dtype=F64)
    t = torch.randn(3, generator=gen, dtype=F64)
    x = _x(10, 3)
    q = ngc.fold_input_affine(spec, p, A, t)
    _same(_run(module, template, q, x), module(x @ A.T + t).detach())
    q = ngc.fold_input_affine(spec, p, A)
    _same(_run(module, template, q, x), module(x @ A.T).detach())
    batch = torch.stack([p, 2 * p])
    As = torch.stack([A, A.T])
    out = ngc.fold_input_affine(spec, batch, As, t)
    for i in range(2):
        _same(out[i], ngc.fold_input_affine(spec, batch[i], As[i], t))
    with pytest.raises(ngc.ShapeMismatchError, match="A has shape"):
        ngc.fold_input_affine(spec, p, A[:2])
    with pytest.raises(ngc.ShapeMismatchError, match="one network"):
        ngc.fold_input_affine(spec, p, As)
    with pytest.raises(ngc.ShapeMismatchError, match="for 2 networks"):
        ngc.fold_input_affine(spec, torch.stack([p, p, p]), As)
    with pytest.raises(ngc.ShapeMismatchError, match="t has shape"):
        ngc.fold_input_affine(spec, p, A, t[:2])
    with pytest.raises(ngc.NonFiniteWeightsError):
        ngc.fold_input_affine(spec, p, A, torch.tensor([0.0, math.nan, 0.0]))


def test_fold_input_affine_rejects_convs_and_missing_bias() -> None:
    _, spec, p = _setup(_tanh_cnn("avg"))
    with pytest.raises(ngc.UnsupportedSymmetryError, match="conv2d"):
        ngc.fold_input_affine(spec, p, torch.eye(2))
    assert isinstance(ngc.UnsupportedSymmetryError("x"), ngc.ArchitectureError)
    _, spec_nb, p_nb = _setup(_mlp(nn.Tanh, widths=(2, 3, 1), bias=False))
    with pytest.raises(ngc.UnsupportedSymmetryError, match="no bias"):
        ngc.fold_input_affine(spec_nb, p_nb, torch.eye(2), torch.ones(2))
    _same(ngc.fold_input_affine(spec_nb, p_nb, torch.eye(2)), p_nb)


def test_fold_output_affine() -> None:
    module = _mlp(nn.Tanh, widths=(3, 4, 2))
    template, spec, p = _setup(module)
    A = torch.tensor([[0.0, 2.0], [1.0, -1.0]], dtype=F64)
    t = torch.tensor([0.5, -1.0], dtype=F64)
    x = _x(10, 3)
    q = ngc.fold_output_affine(spec, p, A, t)
    _same(_run(module, template, q, x), module(x).detach() @ A.T + t)
    cnn = _tanh_cnn("avg")
    cnn = nn.Sequential(*list(cnn)[:3], nn.AdaptiveAvgPool2d(1), nn.Flatten())  # ends in a conv
    template, spec, p = _setup(cnn)
    A4 = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    q = ngc.fold_output_affine(spec, p, A4, torch.ones(4, dtype=F64))
    x = _x(3, 2, 6, 6)
    _same(_run(cnn, template, q, x), cnn(x).detach() @ A4.T + 1)
    sigmoid = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid()).to(F64)
    _, spec_s, p_s = _setup(sigmoid)
    with pytest.raises(ngc.UnsupportedSymmetryError, match="Sigmoid"):
        ngc.fold_output_affine(spec_s, p_s, torch.eye(2))


# -- random_symmetry ------------------------------------------------------------------------


def test_random_symmetry_is_seeded_and_per_network() -> None:
    module = _mlp(lambda: ngc.Sine(30.0), widths=(2, 6, 6, 1))
    module = _seeded(module, scale=0.05)
    template, spec, p = _setup(module)
    batch = p.expand(64, -1)
    a = ngc.random_symmetry(spec, batch, torch.Generator().manual_seed(7))
    b = ngc.random_symmetry(spec, batch, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, ngc.random_symmetry(spec, batch, torch.Generator().manual_seed(8)))
    # Every network got its own transformation: the rows differ.
    assert torch.unique(a, dim=0).shape[0] == 64
    x = _x(16, 2)
    expected = module(x).detach()
    for i in range(0, 64, 9):
        torch.testing.assert_close(_run(module, template, a[i], x), expected, rtol=1e-10, atol=0)
    single = ngc.random_symmetry(spec, p, torch.Generator().manual_seed(7))
    assert single.shape == p.shape
    off = ngc.random_symmetry(
        spec, batch, torch.Generator(), permute=False, signs=False, phases=False
    )
    assert torch.equal(off, batch)


def test_random_symmetry_options() -> None:
    module = _mlp(nn.ReLU, widths=(2, 5, 1))
    template, spec, p = _setup(module)
    gen = torch.Generator().manual_seed(0)
    # ReLU layers have neither signs nor phases: with permute=False only the scales act.
    q = ngc.random_symmetry(spec, p, gen, permute=False, scales=(0.5, 2.0))
    ratio = template.unflatten(q)["0.bias"] / template.unflatten(p)["0.bias"]
    assert bool(((ratio >= 0.5) & (ratio <= 2.0)).all()) and not torch.allclose(
        ratio, 1 + 0 * ratio
    )
    x = _x(8, 2)
    _same(_run(module, template, q, x), module(x).detach())
    with pytest.raises(ngc.InvalidTransformError, match="max_phase_shift"):
        ngc.random_symmetry(spec, p, gen, max_phase_shift=-1)
    with pytest.raises(ngc.InvalidTransformError, match="max_phase_shift"):
        ngc.random_symmetry(spec, p, gen, max_phase_shift=1.5)  # type: ignore[arg-type]
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0, math.inf)):
        with pytest.raises(ngc.InvalidTransformError, match="scales"):
            ngc.random_symmetry(spec, p, gen, scales=bad)


def test_random_symmetry_is_differentiable() -> None:
    module = _mlp(nn.Tanh)
    _, spec, p = _setup(module)
    p = p.clone().requires_grad_(True)
    out = ngc.random_symmetry(spec, p, torch.Generator().manual_seed(0))
    out.square().sum().backward()
    assert p.grad is not None
    torch.testing.assert_close(p.grad, 2 * p.detach())  # an orthogonal map of the parameters


# -- canonicalize --------------------------------------------------------------------------------


def test_canonical_form_conditions() -> None:
    gen = torch.Generator().manual_seed(0)
    for act, check in [
        (lambda: ngc.Sine(30.0), "phase"),
        (nn.Tanh, "sign"),
        (nn.ReLU, "norm"),
    ]:
        module = _mlp(act, widths=(3, 6, 5, 2))
        template, spec, p = _setup(module)
        batch = p + 0.3 * torch.randn(4, p.numel(), generator=gen, dtype=F64)
        c = ngc.canonicalize(spec, batch)
        sd = template.unflatten(c)
        for key in ("0", "2"):
            w, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
            if check == "phase":
                phase = 30 * b
                assert bool(((phase >= 0) & (phase <= math.pi / 2 + 1e-12)).all())
            elif check == "sign":
                assert bool((b >= 0).all())
            else:
                norm = torch.cat([w, b[..., None]], dim=-1).norm(dim=-1)
                torch.testing.assert_close(norm, torch.ones_like(norm))
            assert bool((b[:, 1:] >= b[:, :-1]).all()), "neurons are sorted by bias"
        x = _x(8, 3)
        for i in range(4):
            torch.testing.assert_close(
                _run(module, template, c[i], x),
                _run(module, template, batch[i], x),
                rtol=1e-10,
                atol=1e-12,
            )
        unsorted = ngc.canonicalize(spec, batch, permutations=False)
        assert not torch.equal(unsorted, c)
        torch.testing.assert_close(ngc.canonicalize(spec, unsorted), c, rtol=1e-12, atol=1e-14)


def test_canonicalize_ties_and_zero_rows() -> None:
    # Without bias every phase is 0: the sign is fixed by the sum of the incoming weights.
    module = _mlp(lambda: ngc.Sine(30.0), widths=(2, 4, 1), bias=False)
    template, spec, p = _setup(module)
    c = ngc.canonicalize(spec, p)
    assert bool((template.unflatten(c)["0.weight"].sum(-1) >= 0).all())
    flipped = ngc.flip_signs(spec, p, [torch.tensor([-1, 1, -1, 1])])
    torch.testing.assert_close(ngc.canonicalize(spec, flipped), c, rtol=0, atol=0)
    # A dead ReLU neuron (all-zero incoming row) stays as it is, with no NaN.
    relu = _mlp(nn.ReLU, widths=(2, 3, 1))
    template, spec, p = _setup(relu)
    sd = template.unflatten(p.clone())
    sd["0.weight"][1] = 0
    sd["0.bias"][1] = 0
    zeroed = torch.cat([sd[k].flatten() for k in spec.param_keys])
    c = ngc.canonicalize(spec, zeroed, permutations=False)
    assert bool(c.isfinite().all())
    assert torch.equal(template.unflatten(c)["2.weight"][:, 1], sd["2.weight"][:, 1])
    bad = p.clone()
    bad[0] = math.inf
    with pytest.raises(ngc.NonFiniteWeightsError):
        ngc.canonicalize(spec, bad)


def test_canonicalize_is_permutation_invariant_on_cnns() -> None:
    cnn = _tanh_cnn("flatten")
    _, spec, p = _setup(cnn, input_shape=(2, 6, 6))
    gen = torch.Generator().manual_seed(1)
    moved = ngc.random_symmetry(spec, p.expand(8, -1), gen)
    c = ngc.canonicalize(spec, moved)
    torch.testing.assert_close(c, ngc.canonicalize(spec, p).expand(8, -1), rtol=1e-12, atol=1e-14)
