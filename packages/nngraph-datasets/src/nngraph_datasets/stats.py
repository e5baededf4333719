"""Per-layer weight statistics, to check a zoo against the published one (DESIGN §5)."""

from __future__ import annotations

from torch import Tensor

from .inr import param_slices

__all__ = ["PUBLISHED_STD", "layer_stats"]

#: Per-layer std of the published zoos (from the reference code's data configs).
PUBLISHED_STD: dict[str, dict[str, float]] = {
    "mnist": {"w0": 0.063, "w1": 0.018, "w2": 0.118, "b0": 0.021, "b1": 0.011},
    "fashion-mnist": {"w0": 0.078, "w1": 0.032, "w2": 0.135, "b0": 0.029, "b1": 0.017},
}

_SHORT = {"seq.0.weight": "w0", "seq.1.weight": "w1", "seq.2.weight": "w2",
          "seq.0.bias": "b0", "seq.1.bias": "b1", "seq.2.bias": "b2"}  # fmt: skip


def layer_stats(params: Tensor, hidden: int = 32) -> dict[str, dict[str, float]]:
    """Mean and std of each parameter tensor over a zoo `[n, P]` ->
    `{"w0": {"mean", "std"}, ...}`."""
    out = {}
    for key, s in param_slices(hidden).items():
        v = params[:, s].double()
        out[_SHORT[key]] = {"mean": float(v.mean()), "std": float(v.std())}
    return out
