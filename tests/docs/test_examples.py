"""Every ```python block in the README files and the docs pages runs as written.

A block preceded by the line ``<!-- skip-example -->`` is not run (use it for fragments that
need a user's own files, e.g. a published zip). Blocks of one page run in order in one
namespace, so a page may build on its earlier blocks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [
        ROOT / "README.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("packages/*/README.md"),
        *ROOT.glob("apps/*/README.md"),
    ]
)
BLOCK = re.compile(r"(<!-- skip-example -->\s*)?```python\n(.*?)```", re.S)


def _blocks(page: Path) -> list[str]:
    return [code for skip, code in BLOCK.findall(page.read_text()) if not skip]


@pytest.mark.parametrize(
    "page", [p for p in PAGES if _blocks(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict[str, object] = {"__name__": "__example__"}
    for i, code in enumerate(_blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(
                f"{page.relative_to(ROOT)} block {i} failed: {exc!r}\n{code}"
            ) from exc
