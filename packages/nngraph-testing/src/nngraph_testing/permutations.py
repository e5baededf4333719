"""Legal and illegal permutations acting on flat parameter vectors.

A *legal* hidden permutation moves the rows of `W_l` and `b_l` together with the columns of
`W_{l+1}`; it is a symmetry. An *illegal* one breaks that coupling (only the incoming weights,
only the outgoing weights) or moves input/output neurons; it changes the function, so a model
must notice it.
"""

from __future__ import annotations

import torch
from torch import Tensor

import nngraph_core as ngc

__all__ = ["partial_permutation_index"]


def partial_permutation_index(
    template: ngc.GraphTemplate,
    node_layer: int,
    perm: Tensor,
    *,
    incoming: bool = True,
    outgoing: bool = True,
) -> Tensor:
    """Index `pi` [P] (use `params[..., pi]`) that permutes the neurons of `node_layer` by
    `perm` in their bias and incoming weights (if `incoming`) and in the next layer's weights
    (if `outgoing`). With both flags and a hidden layer it equals the legal
    [`param_permutation`][nngraph_core.GraphTemplate.param_permutation]; anything else is illegal.
    """
    spec = template.spec
    n = spec.widths[node_layer]
    if perm.numel() != n:
        raise ValueError(f"node layer {node_layer} has {n} neurons, perm has {perm.numel()}")
    sigma = torch.arange(template.num_nodes)
    sl = template.layer_nodes(node_layer)
    sigma_layer = sigma.clone()
    sigma_layer[sl] = perm.cpu() + sl.start
    pi = torch.arange(template.num_params)
    if incoming and node_layer > 0:
        nodes = torch.arange(sl.start, sl.stop)
        valid = template.node_param[nodes] >= 0
        pi[template.node_param[nodes][valid]] = template.node_param[sigma_layer[nodes]][valid]
    # Edge e of a parameterised layer k joins node layer k to k + 1; map it through sigma_layer on
    # the side(s) that are permuted.
    for k in range(spec.num_layers):
        touches_in = incoming and k + 1 == node_layer
        touches_out = outgoing and k == node_layer
        if not (touches_in or touches_out):
            continue
        es = template.layer_edges(k)
        src = template.edge_index[0, es]
        dst = template.edge_index[1, es]
        if touches_out:
            src = sigma_layer[src]
        if touches_in:
            dst = sigma_layer[dst]
        n_in = spec.layers[k].in_features
        orig = (
            es.start
            + (dst - template.node_offsets[k + 1]) * n_in
            + (src - template.node_offsets[k])
        )
        e_new = template.edge_param[es]
        e_old = template.edge_param[orig]
        valid = e_new >= 0
        pi[e_new[valid]] = e_old[valid]
    return pi
