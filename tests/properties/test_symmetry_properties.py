"""Properties of the symmetry maps of ``nngraph_core.symmetry`` on random networks.

Families: SIRENs (``Sine(30)``, the INR benchmark's 2-n-n-1 shape with small random widths),
tanh MLPs, ReLU MLPs, small tanh CNNs (pooled or flattened into the linear head) and MLPs of
mixed activations. Every transformed network is loaded into the real module and run.

1. ``random_symmetry`` keeps every network's function (float64: relative error <= 1e-10).
2. The batched maps equal the per-network maps.
3. ``canonicalize`` is invariant under ``random_symmetry``, idempotent and keeps the function.
4. ``fold_input_affine`` / ``fold_output_affine`` compute ``f(Ax + t)`` / ``A f(x) + t``.
5. Illegal transformations (a ReLU neuron negated, a phase shift without the outgoing sign, a
   tanh neuron rescaled) change the function: the properties above have power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import nngraph_core as ngc
from nngraph_testing import (
    NetworkRecipe,
    assert_close_by_dtype,
    assert_differs,
    cnn_recipes,
    device_under_test,
    mlp_recipes,
    seeds,
)

DEVICE = device_under_test()
DTYPES = [torch.float32, torch.float64]
FAMILIES = ["siren", "tanh", "relu", "tanh_cnn", "mixed"]
W0 = 30.0

# Relative error (max |difference| / max |reference|) of a transformed network's outputs. In
# float32 a SIREN's phases carry w0 = 30 times the rounding error of its biases.
FUNCTION_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
SIREN_FUNCTION_RTOL = {torch.float64: 1e-10, torch.float32: 2e-3}


@dataclass(frozen=True)
class Siren:
    """A SIREN ``2 -> n_1 -> ... -> 1`` with ``Sine(30)`` and the benchmark's weight init
    ``U(±sqrt(6 / fan_in) / 30)``, but biases spread over several periods (``30 b`` in ±9 rad),
    as a trained one may have them."""

    widths: tuple[int, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],)

    def build(self, seed: int, dtype: torch.dtype) -> nn.Module:
        layers: list[nn.Module] = []
        for i in range(len(self.widths) - 1):
            layers.append(nn.Linear(self.widths[i], self.widths[i + 1]))
            if i < len(self.widths) - 2:
                layers.append(ngc.Sine(W0))
        module = nn.Sequential(*layers)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for i, layer in enumerate(module[::2]):
                assert isinstance(layer, nn.Linear)
                bound = math.sqrt(6 / layer.in_features) / W0
                last = i == len(self.widths) - 2
                if last:
                    bound = 1 / math.sqrt(layer.in_features)
                w = torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64)
                layer.weight.copy_((2 * w - 1) * bound)
                b = torch.rand(layer.bias.shape, generator=gen, dtype=torch.float64)
                layer.bias.copy_((2 * b - 1) * (bound if last else 0.3))
        return module.to(dtype).eval()

    def example_input(self, batch: int, seed: int, dtype: torch.dtype) -> Tensor:
        gen = torch.Generator().manual_seed(seed + 1)
        return (2 * torch.rand((batch, 2), generator=gen, dtype=torch.float64) - 1).to(dtype)


@st.composite
def sirens(draw: st.DrawFn, max_hidden_layers: int = 3) -> Siren:
    hidden = draw(st.lists(st.integers(1, 8), min_size=1, max_size=max_hidden_layers))
    return Siren((2, *hidden, 1))


def _recipes(family: str, **kwargs: object) -> st.SearchStrategy[Siren | NetworkRecipe]:
    small = {"max_layers": 4, "max_width": 8}
    if family == "siren":
        return sirens(**kwargs)  # type: ignore[arg-type]
    if family == "tanh":
        return mlp_recipes(activations=("tanh",), **{**small, **kwargs})  # type: ignore[arg-type]
    if family == "relu":
        return mlp_recipes(activations=("relu",), **{**small, **kwargs})  # type: ignore[arg-type]
    if family == "mixed":
        return mlp_recipes(**{**small, **kwargs})  # type: ignore[arg-type]
    if family == "tanh_cnn":
        return cnn_recipes(
            activations=("tanh",), max_conv=2, max_linear=2, max_channels=5, max_kernel=3
        )
    raise ValueError(family)


@dataclass
class Case:
    """A drawn architecture, a batch of networks of it, and a way to run each of them."""

    module: nn.Module
    template: ngc.GraphTemplate
    params: Tensor  # [B, P]
    x: Tensor
    family: str

    @property
    def spec(self) -> ngc.NetworkSpec:
        return self.template.spec

    def run(self, params: Tensor) -> Tensor:
        """The real module's forward with ``params [P]`` loaded."""
        with torch.no_grad():
            return torch.func.functional_call(
                self.module, self.template.unflatten(params), (self.x,)
            )

    def assert_same_functions(self, params: Tensor, msg: str) -> None:
        table = SIREN_FUNCTION_RTOL if self.family == "siren" else FUNCTION_RTOL
        rtol = table[params.dtype]
        for i in range(params.shape[0]):
            expected, actual = self.run(self.params[i]), self.run(params[i])
            scale = float(expected.abs().max())
            err = float((actual - expected).abs().max())
            assert err <= rtol * max(scale, 1e-3), (
                f"{msg}: network {i} changed its function (error {err:.3g}, scale {scale:.3g})"
            )


def _case(
    data: st.DataObject, family: str, dtype: torch.dtype, *, max_batch: int = 3, **kwargs: object
) -> Case:
    recipe = data.draw(_recipes(family, **kwargs), label="architecture")
    seed = data.draw(seeds, label="seed")
    size = data.draw(st.integers(1, max_batch), label="batch size")
    modules = [recipe.build(seed + i, dtype).to(DEVICE) for i in range(size)]
    template = ngc.GraphTemplate.from_module(modules[0], input_shape=recipe.input_shape)
    params = torch.stack([template.flatten(m) for m in modules])
    x = recipe.example_input(16, seed, dtype).to(DEVICE)
    return Case(modules[0], template, params, x, family)


def _generator(data: st.DataObject) -> torch.Generator:
    return torch.Generator().manual_seed(data.draw(seeds, label="transform seed"))


def _symmetry(case: Case, gen: torch.Generator) -> Tensor:
    scales = (0.25, 4.0) if case.family in ("relu", "mixed") else None
    return ngc.random_symmetry(case.spec, case.params, gen, scales=scales)


# -- 1. function preservation -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_random_symmetry_preserves_function(
    family: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    case = _case(data, family, dtype)
    moved = _symmetry(case, _generator(data))
    assert moved.shape == case.params.shape and moved.dtype == dtype
    case.assert_same_functions(moved, "random_symmetry")


# -- 2. batched == per network ------------------------------------------------------------------


def _per_layer_draws(case: Case, gen: torch.Generator, kind: str) -> list[Tensor | None]:
    """Random arguments of ``flip_signs`` / ``shift_phases`` / ``rescale``, [B, n_l] per layer,
    ``None`` where the layer lacks the symmetry."""
    b = case.params.shape[0]
    out: list[Tensor | None] = []
    for layer in case.spec.layers[:-1]:
        n = layer.out_features
        names = layer.activation
        if kind == "signs" and ("tanh" in names or "sine" in names or names == "identity"):
            out.append(1 - 2 * torch.randint(0, 2, (b, n), generator=gen))
        elif kind == "k" and names.startswith("sine") and layer.bias_key is not None:
            out.append(torch.randint(-3, 4, (b, n), generator=gen))
        elif kind == "scales" and (names in ("relu", "identity")):
            out.append(torch.exp(torch.randn(b, n, generator=gen, dtype=torch.float64)))
        else:
            out.append(None)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_batched_maps_equal_per_network_maps(
    family: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    case = _case(data, family, dtype, max_batch=4)
    gen = _generator(data)
    spec, params = case.spec, case.params
    d_in = spec.widths[0]
    for name, fn, args in [
        ("flip_signs", ngc.flip_signs, _per_layer_draws(case, gen, "signs")),
        ("shift_phases", ngc.shift_phases, _per_layer_draws(case, gen, "k")),
        ("rescale", ngc.rescale, _per_layer_draws(case, gen, "scales")),
    ]:
        batched = fn(spec, params, args)
        case.assert_same_functions(batched, name)
        for i in range(params.shape[0]):
            single = fn(spec, params[i], [None if a is None else a[i] for a in args])
            assert_close_by_dtype(batched[i], single, f"{name}: batched != per network")
    canonical = ngc.canonicalize(spec, params)
    for i in range(params.shape[0]):
        assert_close_by_dtype(canonical[i], ngc.canonicalize(spec, params[i]))
    if family != "tanh_cnn":
        A = torch.randn(params.shape[0], d_in, d_in, generator=gen, dtype=torch.float64).to(dtype)
        t = torch.randn(params.shape[0], d_in, generator=gen, dtype=torch.float64).to(dtype)
        folded = ngc.fold_input_affine(spec, params, A, t if spec.layers[0].bias_key else None)
        for i in range(params.shape[0]):
            single = ngc.fold_input_affine(
                spec, params[i], A[i], t[i] if spec.layers[0].bias_key else None
            )
            assert_close_by_dtype(folded[i], single, "fold_input_affine: batched != per network")


# -- 3. canonical forms -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_canonicalize_is_invariant_idempotent_and_exact(
    family: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    case = _case(data, family, dtype)
    spec = case.spec
    canonical = ngc.canonicalize(spec, case.params)
    case.assert_same_functions(canonical, "canonicalize")
    moved = _symmetry(case, _generator(data))
    # Float64: the orbit's representative is found up to rounding; float32 within its table.
    scale = 1e-2 if dtype == torch.float64 else 1.0
    assert_close_by_dtype(
        ngc.canonicalize(spec, moved), canonical, "canonical form moved", scale=scale
    )
    assert_close_by_dtype(
        ngc.canonicalize(spec, canonical), canonical, "not idempotent", scale=scale
    )


# -- 4. affine maps of inputs and outputs ---------------------------------------------------------


def _affine(gen: torch.Generator, d: int) -> tuple[Tensor, Tensor]:
    """A random rotation (orthogonal, det +1) times a scale in [0.8, 1.2], and a translation in
    ±0.25: the INR augmentation of the benchmarks, in ``d`` dimensions."""
    if d == 2:
        angle = (torch.rand((), generator=gen, dtype=torch.float64) - 0.5) * math.pi / 2
        c, s = torch.cos(angle), torch.sin(angle)
        q = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    else:
        q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))[None, :]
        if torch.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
    scale = 0.8 + 0.4 * torch.rand((), generator=gen, dtype=torch.float64)
    t = 0.5 * torch.rand(d, generator=gen, dtype=torch.float64) - 0.25
    return scale * q, t


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", ["siren", "tanh", "relu"])
@given(data=st.data())
def test_fold_input_affine_is_composition(
    family: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    case = _case(data, family, dtype, max_batch=1)
    gen = _generator(data)
    A, t = _affine(gen, case.spec.widths[0])
    if case.spec.layers[0].bias_key is None:
        t = torch.zeros_like(t)
        folded = ngc.fold_input_affine(case.spec, case.params[0], A.to(dtype))
    else:
        folded = ngc.fold_input_affine(case.spec, case.params[0], A.to(dtype), t.to(dtype))
    expected_case = Case(
        case.module, case.template, case.params, (case.x.double() @ A.T + t).to(dtype), family
    )
    shifted = expected_case.run(case.params[0])
    table = SIREN_FUNCTION_RTOL if family == "siren" else FUNCTION_RTOL
    err = float((case.run(folded) - shifted).abs().max())
    assert err <= table[dtype] * max(float(shifted.abs().max()), 1e-3), err


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", ["tanh", "relu", "tanh_cnn"])
@given(data=st.data())
def test_fold_output_affine_is_composition(
    family: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    case = _case(data, family, dtype, max_batch=1)
    gen = _generator(data)
    d = case.spec.widths[-1]
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    t = torch.randn(d, generator=gen, dtype=torch.float64)
    has_bias = case.spec.layers[-1].bias_key is not None
    folded = ngc.fold_output_affine(
        case.spec, case.params[0], A.to(dtype), t.to(dtype) if has_bias else None
    )
    expected = case.run(case.params[0]).double() @ A.T + (t if has_bias else 0)
    assert_close_by_dtype(case.run(folded), expected.to(dtype), scale=10.0)


# -- 5. illegal transformations change the function -------------------------------------------------


def _edit_neuron(case: Case, j: int, *, w_in: float, b_add: float, w_out: float) -> Tensor:
    """Network 0 with neuron ``j`` of hidden layer 1 edited: incoming row and bias times ``w_in``,
    ``b_add`` added to the bias, outgoing column times ``w_out``."""
    sd = {k: v.clone() for k, v in case.template.unflatten(case.params[0]).items()}
    first, second = case.spec.layers[0], case.spec.layers[1]
    sd[first.weight_key][j] *= w_in
    if first.bias_key is not None:
        sd[first.bias_key][j] = sd[first.bias_key][j] * w_in + b_add
    sd[second.weight_key][:, j] *= w_out
    return torch.cat([sd[k].flatten() for k in case.spec.param_keys])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("illegal", ["negate relu", "phase without sign", "rescale tanh"])
@given(data=st.data())
def test_illegal_transformations_change_the_function(
    illegal: str, dtype: torch.dtype, data: st.DataObject
) -> None:
    # One hidden layer, so that the change of the edited neuron reaches the output unmasked.
    if illegal == "negate relu":  # changes the output by W[:, j] |z_j|
        case = _case(data, "relu", dtype, max_batch=1, min_layers=2, max_layers=2)
        legal = {"w_in": 2.0, "b_add": 0.0, "w_out": 0.5}
        broken = {"w_in": -1.0, "b_add": 0.0, "w_out": -1.0}
    elif illegal == "phase without sign":  # by -2 W[:, j] sin(w0 z_j)
        case = _case(data, "siren", dtype, max_batch=1, max_hidden_layers=1)
        legal = {"w_in": 1.0, "b_add": math.pi / W0, "w_out": -1.0}
        broken = {"w_in": 1.0, "b_add": math.pi / W0, "w_out": 1.0}
    else:  # by W[:, j] (tanh(5 z_j) / 5 - tanh(z_j))
        case = _case(data, "tanh", dtype, max_batch=1, min_layers=2, max_layers=2)
        legal = {"w_in": -1.0, "b_add": 0.0, "w_out": -1.0}
        broken = {"w_in": 5.0, "b_add": 0.0, "w_out": 0.2}
    # The neuron with the largest contribution |W[:, j]| max |z_j| (a negligible neuron's edit
    # may hide below float32's tolerance).
    first, second = case.spec.layers[0], case.spec.layers[1]
    sd = case.template.unflatten(case.params[0])
    with torch.no_grad():
        z = case.x @ sd[first.weight_key].T
        if first.bias_key is not None:
            z = z + sd[first.bias_key]
    j = int((sd[second.weight_key].abs().amax(0) * z.abs().amax(0)).argmax())
    reference = case.run(case.params[0])
    case.assert_same_functions(_edit_neuron(case, j, **legal)[None], f"legal twin of {illegal}")
    assert_differs(case.run(_edit_neuron(case, j, **broken)), reference, illegal)
