"""Run a whole zoo of one architecture at once, from flat parameter vectors.

[`functional_forward`][nngraph_probe.functional_forward] evaluates `B` networks of one
[`NetworkSpec`][nngraph_core.NetworkSpec] on `K` inputs with batched kernels and no Python loop over
the networks:

* a linear layer is one batched matmul (`baddbmm`); when the input is shared by all networks
  (the first layer with common probe inputs) it is one `[K, F] x [F, B*O]` matmul;
* a conv layer is one *grouped* convolution: the `B` networks become `B` channel groups of a
  single `conv2d` call (`[K, B*C, H, W]` input, `[B*O, C, kh, kw]` weight, `groups=B`); the
  shared first layer is an ungrouped conv with the `B*O` kernels stacked as output channels.
  The conv part of the network is kept in this `K`-major layout, so no transposes are needed
  between conv layers. `torch.func.vmap` over `F.conv2d` lowers to the same grouped call;
  `benchmarks/bench_probe.py` times both (on a loaded 2-core machine they were within noise,
  266-302 ms vs 271 ms for 32 three-layer CNNs on 16 images), and the explicit form needs no
  functorch transform and keeps the layout under our control;
* the parameter-free modules of the spec (`input_ops` and each layer's `ops_after`:
  activations, pooling, flatten) run on the batch with `B` and `K` merged into one leading
  dimension, which is exactly what each network would see with a batch of `B*K` inputs.
  Dropout modules are skipped: the functional forward is an evaluation-mode forward.

Gradients flow to both the parameters and the inputs (learned probe inputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nngraph_core as ngc

from .errors import ArchitectureVariantError

__all__ = [
    "ArchitectureLike",
    "NodeActivations",
    "functional_forward",
    "resolve_spec",
    "resolve_variants",
]

#: `[B, K, n_l]` (dense layers) or `[B, K, C_l, h, w]` (conv maps), one per node layer.
NodeActivations = list[Tensor]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def resolve_spec(template_or_spec: ngc.GraphTemplate | ngc.NetworkSpec) -> ngc.NetworkSpec:
    """The [`NetworkSpec`][nngraph_core.NetworkSpec] of a template or spec."""
    if isinstance(template_or_spec, ngc.GraphTemplate):
        return template_or_spec.spec
    if isinstance(template_or_spec, ngc.NetworkSpec):
        return template_or_spec
    raise TypeError(
        f"expected a GraphTemplate or NetworkSpec, got {type(template_or_spec).__name__}"
    )


def input_rank(spec: ngc.NetworkSpec) -> int | None:
    """Number of dimensions of one input (without batch), or `None` if it cannot be told."""
    if spec.input_shape is not None:
        return len(spec.input_shape)
    if spec.layers[0].kind == "conv2d":
        return 3
    if not spec.input_ops:
        return 1
    return None


def _apply_ops(ops: Sequence[nn.Module], h: Tensor, lead: int) -> tuple[Tensor, Tensor | None]:
    """Run `ops` on `h` whose first `lead` dims are batch dims (merged for the call).

    Returns the result and the node map: the last 4-D feature map seen on the way
    (`[*lead, C, h, w]`) that has more than one pixel -- the map after the activation and any
    local pooling, before a *global* pooling to `1 x 1` and before any flatten -- or the last
    4-D map if all are `1 x 1`, or `None` if no op produced one. The per-channel node values
    of a conv layer are read off it (its spatial mean equals the globally average-pooled value).
    """
    shape = h.shape[:lead]
    x = h.reshape(-1, *h.shape[lead:])
    last_map = x if x.dim() == 4 else None
    for op in ops:
        if isinstance(op, _DROPOUT):
            continue
        x = op(x)
        if x.dim() == 4 and (
            last_map is None or x.shape[-2:].numel() > 1 or last_map.shape[-2:].numel() == 1
        ):
            last_map = x
    out = x.reshape(*shape, *x.shape[1:])
    return out, (last_map.reshape(*shape, *last_map.shape[1:]) if last_map is not None else None)


def _conv_padding(layer: ngc.LayerSpec) -> tuple[int, int, int, int]:
    """`F.pad` amounts `(left, right, top, bottom)` of a conv layer (as `nn.Conv2d` does)."""
    kh, kw = layer.kernel_size
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0, 0, 0)
        # "same": total padding d * (k - 1), the extra pixel on the right / bottom.
        th, tw = layer.dilation[0] * (kh - 1), layer.dilation[1] * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = layer.padding
    return (pw, pw, ph, ph)


def _conv(
    h: Tensor, weight: Tensor, bias: Tensor | None, layer: ngc.LayerSpec, groups: int
) -> Tensor:
    """`conv2d` of `h [K, groups*C, H, W]` with the stacked kernels `[groups*O, C, kh, kw]`."""
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        pad = _conv_padding(layer)
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        if any(pad):
            h = F.pad(h, pad, mode=mode)
        padding: tuple[int, int] = (0, 0)
    else:
        padding = layer.padding
    return F.conv2d(h, weight, bias, layer.stride, padding, layer.dilation, groups)


ArchitectureLike = ngc.GraphTemplate | ngc.NetworkSpec
"""A [`GraphTemplate`][nngraph_core.GraphTemplate] or a [`NetworkSpec`][nngraph_core.NetworkSpec]."""


def resolve_variants(
    template_or_specs: ArchitectureLike | Sequence[ArchitectureLike],
    spec_index: Tensor | None,
    batch_size: int,
) -> tuple[list[ngc.NetworkSpec], Tensor | None]:
    """The specs and the checked per-network index `[B]` of a call with architecture variants.

    A single template / spec needs no index (`None` is returned). A sequence of variants must
    share one parameter layout (the same state-dict keys, shapes and layers; only the
    parameter-free modules -- activations, pooling -- may differ) and needs `spec_index`,
    a `[B]` integer tensor with values in `[0, len(variants))`.
    """
    if isinstance(template_or_specs, ngc.GraphTemplate | ngc.NetworkSpec):
        if spec_index is not None:
            raise ArchitectureVariantError(
                "spec_index= selects among several architecture variants: pass a sequence of "
                "templates / specs with it, not a single one"
            )
        return [resolve_spec(template_or_specs)], None
    specs = [resolve_spec(t) for t in template_or_specs]
    if not specs:
        raise ArchitectureVariantError("the sequence of architecture variants is empty")
    first = specs[0]
    for v, spec in enumerate(specs[1:], start=1):
        if _layout(spec) != _layout(first):
            raise ArchitectureVariantError(
                f"architecture variant {v} ({spec.describe()}) does not share the parameter "
                f"layout of variant 0 ({first.describe()}): only parameter-free modules such as "
                "activations may differ"
            )
    if spec_index is None:
        if len(specs) == 1:
            return specs, None
        raise ArchitectureVariantError(
            f"{len(specs)} architecture variants need spec_index= ([B] integers): which variant "
            "each network is"
        )
    if spec_index.is_floating_point() or spec_index.is_complex() or spec_index.dtype == torch.bool:
        raise ArchitectureVariantError(
            f"spec_index must hold integers, got dtype {spec_index.dtype}"
        )
    if spec_index.shape != (batch_size,):
        raise ArchitectureVariantError(
            f"spec_index must be [B={batch_size}] (one variant per network), got "
            f"{tuple(spec_index.shape)}"
        )
    if batch_size and (int(spec_index.min()) < 0 or int(spec_index.max()) >= len(specs)):
        raise ArchitectureVariantError(
            f"spec_index values must be in [0, {len(specs)}), got "
            f"[{int(spec_index.min())}, {int(spec_index.max())}]"
        )
    return specs, spec_index.long()


def _layout(spec: ngc.NetworkSpec) -> tuple[object, ...]:
    """What architecture variants must share: parameters and the layers' parameterised part."""
    layers = tuple(layer.signature()[:-1] for layer in spec.layers) if spec.is_chain else ()
    return (spec.param_keys, spec.param_shapes, layers, spec.is_chain)


def functional_forward(
    template_or_spec: ArchitectureLike | Sequence[ArchitectureLike],
    params: Tensor,
    x: Tensor,
    *,
    spec_index: Tensor | None = None,
    return_activations: bool = False,
    shared_input: bool | None = None,
) -> Tensor | tuple[Tensor, NodeActivations]:
    r"""Evaluate `B` networks of one architecture on `K` inputs each, vectorised over `B`.

    Computes `y[b, k] = f_{\theta_b}(x_k)` (or `f_{\theta_b}(x_{b, k})`) exactly as running
    the `b`-th `nn.Module` on the inputs would (in evaluation mode).

    **Per-network architecture variants.** Networks that share one parameter layout but differ
    in their parameter-free modules (a zoo where every network has its own activation, relu or
    tanh) are run together: pass the variants as a sequence and `spec_index` `[B]`, the variant
    of every network. The batch is split by variant, each group runs as one vectorised forward
    (so the conv work is done once per network, as with a single architecture), and the results
    are put back in batch order.

    Args:
        template_or_spec: the architecture, or a sequence of architecture variants that share
            one parameter layout (see above).
        params: flat parameters `[B, P]` in state-dict order (`template.flatten` order).
        x: inputs, `[K, *input_shape]` shared by every network or `[B, K, *input_shape]`.
            Cast to `params.dtype`.
        spec_index: `[B]` integers, the variant of each network (with a sequence of variants).
        return_activations: also return each node layer's values (see Returns).
        shared_input: whether `x` is shared; inferred from its rank when the input rank is
            known (inputs to an MLP, an image to a CNN, or `spec.input_shape` set).

    Returns:
        The outputs `[B, K, *output_shape]`; with `return_activations`, also a list of
        `L + 1` tensors, one per node layer: the inputs after `spec.input_ops`, each layer's
        output after its parameter-free modules (for a conv layer its node map, `[B, K, C, h, w]`:
        the last feature map with more than one pixel, i.e. after the activation and any local
        pooling, before a global pooling to `1 x 1` and before any flatten), and the outputs.
        Dense layers give `[B, K, n_l]`.

    Raises:
        ArchitectureVariantError: variants that do not share a parameter layout, or a
            `spec_index` of the wrong shape, dtype or range.
        nngraph_core.ShapeMismatchError: `params` or `x` of the wrong shape.

    Shapes:
        - params: `[B, P]`
        - x: `[K, *input_shape]` or `[B, K, *input_shape]`
        - spec_index: `[B]`
        - output: `[B, K, *output_shape]`

    Examples:
        >>> y = functional_forward(template, params, coords)   # [B, 784, 1]
        >>> y = functional_forward([relu_t, tanh_t], params, images, spec_index=act)  # [B, K, 10]
    """
    specs, index = resolve_variants(template_or_spec, spec_index, params.shape[0])
    if index is None:
        return _forward(specs[0], params, x, return_activations, shared_input)
    if shared_input is None:
        rank = input_rank(specs[0])
        shared_input = rank is not None and x.dim() == rank + 1
    shared = shared_input

    def run(spec: ngc.NetworkSpec, ids: Tensor | None) -> list[Tensor]:
        p = params if ids is None else params[ids]
        xs = x if shared or ids is None else x[ids]
        r = _forward(spec, p, xs, return_activations, shared)
        return [r[0], *r[1]] if isinstance(r, tuple) else [r]

    parts = by_variant(specs, index, run)
    return (parts[0], parts[1:]) if return_activations else parts[0]


def by_variant(
    specs: Sequence[ngc.NetworkSpec],
    index: Tensor,
    fn: Callable[[ngc.NetworkSpec, Tensor | None], list[Tensor]],
) -> list[Tensor]:
    """Run `fn(spec, ids)` once per variant present in `index` (`ids`: the networks of that
    variant) and put the returned per-network tensors `[B_v, ...]` back in batch order `[B, ...]`.

    A batch of one variant is a single call with `ids = None` (all networks, nothing copied).
    """
    groups = [(v, torch.nonzero(index == v).flatten()) for v in range(len(specs))]
    groups = [(v, ids) for v, ids in groups if ids.numel() > 0]
    if len(groups) == 1:
        return fn(specs[groups[0][0]], None)
    results = [fn(specs[v], ids) for v, ids in groups]
    # rows of the concatenated groups -> batch order
    order = torch.argsort(torch.cat([ids for _, ids in groups]))
    return [
        _cat_variants(list(parts), "outputs" if i == 0 else f"result {i}")[order]
        for i, parts in enumerate(zip(*results, strict=True))
    ]


def _cat_variants(parts: list[Tensor], what: str) -> Tensor:
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise ArchitectureVariantError(
            f"the architecture variants give {what} of different shapes {sorted(shapes)}"
        )
    return torch.cat(parts)


def _forward(
    spec: ngc.NetworkSpec,
    params: Tensor,
    x: Tensor,
    return_activations: bool,
    shared_input: bool | None,
) -> Tensor | tuple[Tensor, NodeActivations]:
    """[`functional_forward`][nngraph_probe.functional_forward] of one architecture."""
    if params.dim() != 2 or params.shape[1] != spec.num_params:
        raise ngc.ShapeMismatchError(
            f"expected params [B, {spec.num_params}], got {tuple(params.shape)}"
        )
    b = params.shape[0]
    x = x.to(dtype=params.dtype, device=params.device)
    if shared_input is None:
        rank = input_rank(spec)
        if rank is None:
            raise ngc.ShapeMismatchError(
                "cannot tell whether x is shared: pass shared_input=, or build the spec with "
                "input_shape="
            )
        if x.dim() == rank + 1:
            shared_input = True
        elif x.dim() == rank + 2 and x.shape[0] == b:
            shared_input = False
        else:
            raise ngc.ShapeMismatchError(
                f"x {tuple(x.shape)} is neither [K, *input] nor [B={b}, K, *input] "
                f"with inputs of rank {rank}"
            )
    offsets = spec.param_offsets()

    def view(key: str) -> Tensor:
        off, shape = offsets[key]
        return params[:, off : off + math.prod(shape)].view(b, *shape)

    # State: h with leading dims [K] (shared, first layer only), [B, K] (B-major, dense part)
    # or [K, B] (K-major: the layout of the grouped convolutions).
    h, node_map = _apply_ops(spec.input_ops, x, 1 if shared_input else 2)
    layout = "shared" if shared_input else "bk"
    acts: NodeActivations = []
    if return_activations:
        first = node_map if node_map is not None and spec.layers[0].kind == "conv2d" else h
        acts.append(first.expand(b, *first.shape) if shared_input else first)

    for layer in spec.layers:
        weight = view(layer.weight_key)
        bias = view(layer.bias_key) if layer.bias_key is not None else None
        o = layer.out_features
        if layer.kind == "conv2d":
            if _is_dense(h, layout):
                raise ngc.ArchitectureError("a conv layer receives a flattened input")
            if layout == "shared":  # [K, C, H, W]: one ungrouped conv over all B*O kernels
                y = _conv(h, weight.reshape(b * o, *weight.shape[2:]), _flat(bias), layer, 1)
            else:
                if layout == "bk":  # [B, K, C, H, W] -> [K, B*C, H, W]
                    h = h.transpose(0, 1)
                k = h.shape[0]
                y = _conv(
                    h.reshape(k, -1, *h.shape[-2:]),
                    weight.reshape(b * o, *weight.shape[2:]),
                    _flat(bias),
                    layer,
                    b,
                )
            k = y.shape[0]
            h, node_map = _apply_ops(layer.ops_after, y.view(k, b, o, *y.shape[-2:]), 2)
            layout = "kb"
            if return_activations:
                m = node_map if node_map is not None else h
                acts.append(m.transpose(0, 1))
        else:
            if layout == "kb":
                h = h.transpose(0, 1)
                layout = "bk"
            lead = 1 if layout == "shared" else 2
            hin = h.reshape(*h.shape[:lead], -1)
            wt = weight.reshape(b, o, -1).transpose(1, 2)  # [B, F, O]
            if layout == "shared":
                y = torch.matmul(hin, wt)  # [K, F] x [B, F, O] -> [B, K, O]
                if bias is not None:
                    y = y + bias.unsqueeze(1)
            elif bias is not None:
                y = torch.baddbmm(bias.unsqueeze(1), hin, wt)
            else:
                y = torch.bmm(hin, wt)
            h, _ = _apply_ops(layer.ops_after, y, 2)
            layout = "bk"
            if return_activations:
                acts.append(h)

    out = h.transpose(0, 1) if layout == "kb" else h
    if return_activations:
        return out, acts
    return out


def _is_dense(h: Tensor, layout: str) -> bool:
    """Whether the state `h` has no spatial dims (`[.., F]` instead of `[.., C, H, W]`)."""
    lead = 1 if layout == "shared" else 2
    return h.dim() - lead < 3


def _flat(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.reshape(-1)
