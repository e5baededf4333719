"""Run by ``nox -s install_alone`` in a fresh venv holding only the nngraph-core wheel and torch.

Proves that ``pip install nngraph-core`` alone works: an MLP and a CNN convert to neural graphs,
round-trip exactly through state dicts and through a batched ``GraphTemplate``, and none of the
optional or sibling packages (PyG, Lightning, hypothesis, other nngraph packages) is installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

import nngraph_core as ngc

# The installed wheel is used, not the source tree.
origin = Path(ngc.__file__).resolve()
assert "site-packages" in origin.parts, f"nngraph_core imported from {origin}, not the wheel"

for name in ("torch_geometric", "lightning", "pytorch_lightning", "hypothesis"):
    assert importlib.util.find_spec(name) is None, f"{name} must not come with nngraph-core"
for name in ("nngraph_testing", "nngraph_datasets", "nngraph_probe", "nngraph_layers"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed beside nngraph-core"

torch.manual_seed(0)


def check_roundtrip(module: nn.Module, input_shape: tuple[int, ...] | None = None) -> None:
    graph = ngc.from_module(module, input_shape=input_shape)
    state = module.state_dict()
    back = ngc.to_state_dict(graph)
    assert list(back) == list(state), (list(back), list(state))
    for key, value in state.items():
        assert torch.equal(back[key], value), key

    template = ngc.GraphTemplate.from_module(module, input_shape=input_shape)
    params = torch.stack([template.flatten(module), torch.randn(template.num_params)])
    batch = template.batch(params)
    assert torch.equal(template.params(batch.node_features, batch.edge_features), params)
    print(
        f"ok: {type(module).__name__} -> {graph.node_features.shape[0]} nodes, "
        f"{graph.edge_index.shape[1]} edges, {template.num_params} parameters"
    )


mlp = nn.Sequential(
    nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), ngc.Sine(30.0), nn.Linear(16, 1)
)
check_roundtrip(mlp)

cnn = nn.Sequential(
    nn.Conv2d(1, 4, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(4, 8, 5, padding=2),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(8, 10),
)
check_roundtrip(cnn, input_shape=(1, 28, 28))

# Flatten without pooling: the linear layer sees every position of every channel.
cnn_flat = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
check_roundtrip(cnn_flat, input_shape=(1, 8, 8))

print(
    f"nngraph-core {getattr(ngc, '__version__', '?')} works alone (python {sys.version.split()[0]})"
)
