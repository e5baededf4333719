"""Predict on your own INRs (`nngraph-train predict`, `nngraph_apps.predict`) and the task options
of the probe readout branch and generated probes, on the tiny digits zoo."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import nngraph_datasets as nds
from nngraph_apps import InputFileError, InrClassificationTask, load_inputs, predict
from nngraph_apps.cli import main
from nngraph_apps.data import inr_template

BRANCH = ["--model.probe_branch", "true", "--model.branch_loss", "1.0",
          "--model.graph_drop", "0.5", "--model.branch_hidden", "[16]"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier with the probe branch and generated probes, two epochs on the tiny zoo."""
    from conftest import TINY

    run = tmp_path_factory.mktemp("predict") / "run"
    args = [*TINY, "--data.zoo_dir", str(tiny_zoo), "--run_dir", str(run), *BRANCH,
            "--model.probe_generator", "8", "--trainer.max_epochs", "2"]  # fmt: skip
    assert main(["fit", "--config", "mnist5k_ngnn", *args]) == 0
    return run


def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def _zoo_params(tiny_zoo: Path, n: int = 5) -> torch.Tensor:
    return nds.Zoo(tiny_zoo).column("params", 0, n)


def test_branch_run_logs_each_readout(trained: Path) -> None:
    results = json.loads((trained / "results.json").read_text())
    test = results["test"]
    for key in ("test/acc", "test/acc_graph", "test/acc_probe"):
        assert 0.0 <= test[key] <= 1.0
    task = InrClassificationTask.load_from_checkpoint(_ckpt(trained), weights_only=True)
    assert task.branch is not None and task.probe is not None and task.probe.generated
    assert task.branch.probes is task.probe  # the readout shares the probe inputs
    # the reader's logits from the attached probe features == its own forward on the outputs
    assert bool(task.graph_on)
    params = torch.randn(4, task.template.num_params) * 0.05
    task.eval()
    with torch.no_grad():
        _, function = task.branch_outputs(params)
        torch.testing.assert_close(function, task.branch(task.template.batch(params)))


def test_predict_matches_the_task_forward(trained: Path, tiny_zoo: Path, tmp_path: Path) -> None:
    params = _zoo_params(tiny_zoo)
    task = InrClassificationTask.load_from_checkpoint(_ckpt(trained), weights_only=True).eval()
    with torch.inference_mode():
        expected = task(params)
    # the same networks as state-dict files (.pth and .safetensors) and as one batch file
    template = inr_template()
    files = []
    for i, row in enumerate(params):
        sd = template.unflatten(row.clone())
        if i % 2:
            torch.save(sd, tmp_path / f"inr{i}.pth")
            files.append(tmp_path / f"inr{i}.pth")
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / f"inr{i}.safetensors")
            files.append(tmp_path / f"inr{i}.safetensors")
    save_file({"params": params.contiguous()}, tmp_path / "batch.safetensors")
    by_files = predict(_ckpt(trained), files)
    by_batch = predict(_ckpt(trained), [tmp_path / "batch.safetensors"])
    by_tensor = predict(_ckpt(trained), params)
    for result in (by_files, by_batch, by_tensor):
        torch.testing.assert_close(result.logits, expected)
        assert result.labels.tolist() == expected.argmax(1).tolist()
    assert by_batch.sources[1].endswith("batch.safetensors[1]")


def test_predict_cli_writes_json(trained: Path, tiny_zoo: Path, tmp_path: Path) -> None:
    save_file({"params": _zoo_params(tiny_zoo, 3).contiguous()}, tmp_path / "b.safetensors")
    out = tmp_path / "preds" / "p.json"
    assert main(["predict", str(_ckpt(trained)), str(tmp_path / "b.safetensors"),
                 "--out", str(out)]) == 0  # fmt: skip
    records = json.loads(out.read_text())
    assert len(records) == 3
    assert all(0 <= r["label"] < 10 and 0.0 <= r["probability"] <= 1.0 for r in records)
    assert not list(out.parent.glob(".*.tmp"))


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("executed",))


def test_predict_rejects_bad_inputs(trained: Path, tmp_path: Path) -> None:
    template = inr_template()
    good = template.unflatten(torch.zeros(template.num_params))
    cases = {
        "missing.pth": None,
        "pickle.pth": pickle.dumps({"x": _Payload()}),
        "truncated.pth": b"PK\x03\x04garbage",
        "list.pth": "list",
        "wrong_keys.pth": {"w": torch.zeros(3)},
        "wrong_shape.safetensors": {"params": torch.zeros(2, 7)},
        "nan.pth": {**good, "seq.0.bias": torch.full((32,), float("nan"))},
        "garbage.safetensors": b"\xff" * 40,
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content == "list":
            torch.save([torch.zeros(1)], path)
        elif isinstance(content, dict) and name.endswith(".safetensors"):
            save_file(content, path)
        elif isinstance(content, dict):
            torch.save(content, path)
        with pytest.raises(InputFileError, match=name.split(".")[0]):
            load_inputs([path], template)
    assert main(["predict", str(_ckpt(trained)), str(tmp_path / "nan.pth")]) == 2
    assert main(["predict", str(tmp_path / "none.ckpt"), str(tmp_path / "nan.pth")]) == 2


def test_branch_needs_graph_model_with_probes() -> None:
    from nngraph_apps import ConfigError

    with pytest.raises(ConfigError, match="probe_branch"):
        InrClassificationTask(model="probe_mlp", use_probes=False, probe_branch=True)
    with pytest.raises(ConfigError, match="probe_branch"):
        InrClassificationTask(model="ngnn", use_probes=False, probe_branch=True)
    with pytest.raises(ConfigError, match="graph_drop"):
        InrClassificationTask(
            model="ngnn", model_kwargs={"hidden_channels": 8, "num_layers": 1},
            probe_branch=True, graph_drop=1.0,
        )  # fmt: skip


def test_branch_warmup_trains_the_probe_reader_alone_first(
    tiny_args: list[str], tmp_path: Path
) -> None:
    from conftest import TINY

    zoo = tiny_args[tiny_args.index("--data.zoo_dir") + 1]
    common = ["fit", "--config", "mnist5k_ngnn", *TINY, "--data.zoo_dir", zoo,
              "--model.probe_branch", "true", "--model.branch_hidden", "[16]",
              "--model.branch_warmup_steps", "4", "--test_after_fit", "false",
              "--trainer.max_epochs", "-1"]  # fmt: skip
    early, late = tmp_path / "early", tmp_path / "late"
    assert main([*common, "--run_dir", str(early), "--trainer.max_steps", "3"]) == 0
    assert main([*common, "--run_dir", str(late), "--trainer.max_steps", "7"]) == 0
    untrained = InrClassificationTask(
        model="ngnn", model_kwargs={"hidden_channels": 8, "num_layers": 1}, num_probes=8,
        probe_branch=True, branch_hidden=[16], branch_warmup_steps=4,
    )  # fmt: skip
    a = InrClassificationTask.load_from_checkpoint(early / "checkpoints" / "last.ckpt",
                                                   weights_only=True)  # fmt: skip
    b = InrClassificationTask.load_from_checkpoint(late / "checkpoints" / "last.ckpt",
                                                   weights_only=True)  # fmt: skip
    assert not bool(a.graph_on) and bool(b.graph_on)
    # the graph readout starts at zero and is not touched during the warm-up
    head = a.model.head.mlp[-1]
    assert float(head.weight.abs().sum()) == 0.0
    assert float(b.model.head.mlp[-1].weight.abs().sum()) > 0.0
    params = torch.randn(3, untrained.template.num_params) * 0.05
    graph, function = a.eval().branch_outputs(params)
    assert float(graph.abs().sum()) == 0.0 and float(function.abs().sum()) > 0.0
    # during the warm-up only the probe reader (and the probes) got gradients: AdamW keeps
    # state for exactly the parameters it stepped
    state = torch.load(early / "checkpoints" / "last.ckpt", weights_only=True)
    stepped = set(state["optimizer_states"][0]["state"])
    names = [n for n, _ in a.named_parameters()]
    assert {names[i] for i in stepped} == {n for n in names if n.startswith(("branch.", "probe."))}
