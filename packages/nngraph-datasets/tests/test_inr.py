from __future__ import annotations

import math

import pytest
import torch

from nngraph_datasets import BENCHMARK, SIREN_INIT, Siren, grid, init_params, num_params, render
from nngraph_datasets.inr import inr_seed, param_slices


def test_state_dict_keys_and_size() -> None:
    m = Siren()
    assert list(m.state_dict()) == [f"seq.{i}.{k}" for i in range(3) for k in ("weight", "bias")]
    assert sum(p.numel() for p in m.parameters()) == 1185 == num_params(32)


def test_from_module_gives_the_neural_graph() -> None:
    ngc = pytest.importorskip("nngraph_core", reason="nngraph-core is not installed")
    g = ngc.from_module(Siren())
    assert g.node_features.shape[0] == 67
    assert g.edge_index.shape[1] == 1120


def test_init_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    for recipe in (BENCHMARK, SIREN_INIT):
        p = init_params(gen, first_layer_init=recipe.first_layer_init, dtype=torch.float64)
        s = param_slices()
        b0 = 0.5 if recipe.first_layer_init == "siren" else math.sqrt(3) / 30
        assert p[s["seq.0.weight"]].abs().max() <= b0
        assert p[s["seq.0.weight"]].abs().max() > 0.8 * b0
        assert p[s["seq.1.weight"]].abs().max() <= math.sqrt(6 / 32) / 30
        assert torch.all(p[s["seq.0.bias"]] == 0) and torch.all(p[s["seq.1.bias"]] == 0)
        assert p[s["seq.2.weight"]].abs().max() <= 1 / math.sqrt(32)


def test_module_matches_render_and_init() -> None:
    m = Siren(generator=torch.Generator().manual_seed(3))
    flat = init_params(torch.Generator().manual_seed(3))
    assert torch.equal(m.flat(), flat)
    x = grid(5, 7)
    torch.testing.assert_close(m(x).reshape(5, 7), render(flat[None], 5, 7)[0])


def test_grid_convention() -> None:
    x = grid(28)
    assert x.shape == (784, 2)
    assert (
        x[0].tolist() == [-1.0, -1.0]
        and x[27].tolist() == [1.0, -1.0]
        and x[-1].tolist() == [1.0, 1.0]
    )


def test_inr_seed_distinct() -> None:
    assert len({inr_seed(0, i) for i in range(1000)} | {inr_seed(1, 0)}) == 1001
