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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nngraph_core as ngc

__all__ = ["NodeActivations", "functional_forward", "resolve_spec"]

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

    Returns the result and the last 4-D feature map seen on the way (`[*lead, C, h, w]`), or
    `None` if no op produced one (the per-channel node values of a conv layer are read off it,
    before any flatten).
    """
    shape = h.shape[:lead]
    x = h.reshape(-1, *h.shape[lead:])
    last_map = x if x.dim() == 4 else None
    for op in ops:
        if isinstance(op, _DROPOUT):
            continue
        x = op(x)
        if x.dim() == 4:
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


def functional_forward(
    template_or_spec: ngc.GraphTemplate | ngc.NetworkSpec,
    params: Tensor,
    x: Tensor,
    *,
    return_activations: bool = False,
    shared_input: bool | None = None,
) -> Tensor | tuple[Tensor, NodeActivations]:
    r"""Evaluate `B` networks of one architecture on `K` inputs each, vectorised over `B`.

    Computes `y[b, k] = f_{\theta_b}(x_k)` (or `f_{\theta_b}(x_{b, k})`) exactly as running
    the `b`-th `nn.Module` on the inputs would (in evaluation mode).

    Args:
        template_or_spec: the architecture.
        params: flat parameters `[B, P]` in state-dict order (`template.flatten` order).
        x: inputs, `[K, *input_shape]` shared by every network or `[B, K, *input_shape]`.
            Cast to `params.dtype`.
        return_activations: also return each node layer's values (see Returns).
        shared_input: whether `x` is shared; inferred from its rank when the input rank is
            known (inputs to an MLP, an image to a CNN, or `spec.input_shape` set).

    Returns:
        The outputs `[B, K, *output_shape]`; with `return_activations`, also a list of
        `L + 1` tensors, one per node layer: the inputs after `spec.input_ops`, each layer's
        output after its parameter-free modules (for a conv layer the last feature map before
        any flatten, `[B, K, C, h, w]`), and the outputs. Dense layers give `[B, K, n_l]`.

    Shapes:
        - params: `[B, P]`
        - x: `[K, *input_shape]` or `[B, K, *input_shape]`
        - output: `[B, K, *output_shape]`

    Examples:
        >>> y = functional_forward(template, params, coords)   # [B, 784, 1]
    """
    spec = resolve_spec(template_or_spec)
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
