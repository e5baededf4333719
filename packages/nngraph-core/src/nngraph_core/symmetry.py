r"""Function-preserving and function-transforming maps of networks, on flat parameter vectors.

Every function here takes a [`NetworkSpec`][nngraph_core.NetworkSpec] and flat parameters in
its layout (`[P]` for one network, `[B, P]` for a batch, as made by
[`GraphTemplate.flatten`][nngraph_core.GraphTemplate.flatten]) and returns new flat parameters of
the same shape, dtype and device. A batch is transformed without a Python loop over its
networks (only over layers), and the operations are differentiable.

Hidden neuron $j$ of layer $l$ computes $h_j = \sigma\big(w_j^\top h^{(l-1)} + b_j\big)$ and
feeds the next layer through the column $W^{(l+1)}_{:, j}$. Conv channels are neurons too: $w_j$
is then the output channel's kernel stack and $W^{(l+1)}_{:, j}$ the next layer's input-channel
slice (for a feature map flattened into a linear layer, the channel's block of columns).

Function-preserving maps (symmetries), per hidden neuron:

* [`flip_signs`][nngraph_core.flip_signs] — $(w_j, b_j, W_{:, j}) \to -(w_j, b_j, W_{:, j})$,
  for odd activations ($\sigma(-z) = -\sigma(z)$: sine, tanh, identity);
* [`shift_phases`][nngraph_core.shift_phases] — $b_j \to b_j + k\pi/\omega_0$ and
  $W_{:, j} \to (-1)^k W_{:, j}$, for sines $\sin(\omega_0 z)$;
* [`rescale`][nngraph_core.rescale] — $(w_j, b_j) \to a (w_j, b_j)$ and
  $W_{:, j} \to W_{:, j} / a$ with $a > 0$, for positively homogeneous activations (ReLU);
* hidden permutations ([`permute_hidden`][nngraph_core.permute_hidden]).

[`random_symmetry`][nngraph_core.random_symmetry] draws a random element of the group these
generate, independently for every network of a batch; [`canonicalize`][nngraph_core.canonicalize]
maps every network to one representative of its orbit. The function-*transforming* maps
[`fold_input_affine`][nngraph_core.fold_input_affine] and
[`fold_output_affine`][nngraph_core.fold_output_affine] compose the network with an affine map of
its input or output (the rotation / scale / translation augmentation of INRs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .activations import Sine
from .errors import InvalidTransformError, ShapeMismatchError, UnsupportedSymmetryError
from .spec import LayerSpec, NetworkSpec
from .template import check_finite

__all__ = [
    "canonicalize",
    "flip_signs",
    "fold_input_affine",
    "fold_output_affine",
    "random_symmetry",
    "rescale",
    "shift_phases",
]

# How the parameter-free modules after a layer act on one channel. Types are matched exactly: a
# subclass may compute something else.
# Modules that leave each channel as it is (at evaluation; dropout is a per-entry factor).
_IDENTITY_LIKE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
)
# Linear within each channel: they commute with any per-channel factor (negative ones included).
_CHANNEL_LINEAR: tuple[type[nn.Module], ...] = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
# Commute with a positive per-channel factor: sigma(a z) = a sigma(z) for a > 0.
_POSITIVELY_HOMOGENEOUS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
)
# Odd: sigma(-z) = -sigma(z).
_ODD: tuple[type[nn.Module], ...] = (Sine, nn.Tanh, nn.Softsign, nn.Tanhshrink)


def _is_odd(m: nn.Module) -> bool:
    if type(m) is nn.Hardtanh:
        return bool(m.min_val == -m.max_val)
    return type(m) in _ODD


@dataclass(frozen=True)
class _Hidden:
    """What one hidden layer allows: its width and which per-neuron symmetries it has."""

    index: int  # 0-based among the hidden layers; node layer index + 1
    width: int
    odd: bool  # sign flips keep the function
    homogeneous: bool  # positive rescalings keep the function
    w0: float | None  # the sine frequency when phase shifts keep the function
    has_bias: bool
    name: str  # for messages


def _module_name(layer: LayerSpec) -> str:
    return layer.weight_key.rsplit(".", 1)[0] if "." in layer.weight_key else layer.weight_key


def _hidden_layers(spec: NetworkSpec) -> list[_Hidden]:
    out = []
    for h, layer in enumerate(spec.layers[:-1]):
        core = [m for m in layer.ops_after if type(m) not in _IDENTITY_LIKE]
        odd = all(type(m) in _CHANNEL_LINEAR or _is_odd(m) for m in core)
        homogeneous = all(type(m) in _CHANNEL_LINEAR + _POSITIVELY_HOMOGENEOUS for m in core)
        # A phase shift adds a constant before the sine: only channel-preserving modules may
        # come first; what follows must commute with the outgoing sign (odd or linear).
        first = core[0] if core else None
        w0 = first.w0 if odd and isinstance(first, Sine) and type(first) is Sine else None
        name = (
            f"hidden layer {h + 1} (output of {_module_name(layer)!r}, "
            f"activation {layer.activation!r})"
        )
        out.append(
            _Hidden(h, layer.out_features, odd, homogeneous, w0, layer.bias_key is not None, name)
        )
    return out


# -- flat parameters <-> per-layer views ------------------------------------------------------------

# Per layer: weight [B, n_out, n_in, k] and bias [B, n_out] (None for a layer without bias).
_Layers = list[tuple[Tensor, Tensor | None]]


def _as_batch(spec: NetworkSpec, params: Tensor, allow_nonfinite: bool) -> tuple[Tensor, bool]:
    """``params`` as ``[B, P]``, and whether it was batched."""
    if not isinstance(params, Tensor):
        raise ShapeMismatchError(
            f"expected a tensor of flat parameters, got {type(params).__name__}"
        )
    if params.dim() not in (1, 2) or params.shape[-1] != spec.num_params:
        raise ShapeMismatchError(
            f"expected flat parameters of shape [P] or [B, P] with P={spec.num_params}, "
            f"got {tuple(params.shape)}"
        )
    if not params.is_floating_point():
        raise ShapeMismatchError(f"expected floating parameters, got {params.dtype}")
    if not allow_nonfinite:
        check_finite(params)
    return (params, True) if params.dim() == 2 else (params.unsqueeze(0), False)


def _split(spec: NetworkSpec, flat: Tensor) -> _Layers:
    """Per-layer views ``(W [B, n_out, n_in, k], b [B, n_out] | None)`` of ``flat [B, P]``.

    The weight's memory order is ``[out, in, kh, kw]`` for a conv and for a linear layer fed by a
    flattened map alike (``k = kh * kw``, or the map's ``h * w``; 1 for a plain linear layer).
    """
    offsets = spec.param_offsets()
    b = flat.shape[0]
    out: _Layers = []
    for layer in spec.layers:
        start, _ = offsets[layer.weight_key]
        k = layer.kernel_size[0] * layer.kernel_size[1]
        size = layer.out_features * layer.in_features * k
        weight = flat[:, start : start + size].reshape(b, layer.out_features, layer.in_features, k)
        bias = None
        if layer.bias_key is not None:
            start, _ = offsets[layer.bias_key]
            bias = flat[:, start : start + layer.out_features]
        out.append((weight, bias))
    return out


def _join(spec: NetworkSpec, layers: _Layers) -> Tensor:
    """The inverse of `_split`: flat `[B, P]` in `spec.param_keys` order."""
    parts: dict[str, Tensor] = {}
    for layer, (weight, bias) in zip(spec.layers, layers, strict=True):
        parts[layer.weight_key] = weight.reshape(weight.shape[0], math.prod(weight.shape[1:]))
        if layer.bias_key is not None:
            assert bias is not None
            parts[layer.bias_key] = bias
    return torch.cat([parts[key] for key in spec.param_keys], dim=1)


def _scale_neurons(
    layers: _Layers,
    h: int,
    *,
    incoming: Tensor | None = None,
    shift: Tensor | None = None,
    outgoing: Tensor | None = None,
) -> None:
    """Hidden layer ``h`` (all ``[B, n]``): ``(w_j, b_j) *= incoming_j``, then ``b_j += shift_j``,
    and the next layer's column ``j`` times ``outgoing_j``."""
    weight, bias = layers[h]
    if incoming is not None:
        weight = weight * incoming[:, :, None, None]
        bias = None if bias is None else bias * incoming
    if shift is not None:
        assert bias is not None
        bias = bias + shift
    layers[h] = (weight, bias)
    if outgoing is not None:
        nxt, nxt_bias = layers[h + 1]
        layers[h + 1] = (nxt * outgoing[:, None, :, None], nxt_bias)


def _permute_neurons(layers: _Layers, h: int, perm: Tensor) -> None:
    """Hidden layer ``h``: neuron ``j`` of network ``i`` becomes its neuron ``perm[i, j]``."""
    weight, bias = layers[h]
    b, n, n_in, k = weight.shape
    weight = weight.gather(1, perm[:, :, None, None].expand(b, n, n_in, k))
    bias = None if bias is None else bias.gather(1, perm)
    layers[h] = (weight, bias)
    nxt, nxt_bias = layers[h + 1]
    n_out, k2 = nxt.shape[1], nxt.shape[3]
    layers[h + 1] = (nxt.gather(2, perm[:, None, :, None].expand(b, n_out, n, k2)), nxt_bias)


# -- argument checks ------------------------------------------------------------------------


def _per_layer(
    spec: NetworkSpec,
    values: Sequence[Tensor | None],
    what: str,
    batch: int,
    batched: bool,
    allowed: Sequence[bool],
    why: str,
) -> list[Tensor | None]:
    """One ``[B, n_l]`` tensor (or ``None``) per hidden layer; ``[n_l]`` is broadcast over B."""
    hidden = _hidden_layers(spec)
    if not isinstance(values, (list, tuple)):  # a tensor is not one entry per layer
        raise ShapeMismatchError(
            f"{what} must be a sequence with one tensor (or None) per hidden layer, "
            f"got {type(values).__name__}"
        )
    if len(values) != len(hidden):
        raise ShapeMismatchError(
            f"{what} has {len(values)} entries for {len(hidden)} hidden layers "
            f"(widths {spec.widths[1:-1]})"
        )
    out: list[Tensor | None] = []
    for hl, value, ok in zip(hidden, values, allowed, strict=True):
        if value is None:
            out.append(None)
            continue
        if not isinstance(value, Tensor):
            raise ShapeMismatchError(
                f"{what}[{hl.index}] must be a tensor or None, got {type(value).__name__}"
            )
        if not ok:
            raise UnsupportedSymmetryError(f"{hl.name}: {why}")
        n = hl.width
        if value.dim() == 1 and value.shape[0] == n:
            value = value.unsqueeze(0).expand(batch, n)
        elif not (value.dim() == 2 and value.shape[1] == n):
            raise ShapeMismatchError(
                f"{what}[{hl.index}] has shape {tuple(value.shape)}; {hl.name} needs [{n}] or "
                f"[B, {n}]"
            )
        elif not batched:
            raise ShapeMismatchError(
                f"{what}[{hl.index}] has shape {tuple(value.shape)} but the parameters are one "
                f"network [P]; pass [{n}] (or batch the parameters as [B, P])"
            )
        elif value.shape[0] != batch:
            raise ShapeMismatchError(
                f"{what}[{hl.index}] is for {value.shape[0]} networks but the parameters hold {batch}"
            )
        out.append(value)
    return out


def _batched(
    value: Tensor, shape: tuple[int, ...], what: str, batch: int, batched: bool, like: Tensor
) -> Tensor:
    """``value`` of ``shape`` or ``[B, *shape]`` as ``[B, *shape]`` in ``like``'s dtype/device."""
    if not isinstance(value, Tensor):
        raise ShapeMismatchError(f"{what} must be a tensor, got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise ShapeMismatchError(f"{what} must be real, got {value.dtype}")
    if tuple(value.shape) == shape:
        value = value.unsqueeze(0).expand(batch, *shape)
    elif value.dim() == len(shape) + 1 and tuple(value.shape[1:]) == shape:
        if not batched:
            raise ShapeMismatchError(
                f"{what} has shape {tuple(value.shape)} but the parameters are one network [P]; "
                f"pass {list(shape)}"
            )
        if value.shape[0] != batch:
            raise ShapeMismatchError(
                f"{what} is for {value.shape[0]} networks but the parameters hold {batch}"
            )
    else:
        raise ShapeMismatchError(
            f"{what} has shape {tuple(value.shape)}, expected {list(shape)} or [B, *{list(shape)}]"
        )
    value = value.to(device=like.device, dtype=like.dtype)
    check_finite(value.flatten(1), what)
    return value


def _finish(flat: Tensor, batched: bool) -> Tensor:
    return flat if batched else flat[0]


# -- affine maps of inputs and outputs ----------------------------------------------------------


def fold_input_affine(
    spec: NetworkSpec,
    params: Tensor,
    A: Tensor,
    t: Tensor | None = None,
    *,
    allow_nonfinite: bool = False,
) -> Tensor:
    r"""Parameters of $g(x) = f(A x + t)$: an affine map of the input folded into the first layer.

    $$W_0' = W_0 A, \qquad b_0' = b_0 + W_0 t .$$

    For an INR $f$ of an image, $g$ is the INR of the image transformed by $x \mapsto Ax + t$
    (rotation, scale, translation of the coordinate plane): the training-time augmentation of the
    INR benchmarks, exact. `A` acts on the first layer's input (after any `Flatten` in front of
    it).

    Args:
        spec: the architecture; its first layer must be a `Linear` (an MLP).
        params: flat parameters `[P]` or `[B, P]`.
        A: `[d_in, d_in]`, or `[B, d_in, d_in]` (one matrix per network; `params` batched).
        t: `[d_in]` or `[B, d_in]`; `None` for no translation. Needs a first-layer bias.
        allow_nonfinite: accept NaN/Inf parameters.

    Returns:
        Flat parameters of the shape of `params`.

    Raises:
        UnsupportedSymmetryError: the first layer is a convolution, has no bias while `t` is
            given, or runs after a module other than `Flatten` / `Identity` / `Dropout`.
        ShapeMismatchError: wrong shapes, or a batch size that does not match `params`.

    Example:
        ```python
        theta = torch.tensor(0.3)
        rotation = torch.tensor([[theta.cos(), -theta.sin()], [theta.sin(), theta.cos()]])
        rotated = ngc.fold_input_affine(spec, params, rotation, torch.tensor([0.1, 0.0]))
        ```
    """
    flat, batched = _as_batch(spec, params, allow_nonfinite)
    first = spec.layers[0]
    if first.kind != "linear" or first.flattened:
        raise UnsupportedSymmetryError(
            f"the first layer {_module_name(first)!r} is a {first.kind} layer; an affine map of "
            "the input folds into a Linear first layer only"
        )
    odd_inputs = [type(m).__name__ for m in spec.input_ops if type(m) not in _IDENTITY_LIKE]
    if odd_inputs:
        raise UnsupportedSymmetryError(
            f"modules {odd_inputs} run before the first layer; the input map cannot be folded"
        )
    if t is not None and first.bias_key is None:
        raise UnsupportedSymmetryError(
            f"the first layer {_module_name(first)!r} has no bias to absorb the translation t"
        )
    b, d = flat.shape[0], first.in_features
    a = _batched(A, (d, d), "A", b, batched, flat)
    layers = _split(spec, flat)
    weight, bias = layers[0]
    w0 = weight[..., 0]  # [B, n_1, d]
    new_weight = torch.bmm(w0, a).unsqueeze(-1)
    if t is not None:
        assert bias is not None
        shift = _batched(t, (d,), "t", b, batched, flat)
        bias = bias + torch.bmm(w0, shift.unsqueeze(-1))[..., 0]
    layers[0] = (new_weight, bias)
    return _finish(_join(spec, layers), batched)


def fold_output_affine(
    spec: NetworkSpec,
    params: Tensor,
    A: Tensor,
    t: Tensor | None = None,
    *,
    allow_nonfinite: bool = False,
) -> Tensor:
    r"""Parameters of $h(x) = A f(x) + t$: an affine map of the output folded into the last layer.

    $$W_L' = A W_L, \qquad b_L' = A b_L + t .$$

    Args:
        spec: the architecture; nothing but `Identity` / `Flatten` / `Dropout` (and, after a
            last conv layer, `AdaptiveAvgPool2d`) may follow its last layer.
        params: flat parameters `[P]` or `[B, P]`.
        A: `[d_out, d_out]` or `[B, d_out, d_out]`.
        t: `[d_out]` or `[B, d_out]`; `None` for none. Needs a last-layer bias.
        allow_nonfinite: accept NaN/Inf parameters.

    Returns:
        Flat parameters of the shape of `params`.

    Raises:
        UnsupportedSymmetryError: a nonlinearity after the last layer, or `t` without a bias.
        ShapeMismatchError: wrong shapes, or a batch size that does not match `params`.
    """
    flat, batched = _as_batch(spec, params, allow_nonfinite)
    last = spec.layers[-1]
    allowed = _IDENTITY_LIKE + ((nn.AdaptiveAvgPool2d,) if last.kind == "conv2d" else ())
    after = [type(m).__name__ for m in last.ops_after if type(m) not in allowed]
    if after:
        raise UnsupportedSymmetryError(
            f"the last layer {_module_name(last)!r} is followed by {after}; an affine map of the "
            "output folds into a last layer with a linear output only"
        )
    if t is not None and last.bias_key is None:
        raise UnsupportedSymmetryError(
            f"the last layer {_module_name(last)!r} has no bias to absorb the translation t"
        )
    b, d = flat.shape[0], last.out_features
    a = _batched(A, (d, d), "A", b, batched, flat)
    layers = _split(spec, flat)
    weight, bias = layers[-1]
    new_weight = torch.einsum("bpo,boik->bpik", a, weight)
    if bias is not None:
        bias = torch.bmm(a, bias.unsqueeze(-1))[..., 0]
        if t is not None:
            bias = bias + _batched(t, (d,), "t", b, batched, flat)
    layers[-1] = (new_weight, bias)
    return _finish(_join(spec, layers), batched)


# -- per-neuron symmetries ----------------------------------------------------------------------


def flip_signs(
    spec: NetworkSpec,
    params: Tensor,
    signs: Sequence[Tensor | None],
    *,
    allow_nonfinite: bool = False,
) -> Tensor:
    r"""Negate hidden neurons of odd activations: $(w_j, b_j, W_{:, j}) \to s_j (w_j, b_j, W_{:, j})$.

    Since $\sigma(-z) = -\sigma(z)$, a neuron negated together with its outgoing weights computes
    the same contribution: the function is unchanged. Odd activations: `Sine`, `Tanh`,
    `Softsign`, `Tanhshrink`, a symmetric `Hardtanh`, none (identity), possibly followed by
    average pooling, `Flatten` or dropout. For a conv layer the neuron is an output channel: its
    kernels and bias are negated, and so is the next layer's input-channel slice.

    Args:
        spec: the architecture.
        params: flat parameters `[P]` or `[B, P]`.
        signs: one entry per hidden layer: a tensor of $\pm 1$ of shape `[n_l]` (the same for
            every network) or `[B, n_l]`, or `None` to leave the layer alone.
        allow_nonfinite: accept NaN/Inf parameters.

    Returns:
        Flat parameters of the shape of `params`.

    Raises:
        UnsupportedSymmetryError: signs given for a layer whose activation is not odd (ReLU).
        InvalidTransformError: an entry other than $\pm 1$.
        ShapeMismatchError: wrong shapes or batch size.
    """
    flat, batched = _as_batch(spec, params, allow_nonfinite)
    hidden = _hidden_layers(spec)
    values = _per_layer(
        spec,
        signs,
        "signs",
        flat.shape[0],
        batched,
        [hl.odd for hl in hidden],
        "its activation is not odd, so negating a neuron changes the function",
    )
    layers = _split(spec, flat)
    for hl, s in zip(hidden, values, strict=True):
        if s is None:
            continue
        if s.dtype == torch.bool or not bool(((s == 1) | (s == -1)).all()):
            raise InvalidTransformError(f"signs for {hl.name} must be +1 or -1")
        s = s.to(device=flat.device, dtype=flat.dtype)
        _scale_neurons(layers, hl.index, incoming=s, outgoing=s)
    return _finish(_join(spec, layers), batched)


def shift_phases(
    spec: NetworkSpec, params: Tensor, k: Sequence[Tensor | None], *, allow_nonfinite: bool = False
) -> Tensor:
    r"""Shift sine neurons by $k$ half-periods: $b_j \to b_j + k_j \pi / \omega_0$,
    $W_{:, j} \to (-1)^{k_j} W_{:, j}$.

    Since $\sin(\omega_0 z + k\pi) = (-1)^k \sin(\omega_0 z)$, the function is unchanged. Applies
    to layers whose activation is a [`Sine`][nngraph_core.Sine] (its $\omega_0$ is read from the
    module) with a bias, followed by nothing but odd or linear per-channel modules.

    Args:
        spec: the architecture.
        params: flat parameters `[P]` or `[B, P]`.
        k: one entry per hidden layer: an integer tensor `[n_l]` or `[B, n_l]`, or `None`.
        allow_nonfinite: accept NaN/Inf parameters.

    Returns:
        Flat parameters of the shape of `params`.

    Raises:
        UnsupportedSymmetryError: `k` given for a layer that is not a sine or has no bias.
        InvalidTransformError: `k` is not an integer tensor.
        ShapeMismatchError: wrong shapes or batch size.
    """
    flat, batched = _as_batch(spec, params, allow_nonfinite)
    hidden = _hidden_layers(spec)
    values = _per_layer(
        spec,
        k,
        "k",
        flat.shape[0],
        batched,
        [hl.w0 is not None and hl.has_bias for hl in hidden],
        "phase shifts need a Sine activation and a bias",
    )
    layers = _split(spec, flat)
    for hl, kl in zip(hidden, values, strict=True):
        if kl is None:
            continue
        if kl.is_floating_point() or kl.is_complex() or kl.dtype == torch.bool:
            raise InvalidTransformError(
                f"k for {hl.name} must be an integer tensor, not {kl.dtype}"
            )
        assert hl.w0 is not None
        kl = kl.to(flat.device)
        sign = (1 - 2 * torch.remainder(kl, 2)).to(flat.dtype)
        _scale_neurons(layers, hl.index, shift=kl.to(flat.dtype) * (math.pi / hl.w0), outgoing=sign)
    return _finish(_join(spec, layers), batched)


def rescale(
    spec: NetworkSpec,
    params: Tensor,
    scales: Sequence[Tensor | None],
    *,
    allow_nonfinite: bool = False,
) -> Tensor:
    r"""Rescale neurons of positively homogeneous activations: $(w_j, b_j) \to a_j (w_j, b_j)$,
    $W_{:, j} \to W_{:, j} / a_j$, $a_j > 0$.

    Since $\sigma(a z) = a \sigma(z)$ for $a > 0$, the function is unchanged. Positively
    homogeneous: `ReLU`, `LeakyReLU`, none (identity), possibly followed by max or average pooling,
    `Flatten` or dropout.

    Args:
        spec: the architecture.
        params: flat parameters `[P]` or `[B, P]`.
        scales: one entry per hidden layer: positive factors `[n_l]` or `[B, n_l]`, or `None`.
        allow_nonfinite: accept NaN/Inf parameters.

    Returns:
        Flat parameters of the shape of `params`.

    Raises:
        UnsupportedSymmetryError: scales given for a layer that is not positively homogeneous.
        InvalidTransformError: a scale that is not positive and finite.
        ShapeMismatchError: wrong shapes or batch size.
    """
    flat, batched = _as_batch(spec, params, allow_nonfinite)
    hidden = _hidden_layers(spec)
    values = _per_layer(
        spec,
        scales,
        "scales",
        flat.shape[0],
        batched,
        [hl.homogeneous for hl in hidden],
        "its activation is not positively homogeneous, so rescaling a neuron changes the function",
    )
    layers = _split(spec, flat)
    for hl, a in zip(hidden, values, strict=True):
        if a is None:
            continue
        if a.is_complex() or a.dtype == torch.bool:
            raise InvalidTransformError(f"scales for {hl.name} must be real, not {a.dtype}")
        a = a.to(device=flat.device, dtype=flat.dtype)
        if not bool(((a > 0) & torch.isfinite(a) & torch.isfinite(1 / a)).all()):
            raise InvalidTransformError(f"scales for {hl.name} must be positive and finite")
        _scale_neurons(layers, hl.index, incoming=a, outgoing=1 / a)
    return _finish(_join(spec, layers), batched)


# -- random group elements and canonical forms ----------------------------------------------------


def _permutation_index(spec: NetworkSpec, perms: Sequence[Tensor | None], like: Tensor) -> Tensor:
    """Index ``[B, P]`` with ``flat.gather(1, index)`` = every hidden layer permuted by ``perms``."""
    b, p = like.shape
    index = torch.arange(p, device=like.device).expand(b, p)
    layers = _split(spec, index)
    for h, perm in enumerate(perms):
        if perm is not None:
            _permute_neurons(layers, h, perm)
    return _join(spec, layers)


def random_symmetry(
    spec: NetworkSpec,
    params: Tensor,
    generator: torch.Generator,
    *,
    permute: bool = True,
    signs: bool = True,
    phases: bool = True,
    max_phase_shift: int = 2,
    scales: tuple[float, float] | None = None,
    allow_nonfinite: bool = False,
) -> Tensor:
    r"""A random function-preserving transformation, drawn independently for every network.

    Per hidden layer, as far as its activation allows (see [`flip_signs`][nngraph_core.flip_signs],
    [`shift_phases`][nngraph_core.shift_phases], [`rescale`][nngraph_core.rescale]):

    * a uniformly random sign per neuron of an odd activation (`signs=True`);
    * a uniform integer phase shift $k \in [-m, m]$, $m$ = `max_phase_shift`, per sine neuron
      with a bias (`phases=True`);
    * a log-uniform positive scale in `scales = (lo, hi)` per neuron of a positively homogeneous
      activation (ReLU; off when `scales` is `None`);
    * a uniformly random permutation of the layer's neurons (`permute=True`), a different one
      for every network, applied to the whole batch with one gather.

    Every random draw comes from `generator` (on its device), in a fixed order, so a seeded
    generator gives the same result on every run.

    Args:
        spec: the architecture.
        params: flat parameters `[P]` or `[B, P]`.
        generator: the source of randomness.
        permute: draw hidden permutations.
        signs: draw sign flips.
        phases: draw phase shifts.
        max_phase_shift: the largest $|k|$ (an integer $\ge 0$).
        scales: `(lo, hi)` with $0 < lo \le hi$: the range of the positive scales.
        allow_nonfinite: accept NaN/Inf parameters.

    Returns:
        Flat parameters of the shape of `params`, computing the same functions.

    Raises:
        InvalidTransformError: a negative `max_phase_shift` or an invalid `scales` range.

    Example:
        ```python
        gen = torch.Generator().manual_seed(0)
        augmented = ngc.random_symmetry(spec, params, gen, scales=(0.5, 2.0))  # [B, P]
        ```
    """
    flat, batched = _as_batch(spec, params, allow_nonfinite)
    if isinstance(max_phase_shift, bool) or not isinstance(max_phase_shift, int):
        raise InvalidTransformError(f"max_phase_shift must be an int, got {max_phase_shift!r}")
    if max_phase_shift < 0:
        raise InvalidTransformError(f"max_phase_shift must be >= 0, got {max_phase_shift}")
    if scales is not None:
        lo, hi = (float(v) for v in scales)
        if not (0 < lo <= hi < math.inf):
            raise InvalidTransformError(f"scales must be (lo, hi) with 0 < lo <= hi, got {scales}")
    b = flat.shape[0]
    dev = generator.device
    layers = _split(spec, flat)
    perms: list[Tensor | None] = []
    for hl in _hidden_layers(spec):
        shape = (b, hl.width)
        perm = None
        if permute:
            u = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)
            perm = u.argsort(dim=1)
            perm = perm.to(flat.device)
        perms.append(perm)
        if signs and hl.odd:
            s = 1 - 2 * torch.randint(0, 2, shape, generator=generator, device=dev)
            s = s.to(device=flat.device, dtype=flat.dtype)
            _scale_neurons(layers, hl.index, incoming=s, outgoing=s)
        if phases and hl.w0 is not None and hl.has_bias and max_phase_shift > 0:
            m = max_phase_shift
            k = torch.randint(-m, m + 1, shape, generator=generator, device=dev).to(flat.device)
            sign = (1 - 2 * torch.remainder(k, 2)).to(flat.dtype)
            shift = k.to(flat.dtype) * (math.pi / hl.w0)
            _scale_neurons(layers, hl.index, shift=shift, outgoing=sign)
        if scales is not None and hl.homogeneous:
            u = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)
            a = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
            a = a.to(device=flat.device, dtype=flat.dtype)
            _scale_neurons(layers, hl.index, incoming=a, outgoing=1 / a)
    out = _join(spec, layers)
    if permute and perms:
        out = out.gather(1, _permutation_index(spec, perms, out))
    return _finish(out, batched)


def _lexsort(*keys: Tensor) -> Tensor:
    """Per row, the stable order sorting by ``keys[0]``, then ``keys[1]``, ... (all ``[B, n]``)."""
    order = torch.argsort(keys[-1], dim=1, stable=True)
    for key in reversed(keys[:-1]):
        order = order.gather(1, torch.argsort(key.gather(1, order), dim=1, stable=True))
    return order


def canonicalize(
    spec: NetworkSpec,
    params: Tensor,
    *,
    permutations: bool = True,
    allow_nonfinite: bool = False,
) -> Tensor:
    r"""One representative per orbit of the symmetries: the same output for every network that
    [`random_symmetry`][nngraph_core.random_symmetry] can reach, computing the same function.

    Hidden layers are processed in order (the canonical form of layer $l$ depends on its incoming
    weights, which the canonical form of layer $l - 1$ has fixed), per neuron:

    * **sine** $\sin(\omega_0(w^\top x + b))$: the phase $\varphi = \omega_0 b$ is shifted by the
      nearest multiple $k\pi$ (outgoing weights times $(-1)^k$) into $[-\pi/2, \pi/2]$ and the
      neuron negated if it is negative, so that $\varphi \in [0, \pi/2]$;
    * **other odd activations** (tanh, identity): negated so that $b \ge 0$;
    * **positively homogeneous activations** (ReLU): the incoming row $(w, b)$ scaled to unit
      $L_2$ norm, the outgoing weights by the inverse (an all-zero row is left as it is);
      identity layers get both this and the sign rule.

    With `permutations=True` the neurons of every hidden layer are then sorted by their canonical
    bias, ties (e.g. a layer without bias) broken by the sum of their canonical incoming weights,
    then by the sum of their canonical outgoing weights (which separates neurons with identical
    incoming weights, as in a ReLU layer without bias fed by a single neuron). These keys do not
    depend on the order of the other layers' neurons, so the result is invariant under hidden
    permutations as long as no two neurons of a layer tie in all three keys.

    A neuron with $b = 0$ exactly (also every neuron of a layer without bias) is negated so that
    the sum of its incoming weights is $\ge 0$.

    Discontinuities: the canonical form is a piecewise-smooth function of the parameters that
    jumps where a choice flips — a sine phase at $\varphi \equiv \pi/2 \pmod \pi$ (the incoming
    weights change sign; both sides are valid representatives: $\cos$ is even) or at
    $\varphi \equiv 0 \pmod \pi$ (incoming and outgoing weights change sign), a tanh bias
    crossing 0, a ReLU row near zero, two neurons whose sort keys cross (they swap places). Networks near these sets
    have far-apart canonical forms although their functions are close, and rounding may pick
    either side of a boundary. Other symmetries (e.g. the full linear symmetry of identity
    layers) are not removed.

    Args:
        spec: the architecture.
        params: flat parameters `[P]` or `[B, P]`.
        permutations: also sort each hidden layer's neurons.
        allow_nonfinite: accept NaN/Inf parameters (the result is then unspecified).

    Returns:
        Flat parameters of the shape of `params`, computing the same functions.

    Example:
        ```python
        gen = torch.Generator().manual_seed(0)
        same = ngc.canonicalize(spec, ngc.random_symmetry(spec, params, gen))
        torch.testing.assert_close(same, ngc.canonicalize(spec, params))
        ```
    """
    flat, batched = _as_batch(spec, params, allow_nonfinite)
    layers = _split(spec, flat)
    for hl in _hidden_layers(spec):
        h = hl.index
        if hl.homogeneous:
            weight, bias = layers[h]
            sq = weight.square().sum(dim=(2, 3))
            norm = (sq if bias is None else sq + bias.square()).sqrt()
            safe = torch.where(norm > 0, norm, torch.ones_like(norm))
            # Divided, not multiplied by 1 / norm: a one-entry row becomes exactly ±1, so
            # neurons that are equal up to scale tie exactly in the sort keys below.
            layers[h] = (weight / safe[:, :, None, None], None if bias is None else bias / safe)
            _scale_neurons(layers, h, outgoing=safe)
        if hl.odd:
            weight, bias = layers[h]
            wsum = weight.sum(dim=(2, 3))
            if hl.w0 is not None and bias is not None:
                half = math.pi / hl.w0
                k = torch.round(bias * (hl.w0 / math.pi))
                r = bias - k * half
                neg = (r < 0) | ((r == 0) & (wsum < 0))
                s = torch.where(neg, -1.0, 1.0).to(flat.dtype)
                layers[h] = (weight, bias - k * half)
                _scale_neurons(layers, h, incoming=s, outgoing=s * (1 - 2 * torch.remainder(k, 2)))
            else:
                b0 = torch.zeros_like(wsum) if bias is None else bias
                neg = (b0 < 0) | ((b0 == 0) & (wsum < 0))
                s = torch.where(neg, -1.0, 1.0).to(flat.dtype)
                _scale_neurons(layers, h, incoming=s, outgoing=s)
    if permutations:
        # Every key is invariant under the permutations of the other layers (sums over their
        # neurons), so the orders can be found first and applied after.
        orders = []
        for hl in _hidden_layers(spec):
            weight, bias = layers[hl.index]
            wsum = weight.sum(dim=(2, 3))
            primary = torch.zeros_like(wsum) if bias is None else bias
            outgoing = layers[hl.index + 1][0].sum(dim=(1, 3))
            orders.append(_lexsort(primary, wsum, outgoing))
        for h, order in enumerate(orders):
            _permute_neurons(layers, h, order)
    return _finish(_join(spec, layers), batched)
