"""Fuzzing the readers of outside bytes: mutations, a time limit per example, a write watch.

A reader passes when every input ends in a result or in an `NNGraphError` subclass with a
message -- no other exception, no hang, no file written outside the folder it was given.

```python
from hypothesis import given
from nngraph_testing.fuzz import Outcomes, byte_mutations, mutate

outcomes = Outcomes("zoo shard")


@given(edits=byte_mutations())
def test_shard_reader(edits):
    data = mutate(VALID_SHARD, edits)
    outcomes.run(lambda: read_shard(data), allowed=target_folder)
```

Mutations are drawn as small descriptions (positions, values) applied to a valid file, so that
Hypothesis' examples stay small and shrink to the offending edit.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st

from nngraph_core import NNGraphError

__all__ = [
    "EVIL_STRINGS",
    "EVIL_VALUES",
    "ExampleTimeout",
    "Outcomes",
    "UnexpectedWrite",
    "byte_mutations",
    "evil_member_names",
    "json_bytes_mutations",
    "mutate",
    "mutate_tree",
    "time_limit",
    "tree_mutations",
    "watch_writes",
]

#: little-endian integers that break size fields: zero, negative (as unsigned), huge
_INTERESTING_INTS = (0, 1, 7, 8, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1)

#: strings with path tricks and unicode
EVIL_STRINGS: tuple[str, ...] = (
    "",
    "../../outside",
    "../../../../../../tmp/nngraph-fuzz-escape",
    "/etc/passwd",
    "/tmp/nngraph-fuzz-absolute",
    "C:\\Windows\\system32",
    "a" * 300,
    "x/" * 2000,
    "\x00",
    "é/ü/漢字/🙂",
    "\u202e\u0301",
    "shard-00000.safetensors",
    ".",
    "..",
    "~",
    "%s%n",
    "NaN",
)

#: JSON-able values that readers must not trust: wrong types, negative, huge, NaN, path tricks
EVIL_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63), 10**30]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EVIL_STRINGS),
    st.text(max_size=12),
    st.lists(st.integers(-3, 2**40), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 3), max_size=2),
)


class ExampleTimeout(BaseException):
    """An example ran past its time limit (a `BaseException`, so that a reader's
    `except Exception` cannot hide a hang)."""


class UnexpectedWrite(AssertionError):
    """A reader wrote, renamed or removed a file outside the folder it was allowed to touch."""


# ----------------------------------------------------------------------------- time limit
@contextlib.contextmanager
def time_limit(seconds: float, wall: float | None = None) -> Iterator[None]:
    """Raise `ExampleTimeout` in the block after `seconds` of CPU time (`ITIMER_PROF`: a busy
    loop) or `wall` seconds of wall time (`ITIMER_REAL`: a block waiting forever; default
    `max(60, 30 * seconds)`, so that a machine busy with other work does not count as a hang).

    Signal-based: main thread of a POSIX process only (elsewhere the block runs unbounded). A
    hang inside C code is reported when control comes back to Python.
    """
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    wall = max(60.0, 30.0 * seconds) if wall is None else wall

    def _expired(signum: int, frame: object) -> None:
        kind = "CPU" if signum == signal.SIGPROF else "wall"
        raise ExampleTimeout(
            f"example ran longer than {seconds if kind == 'CPU' else wall} s ({kind})"
        )

    previous = {sig: signal.signal(sig, _expired) for sig in (signal.SIGPROF, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.setitimer(signal.ITIMER_REAL, wall)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- write watch
_WATCH: list[tuple[Path, list[str]]] = []  # (allowed folder, violations) of active watches
_HOOKED = False
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: audit event -> which of its arguments name the paths it changes (start, stop)
_PATH_EVENTS = {
    "os.remove": (0, 1), "os.rmdir": (0, 1), "os.mkdir": (0, 1), "os.truncate": (0, 1),
    "os.chmod": (0, 1), "os.chown": (0, 1), "os.utime": (0, 1), "shutil.rmtree": (0, 1),
    "os.rename": (0, 2), "os.link": (0, 2), "shutil.move": (0, 2), "os.symlink": (1, 2),
    "shutil.copyfile": (1, 2),
}  # fmt: skip


def _inside(path: object, folder: Path) -> bool:
    if isinstance(path, int):  # a file descriptor: opened (and checked) before
        return True
    try:
        p = Path(os.fsdecode(path))  # type: ignore[arg-type]
    except TypeError:
        return True
    if p.suffix == ".pyc" or "__pycache__" in p.parts:  # the import system's byte-code cache
        return True
    p = Path(os.path.realpath(p if p.is_absolute() else Path.cwd() / p))
    return p == folder or folder in p.parents


def _audit(name: str, args: tuple[Any, ...]) -> None:
    if not _WATCH:
        return
    targets: Sequence[object] = ()
    if name == "open":
        path, mode, flags = (*args, None, None, None)[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
        )
        targets = (path,) if writes else ()
    elif name in _PATH_EVENTS:
        start, stop = _PATH_EVENTS[name]
        targets = args[start:stop]
    for folder, violations in _WATCH:
        for t in targets:
            if t is not None and not _inside(t, folder):
                violations.append(f"{name}({t!r})")


@contextlib.contextmanager
def watch_writes(allowed: str | os.PathLike[str]) -> Iterator[list[str]]:
    """Record every file write, rename, removal or folder creation outside `allowed` (through
    Python's audit hooks: `open` with a writing mode, `os.*`, `shutil.*`); raise
    `UnexpectedWrite` at the end of the block if there was any.

    C and C++ code that writes without Python's `open` (e.g. a native library's own file I/O)
    is not seen; the readers under test do all their file I/O from Python.
    """
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # audit hooks cannot be removed: one, idle without a watch
        _HOOKED = True
    violations: list[str] = []
    entry = (Path(os.path.realpath(allowed)), violations)
    _WATCH.append(entry)
    try:
        yield violations
    finally:
        _WATCH.remove(entry)
    if violations:
        raise UnexpectedWrite(f"wrote outside {allowed}: {violations[:5]}")


# ----------------------------------------------------------------------------- outcomes
class Outcomes:
    """Runs a reader on one input and counts how it ended, per reader.

    `run` returns the reader's result or the `NNGraphError` it raised; any other exception,
    a time-out (`ExampleTimeout`) or a write outside `allowed` propagates and fails the example.
    The counts (`self.counts`: `"result"` and `"NNGraphError subclass name"`) are what the
    reliability page reports; they are also Hypothesis events (`--hypothesis-show-statistics`).

    Args:
        reader: the reader's name in reports.
        seconds: CPU-time limit of one example (see `time_limit`).
    """

    #: every instance of this process, for the pytest plugin's report (`NNGRAPH_FUZZ_REPORT`)
    instances: ClassVar[list[Outcomes]] = []

    def __init__(self, reader: str, seconds: float = 10.0) -> None:
        self.reader, self.seconds = reader, seconds
        self.counts: Counter[str] = Counter()
        Outcomes.instances.append(self)

    def run(self, fn: Callable[[], Any], *, allowed: str | os.PathLike[str] | None = None) -> Any:
        watch = watch_writes(allowed) if allowed is not None else contextlib.nullcontext()
        with time_limit(self.seconds), watch:
            try:
                result = fn()
            except NNGraphError as e:
                assert str(e).strip(), f"{type(e).__name__} raised without a message"
                self._count(type(e).__name__)
                return e
        self._count("result")
        return result

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if currently_in_test_context():
            event(f"{self.reader}: {outcome}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> dict[str, Any]:
        """`{"reader", "examples", "results", "typed_errors": {name: n}}`."""
        errors = {k: v for k, v in sorted(self.counts.items()) if k != "result"}
        return {
            "reader": self.reader,
            "examples": self.total,
            "results": self.counts["result"],
            "typed_errors": errors,
        }

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Append the report as one JSON line to `folder/<reader>.jsonl` (one line per process:
        pytest-xdist workers each write theirs)."""
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.reader)
        path = Path(folder) / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(self.report()) + "\n")
        return path


# ----------------------------------------------------------------------------- byte mutations
def _edit() -> st.SearchStrategy[tuple[Any, ...]]:
    pos = st.floats(0.0, 1.0, exclude_max=True)  # relative position: any file size
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("set"), pos, st.integers(0, 255)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("int"), pos, st.sampled_from(_INTERESTING_INTS), st.sampled_from([4, 8])),
        st.tuples(st.just("repeat"), pos, st.integers(1, 256), st.integers(2, 64)),
    )


def byte_mutations(max_edits: int = 4) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Lists of 1..`max_edits` edits for `mutate`: bit flips, byte writes, truncations,
    deletions, insertions, interesting little-endian integers (sizes), repeated chunks."""
    return st.lists(_edit(), min_size=1, max_size=max_edits)


def mutate(data: bytes, edits: Sequence[tuple[Any, ...]]) -> bytes:
    """Apply `byte_mutations` edits to `data` (positions relative to the current length)."""
    b = bytearray(data)
    for kind, rel, *args in edits:
        at = int(rel * len(b)) if b else 0
        if kind == "flip" and b:
            b[at] ^= 1 << args[0]
        elif kind == "set" and b:
            b[at] = args[0]
        elif kind == "truncate":
            del b[at:]
        elif kind == "delete":
            del b[at : at + args[0]]
        elif kind == "insert":
            b[at:at] = args[0]
        elif kind == "int":
            value, width = args
            b[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif kind == "repeat":
            chunk = bytes(b[at : at + args[0]])
            b[at:at] = chunk * (args[1] - 1)
    return bytes(b)


def json_bytes_mutations() -> st.SearchStrategy[tuple[Any, ...]]:
    """Text-level edits of a JSON document for `mutate_json_text`: deep nesting, huge numbers,
    lone surrogates and invalid UTF-8, duplicated keys, NaN literals."""
    pos = st.floats(0.0, 1.0, exclude_max=True)
    splices = st.sampled_from([
        b"[" * 100_000, b"{\"a\":" * 50_000, b"1" * 5000, b"1e999999", b"-1e999999", b"NaN",
        b"Infinity", b"\"\\ud800\"", b"\xff\xfe", b"\"\x00\"", b",\"shards\":[]", b"null", b"\"",
    ])  # fmt: skip
    return st.tuples(st.just("insert"), pos, splices)


# ----------------------------------------------------------------------------- tree mutations
def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _paths(v, (*prefix, i))


def tree_mutations(
    values: st.SearchStrategy[Any] = EVIL_VALUES, max_edits: int = 3
) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Edits for `mutate_tree`: replace a node, delete it, or add an entry next to it."""
    edit = st.tuples(
        st.sampled_from(["replace", "replace", "delete", "add"]),
        st.floats(0.0, 1.0, exclude_max=True),  # which node (relative index in a walk)
        values,
        st.sampled_from((*EVIL_STRINGS[:6], "extra", "__metadata__", "dtype", "shape")),
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def mutate_tree(tree: Any, edits: Sequence[tuple[Any, ...]]) -> Any:
    """Apply `tree_mutations` edits to a copy of a nested dict / list tree (JSON, state dict)."""
    out = copy.deepcopy(tree)
    for op, rel, value, key in edits:
        paths = list(_paths(out))
        path = paths[min(int(rel * len(paths)), len(paths) - 1)]
        if not path:  # the root itself
            out = value if op == "replace" else out
            continue
        parent = out
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, tuple):
            continue
        last = path[-1]
        if op == "replace":
            parent[last] = value
        elif op == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[key] = value
        else:
            parent.insert(last, value)
    return out


def evil_member_names() -> st.SearchStrategy[str]:
    """Archive member names with path tricks: `../`, absolute, very long, unicode, NUL."""
    return st.one_of(
        st.sampled_from(EVIL_STRINGS[1:]),
        st.builds(lambda n: "../" * n + "x.pth", st.integers(1, 40)),
        st.builds(lambda s: "/" + s, st.text(min_size=1, max_size=30)),
        st.builds(lambda n: "d/" * n + "model_1.pth", st.integers(100, 3000)),
        st.text(min_size=1, max_size=60),
    )


def finite_or_not() -> st.SearchStrategy[float]:
    """Floats with NaN, ±Inf and extremes over-represented."""
    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45]),
        st.floats(allow_nan=True, allow_infinity=True),
    )
