"""Checkpoints as outside files: fuzzed, malicious, killed mid-write, on a full or read-only disk.

`NNGRAPH_KILL_POINTS` sets how many random moments the kill test uses (2 by default, 20 in
`nox -s kill`); `NNGRAPH_FUZZ_RESUMES` how many fuzzed checkpoints that pass every check are
then really resumed from (3 by default, 100 in `nox -s fuzz`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nngraph_apps import CheckpointError, NNGraphCLI, read_checkpoint
from nngraph_apps.checkpoint import AtomicCheckpointIO, SafeModelCheckpoint, check_against_task
from nngraph_apps.cli import _resolve_configs, main
from nngraph_core import NNGraphError
from nngraph_testing.faults import full_disk, kill_at
from nngraph_testing.fuzz import (
    EVIL_VALUES,
    Outcomes,
    byte_mutations,
    mutate,
    mutate_tree,
    tree_mutations,
)
from nngraph_testing.malicious import malicious_corpus

CLI = [sys.executable, "-m", "nngraph_apps.cli"]
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
READ = Outcomes("apps: checkpoint (read + checks)")
RESUME = Outcomes("apps: checkpoint (real resume)", seconds=120)


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _common(tiny: list[str], zoo: Path, run: Path) -> list[str]:
    return ["fit", "--config", "mnist5k_ngnn", *tiny, "--data.zoo_dir", str(zoo), "--run_dir",
            str(run), "--checkpoint_every_n_steps", "1", "--test_after_fit", "false",
            "--trainer.max_epochs", "-1", "--trainer.logger", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(
    tiny_zoo: Path, tiny_settings: list[str], tmp_path_factory: pytest.TempPathFactory
) -> NNGraphCLI:
    """A finished 8-step run (past an epoch end: a best checkpoint too), its trainer kept, and
    the bytes of its last.ckpt as `cli.last_ckpt` (real resumes rewrite the file)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    args = [*_common(tiny_settings, tiny_zoo, run), "--trainer.max_steps", "8"]
    cli = NNGraphCLI(args=_resolve_configs(args))
    cli.tiny = tiny_settings  # type: ignore[attr-defined]
    assert cli.trainer.state.fn == "fit" and cli.trainer.global_step == 8
    cli.last_ckpt = (run / "checkpoints" / "last.ckpt").read_bytes()  # type: ignore[attr-defined]
    return cli


def _callbacks(cli: NNGraphCLI) -> list[SafeModelCheckpoint]:
    return [cb for cb in cli.trainer.callbacks if isinstance(cb, SafeModelCheckpoint)]


def _checks(path: Path, cli: NNGraphCLI) -> dict[str, Any]:
    """What resuming does with a checkpoint file before training goes on: read it (the
    Trainer's checkpoint plugin), check it against the task and trainer, restore the
    checkpoint callbacks' states (fresh callbacks of the same configuration)."""
    ckpt = AtomicCheckpointIO().load_checkpoint(path)
    check_against_task(ckpt, cli.model)
    for cb in _callbacks(cli):
        fresh = SafeModelCheckpoint(
            dirpath=cb.dirpath, filename=cb.filename, monitor=cb.monitor, mode=cb.mode,
            save_top_k=cb.save_top_k, save_last=cb.save_last,
            every_n_train_steps=cb._every_n_train_steps, every_n_epochs=cb._every_n_epochs,
            auto_insert_metric_name=False,
        )  # fmt: skip
        assert fresh.state_key == cb.state_key
        if fresh.state_key in ckpt.get("callbacks", {}):
            fresh.load_state_dict(ckpt["callbacks"][fresh.state_key])
    return ckpt


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nngraph-fuzz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tensors() -> st.SearchStrategy[Any]:
    dtypes = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool])
    shapes = st.lists(st.integers(0, 5), max_size=3)
    fill = st.sampled_from([0.0, 1.0, float("nan"), float("inf"), 1e30])
    return st.builds(lambda d, s, f: torch.full(s, f).to(d), dtypes, shapes, fill)


# ----------------------------------------------------------------------------- fuzzing
@pytest.mark.fuzz
@FIXTURE_OK
@given(
    tree=tree_mutations(st.one_of(EVIL_VALUES, _tensors()), max_edits=3),
    structural=st.booleans(),
    byte_edits=st.lists(byte_mutations(3), max_size=1),
    nonfinite=st.integers(0, 10_000),
)
def test_fuzz_resume_from_checkpoint(
    trained: NNGraphCLI, tree: list[Any], structural: bool, byte_edits: list[Any], nonfinite: int
) -> None:
    """Lightning checkpoints when resumed: the real `last.ckpt` of a run, its decoded content
    mutated (wrong types and shapes, NaN/Inf, negative or huge counters, `../` and absolute paths
    in the checkpoint callbacks' state, keys removed or added) and/or its bytes mutated. Every
    one ends in the checks' typed error or passes them; those that pass are resumed for real (a
    few in CI, 100 in `nox -s fuzz`) and must then train or stop with a typed error."""
    run = Path(trained.trainer.default_root_dir)
    base: bytes = trained.last_ckpt  # type: ignore[attr-defined]
    data = base
    if structural:
        ckpt = torch.load(io.BytesIO(base), weights_only=True)
        if nonfinite % 3 == 0:  # a NaN or Inf somewhere in the weights or optimiser state
            key = sorted(ckpt["state_dict"])[nonfinite % len(ckpt["state_dict"])]
            if ckpt["state_dict"][key].is_floating_point() and ckpt["state_dict"][key].numel():
                ckpt["state_dict"][key].view(-1)[0] = float("nan")
        buf = io.BytesIO()
        torch.save(mutate_tree(ckpt, tree), buf)
        data = buf.getvalue()
    for e in byte_edits:
        data = mutate(data, e)
    with sandbox() as box:
        path = box / "last.ckpt"
        path.write_bytes(data)
        out = READ.run(lambda: _checks(path, trained), allowed=box)
        if isinstance(out, NNGraphError) or RESUME.total >= int(
            os.environ.get("NNGRAPH_FUZZ_RESUMES", "3")
        ):
            return
        zoo = trained.datamodule.zoo_dir
        # 2 steps past the run's 8 (loops whose counters were mutated may stop at once)
        args = [*_common(trained.tiny, zoo, run), "--ckpt_path", str(path),  # type: ignore[attr-defined]
                "--trainer.max_steps", "10"]  # fmt: skip
        RESUME.run(lambda: NNGraphCLI(args=_resolve_configs(args)), allowed=run)


# ----------------------------------------------------------------------------- malicious files
def test_malicious_checkpoints_are_refused_and_never_run(
    trained: NNGraphCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every payload of the corpus as a checkpoint: refused by the reader and by the checks;
    one of them through the real CLI (`--ckpt_path`): exit 2 with the reason; no canary."""
    corpus = malicious_corpus(tmp_path / "canaries")
    assert len(corpus) >= 25
    for payload in corpus:
        path = tmp_path / f"{payload.name}.ckpt"
        path.write_bytes(payload.data)
        with pytest.raises(CheckpointError):
            read_checkpoint(path)
        with pytest.raises(CheckpointError):
            _checks(path, trained)
        assert not payload.canary.exists(), payload.name
    evil = next(p for p in corpus if p.name == "torch-zip-os-system")
    tiny: list[str] = trained.tiny  # type: ignore[attr-defined]
    args = [
        *_common(tiny, trained.datamodule.zoo_dir, tmp_path / "run"),
        "--trainer.max_steps",
        "9",
    ]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(evil.data)
    assert main([*args, "--ckpt_path", "last"]) == 2
    assert "refused to unpickle" in capsys.readouterr().err
    assert not evil.canary.exists() and not any((tmp_path / "canaries").iterdir())
    _report("malicious-apps", {"payloads": len(corpus), "runs": 2 * len(corpus) + 1,
                               "rejected": 2 * len(corpus) + 1, "executed": 0})  # fmt: skip


def test_path_tricks_in_callback_state_are_refused(trained: NNGraphCLI, tmp_path: Path) -> None:
    """Lightning deletes superseded checkpoints by the paths in ModelCheckpoint's state, with a
    lexical parent check that `<folder>/../..` passes (a resumed run of plain Lightning deletes
    the file such a path names) and none for URLs: such paths are refused."""
    ckpt = torch.load(io.BytesIO(trained.last_ckpt), weights_only=True)  # type: ignore[attr-defined]
    key = next(k for k in ckpt["callbacks"] if "val/acc" in k)
    folder = _callbacks(trained)[0].dirpath
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    tricks = {f"{folder}/../../../{victim}": "climbs out", f"{folder}/../{victim.name}":
              "climbs out", f"file://{victim}": "not a local path"}  # fmt: skip
    for trick, why in tricks.items():
        state = dict(ckpt["callbacks"][key], best_k_models={trick: torch.tensor(2.0)},
                     kth_best_model_path=trick)  # fmt: skip
        bad = dict(ckpt, callbacks={**ckpt["callbacks"], key: state})
        torch.save(bad, tmp_path / "bad.ckpt")
        with pytest.raises(CheckpointError, match=why):
            _checks(tmp_path / "bad.ckpt", trained)
    assert victim.read_text() == "keep me"


# ----------------------------------------------------------------------------- kill anywhere
def _weights(path: Path) -> tuple[int, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    ck = _load(path)
    return ck["global_step"], ck["state_dict"], list(ck["optimizer_states"][0]["state"].values())


def _report(name: str, data: dict[str, Any]) -> None:
    folder = os.environ.get("NNGRAPH_KILL_REPORT") or os.environ.get("NNGRAPH_FUZZ_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(data, indent=1))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


class _StepWatch:
    """The global step of a run's every-step checkpoint, read again only when the file was
    replaced (it is renamed into place: a reader sees the old file or the new one)."""

    def __init__(self, path: Path) -> None:
        self.path, self.inode, self.step = path, -1, -1

    def __call__(self) -> int:
        try:
            inode = self.path.stat().st_ino
            if inode != self.inode:
                self.step, self.inode = int(_load(self.path)["global_step"]), inode
        except (OSError, RuntimeError, EOFError, KeyError):
            pass
        return self.step


@pytest.mark.kill
def test_training_killed_anywhere_resumes_bit_identical(
    tiny_zoo: Path, tiny_settings: list[str], tmp_path: Path
) -> None:
    """`nngraph-train fit` SIGKILLed at random steps -- once the run has checkpointed step k
    (uniform in 0..23), after a further random delay of up to one step's time, so anywhere in
    step k + 1: its forward, backward, optimiser step, checkpoint write, or the validation at
    an epoch end -- then rerun with `--ckpt_path last`: the final weights and optimiser state
    are bit-identical to an uninterrupted run. 97 training INRs / batch 16 = 7 steps per epoch;
    24 steps cross three epoch ends."""
    points = int(os.environ.get("NNGRAPH_KILL_POINTS", "2"))
    rng = random.Random(int(os.environ.get("NNGRAPH_KILL_SEED", "0")))
    steps = 24

    def cmd(run: Path, *extra: str) -> list[str]:
        return [*CLI, *_common(tiny_settings, tiny_zoo, run), "--trainer.max_steps", str(steps),
                *extra]  # fmt: skip

    ref = tmp_path / "ref"
    proc = subprocess.Popen(cmd(ref), stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stderr is not None
    t0 = duration = 0.0
    for line in proc.stderr:  # the training window: first step to the last
        if "training started" in line:
            t0 = time.monotonic()
        elif f"max_steps={steps}` reached" in line:
            duration = time.monotonic() - t0
    assert proc.wait(timeout=900) == 0 and duration > 0
    step, expected, expected_opt = _weights(ref / "checkpoints" / "last.ckpt")
    assert step == steps
    seen: list[dict[str, Any]] = []
    while len(seen) < points:
        run = tmp_path / f"run{len(seen)}"
        last = run / "checkpoints" / "last.ckpt"
        target, delay = rng.randrange(steps), rng.uniform(0.0, duration / steps)
        watch = _StepWatch(last)
        ready: Any = "training started" if target == 0 else (lambda w=watch, t=target: w() >= t)
        killed, _ = kill_at(cmd(run), delay, env=_env(), ready=ready)
        if not killed:
            shutil.rmtree(run, ignore_errors=True)
            continue
        at_step = _load(last)["global_step"] if last.exists() else 0
        done = subprocess.run(cmd(run, "--ckpt_path", "last"), capture_output=True, text=True,
                              env=_env(), timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        step, got, got_opt = _weights(last)
        same = step == steps and all(torch.equal(v, got[k]) for k, v in expected.items())
        same = same and all(
            torch.equal(a[k], b[k]) for a, b in zip(expected_opt, got_opt) for k in a
        )
        seen.append({"after_step": target, "delay_s": round(delay, 4), "killed_at_step": at_step,
                     "identical": same})  # fmt: skip
        assert same, f"killed at step {at_step} (step {target} + {delay:.3f} s): weights differ"
        shutil.rmtree(run)
    _report("kill-train", {"points": len(seen), "identical": sum(p["identical"] for p in seen),
                           "steps": steps, "training_s": round(duration, 2), "kills": seen})  # fmt: skip


# ----------------------------------------------------------------------------- full / read-only
def test_full_disk_at_a_checkpoint_keeps_the_previous_one(
    tiny_zoo: Path, tiny_settings: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC while a checkpoint is written: exit 2 with a message saying the previous
    checkpoint is intact -- and every checkpoint file is as it was (complete, resumable)."""
    run = tmp_path / "run"
    args = _common(tiny_settings, tiny_zoo, run)
    assert main([*args, "--trainer.max_steps", "2"]) == 0
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.ckpt")}
    size = max(len(b) for b in before.values())
    with full_disk(run, free_bytes=size // 2):
        code = main([*args, "--trainer.max_steps", "5", "--ckpt_path", "last"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"no space left on the device; the previous last\S*\.ckpt is intact", err), err
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.ckpt")} == before
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert main([*args, "--trainer.max_steps", "4", "--ckpt_path", "last"]) == 0
    assert max(_load(p)["global_step"] for p in (run / "checkpoints").glob("last*.ckpt")) == 4


def test_read_only_cache_folder_is_a_clear_error(
    tiny_settings: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The zoo cache ($NNGRAPH_ZOOS) on a read-only file system: exit 2 with a message naming
    the folder and what to do, no traceback."""
    import errno

    cache = tmp_path / "cache"
    cache.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path: Any) -> None:
        if str(cache) in os.fsdecode(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def ro_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *a, **kw)

    def ro_mkdir(path: Any, *a: Any, **kw: Any) -> None:
        refuse(path)
        real_mkdir(path, *a, **kw)

    monkeypatch.setenv("NNGRAPH_ZOOS", str(cache))
    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    args = [*tiny_settings, "--run_dir", str(tmp_path / "run"), "--data.limit", "20",
            "--data.fit_steps", "2", "--trainer.fast_dev_run", "1"]  # fmt: skip
    assert main(["fit", "--config", "mnist5k_ngnn", *args]) == 2
    err = capsys.readouterr().err
    assert "nngraph-train: error: cannot write" in err and str(cache) in err
    assert "read-only" in err and "NNGRAPH_ZOOS" in err and "Traceback" not in err
