"""Helpers shared by the baselines."""

from __future__ import annotations

from torch import Tensor

import nngraph_core as ngc

__all__ = ["batch_params"]


def batch_params(batch: ngc.GraphBatch, spec: ngc.NetworkSpec, model: str) -> Tensor:
    """Flat parameters ``[B, P]`` of a batch of one architecture ``spec`` (one scatter)."""
    if batch.template is None or batch.template.spec != spec:
        raise ngc.ShapeMismatchError(
            f"{model} needs a batch of its own architecture built by GraphTemplate.batch "
            f"({spec.describe()})"
        )
    return batch.params()
