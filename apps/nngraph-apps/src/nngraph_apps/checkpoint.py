"""Checkpoints of the training CLI: written atomically, read back with every entry checked.

A checkpoint is a file from outside as soon as someone resumes from it: one written by a run that
was killed, copied from another machine, or downloaded. Resuming reads it in three places; each
checks what it consumes and raises a `CheckpointError` naming the file or the entry:

1. `AtomicCheckpointIO` (the Trainer's checkpoint plugin) calls `read_checkpoint`: size limit,
   zip-form torch files only, `torch.load(weights_only=True)`, the structure of every top-level
   entry (types, counter ranges, finite tensors, a parseable Lightning version).
2. `InrTask.on_load_checkpoint` calls `check_against_task`: the weights against the model, the
   optimiser and scheduler states against fresh ones built by the task, the loop counters
   against the trainer's loops, the random states.
3. `SafeModelCheckpoint` checks its own state: its file paths must lie in its folder (Lightning
   deletes superseded checkpoints by these paths).

Writing goes through `<file>.tmp` + fsync + rename, so a kill or a full disk leaves the previous
checkpoint intact; a full or read-only disk raises `CheckpointWriteError`.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from .errors import CheckpointError, CheckpointWriteError, UnsafeCheckpointError

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "AtomicCheckpointIO",
    "SafeModelCheckpoint",
    "check_against_task",
    "read_checkpoint",
]

#: checkpoints above this size are refused before they are read
MAX_CHECKPOINT_BYTES = 4 << 30
#: counters (steps, epochs, batches) above this are refused: no run gets there
_MAX_COUNT = 1 << 40
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


# ----------------------------------------------------------------------------- writing
def _atomic_write(path: Path, data: bytes) -> None:
    """``path`` holds its previous content or all of ``data``, whatever happens (kill, full disk);
    the bytes go through ``os.write`` so that a full disk is an ``OSError`` here."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[: 1 << 24]) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint plugin, written atomically and read with checks.

    Args:
        max_bytes: checkpoints above this size are refused when read.
    """

    def __init__(self, max_bytes: int = MAX_CHECKPOINT_BYTES) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, buf.getvalue())
        except OSError as e:
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was kept"
            if e.errno in _NO_SPACE:
                why = "no space left on the device"
            elif e.errno in _READ_ONLY:
                why = f"the folder is read-only or not yours ({e.strerror})"
            else:
                raise
            err = CheckpointWriteError(
                f"cannot write the checkpoint {path}: {why}; {kept}. Free some space or choose "
                "a writable --run_dir, then resume with --ckpt_path last."
            )
            err.errno = e.errno  # (strerror and filename unset: str(err) is the message)
            raise err from e

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # always weights_only=True: a checkpoint never runs code, whatever the caller asks
        return read_checkpoint(path, max_bytes=self.max_bytes)


# ----------------------------------------------------------------------------- reading
def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _count(x: object) -> bool:
    return _is_int(x) and 0 <= x < _MAX_COUNT  # type: ignore[operator]


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _dense(t: Tensor) -> bool:
    return t.layout == torch.strided and not t.is_meta


def _finite(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all())


def read_checkpoint(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_CHECKPOINT_BYTES
) -> dict[str, Any]:
    """Load a Lightning checkpoint safely and check its top-level structure.

    Raises:
        UnsafeCheckpointError: the pickle references anything beyond plain tensors/containers.
        CheckpointError: missing, too large, not a zip-form torch file, unreadable, or an entry
            of the wrong type (non-finite weights, negative or absurd counters, ...).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CheckpointError(f"{path}: {size} bytes, larger than {max_bytes}")
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from e
    if not data.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{path}: not a zip-form torch checkpoint (legacy pickle and tar formats are refused)"
        )
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle (not plain tensors): {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:  # truncated zip, broken pickle stream, bad records, ...
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})"
        ) from e
    _check_structure(ckpt, path)
    return ckpt  # type: ignore[no-any-return]


def _check_structure(ckpt: object, path: Path) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}")

    if not isinstance(ckpt, dict) or not all(isinstance(k, str) for k in ckpt):
        raise bad("not a Lightning checkpoint (expected a dict with string keys)")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict) or not sd:
        raise bad("no state_dict")
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, Tensor) or not _dense(value):
            raise bad(f"state_dict entry {key!r} is not a dense tensor")
        if not _finite(value):
            raise bad(f"state_dict entry {key!r} holds NaN or infinite values")
    for key in ("epoch", "global_step"):
        if key in ckpt and not _count(ckpt[key]):
            raise bad(f"{key} must be a non-negative integer, got {ckpt[key]!r}")
    version = ckpt.get("pytorch-lightning_version")
    from packaging.version import InvalidVersion, Version

    try:  # Lightning migrates checkpoints by this version; ours are all written by >= 2.0
        if Version(version) < Version("2.0"):
            raise bad(f"written by Lightning {version}, before 2.0: not resumable here")
    except (InvalidVersion, TypeError) as e:
        raise bad(f"pytorch-lightning_version {version!r} is not a version") from e
    for key in ("loops", "callbacks", "hyper_parameters", "datamodule_hyper_parameters"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise bad(f"{key} must be a dict, got {type(ckpt[key]).__name__}")
    for key in ("optimizer_states", "lr_schedulers"):
        if key in ckpt and (
            not isinstance(ckpt[key], list) or not all(isinstance(s, dict) for s in ckpt[key])
        ):
            raise bad(f"{key} must be a list of dicts")
    if "loops" in ckpt:
        _check_counters(ckpt["loops"], "loops", path)
    for name, state in ckpt.get("callbacks", {}).items():
        if not isinstance(name, str) or not isinstance(state, dict):
            raise bad(f"callback state {name!r} must be a dict")


def _check_counters(tree: object, where: str, path: Path) -> None:
    """Loop states hold dicts of counters (non-negative ints), flags and a loader state."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{path}: {where} has a key {k!r}")
            _check_counters(v, f"{where}.{k}", path)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _check_counters(v, f"{where}[{i}]", path)
    elif not (isinstance(tree, bool) or tree is None or _count(tree)):
        raise CheckpointError(f"{path}: {where} must be a counter (0 <= n < 2^40), got {tree!r}")


# ----------------------------------------------------------------------------- against the task
def _conforms(ref: object, got: object, where: str) -> None:
    """``got`` has the structure and value types of ``ref`` (a state from the same code)."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}")

    if isinstance(ref, Mapping):
        if not isinstance(got, Mapping) or set(got) != set(ref):
            keys = sorted(map(str, got)) if isinstance(got, Mapping) else type(got).__name__
            raise bad(f"expected the entries {sorted(map(str, ref))}, got {keys}")
        for k in ref:
            _conforms(ref[k], got[k], f"{where}.{k}")
    elif isinstance(ref, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(ref):
            raise bad(f"expected a sequence of {len(ref)}, got {got!r}")
        for i, (r, g) in enumerate(zip(ref, got)):
            _conforms(r, g, f"{where}[{i}]")
    elif isinstance(ref, Tensor):
        if not isinstance(got, Tensor) or not _dense(got):
            raise bad(f"expected a tensor, got {type(got).__name__}")
        if got.dtype != ref.dtype or got.shape != ref.shape:
            raise bad(
                f"expected {ref.dtype} {tuple(ref.shape)}, got {got.dtype} {tuple(got.shape)}"
            )
        if not _finite(got):
            raise bad("holds NaN or infinite values")
    elif isinstance(ref, bool) or ref is None:
        if got is not ref and not (isinstance(got, bool) and isinstance(ref, bool)):
            raise bad(f"expected {type(ref).__name__}, got {got!r}")
    elif _is_int(ref):
        if not _is_int(got) or abs(got) >= _MAX_COUNT:  # type: ignore[arg-type]
            raise bad(f"expected an integer, got {got!r}")
    elif isinstance(ref, float):
        if not _number(got):
            raise bad(f"expected a finite number, got {got!r}")
    elif isinstance(ref, str):
        if not isinstance(got, str):
            raise bad(f"expected a string, got {got!r}")
    elif type(got) is not type(ref):
        raise bad(f"expected {type(ref).__name__}, got {type(got).__name__}")


def _check_optimizer(
    ref: torch.optim.Optimizer, got: dict[str, Any], params: list[Tensor], where: str
) -> None:
    fresh = ref.state_dict()
    if not isinstance(got.get("param_groups"), list) or not isinstance(got.get("state"), dict):
        raise CheckpointError(f"{where}: expected 'state' and 'param_groups'")
    if set(got) != set(fresh):
        raise CheckpointError(f"{where}: expected the entries {sorted(fresh)}, got {sorted(got)}")
    _conforms(fresh["param_groups"], got["param_groups"], f"{where}.param_groups")
    for i, (r, g) in enumerate(zip(fresh["param_groups"], got["param_groups"])):
        if g["params"] != r["params"]:
            raise CheckpointError(f"{where}.param_groups[{i}].params do not match the model")
    # the state of one step of the same optimiser class on a parameter of each shape
    probe = torch.zeros(1, requires_grad=True)
    accepted = inspect.signature(type(ref)).parameters
    dummy = type(ref)([probe], **{k: v for k, v in ref.defaults.items() if k in accepted})
    probe.grad = torch.zeros(1)
    dummy.step()
    keys = set(dummy.state[probe])
    for index, state in got["state"].items():
        if not _is_int(index) or not 0 <= index < len(params):
            raise CheckpointError(f"{where}.state: no parameter {index!r}")
        if not isinstance(state, dict) or set(state) != keys:
            found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{where}.state[{index}]: expected {sorted(keys)}, got {found}")
        p = params[index]
        for k, v in state.items():
            if not isinstance(v, Tensor) or not _dense(v) or not _finite(v):
                raise CheckpointError(f"{where}.state[{index}].{k}: not a finite dense tensor")
            ref_v = dummy.state[probe][k]
            shape = ref_v.shape if ref_v.shape != probe.shape else p.shape
            if v.shape != shape or v.dtype != ref_v.dtype:
                raise CheckpointError(
                    f"{where}.state[{index}].{k}: expected {ref_v.dtype} {tuple(shape)}, got "
                    f"{v.dtype} {tuple(v.shape)}"
                )


def _check_rng(rng: object, where: str) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}")

    ref_torch = torch.get_rng_state()
    if not isinstance(rng, dict) or set(rng) != {"torch", "numpy", "python"}:
        raise bad("expected torch, numpy and python states")
    t = rng["torch"]
    if (
        not isinstance(t, Tensor)
        or not _dense(t)
        or t.dtype != torch.uint8
        or t.shape != ref_torch.shape
    ):
        raise bad(f"torch state must be uint8 {tuple(ref_torch.shape)}")
    n, py = rng["numpy"], rng["python"]
    if not isinstance(n, dict) or set(n) != {"keys", "pos", "has_gauss", "cached_gaussian"}:
        raise bad("bad numpy state")
    keys = n["keys"]
    if (
        not isinstance(keys, Tensor)
        or not _dense(keys)
        or keys.dtype != torch.int64
        or keys.shape != (624,)
        or not bool(((keys >= 0) & (keys < 1 << 32)).all())
        or not (_is_int(n["pos"]) and 0 <= n["pos"] <= 624)
        or n["has_gauss"] not in (0, 1)
        or isinstance(n["has_gauss"], bool)
        or not _number(n["cached_gaussian"])
    ):
        raise bad("bad numpy state")
    if not isinstance(py, dict) or set(py) != {"version", "state", "gauss"}:
        raise bad("bad python state")
    state = py["state"]
    if (
        py["version"] != 3
        or not isinstance(state, Tensor)
        or not _dense(state)
        or state.dtype != torch.int64
        or state.shape != (625,)
        or not bool(((state[:624] >= 0) & (state[:624] < 1 << 32)).all())
        or not 1 <= int(state[624]) <= 624
        or not (py["gauss"] is None or _number(py["gauss"]))
    ):
        raise bad("bad python state")


def check_against_task(checkpoint: dict[str, Any], task: Any) -> None:
    """Check a loaded checkpoint against the task that resumes from it (and its trainer).

    The weights must have the model's keys, dtypes and shapes (a fitted normaliser's statistics
    may replace unfitted, empty ones); optimiser and scheduler states must look like the ones the
    task's ``configure_optimizers`` makes, with a state per parameter shaped like it; loop
    counters like the trainer's loops; random states like the ones ``on_save_checkpoint`` writes.
    """
    sd = checkpoint["state_dict"]
    own = task.state_dict()
    if set(sd) != set(own):
        missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        raise CheckpointError(
            f"state_dict does not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    buffers = {name for name, _ in task.named_buffers()}
    for key, ref in own.items():
        got = sd[key]
        unfitted = key in buffers and ref.numel() == 0
        if got.dtype != ref.dtype or (got.shape != ref.shape and not unfitted):
            raise CheckpointError(
                f"state_dict[{key!r}]: expected {ref.dtype} {tuple(ref.shape)}, got {got.dtype} "
                f"{tuple(got.shape)}"
            )
    trainer = task._trainer
    fitting = trainer is not None and trainer.state.fn == "fit"
    if not fitting:
        return
    conf = task.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    sched = conf.get("lr_scheduler") if isinstance(conf, dict) else None
    sched = sched["scheduler"] if isinstance(sched, dict) else sched
    params = list(task.parameters())
    states = checkpoint.get("optimizer_states")
    if not isinstance(states, list) or len(states) != 1:
        raise CheckpointError("optimizer_states: expected the state of one optimiser")
    _check_optimizer(opt, states[0], params, "optimizer_states[0]")
    scheds = checkpoint.get("lr_schedulers", [])
    if len(scheds) != (sched is not None):
        raise CheckpointError(f"lr_schedulers: expected {int(sched is not None)} states")
    if sched is not None:
        _conforms(sched.state_dict(), scheds[0], "lr_schedulers[0]")
    loops = checkpoint.get("loops")
    if not isinstance(loops, dict):
        raise CheckpointError("no loops: not a checkpoint written during training")
    for name in ("fit_loop", "validate_loop", "test_loop", "predict_loop"):
        ref_loop = getattr(trainer, name).state_dict()
        got_loop = loops.get(name)
        if not isinstance(got_loop, dict):
            raise CheckpointError(f"loops.{name} is missing")
        if not isinstance(got_loop.get("state_dict"), dict):
            raise CheckpointError(f"loops.{name}.state_dict is missing")
        for key, value in ref_loop.items():
            if key == "state_dict":
                continue  # loader states: checked below
            if key not in got_loop:
                raise CheckpointError(f"loops.{name}.{key} is missing")
            _conforms(value, got_loop[key], f"loops.{name}.{key}")
    loader = loops["fit_loop"].get("state_dict", {}).get("combined_loader")
    if loader is not None and (
        not isinstance(loader, list)
        or len(loader) != 1
        or not isinstance(loader[0], dict)
        or set(loader[0]) != {"epoch", "skipped"}
    ):
        raise CheckpointError("loops.fit_loop.state_dict.combined_loader: one loader state")
    if "nngraph_rng" in checkpoint:
        _check_rng(checkpoint["nngraph_rng"], "nngraph_rng")


# ----------------------------------------------------------------------------- callbacks
class SafeModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose restored state is checked before Lightning uses it.

    Lightning deletes superseded checkpoints by the paths stored in this state, after checking
    that the callback's folder is among their parents -- a lexical check that
    `<folder>/../../elsewhere` passes -- or without any check for another file system
    (`s3://...`). Here no path may contain `..` or a `://` scheme, a path inside the folder must
    resolve (symlinks followed) inside it, and scores must be numbers. Paths elsewhere (a
    run folder that was copied) stay allowed: Lightning neither deletes nor overwrites them.

    Its state is stored under the same key as a plain `ModelCheckpoint`'s, so either resumes
    from the other's checkpoints.

    With `save_last`, `last.ckpt` is the **latest** state at every validation (or training
    epoch end) and when training ends, as `--ckpt_path last` needs: Lightning's own callback
    refreshes it only when a top-k checkpoint is saved, so after the last improvement of the
    monitored metric it stayed behind (a resumed run lost every epoch since).
    """

    def _refresh_last(self, trainer: Any) -> None:
        """Save `last.ckpt` unless this step's state is already saved."""
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and (
            self._should_save_on_train_epoch_end(trainer)
        ):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and not (
            self._should_save_on_train_epoch_end(trainer)
        ):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        if not trainer.sanity_checking and not getattr(trainer, "fast_dev_run", False):
            self._refresh_last(trainer)

    @property
    def state_key(self) -> str:
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__) :]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        where = f"callbacks[{self.state_key!r}]"
        folder = Path(os.path.abspath(self.dirpath or "."))
        real = Path(os.path.realpath(folder))

        def path(p: object, what: str) -> None:
            if not isinstance(p, str) or "\x00" in p:
                raise CheckpointError(f"{where}.{what}: expected a path, got {p!r}")
            if not p:
                return
            if "://" in p:  # Lightning deletes paths of other file systems unchecked
                raise CheckpointError(f"{where}.{what}: {p!r} is not a local path")
            if ".." in Path(p).parts:
                raise CheckpointError(f"{where}.{what}: {p!r} climbs out of its folder")
            absolute = Path(os.path.abspath(p))
            if folder in absolute.parents and real not in Path(os.path.realpath(p)).parents:
                raise CheckpointError(f"{where}.{what}: {p!r} leads out of {folder}")

        def score(v: object, what: str) -> None:
            ok = v is None or _number(v)
            if isinstance(v, Tensor):
                ok = _dense(v) and v.numel() == 1 and v.is_floating_point()
                ok = ok and not bool(torch.isnan(v).any())
            if not ok:
                raise CheckpointError(f"{where}.{what}: expected a score, got {v!r}")

        if "best_model_path" not in state_dict or "best_model_score" not in state_dict:
            raise CheckpointError(f"{where}: no best_model_path / best_model_score")
        for key in ("best_model_path", "kth_best_model_path", "last_model_path", "dirpath"):
            if key in state_dict:
                path(state_dict[key], key)
        for key in ("best_model_score", "current_score", "kth_value"):
            score(state_dict.get(key), key)
        best = state_dict.get("best_k_models", {})
        if not isinstance(best, dict):
            raise CheckpointError(f"{where}.best_k_models: expected a dict")
        for p, v in best.items():
            path(p, "best_k_models")
            score(v, "best_k_models")
        if not isinstance(state_dict.get("monitor"), (str, type(None))):
            raise CheckpointError(f"{where}.monitor: expected a metric name")
        super().load_state_dict(state_dict)
