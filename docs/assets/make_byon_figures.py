"""Draw the figures of docs/byon.md from real converted graphs (needs matplotlib).

    python docs/assets/make_byon_figures.py

Writes, next to this file:
- ``byon_resnet_block.png``: the neural graph of a small ResNet (stem conv + BatchNorm, one
  basic block with a projection shortcut, pooling, a linear head), as ``nngraph_core.from_module``
  builds it.
- ``byon_attention_block.png``: the neural graph of a linear embedding, one
  ``nn.MultiheadAttention`` (4 dimensions, 2 heads) with a residual add, a LayerNorm and a
  linear head.
Nodes sit at their ``node_layer`` (x) and are coloured by ``node_type``; edges are coloured by
``edge_type``. The figures are committed; rerun this script only when they must change.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch
from torch import Tensor, nn

import nngraph_core as ngc
from nngraph_testing import BasicBlock, randomize_

HERE = Path(__file__).resolve().parent
NT, ET = ngc.NodeType, ngc.EdgeType
NODE_COLOURS = {
    NT.INPUT: "#9ecae1",
    NT.LINEAR: "#fdd0a2",
    NT.CONV: "#fdae6b",
    NT.NORM: "#c7e9c0",
    NT.NORM_GROUP: "#74c476",
    NT.QUERY: "#dadaeb",
    NT.KEY: "#bcbddc",
    NT.VALUE: "#9e9ac8",
    NT.HEAD: "#6a51a3",
    NT.EMBEDDING: "#fcbba1",
    NT.SUM: "#d9d9d9",
    NT.ACTIVATION: "#f0f0f0",
}
EDGE_STYLES = {
    ET.LINEAR: ("#636363", "-", 0.35),
    ET.CONV: ("#e6550d", "-", 0.35),
    ET.RESIDUAL: ("#08519c", "--", 1.0),
    ET.NORM: ("#31a354", "-", 1.0),
    ET.NORM_GROUP: ("#74c476", ":", 0.8),
    ET.QUERY: ("#756bb1", "-", 0.3),
    ET.KEY: ("#9e9ac8", "-", 0.3),
    ET.VALUE: ("#54278f", "-", 0.3),
    ET.QK: ("#3f007d", "-", 1.0),
    ET.HEAD: ("#6a51a3", ":", 0.9),
    ET.EMBEDDING: ("#de2d26", "-", 0.6),
    ET.IDENTITY: ("#969696", "--", 0.8),
}


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        down = nn.Sequential(nn.Conv2d(2, 3, 1, 2, bias=False), nn.BatchNorm2d(3))
        self.layer1 = BasicBlock(2, 3, 2, down)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        out: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


class AttentionBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        out: Tensor = self.head(h.mean(dim=1))
        return out


def layout(graph: ngc.NeuralGraph) -> tuple[Tensor, list[tuple[float, float, str]]]:
    """(x, y) of every node: x = node_layer; groups at one depth stacked with gaps."""
    template = ngc.GraphTemplate(graph.spec)
    groups = graph.spec.groups
    depth = graph.spec.group_depths
    columns: dict[int, list[int]] = defaultdict(list)
    for gi in range(len(groups)):
        columns[depth[gi]].append(gi)
    pos = torch.zeros(graph.num_nodes, 2)
    labels = []
    for d, members in columns.items():
        total = sum(groups[g].size for g in members) + 0.9 * (len(members) - 1)
        y = total / 2
        for g in members:
            lo = template.node_offsets[g]
            n = groups[g].size
            for k in range(n):
                pos[lo + k] = torch.tensor([2.6 * d, y - k])
            labels.append((2.6 * d, y + 0.55, groups[g].name.removeprefix("layer1.")))
            y -= n + 0.9
    return pos, labels


def draw(graph: ngc.NeuralGraph, path: Path, title: str, curved: set[int]) -> None:
    pos, labels = layout(graph)
    fig, ax = plt.subplots(figsize=(13, 6.5))
    ax.set_axis_off()
    assert graph.node_type is not None and graph.edge_type is not None
    for e in range(graph.num_edges):
        s, d = graph.edge_index[:, e].tolist()
        et = ET(int(graph.edge_type[e]))
        colour, style, alpha = EDGE_STYLES[et]
        rad = 0.35 if int(et) in curved else 0.0
        ax.add_patch(
            FancyArrowPatch(
                tuple(pos[s].tolist()), tuple(pos[d].tolist()), arrowstyle="-|>",
                mutation_scale=6, shrinkA=7, shrinkB=7, lw=0.8, color=colour, alpha=alpha,
                linestyle=style, connectionstyle=f"arc3,rad={rad}", zorder=1,
            )
        )  # fmt: skip
    for t in NT:
        mask = graph.node_type == int(t)
        if bool(mask.any()):
            xy = pos[mask]
            ax.scatter(xy[:, 0], xy[:, 1], s=150, c=NODE_COLOURS[t], edgecolors="black",
                       linewidths=0.7, zorder=2, label=f"node: {t.name.lower()}")  # fmt: skip
    for x, y, text in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=7.5)
    handles, names = ax.get_legend_handles_labels()
    for t in sorted({int(v) for v in graph.edge_type.tolist()}):
        colour, style, _ = EDGE_STYLES[ET(t)]
        handles.append(Line2D([0], [0], color=colour, linestyle=style, lw=1.5))
        names.append(f"edge: {ET(t).name.lower()}")
    ax.legend(
        handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False
    )
    ax.set_title(title, fontsize=11, pad=14)
    ax.autoscale_view()
    ax.margins(0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(HERE.parent.parent)}: {graph}")


def main() -> None:
    resnet = randomize_(SmallResNet(), seed=0, dtype=torch.float32)
    g = ngc.from_module(resnet, input_shape=(1, 8, 8))
    draw(
        g,
        HERE / "byon_resnet_block.png",
        "ResNet basic block with a projection shortcut (1x1 conv + BatchNorm)",
        curved={int(ET.RESIDUAL)},
    )
    attn = randomize_(AttentionBlock(), seed=0, dtype=torch.float32)
    g = ngc.from_module(attn, input_shape=(3, 2))
    draw(
        g,
        HERE / "byon_attention_block.png",
        "Multi-head attention (4 dimensions, 2 heads) + residual + LayerNorm",
        curved={int(ET.RESIDUAL), int(ET.QK)},
    )


if __name__ == "__main__":
    main()
