"""Reliability of zoo storage: malicious files, kill anywhere, concurrent builds, full and
read-only disks.

`NNGRAPH_KILL_POINTS` sets how many random moments the kill test uses (2 by default, 20 in
`nox -s kill`); `NNGRAPH_KILL_REPORT=<folder>` writes what each point saw as JSON.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import nngraph_datasets as nds
from nngraph_core import NNGraphError
from nngraph_testing.faults import full_disk, kill_at
from nngraph_testing.malicious import Payload, malicious_corpus, run_control

pytest.importorskip("sklearn")
RECIPE = dataclasses.replace(nds.BENCHMARK, steps=3)
KW: dict[str, Any] = {"seed": 1, "limit": 24, "shard_size": 8, "batch_size": 8, "kernel": "eager"}
PUBLISHED = "mnist-inrs/mnist_png_training_1_99/checkpoints/model_final.pth"


def _pth(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nds.build_zoo(tmp_path_factory.mktemp("zoo") / "z", "digits", RECIPE, **KW)


# ----------------------------------------------------------------------------- malicious files
def _published_zip(path: Path, member: bytes | None = None) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            sd = nds.Siren(generator=torch.Generator().manual_seed(i)).state_dict()
            zf.writestr(
                f"mnist-inrs/mnist_png_training_{i}_{i}/checkpoints/model_final.pth", _pth(sd)
            )
        if member is not None:
            zf.writestr(PUBLISHED, member)


def _readers(payload: Payload, small_zoo: Path, work: Path) -> dict[str, Any]:
    """Every reader of nngraph-datasets that could meet this file, as a thunk."""
    work.mkdir(parents=True)

    def as_file(name: str) -> Path:
        (work / name).write_bytes(payload.data)
        return work / name

    def zoo_with(name: str) -> Path:
        zoo = shutil.copytree(small_zoo, work / f"zoo-{name}")
        (zoo / name).write_bytes(payload.data)
        return zoo

    def in_zip() -> Path:
        _published_zip(work / "member.zip", payload.data)
        return work / "member.zip"

    readers: dict[str, Any] = {
        "load_pth": lambda: nds.load_pth(payload.data, payload.name),
        "read_published (member)": lambda: nds.read_published(in_zip()),
        "read_published (archive)": lambda: nds.read_published(as_file("archive.zip")),
        "convert_published": lambda: nds.convert_published(as_file("c.zip"), work / "out"),
        "zoo shard": lambda: nds.Zoo(zoo_with("shard-00001.safetensors")).column("params"),
        "verify_zoo": lambda: nds.verify_zoo(zoo_with("shard-00002.safetensors")),
        "zoo manifest": lambda: nds.Zoo(zoo_with("manifest.json")).column("params"),
        "read_idx": lambda: nds.read_idx(as_file("train-images-idx3-ubyte")),
    }
    return readers


def test_malicious_corpus_is_rejected_and_never_runs(small_zoo: Path, tmp_path: Path) -> None:
    """Every payload of the corpus (>= 25), against every reader here: a typed error each time,
    and no canary file -- while the same payloads loaded the unsafe way do create theirs."""
    corpus = malicious_corpus(tmp_path / "canaries")
    assert len(corpus) >= 25
    assert sorted(run_control(corpus, tmp_path / "control" / "a" / "b")) == sorted(
        p.name for p in corpus
    ), "the corpus is not live: some payload does not fire when loaded unsafely"
    cwd = os.getcwd()
    rejected: dict[str, str] = {}
    try:
        for payload in corpus:
            work = tmp_path / "runs" / payload.name
            for reader, run in _readers(payload, small_zoo, work).items():
                os.chdir(work)  # extraction (if anything extracted) would land here
                with pytest.raises(NNGraphError) as info:
                    run()
                assert str(info.value), (payload.name, reader)
                rejected[f"{payload.name} -> {reader}"] = type(info.value).__name__
                assert not payload.canary.exists(), f"{payload.name} ran in {reader}"
    finally:
        os.chdir(cwd)
    assert not any((tmp_path / "canaries").iterdir())
    assert len(rejected) == len(corpus) * 8
    _report("malicious-datasets", {"payloads": len(corpus), "runs": len(rejected),
                                   "rejected": len(rejected), "executed": 0, "by": rejected})  # fmt: skip


def _report(name: str, data: dict[str, Any]) -> None:
    folder = os.environ.get("NNGRAPH_KILL_REPORT") or os.environ.get("NNGRAPH_FUZZ_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(data, indent=1))


# ----------------------------------------------------------------------------- kill anywhere
def _fit_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "nngraph_datasets.cli", "fit", "--source", "digits",
            "--out", str(out), "--limit", "48", "--shard-size", "8", "--batch-size", "8",
            "--steps", "300", "--kernel", "eager", "--threads", "1", "--quiet"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.kill
def test_zoo_build_killed_anywhere_resumes_byte_identical(tmp_path: Path) -> None:
    """`nngraph-datasets fit` SIGKILLed at random moments of its build -- once it has written
    `k` shards (uniform in 0..5), after a further random delay of up to one shard's time: while
    fitting, writing a shard, the manifest, or renaming the folder -- then rerun:
    byte-identical to an uninterrupted build every time. 48 INRs in 6 shards."""
    points = int(os.environ.get("NNGRAPH_KILL_POINTS", "2"))
    rng = random.Random(int(os.environ.get("NNGRAPH_KILL_SEED", "0")))
    ref = tmp_path / "ref"
    proc = subprocess.Popen(_fit_cmd(ref), env=_env())
    while not ref.with_name(".ref.partial").exists():  # from the moment the build has its lock
        assert proc.poll() is None
        time.sleep(0.002)
    t0 = time.monotonic()
    assert proc.wait(timeout=900) == 0
    duration = time.monotonic() - t0
    expected = _files(ref)
    seen: list[dict[str, Any]] = []
    while len(seen) < points:
        out = tmp_path / f"z{len(seen)}"
        partial = out.with_name(f".{out.name}.partial")
        # once `done` shards are written, within the time of one more: fitting, writing a shard,
        # the manifest, the final rename
        target, at = rng.randrange(6), rng.uniform(0.0, duration / 6)

        def ready(partial: Path = partial, target: int = target) -> bool:
            if not target:
                return partial.exists()
            return len(list(partial.glob("shard-*.safetensors"))) >= target

        killed, _ = kill_at(_fit_cmd(out), at, env=_env(), ready=ready)
        if not killed:  # it finished first: not a kill point; draw another moment
            shutil.rmtree(out, ignore_errors=True)
            continue
        shards = len(list(partial.glob("shard-*.safetensors"))) if partial.exists() else 0
        finished = (out / "manifest.json").exists()  # killed after the final rename
        if not finished:  # rerun the same command
            done = subprocess.run(_fit_cmd(out), env=_env(), capture_output=True, text=True,
                                  timeout=900)  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
        same = _files(out) == expected and not partial.exists()
        seen.append({"after_shards": target, "delay_s": round(at, 3), "shards_done": shards,
                     "after_finish": finished, "identical": same})  # fmt: skip
        assert same, f"killed with {shards} shards done ({target} + {at:.2f} s): the rerun differs"
        shutil.rmtree(out)
    _report("kill-zoo", {"points": len(seen), "identical": sum(p["identical"] for p in seen),
                         "uninterrupted_s": round(duration, 2), "kills": seen})  # fmt: skip


# ----------------------------------------------------------------------------- concurrency
def test_two_builds_of_one_zoo_at_once_make_one_valid_zoo(tmp_path: Path) -> None:
    """Two processes build the same zoo at once: the test holds the zoo's lock until both have
    started and wait for it, then lets go; one builds, the other waits and returns the finished
    zoo. Both succeed; the result is exactly an uninterrupted build; no lock or partial left."""
    from nngraph_datasets.zoo import _build_lock

    ref = tmp_path / "ref"
    subprocess.run(_fit_cmd(ref), check=True, env=_env(), timeout=900)
    out = tmp_path / "zoo"
    cmd = [str(out) if c == str(ref) else c for c in _fit_cmd(ref)]
    with _build_lock(out):
        procs = [subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
        for p in procs:  # both got past their start and wait for the lock
            assert p.stderr is not None
            for line in p.stderr:
                if "being built by another process" in line:
                    break
            else:
                raise AssertionError(f"a build did not wait for the lock: {p.wait()}")
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert _files(out) == _files(ref)
    nds.verify_zoo(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "zoo"]  # no partial, no lock


def test_lock_is_exclusive_and_survives_its_holder(tmp_path: Path) -> None:
    """The lock file is `fcntl.flock`ed: a second holder waits; a holder killed by SIGKILL
    releases it (the kernel drops it), so the next build goes on."""
    code = (
        "import sys, time; from pathlib import Path\n"
        "from nngraph_datasets.zoo import _build_lock\n"
        "with _build_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "z")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        import fcntl

        fd = os.open(tmp_path / ".z.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    from nngraph_datasets.zoo import _build_lock

    with _build_lock(tmp_path / "z"):  # acquired at once: the dead holder's lock is gone
        pass
    assert not (tmp_path / ".z.lock").exists()


# ----------------------------------------------------------------------------- full disk
def test_full_disk_during_a_build_keeps_finished_shards(tmp_path: Path) -> None:
    """ENOSPC while the third shard is written: a typed error that says what is intact; the two
    finished shards stay and the rerun (with space again) resumes to the same zoo."""
    ref = nds.build_zoo(tmp_path / "ref", "digits", RECIPE, **KW)
    shard = (ref / "shard-00000.safetensors").stat().st_size
    assert shard > 8000  # build.json (< 2,000 bytes) + two shards fit, the third does not
    with full_disk(tmp_path, free_bytes=2000 + 2 * shard + shard // 2), pytest.raises(
        nds.DiskFullError, match=r"no space left.*finished shards .* are intact"
    ) as info:  # fmt: skip
        nds.build_zoo(tmp_path / "z", "digits", RECIPE, **KW)
    assert info.value.errno == 28 and isinstance(info.value, OSError)
    partial = tmp_path / ".z.partial"
    assert sorted(p.name for p in partial.iterdir()) == [
        "build.json", "shard-00000.safetensors", "shard-00001.safetensors",
    ]  # fmt: skip
    assert _files(partial)["shard-00001.safetensors"] == _files(ref)["shard-00001.safetensors"]
    nds.build_zoo(tmp_path / "z", "digits", RECIPE, **KW)
    assert _files(tmp_path / "z") == _files(ref)


def test_full_disk_while_replacing_a_zoo_keeps_the_old_one(small_zoo: Path, tmp_path: Path) -> None:
    old = shutil.copytree(small_zoo, tmp_path / "z")
    before = _files(old)
    tensors = {
        k: nds.Zoo(old).column(k) for k in ("params", "labels", "image_ids", "steps", "psnr")
    }
    with full_disk(tmp_path, free_bytes=5000), pytest.raises(nds.DiskFullError, match="intact"):
        nds.write_zoo(old, tensors, nds.Zoo(old).splits, source="digits", recipe={},
                      overwrite=True)  # fmt: skip
    assert _files(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z"]  # the partial copy was removed


def test_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    ro = tmp_path / "cache"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: a read-only mount is needed
            pytest.skip("running as root: file permissions are not enforced")
        with pytest.raises(nds.StorageError, match="read-only or not yours"):
            nds.build_zoo(ro / "zoo", "digits", RECIPE, **KW)
    finally:
        ro.chmod(0o755)


def test_read_only_errors_are_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with the folder's writes refused by the OS (as on a read-only mount, which
    refuses even root): EROFS from the first write becomes a StorageError naming the folder."""
    import errno

    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(tmp_path) in os.fsdecode(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(nds.StorageError, match="read-only") as info:
        nds.build_zoo(tmp_path / "zoo", "digits", RECIPE, **KW)
    assert info.value.errno == errno.EROFS and not isinstance(info.value, nds.DiskFullError)
