"""A corpus of malicious files, generated at test time: each one creates a canary file if a
reader executes or extracts it.

```python
from nngraph_testing.malicious import malicious_corpus

for payload in malicious_corpus(tmp_path / "canaries"):
    with pytest.raises(NNGraphError):
        reader(payload.data)
    assert not payload.canary.exists()
```

Kinds of payload (`Payload.kind`):

- `pickle`: a raw pickle stream whose `__reduce__` (or `INST` opcode) calls `os.system`,
  `subprocess`, `builtins.eval` / `exec`, `pathlib.Path.touch`, ..., at pickle protocols 0-5,
  nested deep inside a state dict, or with a callable that is itself built by a reduce.
- `torch-zip`: a `torch.save` zip archive whose `data.pkl` record is such a pickle.
- `torch-legacy`: the pre-1.6 torch format (a bare pickle stream after the magic number).
- `npy`: a numpy `.npy` file of dtype `object` (its data is a pickle).
- `zip`, `tar`: archives whose member names escape the extraction folder (`../`, absolute
  paths, a symlink out of the folder followed by a file through it).

`run_control(payloads)` proves the corpus is live: in a subprocess it unpickles / loads /
extracts each payload the unsafe way and returns the names whose canary appeared.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Payload", "malicious_corpus", "run_control"]


@dataclass(frozen=True)
class Payload:
    """One malicious file.

    Attributes:
        name: a short unique name.
        kind: `pickle`, `torch-zip`, `torch-legacy`, `npy`, `zip` or `tar`.
        data: the file's bytes.
        canary: the file that exists afterwards if the payload ran or escaped.
    """

    name: str
    kind: str
    data: bytes
    canary: Path


class _Reduce:
    """Pickles as `fn(*args)`: what an attacker's class with `__reduce__` does."""

    def __init__(self, fn: object, args: tuple[object, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.fn, self.args)

    def __call__(self, *args: object) -> None:  # pickle wants the callable of a reduce callable
        raise AssertionError("never called: only its pickle matters")


def _touch_cmd(canary: Path) -> str:
    return f"touch '{canary}'"


def _deep(canary: Path) -> bytes:
    """`os.system` deep inside an otherwise plausible state dict."""
    deep = {
        "seq.0.weight": [{"a": (1, 2, _Reduce(os.system, (_touch_cmd(canary),)))}],
        "seq.0.bias": 0.0,
    }
    return pickle.dumps(deep, protocol=4)


def _pickles(canary_dir: Path) -> list[tuple[str, bytes]]:
    import builtins
    import operator
    import pathlib

    def c(name: str) -> Path:
        return canary_dir / name

    out: list[tuple[str, bytes]] = []
    for proto in range(6):  # os.system at every pickle protocol
        name = f"os-system-p{proto}"
        out.append((name, pickle.dumps(_Reduce(os.system, (_touch_cmd(c(name)),)), protocol=proto)))
    calls = {
        "subprocess-call": _Reduce(subprocess.call, (["touch", str(c("subprocess-call"))],)),
        "subprocess-popen": _Reduce(subprocess.Popen, (["touch", str(c("subprocess-popen"))],)),
        "os-popen": _Reduce(os.popen, (_touch_cmd(c("os-popen")),)),
        "builtins-eval": _Reduce(builtins.eval, (f"open({str(c('builtins-eval'))!r}, 'w')",)),
        "builtins-exec": _Reduce(
            builtins.exec,
            (f"import pathlib; pathlib.Path({str(c('builtins-exec'))!r}).touch()",),
        ),
        "pathlib-touch": _Reduce(pathlib.Path.touch, (c("pathlib-touch"),)),
        # the callable is itself built by reduces: getattr(__import__("os"), "system")
        "nested-callable": _Reduce(
            _Reduce(builtins.getattr, (_Reduce(builtins.__import__, ("os",)), "system")),
            (_touch_cmd(c("nested-callable")),),
        ),
        "methodcaller": _Reduce(
            _Reduce(operator.methodcaller, ("system", _touch_cmd(c("methodcaller")))),
            (_Reduce(builtins.__import__, ("os",)),),
        ),
        # a pickle that unpickles a second pickle
        "pickle-in-pickle": _Reduce(
            pickle.loads,
            (pickle.dumps(_Reduce(os.system, (_touch_cmd(c("pickle-in-pickle")),))),),
        ),
    }
    for name, obj in calls.items():
        out.append((name, pickle.dumps(obj, protocol=2)))
    out.append(("nested-deep", _deep(c("nested-deep"))))
    # protocol 0 by hand with the INST opcode (no REDUCE at all)
    inst = f"(S{_touch_cmd(c('inst-opcode'))!r}\nios\nsystem\n.".encode()
    out.append(("inst-opcode", inst))
    return out


def _torch_zip(evil_pickle: bytes) -> bytes:
    """A `torch.save` zip archive whose `data.pkl` is replaced by `evil_pickle`."""
    import torch

    buf = io.BytesIO()
    torch.save({"seq.0.weight": torch.zeros(2, 2)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = evil_pickle
            dst.writestr(info.filename, data)
    return out.getvalue()


def _torch_legacy(evil_pickle: bytes) -> bytes:
    """The pre-1.6 torch format: magic number, protocol, system info, then the object pickle."""
    magic = 0x1950A86A20F9469CFC6C
    head = pickle.dumps(magic, protocol=2) + pickle.dumps(1001, protocol=2)
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    return head + pickle.dumps(info, protocol=2) + evil_pickle


def _npy(evil_pickle: bytes, version: int) -> bytes:
    """A `.npy` file of dtype object: numpy pickles its data (`np.load(allow_pickle=True)`)."""
    header = repr({"descr": "|O", "fortran_order": False, "shape": (1,)}).encode()
    pad = 64 - (10 + len(header) + 1) % 64 + (2 if version == 2 else 0)
    header += b" " * (pad % 64) + b"\n"
    size = len(header).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + evil_pickle


def _zip_traversal(canary: Path, absolute: bool) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        name = str(canary) if absolute else "../" * 12 + str(canary).lstrip("/")
        zf.writestr("mnist-inrs/readme.txt", b"ok")
        zf.writestr(name, b"escaped")
        zf.writestr("mnist-inrs/../mnist_png_training_1_1/checkpoints/model_final.pth", b"PK")
    return out.getvalue()


def _tar_traversal(canary: Path, how: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:

        def add(name: str, data: bytes = b"escaped", link: str | None = None) -> None:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

        if how == "relative":
            add("../" * 12 + str(canary).lstrip("/"))
        elif how == "absolute":
            add(str(canary))
        else:  # a symlink to the canary's folder, then a file through it
            add("escape", link=str(canary.parent))
            add(f"escape/{canary.name}")
    return out.getvalue()


def malicious_corpus(canary_dir: str | os.PathLike[str]) -> list[Payload]:
    """Every payload, each with its own canary file in `canary_dir` (created if missing)."""
    canary_dir = Path(canary_dir).resolve()
    canary_dir.mkdir(parents=True, exist_ok=True)
    out = [Payload(n, "pickle", d, canary_dir / n) for n, d in _pickles(canary_dir)]

    def evil(name: str) -> bytes:
        return pickle.dumps(_Reduce(os.system, (_touch_cmd(canary_dir / name),)), protocol=2)

    name = "torch-zip-os-system"
    out.append(Payload(name, "torch-zip", _torch_zip(evil(name)), canary_dir / name))
    name = "torch-zip-eval"
    code = f"open({str(canary_dir / name)!r}, 'w')"
    evil_eval = pickle.dumps(_Reduce(eval, (code,)), protocol=2)
    out.append(Payload(name, "torch-zip", _torch_zip(evil_eval), canary_dir / name))
    name = "torch-zip-nested"
    out.append(Payload(name, "torch-zip", _torch_zip(_deep(canary_dir / name)), canary_dir / name))
    out.append(
        Payload(
            "torch-legacy", "torch-legacy", _torch_legacy(evil("torch-legacy")),
            canary_dir / "torch-legacy",
        )
    )  # fmt: skip
    for version in (1, 2):
        name = f"npy-object-v{version}"
        out.append(Payload(name, "npy", _npy(evil(name), version), canary_dir / name))
    for absolute in (False, True):
        name = f"zip-traversal-{'absolute' if absolute else 'relative'}"
        out.append(
            Payload(name, "zip", _zip_traversal(canary_dir / name, absolute), canary_dir / name)
        )
    for how in ("relative", "absolute", "symlink"):
        name = f"tar-traversal-{how}"
        out.append(Payload(name, "tar", _tar_traversal(canary_dir / name, how), canary_dir / name))
    return out


_CONTROL = textwrap.dedent(
    """
    import io, json, os, pickle, sys, tarfile, zipfile
    payloads, work = json.loads(sys.stdin.read()), sys.argv[1]
    for p in payloads:
        data = bytes.fromhex(p["data"])
        try:
            if p["kind"] == "pickle":
                pickle.loads(data)
            elif p["kind"] in ("torch-zip", "torch-legacy"):
                import torch
                torch.load(io.BytesIO(data), weights_only=False)
            elif p["kind"] == "npy":
                import numpy as np
                np.load(io.BytesIO(data), allow_pickle=True)
            elif p["kind"] == "zip":  # a naive extraction: joins member names to the folder
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    for info in zf.infolist():
                        dest = os.path.join(work, info.filename)
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        with open(dest, "wb") as f:
                            f.write(zf.read(info))
            elif p["kind"] == "tar":  # a naive extraction, as before Python's tar filters
                with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                    tf.extractall(work, filter="fully_trusted")
        except Exception as e:
            print(p["name"], type(e).__name__, e, file=sys.stderr)
    """
)


def run_control(payloads: list[Payload], work: str | os.PathLike[str]) -> list[str]:
    """Load every payload the unsafe way in a subprocess (plain `pickle.loads`,
    `torch.load(weights_only=False)`, `np.load(allow_pickle=True)`, naive extraction into
    `work`); return the names whose canary file exists afterwards -- all of them, for a live
    corpus. Removes the canaries again."""
    Path(work).mkdir(parents=True, exist_ok=True)
    spec = [{"name": p.name, "kind": p.kind, "data": p.data.hex()} for p in payloads]
    subprocess.run(
        [sys.executable, "-c", _CONTROL, str(work)],
        input=json.dumps(spec), text=True, capture_output=True, timeout=300, check=False,
        cwd=work,
    )  # fmt: skip
    deadline = time.monotonic() + 10  # os.popen / Popen run their command in the background
    while time.monotonic() < deadline and not all(p.canary.exists() for p in payloads):
        time.sleep(0.05)
    fired = [p.name for p in payloads if p.canary.exists()]
    for p in payloads:
        p.canary.unlink(missing_ok=True)
    return fired
