"""Properties of CNN probe features (``nngraph_probe``) on zoos of Small-CNN-Zoo-like networks
whose activation (relu or tanh) is drawn per network, with the symmetries of ``nngraph_core``.

Family: ``Conv2d(1, c1, 3, s2) act Conv2d(c1, c2, 3, s2) act Conv2d(c2, c3, 3, s2) act
AdaptiveAvgPool2d(1) Flatten Linear(c3, n_out)`` on ``H x H`` images, channel counts, image size,
the activation of every network, the statistics and the dtype drawn.

1. Equivariance per network: every network permuted by its own hidden permutation; each
   network's node features are its unpermuted features moved by its own node map.
2. Batch order: shuffling the networks (and their activation index) shuffles the feature rows;
   a network's features do not depend on its companions.
3. Positive rescaling (relu networks only, ``nngraph_core.rescale``): scaling channel ``j``'s
   incoming weights and bias by ``a_j > 0`` and its outgoing weights by ``1 / a_j`` keeps the
   function and multiplies that channel's mean, std and max by ``a_j`` (all three statistics
   are positively homogeneous); every other node keeps its features.
4. Power: the same rescaling applied to a tanh network changes the next layer's features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import nngraph_core as ngc
from nngraph_probe import ProbeFeatures
from nngraph_testing import (
    assert_close_by_dtype,
    assert_differs,
    device_under_test,
    hidden_permutations,
    seeds,
)

DEVICE = device_under_test()
DTYPES = [torch.float32, torch.float64]
ACTS = ("relu", "tanh")
STATS = ("mean", "std", "max")


@dataclass(frozen=True)
class SmallCNN:
    channels: tuple[int, int, int]
    n_out: int
    size: int

    def build(self, act: str, seed: int) -> nn.Sequential:
        a = nn.ReLU if act == "relu" else nn.Tanh
        c1, c2, c3 = self.channels
        net = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2), a(),
            nn.Conv2d(c1, c2, 3, stride=2), a(),
            nn.Conv2d(c2, c3, 3, stride=2), a(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, self.n_out),
        )  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in net.named_parameters():
                std = 1 / math.sqrt(math.prod(p.shape[1:])) if name.endswith("weight") else 0.1
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
        return net.double().eval()

    def templates(self) -> list[ngc.GraphTemplate]:
        shape = (1, self.size, self.size)
        return [ngc.GraphTemplate.from_module(self.build(a, 0), input_shape=shape) for a in ACTS]


@st.composite
def zoos(
    draw: st.DrawFn, min_channels: int = 1
) -> tuple[SmallCNN, list[ngc.GraphTemplate], Tensor, Tensor, Tensor, torch.dtype, list[str]]:
    """A family member, its [relu, tanh] templates, params [B, P], activation index [B], probe
    images [K, 1, H, H], the dtype and the statistics."""
    arch = SmallCNN(
        tuple(draw(st.integers(min_channels, 5)) for _ in range(3)),  # type: ignore[arg-type]
        draw(st.integers(1, 4)),
        draw(st.integers(15, 28)),  # 15: the smallest size with a 1x1 map after three convs
    )
    acts = draw(st.lists(st.sampled_from(ACTS), min_size=1, max_size=4), label="activations")
    seed = draw(seeds, label="seed")
    dtype = draw(st.sampled_from(DTYPES), label="dtype")
    stats = draw(st.lists(st.sampled_from(STATS), min_size=1, max_size=3, unique=True))
    templates = arch.templates()
    nets = [arch.build(a, seed + i) for i, a in enumerate(acts)]
    params = torch.stack([templates[0].flatten(m) for m in nets]).to(DEVICE, dtype)
    index = torch.tensor([ACTS.index(a) for a in acts], device=DEVICE)
    gen = torch.Generator().manual_seed(seed)
    k = draw(st.integers(1, 4), label="K")
    x = torch.randn(k, 1, arch.size, arch.size, generator=gen, dtype=torch.float64)
    return arch, templates, params, index, x.to(DEVICE, dtype), dtype, stats


def _probe(x: Tensor, stats: list[str]) -> ProbeFeatures:
    return ProbeFeatures(tuple(x.shape[1:]), probes=x, stats=stats).to(x.device, x.dtype)  # type: ignore[arg-type]


@given(zoo=zoos(), data=st.data())
def test_equivariant_per_network(zoo: tuple, data: st.DataObject) -> None:  # type: ignore[type-arg]
    _, templates, params, index, x, _, stats = zoo
    template = templates[0]
    probe = _probe(x, stats)
    perms = [
        data.draw(hidden_permutations(template.spec), label=f"permutation {b}")
        for b in range(params.shape[0])
    ]
    permuted = torch.cat([template.permute(params[b : b + 1], p) for b, p in enumerate(perms)])
    with torch.no_grad():
        feats = probe.dense(templates, params, spec_index=index)
        moved = probe.dense(templates, permuted, spec_index=index)
    for b, perm in enumerate(perms):
        sigma = template.node_permutation(perm).to(DEVICE)
        expected = feats[b].double()[sigma].to(feats.dtype)
        assert_close_by_dtype(moved[b], expected, f"network {b} ({ACTS[int(index[b])]})")


@given(zoo=zoos(), data=st.data())
def test_batch_order_and_companions_do_not_matter(zoo: tuple, data: st.DataObject) -> None:  # type: ignore[type-arg]
    _, templates, params, index, x, _, stats = zoo
    probe = _probe(x, stats)
    order = torch.tensor(data.draw(st.permutations(range(params.shape[0])), label="order"))
    with torch.no_grad():
        feats = probe.dense(templates, params, spec_index=index)
        shuffled = probe.dense(templates, params[order], spec_index=index[order])
        first = probe.dense(templates, params[:1], spec_index=index[:1])
    assert_close_by_dtype(shuffled, feats[order])
    assert_close_by_dtype(first, feats[:1])


def _node_scale(template: ngc.GraphTemplate, scales: list[Tensor]) -> Tensor:
    """`[N]` factor of every node: `scales[l - 1]` on hidden layer `l`, 1 elsewhere."""
    out = torch.ones(template.num_nodes, dtype=torch.float64)
    for layer, a in enumerate(scales, start=1):
        out[template.layer_nodes(layer)] = a
    return out


@given(zoo=zoos(), data=st.data())
def test_relu_rescaling_scales_the_channel_statistics(zoo: tuple, data: st.DataObject) -> None:  # type: ignore[type-arg]
    arch, templates, params, index, x, dtype, stats = zoo
    relu = templates[0]
    probe = _probe(x, stats)
    scales = [
        torch.tensor(
            data.draw(st.lists(st.floats(0.25, 4.0), min_size=c, max_size=c), label=f"scales {i}"),
            dtype=torch.float64,
        )
        for i, c in enumerate(arch.channels)
    ]
    is_relu = index == 0
    scaled = params.clone()
    if bool(is_relu.any()):
        scaled[is_relu] = ngc.rescale(
            relu.spec, params[is_relu].double(), [a.to(DEVICE) for a in scales]
        ).to(dtype)
    with torch.no_grad():
        feats = probe.dense(templates, params, spec_index=index)
        after = probe.dense(templates, scaled, spec_index=index)
    factor = torch.where(
        is_relu.cpu()[:, None], _node_scale(relu, scales)[None], torch.ones(1, dtype=torch.float64)
    )  # [B, N]
    expected = (feats.double() * factor.to(DEVICE)[:, :, None]).to(dtype)
    assert_close_by_dtype(after, expected, "relu rescaling did not scale the statistics")


@given(zoo=zoos(min_channels=2), data=st.data())
def test_rescaling_a_tanh_network_changes_its_features(zoo: tuple, data: st.DataObject) -> None:  # type: ignore[type-arg]
    """Property 3 has power: tanh is not positively homogeneous, and the same edit of the
    parameters changes the next layer's features of a tanh network."""
    arch, templates, params, _, x, dtype, stats = zoo
    if dtype != torch.float64:
        return  # sensitivity is checked in float64, far above the noise floor
    stats = stats if "mean" in stats else [*stats, "mean"]
    layer = data.draw(st.integers(1, 3), label="layer")
    scales: list[Tensor | None] = [None, None, None]
    scales[layer - 1] = torch.full((arch.channels[layer - 1],), 2.0, dtype=torch.float64)
    # the rescaling map itself, computed for the relu spec (same parameter layout)
    scaled = ngc.rescale(templates[0].spec, params, scales)
    tanh = torch.ones(params.shape[0], dtype=torch.long, device=DEVICE)
    probe = _probe(x, stats)
    nxt = templates[1].layer_nodes(layer + 1)
    with torch.no_grad():
        before = probe.dense(templates, params, spec_index=tanh)[:, nxt]
        after = probe.dense(templates, scaled, spec_index=tanh)[:, nxt]
    assert_differs(after, before, "rescaling a tanh channel left the next layer unchanged")
