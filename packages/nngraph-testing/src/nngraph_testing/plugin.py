"""pytest plugin: registers the nngraph Hypothesis profiles and loads the default one.

With `NNGRAPH_FUZZ_REPORT=<folder>`, each pytest process appends the outcome counts of every
fuzzed reader (`nngraph_testing.fuzz.Outcomes`) to `<folder>/<reader>.jsonl` when it ends.

`--hypothesis-profile NAME` (Hypothesis' own option) still wins: Hypothesis applies it in its
`pytest_configure`, after this module has registered the profiles at import time.
"""

from __future__ import annotations

import pytest

from .profiles import load_profile

_LOADED = load_profile()


def pytest_report_header(config: pytest.Config) -> str:
    from hypothesis import settings

    chosen = config.getoption("hypothesis_profile", default=None) or _LOADED
    return (
        f"nngraph-testing: hypothesis profile {chosen!r} (max_examples={settings().max_examples})"
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import os

    folder = os.environ.get("NNGRAPH_FUZZ_REPORT")
    if not folder:
        return
    from .fuzz import Outcomes

    for outcomes in Outcomes.instances:
        if outcomes.total:
            outcomes.write(folder)
