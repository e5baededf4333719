"""Generalisation prediction on a heterogeneous (wild park) CNN zoo: mixed batches, the aligned
StatNN statistics, the normaliser fitted on mixed graphs, invariance of the graph models to each
network's own hidden permutations, and the real CLI end to end on the tiny zoo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nngraph_core as ngc
import nngraph_datasets as nds
from nngraph_apps import ConfigError, WildParkDataModule, WildParkTask, aligned_statistics
from nngraph_apps.cli import main, task_name
from nngraph_apps.wild_park import fit_graph_normalizer, mixed_params, num_statistics
from nngraph_layers.baselines import weight_statistics

TINY = {
    "ngnn": "{hidden_channels: 8, num_layers: 2}",
    "ngt": "{node_dim: 8, edge_channels: 8, attention_dim: 8, node_hidden_dim: 8, "
    "edge_hidden_dim: 8, num_layers: 1, heads: 2, out_hidden_dim: 8}",
    "statnn": "{hidden: [16]}",
}


@pytest.fixture(scope="module")
def wild_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wild") / "zoo"
    return Path(nds.build_wild_park_zoo(out, dataset="digits", recipe="tiny", progress=False))


@pytest.fixture(scope="module")
def data(wild_zoo: Path) -> WildParkDataModule:
    dm = WildParkDataModule(zoo_dir=str(wild_zoo), batch_size=8)
    dm.setup("fit")
    return dm


def _all_rows(dm: WildParkDataModule) -> torch.Tensor:
    return torch.cat([dm.splits[s]["row"] for s in ("train", "val", "test")])


def test_the_tiny_zoo_mixes_architectures(data: WildParkDataModule) -> None:
    depths = {a.depth for a in data.zoo.architectures}
    assert len(depths) > 1
    assert any(r >= 0 for a in data.zoo.architectures for r in a.residual)
    batch = data.graphs(_all_rows(data))
    assert batch.template is None and len({s.signature() for s in batch.specs}) > 1


def test_mixed_params_give_every_network_back(data: WildParkDataModule) -> None:
    rows = _all_rows(data)[::3]
    data.kernel_shape = (7, 7)
    batch = data.graphs(rows)
    assert batch.edge_features.shape[1] == 49
    expected = data.zoo.params(rows)
    seen = 0
    for _spec, ids, params in mixed_params(batch):
        for i, p in zip(ids.tolist(), params, strict=True):
            assert torch.equal(p, expected[i])
            seen += 1
    assert seen == len(rows)


def test_aligned_statistics_slots(data: WildParkDataModule) -> None:
    shallow = min(range(len(data.templates)), key=lambda a: data.zoo.architectures[a].depth)
    t = data.templates[shallow]
    depth = data.zoo.architectures[shallow].depth
    params = data._arch_params[shallow][:4]
    feats = aligned_statistics(params, t.spec, max_depth=5)
    assert feats.shape == (4, num_statistics(5))
    slots = 3 * 5 + 2
    stats, present = feats[:, : slots * 7].view(4, slots, 7), feats[0, slots * 7 :]
    raw = weight_statistics(params, t.spec).view(4, -1, 7)
    # conv layer 0's weight and bias, then the classifier's, in their slots
    assert torch.equal(stats[:, 0], raw[:, 0]) and torch.equal(stats[:, 1], raw[:, 1])
    assert torch.equal(stats[:, -2], raw[:, -2]) and torch.equal(stats[:, -1], raw[:, -1])
    # slots of layers the network does not have are zero and flagged absent
    assert not stats[:, 2 * depth : 10].any()
    assert present[: 2 * depth].eq(1).all() and present[2 * depth : 10].eq(0).all()
    with pytest.raises(ConfigError, match="no StatNN slot"):
        aligned_statistics(params, t.spec, max_depth=1)


def test_normaliser_fitted_on_mixed_graphs_standardises_them(data: WildParkDataModule) -> None:
    data.kernel_shape = (7, 7)
    layers = max(int(t.node_layer.max()) for t in data.templates)
    norm = fit_graph_normalizer(data.train_batches(), layers)
    batch = data.graphs(data.splits["train"]["row"])
    _, edges = norm(batch)
    from nngraph_layers._graph import edge_layer, edge_valid_mask

    valid = edge_valid_mask(batch)
    el = edge_layer(batch).clamp(max=layers - 1)
    for k in range(layers):
        vals = edges[el == k][valid[el == k]]
        if vals.numel() > 10:
            assert abs(float(vals.mean())) < 1e-3
            assert abs(float(vals.std(unbiased=False)) - 1) < 1e-3


@pytest.mark.parametrize("model", ["ngnn", "ngt", "statnn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_models_are_invariant_to_each_networks_hidden_permutations(
    data: WildParkDataModule, model: str, dtype: torch.dtype
) -> None:
    """Every network of a mixed batch permuted by its own random hidden permutation (residual
    channels coupled): the outputs do not move; swapping two channels' incoming kernels only
    (not a symmetry) does move them."""
    torch.manual_seed(0)
    kwargs = {"ngnn": {"hidden_channels": 8}, "ngt": {"node_dim": 16, "heads": 2}}.get(model, {})
    task = WildParkTask(model=model, model_kwargs=kwargs, dropout=0.0)
    data.kernel_shape = (7, 7)
    if model != "statnn":  # standardised inputs, as in training (the weights are ~0.1)
        layers = max(int(t.node_layer.max()) for t in data.templates)
        task.model.encoder.normalizer = fit_graph_normalizer(data.train_batches(), layers)
    task = task.to(dtype).eval()
    rows = _all_rows(data)[::2]
    graphs = data.graphs(rows).to(dtype=dtype).to_graphs()
    gen = torch.Generator().manual_seed(1)
    permuted = [g.permute_hidden(ngc.random_hidden_permutation(g.spec, gen)) for g in graphs]
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-10}
    with torch.no_grad():
        out = task(ngc.batch(graphs, kernel_shape=(7, 7)))
        out_p = task(ngc.batch(permuted, kernel_shape=(7, 7)))
        torch.testing.assert_close(out_p, out, **tol)
        if model == "statnn":
            return  # per-tensor statistics ignore any reordering inside a tensor
        broken = []
        for g in graphs:
            sd = ngc.to_state_dict(g)
            w = sd["layers.0.weight"].clone()
            w[[0, 1]] = w[[1, 0]]
            sd["layers.0.weight"] = w
            broken.append(ngc.from_state_dict(sd, g.spec))
        out_b = task(ngc.batch(broken, kernel_shape=(7, 7)))
    # the illegal change moves the outputs far more than the legal one (rounding only)
    legal = float((out_p - out).abs().max())
    assert float((out_b - out).abs().max()) > 100 * max(legal, torch.finfo(dtype).eps)


def test_task_checks_the_zoo_against_its_settings(
    wild_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    args = ["fit", "--config", "fmnist_wild_statnn", "--data.zoo_dir", str(wild_zoo),
            "--run_dir", str(run), "--trainer.accelerator", "cpu", "--model.max_depth", "1"]  # fmt: skip
    assert main([*args, "--trainer.fast_dev_run", "1"]) == 2  # a usage error, no traceback
    assert "set --model.max_depth to at least" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="does not read networks of many architectures"):
        WildParkTask(model="nfn")


def test_cli_picks_the_wild_park_data_module() -> None:
    assert task_name(["--model", "WildParkTask"]) == "WildParkTask"


@pytest.mark.parametrize("model", list(TINY))
def test_fit_every_model_writes_results_and_report(
    model: str, wild_zoo: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = [
        "fit", "--config", f"fmnist_wild_{model}", "--data.zoo_dir", str(wild_zoo),
        "--data.batch_size", "8", "--model.model_kwargs", TINY[model],
        "--model.warmup_steps", "2", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--run_dir", str(run),
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "WildParkTask" and results["model"] == model
    assert -1.0 <= results["test"]["test/tau"] <= 1.0
    assert (run / "scatter.png").stat().st_size > 0
    breakdown = (run / "breakdown.md").read_text()
    assert "depth" in breakdown and "kernel" in breakdown
