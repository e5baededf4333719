"""Draw the figures of docs/concepts.md (run from anywhere; needs numpy + matplotlib).

    python docs/assets/make_concepts_figure.py

Writes, next to this file:
- ``neural_graph.png``: a 2-3-2 MLP as a neural graph (nodes = neurons with bias features,
  edges = weights) and how a conv kernel becomes an edge feature.
- ``permutation.png``: the same MLP with its hidden neurons permuted: the same function and an
  isomorphic graph.
The figures are committed; rerun this script only when they must change.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch

HERE = Path(__file__).resolve().parent
ROLE_COLOURS = {"input": "#9ecae1", "hidden": "#fdd0a2", "output": "#a1d99b"}
HIDDEN_TINTS = ["#fdae6b", "#e6550d", "#fdd0a2"]  # to follow hidden neurons under permutation
CMAP = plt.get_cmap("RdBu_r")
NORM = colors.TwoSlopeNorm(vmin=-1.0, vcenter=0.0, vmax=1.0)

rng = np.random.default_rng(7)
SIZES = [2, 3, 2]
W = [rng.uniform(-1, 1, (SIZES[i + 1], SIZES[i])).round(2) for i in range(len(SIZES) - 1)]
B = [rng.uniform(-1, 1, SIZES[i + 1]).round(2) for i in range(len(SIZES) - 1)]


def positions(sizes: list[int]) -> list[np.ndarray]:
    """(x, y) of every node, layer by layer, centred vertically."""
    return [np.stack([np.full(n, 2.2 * layer), (np.arange(n) - (n - 1) / 2)[::-1] * 1.4], 1)
            for layer, n in enumerate(sizes)]  # fmt: skip


def draw_graph(
    ax: Axes,
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    *,
    hidden_ids: list[int] | None = None,
    edge_labels: bool = True,
) -> None:
    pos = positions(SIZES)
    for layer, w in enumerate(weights):
        for i in range(w.shape[0]):  # target neuron in layer + 1
            for j in range(w.shape[1]):  # source neuron in layer
                (x0, y0), (x1, y1) = pos[layer][j], pos[layer + 1][i]
                ax.add_patch(
                    FancyArrowPatch(
                        (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=9,
                        shrinkA=15, shrinkB=15, lw=1.2 + 2.2 * abs(w[i, j]),
                        color=CMAP(NORM(w[i, j])), zorder=1,
                    )
                )  # fmt: skip
                if edge_labels:
                    t = 0.3 if (i + j) % 2 else 0.7
                    ax.text(
                        x0 + t * (x1 - x0), y0 + t * (y1 - y0),
                        rf"$w^{{({layer + 1})}}_{{{i + 1}{j + 1}}}$", fontsize=7.5,
                        ha="center", va="center", zorder=3,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
                    )  # fmt: skip
    for layer, layer_pos in enumerate(pos):
        role = "input" if layer == 0 else "output" if layer == len(SIZES) - 1 else "hidden"
        for k, (x, y) in enumerate(layer_pos):
            face = ROLE_COLOURS[role]
            if role == "hidden" and hidden_ids is not None:
                face = HIDDEN_TINTS[hidden_ids[k]]
            ax.scatter([x], [y], s=900, c=face, edgecolors="black", linewidths=1.0, zorder=2)
            if role == "input":
                label = rf"$x_{k + 1}$" + "\n" + r"$b{=}0$"
            else:
                name = hidden_ids[k] + 1 if (role == "hidden" and hidden_ids is not None) else k + 1
                label = rf"$b^{{({layer})}}_{{{name}}}$" + "\n" + f"{biases[layer - 1][k]:+.2f}"
            ax.text(x, y, label, ha="center", va="center", fontsize=7.5, zorder=4)
    ax.set_xlim(-0.9, 2.2 * (len(SIZES) - 1) + 0.9)
    ax.set_ylim(-2.6, 2.4)
    ax.set_aspect("equal")
    ax.axis("off")
    for layer, text in enumerate(["inputs", "hidden layer", "outputs"]):
        ax.text(2.2 * layer, -2.35, text, ha="center", fontsize=9, color="0.3")


def draw_kernel(ax: Axes) -> None:
    """A 3x3 kernel zero-padded, centred, to 5x5 and flattened to a 25-dim edge feature."""
    k3 = rng.uniform(-1, 1, (3, 3)).round(2)
    k5 = np.zeros((5, 5))
    k5[1:4, 1:4] = k3
    ax.imshow(k5, cmap=CMAP, norm=NORM, extent=(0, 5, 0, 5))
    for r in range(6):
        ax.plot([0, 5], [r, r], color="0.6", lw=0.6)
        ax.plot([r, r], [0, 5], color="0.6", lw=0.6)
    ax.add_patch(plt.Rectangle((1, 1), 3, 3, fill=False, ec="black", lw=1.6))
    flat = k5.reshape(1, -1)
    ax.imshow(flat, cmap=CMAP, norm=NORM, extent=(0, 12.5, -2.2, -1.7))
    ax.annotate("", xy=(2.5, -1.6), xytext=(2.5, -0.1), arrowprops={"arrowstyle": "->"})
    ax.text(5.4, 2.5, "3x3 kernel\nzero-padded\n(centred) to\nthe largest\nkernel, 5x5", fontsize=8,
            va="center")  # fmt: skip
    ax.text(0, -2.9, "flattened: edge feature of width 25", fontsize=8)
    ax.set_xlim(-0.3, 12.8)
    ax.set_ylim(-3.2, 5.3)
    ax.set_aspect("equal")
    ax.axis("off")


def colourbar(fig: plt.Figure, axes: list[Axes]) -> None:
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=NORM, cmap=CMAP), ax=axes, shrink=0.55, pad=0.01)
    bar.set_label("parameter value", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def main() -> None:
    plt.rcParams.update({"font.family": "DejaVu Sans"})

    fig, (ax_g, ax_k) = plt.subplots(1, 2, figsize=(10.5, 4.2), width_ratios=[1.35, 1])
    draw_graph(ax_g, W, B)
    ax_g.set_title("A 2-3-2 MLP as a neural graph\nnode feature = bias, edge feature = weight",
                   fontsize=10)  # fmt: skip
    draw_kernel(ax_k)
    ax_k.set_title("Conv layers: one edge per (in, out) channel pair", fontsize=10)
    handles = [plt.Line2D([], [], marker="o", ls="", ms=9, mfc=c, mec="black", label=r)
               for r, c in ROLE_COLOURS.items()]  # fmt: skip
    ax_g.legend(handles=handles, loc="upper left", fontsize=8, frameon=False, ncols=3,
                bbox_to_anchor=(0.0, 1.02))  # fmt: skip
    colourbar(fig, [ax_g, ax_k])
    fig.savefig(HERE / "neural_graph.png", dpi=130, bbox_inches="tight", facecolor="white")
    plt.close(fig)

    # Permute the hidden neurons: rows of W1 and b1, columns of W2.
    perm = np.array([2, 0, 1])
    w_perm = [W[0][perm], W[1][:, perm]]
    b_perm = [B[0][perm], B[1]]
    x = rng.uniform(-1, 1, (5, 2))
    f = np.tanh(x @ W[0].T + B[0]) @ W[1].T + B[1]
    f_perm = np.tanh(x @ w_perm[0].T + b_perm[0]) @ w_perm[1].T + b_perm[1]
    assert np.allclose(f, f_perm)

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    draw_graph(ax_a, W, B, hidden_ids=[0, 1, 2], edge_labels=False)
    ax_a.set_title("original network", fontsize=10)
    draw_graph(ax_b, w_perm, b_perm, hidden_ids=list(perm), edge_labels=False)
    ax_b.set_title(r"hidden neurons permuted by $\pi = (3, 1, 2)$", fontsize=10)
    fig.suptitle(
        r"$W_1 \to P_\pi W_1,\ b_1 \to P_\pi b_1,\ W_2 \to W_2 P_\pi^\top$: the same function, "
        "an isomorphic graph (inputs and outputs stay in place)",
        fontsize=10,
    )
    colourbar(fig, [ax_a, ax_b])
    fig.savefig(HERE / "permutation.png", dpi=130, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    print(f"wrote {HERE / 'neural_graph.png'} and {HERE / 'permutation.png'}")


if __name__ == "__main__":
    main()
