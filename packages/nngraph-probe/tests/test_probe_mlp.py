"""The probe-only baseline: invariant, sensitive, keeps output identities, trains."""

from __future__ import annotations

import torch
from torch import nn

import nngraph_core as ngc
import nngraph_testing as ngt
from nngraph_probe import ProbeMLP


class TestProbeMLPFixed(ngt.InvariantModelTests):
    kinds = ("mlp", "cnn")

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return ProbeMLP.for_graphs(template, num_outputs=3, num_probes=8, hidden=(16,)).to(dtype)


class TestProbeMLPLearned(ngt.InvariantModelTests):
    kinds = ("mlp",)

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        return ProbeMLP.for_graphs(
            template, num_outputs=2, num_probes=4, learned=True, hidden=(8, 8)
        ).to(dtype)


def test_grid_probes_and_mixed_batch() -> None:
    recipe = ngt.NetworkRecipe("mlp", (2, 6, 6, 1), ("sine", "sine"), (True, True, True))
    nets = [recipe.build(i) for i in range(4)]
    template = ngc.GraphTemplate.from_module(nets[0])
    model = ProbeMLP.for_graphs(template, 10, init="grid", grid_size=(7, 7)).double()
    assert model.probes.num_probes == 49
    params = torch.stack([template.flatten(m) for m in nets])
    out = model(template.batch(params))
    assert out.shape == (4, 10)
    mixed = model(ngc.batch([ngc.from_module(m) for m in nets]))
    torch.testing.assert_close(mixed, out, rtol=1e-12, atol=1e-12)


def test_learns_to_separate_two_function_families() -> None:
    """A few Adam steps separate INR-like nets with positive vs negative output offsets."""
    torch.manual_seed(0)
    recipe = ngt.NetworkRecipe("mlp", (2, 8, 1), ("sine",), (True, True))
    nets = [recipe.build(i, torch.float32) for i in range(32)]
    template = ngc.GraphTemplate.from_module(nets[0])
    params = torch.stack([template.flatten(m) for m in nets])
    labels = torch.arange(32) % 2
    last_bias = template.spec.param_offsets()[template.spec.layers[-1].bias_key or ""][0]
    params[:, last_bias] = torch.where(labels == 1, 1.0, -1.0)
    model = ProbeMLP.for_graphs(template, 2, num_probes=16, learned=True, hidden=(32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = template.batch(params)
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        opt.step()
    assert model.probes.probes.grad is not None
    assert float(loss.detach()) < 0.05
    assert bool((model(batch).argmax(1) == labels).all())
