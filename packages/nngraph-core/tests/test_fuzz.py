"""Fuzzing `from_state_dict` with state dicts as they come out of other people's files.

Wrong keys, shapes and dtypes, NaN/Inf, sparse and meta tensors, non-tensors, non-mappings:
every input ends in a neural graph or an `NNGraphError` subclass with a message (200 examples
under the `ci` profile, 2,000 under `nox -s fuzz`). Files themselves are read by
`nngraph_datasets.load_pth` and fuzzed there.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nngraph_core as ngc
from nngraph_testing.fuzz import EVIL_VALUES, Outcomes, mutate_tree, tree_mutations

pytestmark = pytest.mark.fuzz

STATE_DICT = Outcomes("core: from_state_dict")


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )  # fmt: skip


MODULES = {"mlp": _mlp(), "cnn": _cnn()}


@st.composite
def evil_tensors(draw: st.DrawFn) -> Any:
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                  torch.int64, torch.bool, torch.complex64, torch.uint8]))  # fmt: skip
    shape = draw(st.lists(st.integers(0, 6), max_size=4))
    fill = draw(st.sampled_from([0.5, float("nan"), float("inf"), -float("inf")]))
    t = (
        torch.full(shape, fill).to(dtype)
        if dtype.is_floating_point
        else torch.zeros(shape, dtype=dtype)
    )
    kind = draw(st.sampled_from(["dense", "dense", "sparse", "meta", "transposed"]))
    if kind == "sparse" and t.dim() > 0:
        return t.to_sparse()
    if kind == "meta":
        return t.to("meta")
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1)
    return t


@given(
    arch=st.sampled_from(sorted(MODULES)),
    edits=tree_mutations(st.one_of(EVIL_VALUES, evil_tensors()), max_edits=3),
    nonfinite=st.lists(st.tuples(st.integers(0, 100), st.sampled_from([float("nan"), float("inf")])),
                       max_size=1),
    wrap=st.sampled_from(["dict", "dict", "list", "tuple-items"]),
)  # fmt: skip
def test_fuzz_from_state_dict(arch: str, edits: list[Any], nonfinite: list[Any], wrap: str) -> None:
    module = MODULES[arch]
    sd: dict[str, Any] = {k: v.clone() for k, v in module.state_dict().items()}
    for i, value in nonfinite:
        key = sorted(sd)[i % len(sd)]
        sd[key].view(-1)[i % sd[key].numel()] = value
    mutated = mutate_tree(sd, edits)
    if wrap == "list" and isinstance(mutated, dict):
        mutated = list(mutated.values())
    elif wrap == "tuple-items" and isinstance(mutated, dict):
        mutated = tuple(mutated.items())
    graph = STATE_DICT.run(lambda: ngc.from_state_dict(mutated, module))
    if isinstance(graph, ngc.NeuralGraph):  # a result is the exact graph of those weights
        back = ngc.to_state_dict(graph)
        assert all(torch.equal(back[k], mutated[k]) for k in back)
