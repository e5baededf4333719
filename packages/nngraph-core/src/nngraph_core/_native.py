"""Build a C source file into a shared library on first use, cached per machine.

Shared by the packages that ship fused CPU kernels as plain C (`nngraph_datasets._fused`: the
INR fitting step; `nngraph_layers._native`: the dense NG-GNN layer). The system C compiler
(`$CC`, else `cc` / `gcc` / `clang`) compiles the file once; the library is cached as
`$NNGRAPH_CACHE/kernels/<prefix>-<hash>.so` (`$NNGRAPH_CACHE` defaults to
`~/.cache/nngraph`, with a per-user temporary folder when that is not writable). The hash covers
the source, the flags, the compiler's version and the CPU, so a changed source, compiler or machine
gets its own library. The library is written atomically (temporary file + `os.replace`), so
concurrent processes never load a half-written file.

Private: only stdlib; no torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["NativeBuildError", "build", "cache_dir", "compiler", "open_library"]

COMMON_FLAGS = ("-O3", "-std=gnu11", "-ffp-contract=fast", "-fno-math-errno", "-fPIC", "-shared")
#: tried in order: the first that compiles is used (no -march=native on compilers without it,
#: no OpenMP where the compiler has none: then the kernel runs on one thread)
VARIANTS: tuple[tuple[str, ...], ...] = (
    ("-march=native", "-fopenmp"),
    ("-fopenmp",),
    ("-march=native",),
    (),
)
#: where libraries go when the cache folder is not writable
TMP_CACHE = Path(tempfile.gettempdir()) / f"nngraph-kernels-{getattr(os, 'getuid', lambda: 0)()}"


class NativeBuildError(RuntimeError):
    """A C kernel could not be compiled or loaded (no compiler, compiler errors, no writable
    folder, a library the loader refuses)."""


def compiler() -> list[str] | None:
    """The C compiler command (`$CC` or the first of cc, gcc, clang on `PATH`), or None."""
    env = os.environ.get("CC", "").strip()
    if env:
        cmd = shlex.split(env)
        return cmd if shutil.which(cmd[0]) else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def cache_dir() -> Path:
    """`$NNGRAPH_CACHE/kernels` (`~/.cache/nngraph/kernels` by default)."""
    root = os.environ.get("NNGRAPH_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "nngraph"
    return base / "kernels"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return platform.machine() + "\n" + "\n".join(sorted(set(keep)))


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def build(source: Path, prefix: str, cc: list[str]) -> Path:
    """Compile `source` with `cc` (or find it in the cache); returns the library's path.

    Raises:
        NativeBuildError: the compiler cannot run, every flag variant fails, or no cache folder
            is writable. The message ends with the compiler's last error lines.
    """
    try:
        version = _run([*cc, "--version"]).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"cannot run the C compiler {cc[0]}: {e}") from e
    text = source.read_bytes()
    cpu = _cpu_id()
    errors = []
    for extra in VARIANTS:
        flags = [*COMMON_FLAGS, *extra]
        key = hashlib.sha256(
            b"\0".join([text, " ".join([*cc, *flags]).encode(), version.encode(), cpu.encode()])
        ).hexdigest()[:20]
        for folder in (cache_dir(), TMP_CACHE):
            lib = folder / f"{prefix}-{key}.so"
            if lib.is_file():
                return lib
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{prefix}-{key}-", suffix=".so", dir=folder)
            except OSError as e:
                errors.append(f"cannot write to {folder}: {e}")
                continue  # not writable: try the next folder
            os.close(fd)
            try:
                res = _run([*cc, *flags, "-o", tmp, str(source), "-lm"])
                if res.returncode == 0:
                    os.replace(tmp, lib)
                    return lib
                errors.append(f"{' '.join(flags)}: {(res.stderr or res.stdout).strip()[-400:]}")
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{' '.join(flags)}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            break  # the compiler failed: try the next flags, not the next folder
    raise NativeBuildError(
        f"{cc[0]} could not compile {source.name}: " + " | ".join(errors[-2:])[-600:]
    )


def open_library(source: Path, prefix: str, cc: list[str] | None) -> ctypes.CDLL:
    """`build` `source` with `cc` (the caller's `compiler`) and load it.

    Raises:
        NativeBuildError: `cc` is None, the build fails, or the library cannot be loaded.
    """
    if cc is None:
        raise NativeBuildError("no C compiler found (looked for $CC, cc, gcc, clang)")
    path = build(source, prefix, cc)
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeBuildError(f"cannot load {path}: {e}") from e
