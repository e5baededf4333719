"""NFN (Zhou et al., NeurIPS 2023) through the `nfn` package: NP / HNP equivariant layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from ._common import Baseline, batch_params, relu_mlp
from ._normalize import ParamNormalizer

__all__ = ["NFNBaseline", "to_weight_space_features"]


def _require_nfn() -> Any:
    try:
        import nfn
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "NFNBaseline needs the nfn package: pip install 'nngraph-layers[nfn]'"
        ) from exc
    return nfn


def to_weight_space_features(spec: ngc.NetworkSpec, params: Tensor) -> Any:
    """`nfn.common.WeightSpaceFeatures` (one channel) of flat parameters `[B, P]`.

    Weights become `[B, 1, out, in]` (linear) or `[B, 1, out, in, kh, kw]` (conv, and a linear
    layer fed by a flattened `[C, h, w]` map, whose `(h, w)` block per channel acts like a
    kernel); biases `[B, 1, out]` (zeros for a layer without bias, which is still invariant).
    """
    nfn = _require_nfn()
    b = params.shape[0]
    offsets = spec.param_offsets()
    weights, biases = [], []
    for layer in spec.layers:
        off, shape = offsets[layer.weight_key]
        n = int(torch.Size(shape).numel())
        w = params[:, off : off + n]
        if layer.kind == "conv2d" or layer.flattened:
            w = w.reshape(b, 1, layer.out_features, layer.in_features, *layer.kernel_size)
        else:
            w = w.reshape(b, 1, layer.out_features, layer.in_features)
        weights.append(w)
        if layer.bias_key is not None:
            boff, _ = offsets[layer.bias_key]
            biases.append(params[:, boff : boff + layer.out_features].reshape(b, 1, -1))
        else:
            biases.append(params.new_zeros(b, 1, layer.out_features))
    return nfn.common.WeightSpaceFeatures(weights, biases)


class NFNBaseline(Baseline):
    r"""Neural functional network classifier built from the `nfn` package's layers.

    `num_layers` equivariant linear layers (`HNPLinear` -- hidden-neuron permutations only,
    inputs and outputs keep their identities -- or `NPLinear` with learned input/output
    embeddings) with a nonlinearity between them, an invariant pooling (`HNPPool` / `NPPool`), then
    an MLP head. Weights are standardised per layer first (`ParamNormalizer`). The
    comparison table's "NFN" row (DESIGN §4). Needs at least two layers. HNP's layers grow
    with `n_in * n_out * kh * kw`: for a CNN, pool before the linear layers rather than flatten.

    Args:
        spec: the architecture (MLP, or CNN whose last layers are linear).
        num_outputs: classes / targets.
        mode: `"hnp"` or `"np"`.
        hidden: channels of the equivariant layers.
        num_layers: number of equivariant layers.
        head_hidden: hidden widths of the MLP head.
        dropout: dropout in the head.
        activation: the nonlinearity between the equivariant layers (applied to every weight and
            bias feature; ReLU as in the NFN paper).

    Shapes:
        - input: [`GraphBatch`][nngraph_core.GraphBatch] of `B` networks of `spec`
        - output: `[B, num_outputs]`
    """

    def __init__(
        self,
        spec: ngc.NetworkSpec,
        num_outputs: int,
        *,
        mode: Literal["hnp", "np"] = "hnp",
        hidden: int = 32,
        num_layers: int = 3,
        head_hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        nfn = _require_nfn()
        if mode not in ("hnp", "np"):
            raise ValueError(f"mode must be 'hnp' or 'np', not {mode!r}")
        if spec.num_layers < 2:
            raise ngc.ArchitectureError("the nfn layers need a network with at least two layers")
        self.spec = spec
        self.mode = mode
        self.normalizer = ParamNormalizer(spec)
        example = to_weight_space_features(spec, torch.zeros(1, spec.num_params))
        self.nfn_spec = nfn.common.network_spec_from_wsfeat(example)
        layers: list[nn.Module] = []
        c_in = 1
        for _ in range(num_layers):
            if mode == "hnp":
                layers.append(nfn.layers.HNPLinear(self.nfn_spec, c_in, hidden))
            else:
                layers.append(nfn.layers.NPLinear(self.nfn_spec, c_in, hidden, io_embed=True))
            layers.append(nfn.layers.TupleOp(activation()))
            c_in = hidden
        self.equivariant = nn.Sequential(*layers)
        pool = nfn.layers.HNPPool if mode == "hnp" else nfn.layers.NPPool
        self.pool = pool(self.nfn_spec)
        width = pool.get_num_outs(self.nfn_spec) * hidden
        self.head = nn.Sequential(
            nn.Flatten(start_dim=1), *relu_mlp(width, head_hidden, num_outputs, dropout)
        )

    def forward(self, batch: ngc.GraphBatch) -> Tensor:
        params = self.normalizer(batch_params(batch, self.spec, "NFNBaseline"))
        wsfeat = self.equivariant(to_weight_space_features(self.spec, params))
        out: Tensor = self.head(self.pool(wsfeat))
        return out
