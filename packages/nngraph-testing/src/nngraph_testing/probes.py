"""A deterministic, permutation-equivariant stand-in for probe features in model tests."""

from __future__ import annotations

from torch import Tensor

import nngraph_core as ngc

__all__ = ["STRUCTURAL_PROBE_DIM", "batch_with_structural_probes", "structural_probe_features"]

#: width `K` of `structural_probe_features`.
STRUCTURAL_PROBE_DIM = 4


def structural_probe_features(template: ngc.GraphTemplate, params: Tensor) -> Tensor:
    """`[B*N, 4]` per-node features: the node's bias, the sum and the sum of squares of its
    incoming weights, and the sum of its outgoing weights.

    A function of the node's own parameters and its incident edges only, so it permutes with
    the hidden neurons exactly like real probe activations do, without running the networks.
    """
    import torch

    nodes, edges = template.features(params)  # [B, N, 1], [B, E, d]
    b, n = nodes.shape[0], template.num_nodes
    src = template.edge_index[0].to(params.device)
    dst = template.edge_index[1].to(params.device)
    w = edges.sum(-1)
    w2 = (edges * edges).sum(-1)
    zeros = nodes.new_zeros(b, n)
    sum_in = zeros.index_add(1, dst, w)
    sq_in = zeros.index_add(1, dst, w2)
    sum_out = zeros.index_add(1, src, w)
    out = torch.stack([nodes[..., 0], sum_in, sq_in, sum_out], dim=-1)
    return out.reshape(b * n, STRUCTURAL_PROBE_DIM)


def batch_with_structural_probes(template: ngc.GraphTemplate, params: Tensor) -> ngc.GraphBatch:
    """`template.batch(params)` carrying
    [`structural_probe_features`][nngraph_testing.structural_probe_features]."""
    batch = template.batch(params)
    batch.probe_features = structural_probe_features(template, params)
    return batch
