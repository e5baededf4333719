"""Simulated faults for reliability tests: a full disk, and killing a process at a random moment.

```python
with full_disk(tmp_path, free_bytes=10_000):
    with pytest.raises(DiskFullError):
        build_zoo(tmp_path / "zoo", ...)
```
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["full_disk", "kill_at"]


@contextlib.contextmanager
def full_disk(folder: str | os.PathLike[str], free_bytes: int = 0) -> Iterator[dict[str, int]]:
    """Make `os.write` to files under `folder` fail with `ENOSPC` once `free_bytes` more bytes
    have been written there (the write that crosses the limit writes what fits, then fails,
    as a real full disk does). Writes elsewhere are untouched.

    Only code that writes through `os.write` sees the full disk; nngraph's zoo and checkpoint
    writers do, so that a real full disk surfaces where they handle it.

    Yields a dict whose `"written"` counts the bytes written under `folder`.
    """
    root = Path(os.path.realpath(folder))
    real_write = os.write
    state = {"written": 0, "free": free_bytes}

    def target(fd: int) -> bool:
        try:
            p = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return False
        return p == root or root in p.parents

    def write(fd: int, data: bytes | memoryview) -> int:  # type: ignore[override]
        if not target(fd):
            return real_write(fd, data)
        room = state["free"] - state["written"]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data)[:room])
        state["written"] += n
        return n

    os.write = write  # type: ignore[assignment]
    try:
        yield state
    finally:
        os.write = real_write


def kill_at(
    command: Sequence[str],
    seconds: float,
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ready: str | Path | Callable[[], bool] | None = None,
    timeout: float = 600,
) -> tuple[bool, str]:
    """Start `command`, send it SIGKILL `seconds` after it starts -- or after `ready`: a line
    containing this text on its stderr, this path existing, or this function returning True
    (polled every 2 ms: e.g. "the run has written its k-th checkpoint") -- and wait for it.

    Returns `(killed, stderr)`: `killed` is False when the process ended on its own first.
    """
    proc = subprocess.Popen(
        list(command), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )  # fmt: skip
    assert proc.stderr is not None
    err: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        if isinstance(ready, str):
            for line in proc.stderr:
                err.append(line)
                if ready.encode() in line or time.monotonic() > deadline:
                    break
        os.set_blocking(proc.stderr.fileno(), False)
        if isinstance(ready, Path) or callable(ready):
            done = ready.exists if isinstance(ready, Path) else ready
            while not done() and proc.poll() is None and time.monotonic() < deadline:
                err.append(proc.stderr.read() or b"")
                time.sleep(0.002)
        end = time.monotonic() + seconds
        while time.monotonic() < end and proc.poll() is None:
            chunk = proc.stderr.read()  # non-blocking: keep the pipe from filling up
            if chunk:
                err.append(chunk)
            time.sleep(min(0.005, max(end - time.monotonic(), 0)))
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=timeout)
        os.set_blocking(proc.stderr.fileno(), True)
        err.append(proc.stderr.read())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return killed and proc.returncode == -signal.SIGKILL, b"".join(err).decode(errors="replace")
