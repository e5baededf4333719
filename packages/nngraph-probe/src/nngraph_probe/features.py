r"""Probe features: what every neuron computes on a few probe inputs.

For probe inputs $x_1, \dots, x_K$ and a network $f_\theta$, node $v$ gets the
`K`-vector of its values on the probes,

$$
p_v = \big(a_v(x_1), \dots, a_v(x_K)\big) \in \mathbb{R}^K,
$$

where $a_v$ is the input coordinate (input nodes), the post-nonlinearity activation
(hidden nodes) or the output (output nodes). For a conv channel, $a_v(x)$ is the spatial
mean of the channel's feature map (after its activation and pooling, before any flatten).
Permuting hidden neurons permutes the rows of $p$ the same way, so a model that consumes
$p$ as node features keeps its equivariance (Kofinas et al., ICLR 2024, §3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from .functional import functional_forward, input_rank, resolve_spec

__all__ = ["ProbeFeatures", "ProbeInit", "coordinate_grid"]

ProbeInit = Literal["uniform", "normal", "grid"]


def coordinate_grid(
    size: Sequence[int], *, low: float = -1.0, high: float = 1.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Pixel-centre coordinates of an `H x W` grid (or `n` points in 1-D) in `[low, high]`.

    2-D: `[H*W, 2]`, row-major, `(x, y)` per pixel with `x` along the columns and `y`
    along the rows -- the INR convention of `nngraph_datasets.inr.grid`. 1-D: `[n, 1]`.
    """
    if len(size) == 1:
        return torch.linspace(low, high, int(size[0]), dtype=dtype).unsqueeze(1)
    if len(size) != 2:
        raise ValueError(f"grid size must have 1 or 2 entries, got {tuple(size)}")
    h, w = int(size[0]), int(size[1])
    ys = torch.linspace(low, high, h, dtype=dtype)
    xs = torch.linspace(low, high, w, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1).reshape(-1, 2)


def _spec_input_shape(spec: ngc.NetworkSpec) -> tuple[int, ...]:
    if spec.input_shape is not None:
        return tuple(spec.input_shape)
    if input_rank(spec) == 1:
        return (spec.widths[0],)
    raise ngc.ShapeMismatchError(
        "the input shape of this architecture is unknown: pass input_shape=, or build the "
        "template with input_shape=(C, H, W)"
    )


class ProbeFeatures(nn.Module):
    r"""Per-node probe features `[B*N, K]` from forward passes on `K` probe inputs.

    Every network of a [`GraphBatch`][nngraph_core.GraphBatch] runs on the same probes (one
    vectorised [`functional_forward`][nngraph_probe.functional_forward]); node $v$ gets its values
    on the probes: input nodes the probe coordinates, hidden nodes their post-nonlinearity
    activations, output nodes the outputs; conv channels the spatial mean of their feature map. Rows
    are in the canonical node order of the batch (the template's order), so a hidden permutation of
    the networks permutes the rows the same way.

    Args:
        input_shape: shape of one network input, e.g. `(2,)` for an INR, `(1, 28, 28)` for a CNN.
        num_probes: `K` (ignored by `init="grid"`, where `K = H * W`).
        init: `"uniform"` -- i.i.d. $U[\text{low}, \text{high}]$ (INR coordinates in
            $[-1, 1]^2$, the paper's choice); `"normal"` -- i.i.d. $N(0, 1)$ (random
            probe images for CNNs); `"grid"` -- the regular `grid_size` grid in
            $[\text{low}, \text{high}]^d$ for `d = 1, 2` coordinates (e.g. 28x28 pixel centres).
        learned: make the probes an `nn.Parameter` trained with the model (gradients flow through
            the forward pass); otherwise a buffer.
        low: the range of `"uniform"` and `"grid"`.
        high: the range of `"uniform"` and `"grid"`.
        grid_size: `(H, W)` for `init="grid"` (default `(28, 28)`; `(n,)` for 1-D inputs).
        seed: seed of the `torch.Generator` that draws the probes (fixed probes are reproducible).
        probes: explicit initial probes `[K, *input_shape]` (overrides `init`).
        generator_latent: generate the probes (ProbeGen, Kahana et al., ICLR 2025) instead of
            learning them freely: probe `k` is $G(\mathbf{z}_k)$ with a learned latent code
            $\mathbf{z}_k \in \mathbb{R}^{\text{latent}}$ and a shared deep *linear* generator
            $G = \mathrm{Linear} \circ \mathrm{Linear}$ (no activation), which couples the probes
            and regularises them. At construction the generated probes have the mean and std of
            the `init` draw. Implies trained probes (`learned` is ignored).
        generator_hidden: width of the generator's hidden layer.

    Shapes:
        - input: a [`GraphBatch`][nngraph_core.GraphBatch] of `B` graphs with `N` nodes each (or
          flat parameters `[B, P]` plus `template`)
        - output: `[B*N, K]` (mixed batches: `[sum N, K]`)

    Examples:
        >>> probe = ProbeFeatures.for_graphs(template, num_probes=64, learned=True)
        >>> batch = probe.attach(template.batch(params))   # batch.probe_features: [B*N, 64]
    """

    probes: Tensor

    def __init__(
        self,
        input_shape: Sequence[int],
        num_probes: int = 64,
        *,
        init: ProbeInit = "uniform",
        learned: bool = False,
        low: float = -1.0,
        high: float = 1.0,
        grid_size: Sequence[int] | None = None,
        seed: int = 0,
        probes: Tensor | None = None,
        generator_latent: int | None = None,
        generator_hidden: int = 32,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.init = init
        self.learned = learned or generator_latent is not None
        self.generated = generator_latent is not None
        if probes is None:
            probes = self._initial_probes(num_probes, init, low, high, grid_size, seed)
        elif tuple(probes.shape[1:]) != self.input_shape:
            raise ngc.ShapeMismatchError(
                f"probes {tuple(probes.shape)} do not match [K, *{self.input_shape}]"
            )
        if not probes.is_floating_point():
            probes = probes.float()
        if generator_latent is not None:
            self._build_generator(probes, generator_latent, generator_hidden, seed)
        elif learned:
            self.probes = nn.Parameter(probes.detach().clone())
        else:
            self.register_buffer("probes", probes.detach().clone())

    def _build_generator(self, initial: Tensor, latent: int, hidden: int, seed: int) -> None:
        if latent < 1 or hidden < 1:
            raise ValueError(f"generator sizes must be >= 1, got latent={latent}, hidden={hidden}")
        gen = torch.Generator().manual_seed(seed + 1)
        k, d = initial.shape[0], initial[0].numel()
        self.latent = nn.Parameter(torch.randn(k, latent, generator=gen, dtype=initial.dtype))
        first, last = nn.Linear(latent, hidden), nn.Linear(hidden, d)
        with torch.no_grad():
            for lin in (first, last):
                bound = 1.0 / lin.in_features**0.5
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)
                lin.bias.zero_()
            # match the mean and std of the initial draw (per input coordinate)
            out = last(first(self.latent))
            flat = initial.reshape(k, d)
            scale = flat.std(0) / out.std(0).clamp_min(1e-12) if k > 1 else torch.ones(d)
            last.weight.mul_(scale.unsqueeze(1))
            last.bias.copy_(flat.mean(0) - (out * scale).mean(0))
        self.generator = nn.Sequential(first, last).to(initial.dtype)

    def __getattr__(self, name: str) -> Any:
        # generated probes are a function of the latent codes, recomputed at every access
        if name == "probes" and "generator" in self._modules:
            return self.generator(self.latent).reshape(-1, *self.input_shape)
        return super().__getattr__(name)

    def _initial_probes(
        self,
        num_probes: int,
        init: ProbeInit,
        low: float,
        high: float,
        grid_size: Sequence[int] | None,
        seed: int,
    ) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = (num_probes, *self.input_shape)
        if init == "uniform":
            return low + (high - low) * torch.rand(shape, generator=gen)
        if init == "normal":
            return torch.randn(shape, generator=gen)
        if init == "grid":
            if len(self.input_shape) != 1 or self.input_shape[0] not in (1, 2):
                raise ValueError(
                    f"init='grid' needs 1-D or 2-D coordinate inputs, not {self.input_shape}"
                )
            size = tuple(grid_size) if grid_size is not None else (28,) * self.input_shape[0]
            if len(size) != self.input_shape[0]:
                raise ValueError(f"grid_size {size} does not match inputs {self.input_shape}")
            return coordinate_grid(size, low=low, high=high)
        raise ValueError(f"init must be 'uniform', 'normal' or 'grid', not {init!r}")

    @classmethod
    def for_graphs(
        cls,
        template_or_spec: ngc.GraphTemplate | ngc.NetworkSpec,
        num_probes: int = 64,
        *,
        init: ProbeInit | None = None,
        input_shape: Sequence[int] | None = None,
        **kwargs: object,
    ) -> ProbeFeatures:
        """Probes for an architecture: its input shape, `"uniform"` coordinates for MLPs
        (INRs) and `"normal"` random images for CNNs unless `init` says otherwise."""
        spec = resolve_spec(template_or_spec)
        shape = tuple(input_shape) if input_shape is not None else _spec_input_shape(spec)
        chosen: ProbeInit = init if init is not None else ("normal" if spec.is_cnn else "uniform")
        return cls(shape, num_probes, init=chosen, **kwargs)  # type: ignore[arg-type]

    @property
    def num_probes(self) -> int:
        """`K`."""
        if self.generated:
            return int(self.latent.shape[0])
        return int(self.probes.shape[0])

    def extra_repr(self) -> str:
        return (
            f"num_probes={self.num_probes}, input_shape={self.input_shape}, init={self.init!r}, "
            f"learned={self.learned}, generated={self.generated}"
        )

    # -- dense computations (one architecture) --------------------------------------------------
    def _check(self, spec: ngc.NetworkSpec) -> None:
        if spec.input_shape is not None and tuple(spec.input_shape) != self.input_shape:
            raise ngc.ShapeMismatchError(
                f"probes of shape {self.input_shape} do not fit inputs {tuple(spec.input_shape)}"
            )
        if input_rank(spec) not in (None, len(self.input_shape)):
            raise ngc.ShapeMismatchError(
                f"probes of shape {self.input_shape} do not fit this architecture "
                f"({spec.describe()})"
            )

    def dense(
        self, template_or_spec: ngc.GraphTemplate | ngc.NetworkSpec, params: Tensor
    ) -> Tensor:
        """Probe features `[B, N, K]` of flat parameters `[B, P]` (canonical node order)."""
        spec = resolve_spec(template_or_spec)
        self._check(spec)
        _, acts = functional_forward(
            spec, params, self.probes, return_activations=True, shared_input=True
        )
        cols = []
        for layer, (a, n) in enumerate(zip(acts, spec.widths)):
            v = a.flatten(3).mean(-1) if a.dim() > 3 else a  # [B, K, n_l]
            if v.dim() != 3 or v.shape[2] != n:
                raise ngc.ArchitectureError(
                    f"node layer {layer} has {n} nodes but its activations have shape "
                    f"{tuple(a.shape)}"
                )
            cols.append(v)
        return torch.cat(cols, dim=2).transpose(1, 2)

    def dense_outputs(
        self, template_or_spec: ngc.GraphTemplate | ngc.NetworkSpec, params: Tensor
    ) -> Tensor:
        """The output nodes' probe features `[B, n_out, K]` (cheaper than
        [`dense`][nngraph_probe.ProbeFeatures.dense])."""
        spec = resolve_spec(template_or_spec)
        self._check(spec)
        out = functional_forward(spec, params, self.probes, shared_input=True)
        assert isinstance(out, Tensor)
        v = out.flatten(3).mean(-1) if out.dim() > 3 else out
        if v.dim() != 3 or v.shape[2] != spec.widths[-1]:
            raise ngc.ArchitectureError(
                f"outputs of shape {tuple(out.shape)} do not match {spec.widths[-1]} output nodes"
            )
        return v.transpose(1, 2)

    # -- batches -------------------------------------------------------------------------------
    def forward(
        self, batch_or_params: ngc.GraphBatch | Tensor, template: ngc.GraphTemplate | None = None
    ) -> Tensor:
        """Probe features `[B*N, K]` of a batch (or of flat parameters `[B, P]` and `template`).

        A mixed-architecture batch is handled one architecture at a time (one vectorised forward
        per distinct spec, never one per network); rows follow the batch's node order.
        """
        if isinstance(batch_or_params, Tensor):
            if template is None:
                raise TypeError("flat parameters need template=")
            return self.dense(template, batch_or_params).reshape(-1, self.num_probes)
        batch = batch_or_params
        if batch.template is not None:
            dense = self.dense(batch.template, batch.params())
            return dense.reshape(-1, self.num_probes)
        out = batch.node_features.new_zeros(batch.num_nodes, self.num_probes)
        out = out.to(self.probes.dtype) if not batch.node_features.is_floating_point() else out
        for spec, ids in _groups(batch):
            params, rows = _group_params(batch, spec, ids)
            dense = self.dense(spec, params)  # [B_g, N, K]
            out = out.index_put((rows.reshape(-1),), dense.reshape(-1, self.num_probes))
        return out

    def outputs(self, batch: ngc.GraphBatch) -> Tensor:
        """The output nodes' probe features `[B, n_out, K]` of a batch (every graph needs the same
        number of outputs)."""
        if batch.template is not None:
            return self.dense_outputs(batch.template, batch.params())
        groups = _groups(batch)
        n_out = {spec.widths[-1] for spec, _ in groups}
        if len(n_out) != 1:
            raise ngc.ShapeMismatchError(
                f"graphs of the batch have different output counts {n_out}"
            )
        out = batch.node_features.new_zeros(batch.num_graphs, n_out.pop(), self.num_probes)
        for spec, ids in groups:
            params, _ = _group_params(batch, spec, ids)
            out = out.index_put((ids,), self.dense_outputs(spec, params))
        return out

    def attach(self, batch: ngc.GraphBatch) -> ngc.GraphBatch:
        """Set `batch.probe_features` to `self(batch)` and return the batch."""
        batch.probe_features = self(batch)
        return batch


# ---------------------------------------------------------------------------------------------
# Mixed-architecture batches
# ---------------------------------------------------------------------------------------------


def _groups(batch: ngc.GraphBatch) -> list[tuple[ngc.NetworkSpec, Tensor]]:
    """`(spec, graph ids)` for each distinct architecture of a batch, in order of appearance."""
    index: dict[ngc.NetworkSpec, list[int]] = {}
    for i, spec in enumerate(batch.specs):
        index.setdefault(spec, []).append(i)
    dev = batch.node_features.device
    return [(s, torch.tensor(ids, dtype=torch.long, device=dev)) for s, ids in index.items()]


def _canonical_edges(spec: ngc.NetworkSpec) -> tuple[Tensor, Tensor]:
    """For every node in canonical order: one edge position (canonical edge order) that touches
    it, and the edge-index row (0: it is that edge's source, 1: its target).

    Input node `i` is the source of edge `i` of layer 0; node `o` of node layer `l + 1` is
    the target of edge `o * n_l` of layer `l`. Edge order survives any relabelling of nodes
    (`NeuralGraph.permute_nodes` keeps it), so this recovers the canonical node order.
    """
    template = ngc.GraphTemplate(spec)
    pos = [torch.arange(spec.widths[0])]
    row = [torch.zeros(spec.widths[0], dtype=torch.long)]
    for layer_idx, layer in enumerate(spec.layers):
        pos.append(
            template.edge_offsets[layer_idx] + torch.arange(layer.out_features) * layer.in_features
        )
        row.append(torch.ones(layer.out_features, dtype=torch.long))
    return torch.cat(pos), torch.cat(row)


def _group_params(
    batch: ngc.GraphBatch, spec: ngc.NetworkSpec, ids: Tensor
) -> tuple[Tensor, Tensor]:
    """Flat parameters `[B_g, P]` of the graphs `ids` of a mixed batch (one scatter), and the
    batch rows `[B_g, N]` of their nodes in canonical order."""
    dev = batch.node_features.device
    n, e, p = spec.num_nodes, spec.num_edges, spec.num_params
    node_rows = batch.node_ptr[ids].unsqueeze(1) + torch.arange(n, device=dev)  # [B_g, N]
    edge_rows = batch.edge_ptr[ids].unsqueeze(1) + torch.arange(e, device=dev)  # [B_g, E]
    node_vals = batch.node_features[node_rows, 0]
    edge_vals = batch.edge_features[edge_rows].flatten(1)
    node_param = batch.node_param[node_rows]
    edge_param = batch.edge_param[edge_rows].flatten(1)
    index = torch.cat([node_param, edge_param], dim=1)
    index = torch.where(index >= 0, index, torch.full_like(index, p))  # padding -> dump column
    vals = torch.cat([node_vals, edge_vals], dim=1)
    params = vals.new_zeros(ids.numel(), p + 1).scatter(1, index, vals)[:, :p]
    pos, row = _canonical_edges(spec)
    edge_index = batch.edge_index
    canon = edge_index[row.to(dev).unsqueeze(0), edge_rows[:, pos.to(dev)]]  # [B_g, N] global ids
    return params, canon
