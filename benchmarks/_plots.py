"""Plots shared by the benchmark scripts."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path


def seed_bars(
    labels: Sequence[str],
    seeds: Sequence[Sequence[float]],
    path: Path,
    *,
    xlabel: str,
    errors: Sequence[float] | None = None,
    xlim: tuple[float, float] | None = None,
    reference: tuple[float, str] | None = None,
    title: str | None = None,
) -> None:
    """One horizontal bar per row at the mean of its seeds' values (± `errors`, e.g. the std),
    a dot per seed, and an optional dashed reference line `(value, label)`; written as a PNG to
    `path`. Rows without values are left out; nothing is written without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [
        (lab, list(v), e)
        for lab, v, e in zip(labels, seeds, errors or [None] * len(labels), strict=True)
        if v
    ]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
    for i, (_, values, err) in enumerate(rows):
        ax.barh(i, sum(values) / len(values), xerr=err, color="#7aa6d6")
        ax.plot(values, [i] * len(values), "k.", ms=6)
    ax.set_yticks(range(len(rows)), [lab for lab, _, _ in rows])
    ax.invert_yaxis()
    if xlim is not None:
        ax.set_xlim(*xlim)
    if reference is not None:
        ax.axvline(reference[0], color="#c0504d", ls="--", lw=1, label=reference[1])
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
