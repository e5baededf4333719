r"""Probe features: what every neuron computes on a few probe inputs.

For probe inputs $x_1, \dots, x_K$ and a network $f_\theta$, node $v$ gets the
`K`-vector of its values on the probes,

$$
p_v = \big(a_v(x_1), \dots, a_v(x_K)\big) \in \mathbb{R}^K,
$$

where $a_v$ is the input coordinate (input nodes), the post-nonlinearity activation
(hidden nodes) or the output (output nodes). For a conv channel, $a_v(x)$ is a statistic of
the channel's feature map $A_v(x) \in \mathbb{R}^{h \times w}$ (after its activation and
any local pooling, before a global pooling and any flatten): its spatial mean by default, and
optionally its standard deviation and maximum (`stats=("mean", "std", "max")`, giving
`K * len(stats)` features per node). Permuting hidden neurons permutes the rows of $p$ the same
way, so a model that consumes $p$ as node features keeps its equivariance (Kofinas et al.,
ICLR 2024, §3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

import nngraph_core as ngc

from .errors import (
    ArchitectureVariantError,
    NonFiniteProbeError,
    ProbeInputError,
    ProbeShapeError,
)
from .functional import (
    ArchitectureLike,
    _layout,
    by_variant,
    functional_forward,
    input_rank,
    resolve_spec,
    resolve_variants,
)

__all__ = [
    "STATS",
    "ProbeFeatures",
    "ProbeInit",
    "ProbeStat",
    "coordinate_grid",
    "probe_image_index",
    "select_probe_images",
]

ProbeInit = Literal["uniform", "normal", "grid"]
ProbeStat = Literal["mean", "std", "max"]
STATS: tuple[ProbeStat, ...] = ("mean", "std", "max")
"""The per-node statistics [`ProbeFeatures`][nngraph_probe.ProbeFeatures] can compute."""


def probe_image_index(
    num_images: int, k: int, *, labels: Tensor | None = None, seed: int = 0
) -> Tensor:
    """Indices `[k]` of `k` distinct images out of `num_images`, drawn deterministically.

    Without `labels`: the first `k` entries of a permutation drawn by
    `torch.Generator().manual_seed(seed)`. With `labels` `[num_images]`: class-balanced, in
    rounds -- one image of every class (classes in ascending order, each class's images in the
    seeded permuted order), then a second image of every class, and so on; a class that runs
    out of images is skipped. So class counts differ by at most one while every class has
    images left, and any prefix of the result is balanced too.

    Raises:
        ProbeInputError: `k` outside `[1, num_images]`.
        ProbeShapeError: `labels` not of shape `[num_images]`.
    """
    if not 1 <= k <= num_images:
        raise ProbeInputError(f"cannot pick k={k} probe images out of {num_images}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_images, generator=gen)
    if labels is None:
        return perm[:k]
    if labels.shape != (num_images,):
        raise ProbeShapeError(
            f"labels must be [{num_images}] (one per image), got {tuple(labels.shape)}"
        )
    _, cls = torch.unique(labels.detach().cpu()[perm], return_inverse=True)  # class ids 0..C-1
    order = torch.argsort(cls, stable=True)  # grouped by class, permuted order inside
    counts = torch.bincount(cls)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(cls)
    rank[order] = torch.arange(num_images) - starts[cls[order]]  # position inside its class
    key = rank * counts.numel() + cls  # round first, then class
    return perm[torch.argsort(key)[:k]]


def select_probe_images(
    images: Tensor, k: int, *, labels: Tensor | None = None, seed: int = 0
) -> Tensor:
    """`k` probe images `[k, C, H, W]` picked deterministically from `images` (class-balanced
    when `labels` are given; see [`probe_image_index`][nngraph_probe.probe_image_index]).

    Pass the images normalised exactly as the networks saw them in training (the zoo's
    transform): they are used as they are.

    Args:
        images: `[N, C, H, W]`, or `[N, H, W]` (one channel; a channel dim is added).
        k: number of probe images.
        labels: optional `[N]` class labels.
        seed: seed of the draw.

    Raises:
        ProbeShapeError: images that are not `[N, C, H, W]` / `[N, H, W]`, labels of the wrong
            length.
        ProbeInputError: integer images (e.g. raw `uint8` pixels: normalise them first), `k`
            larger than `N`.
        NonFiniteProbeError: NaN or infinite pixels among the picked images.

    Examples:
        >>> probes = select_probe_images(test_images, 32, labels=test_labels)  # [32, 1, 28, 28]
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ProbeShapeError(
            f"images must be [N, C, H, W] or [N, H, W], got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ProbeInputError(
            f"images have dtype {images.dtype}: convert and normalise them as the networks' "
            "training did (e.g. uint8 pixels / 255, then the zoo's mean/std) before probing"
        )
    index = probe_image_index(images.shape[0], k, labels=labels, seed=seed)
    picked = images[index.to(images.device)]
    _check_finite(picked, "the selected probe images")
    return picked


def _check_finite(x: Tensor, what: str) -> None:
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        first = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten()[:5].tolist()
        raise NonFiniteProbeError(
            f"{what} contain NaN or infinite values (probe(s) {first} of {x.shape[0]})"
        )


def _node_stats(a: Tensor, stats: Sequence[ProbeStat]) -> Tensor:
    """`[B, K, n, S]` statistics of node values `[B, K, n]` or feature maps `[B, K, n, h, w]`.

    A dense node's value counts as a `1 x 1` map (mean = max = value, std = 0).
    """
    if a.dim() == 3:
        parts = [torch.zeros_like(a) if st == "std" else a for st in stats]
        return torch.stack(parts, dim=-1)
    flat = a.flatten(3)  # [B, K, n, h*w]
    mean = flat.mean(-1)
    parts = []
    for st in stats:
        if st == "mean":
            parts.append(mean)
        elif st == "max":
            parts.append(flat.amax(-1))
        else:  # population std, two-pass (stable for nearly constant maps in float32); zero,
            # with a zero gradient (not NaN), for a constant map
            var = (flat - mean.unsqueeze(-1)).square().mean(-1)
            tiny = torch.finfo(var.dtype).tiny
            parts.append(torch.where(var > tiny, var.clamp_min(tiny).sqrt(), 0.0))
    return torch.stack(parts, dim=-1)


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
    r"""Per-node probe features `[B*N, K * S]` from forward passes on `K` probe inputs.

    Every network of a [`GraphBatch`][nngraph_core.GraphBatch] runs on the same probes (one
    vectorised [`functional_forward`][nngraph_probe.functional_forward]); node $v$ gets its values
    on the probes: input nodes the probe coordinates, hidden nodes their post-nonlinearity
    activations, output nodes the outputs (for a classifier: the logits, not a softmax). Rows are
    in the canonical node order of the batch (the template's order), so a hidden permutation of the
    networks permutes the rows the same way.

    **CNNs.** The probes are images `[K, C, H, W]` (random normal ones by default; real images
    via `probes=`, e.g. from [`select_probe_images`][nngraph_probe.select_probe_images]; learned
    ones with `learned=True`). A node is an image channel, a conv channel or a dense neuron; a
    channel's value on one probe is its feature map $A_v(x_k)$ (input nodes: the image channel;
    conv channels: the map after the activation and any local pooling, before a global pooling
    and any flatten), reduced to the `S = len(stats)` statistics
    $\operatorname{mean}_{ij} A_v(x_k)_{ij}$, $\operatorname{std}_{ij}$ (population) and
    $\max_{ij}$. Dense neurons (the linear head, the logits) count as `1 x 1` maps: mean = max =
    value, std = 0. Feature column `s * K + k` holds statistic `stats[s]` on probe `k`, so the
    first `K` columns are always the means (and `stats=("mean",)` gives the INR layout).

    **Per-network activations.** A zoo whose networks share one parameter layout but not their
    activation (relu or tanh) is probed by passing the architecture variants and `spec_index`,
    the variant of every network, to [`dense`][nngraph_probe.ProbeFeatures.dense], `forward` or
    [`attach`][nngraph_probe.ProbeFeatures.attach]; every network runs with its own activation
    (see [`functional_forward`][nngraph_probe.functional_forward]).

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
        stats: the statistics of a conv channel's feature map per probe, any of `"mean"`,
            `"std"`, `"max"` (see above); `S = len(stats)`.

    Raises:
        ProbeShapeError: `probes` not of shape `[K, *input_shape]`.
        NonFiniteProbeError: `probes` with NaN or infinite values (checked again at every
            forward, where learned probes may have diverged).
        ValueError: an unknown or repeated statistic.

    Shapes:
        - input: a [`GraphBatch`][nngraph_core.GraphBatch] of `B` graphs with `N` nodes each (or
          flat parameters `[B, P]` plus `template`)
        - output: `[B*N, K * S]` (mixed batches: `[sum N, K * S]`)

    Examples:
        >>> probe = ProbeFeatures.for_graphs(template, num_probes=64, learned=True)
        >>> batch = probe.attach(template.batch(params))   # batch.probe_features: [B*N, 64]
        >>> images = select_probe_images(test_images, 32, labels=test_labels)
        >>> probe = ProbeFeatures((1, 28, 28), probes=images, stats=("mean", "std", "max"))
        >>> feats = probe(params, [relu_template, tanh_template], spec_index=act)  # [B*N, 96]
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
        stats: Sequence[ProbeStat] = ("mean",),
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.init = init
        self.learned = learned or generator_latent is not None
        self.generated = generator_latent is not None
        self.stats: tuple[ProbeStat, ...] = tuple(stats)
        if not self.stats or any(st not in STATS for st in self.stats):
            raise ValueError(f"stats must be a non-empty selection of {STATS}, got {stats!r}")
        if len(set(self.stats)) != len(self.stats):
            raise ValueError(f"stats must not repeat, got {stats!r}")
        if probes is None:
            probes = self._initial_probes(num_probes, init, low, high, grid_size, seed)
        elif probes.dim() < 1 or tuple(probes.shape[1:]) != self.input_shape:
            raise ProbeShapeError(
                f"probes {tuple(probes.shape)} do not match [K, *{self.input_shape}]"
            )
        if not probes.is_floating_point():
            probes = probes.float()
        _check_finite(probes, "probes")
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

    @property
    def feature_dim(self) -> int:
        """Features per node, `K * len(stats)`."""
        return self.num_probes * len(self.stats)

    def extra_repr(self) -> str:
        stats = f", stats={self.stats}" if self.stats != ("mean",) else ""
        return (
            f"num_probes={self.num_probes}, input_shape={self.input_shape}, init={self.init!r}, "
            f"learned={self.learned}, generated={self.generated}{stats}"
        )

    # -- dense computations (one architecture, or variants of one parameter layout) ------------
    def _check(self, spec: ngc.NetworkSpec) -> None:
        expected = tuple(spec.input_shape) if spec.input_shape is not None else None
        if expected is not None and expected != self.input_shape:
            what = "images" if len(expected) == 3 else "inputs"
            detail = ""
            if len(expected) == 3 and len(self.input_shape) == 3:
                names = ("channels", "height", "width")
                detail = ": " + ", ".join(
                    f"{n} {g} != {e}"
                    for n, g, e in zip(names, self.input_shape, expected, strict=True)
                    if g != e
                )
            raise ProbeShapeError(
                f"probes [K, {', '.join(map(str, self.input_shape))}] do not fit the "
                f"network's {what} {expected}{detail}"
            )
        if input_rank(spec) not in (None, len(self.input_shape)):
            raise ProbeShapeError(
                f"probes of shape {self.input_shape} do not fit this architecture "
                f"({spec.describe()})"
            )

    def _probes_checked(self, specs: Sequence[ngc.NetworkSpec]) -> Tensor:
        for spec in specs:
            self._check(spec)
        x = self.probes
        _check_finite(x, "probes")
        return x

    def dense(
        self,
        template_or_spec: ArchitectureLike | Sequence[ArchitectureLike],
        params: Tensor,
        *,
        spec_index: Tensor | None = None,
    ) -> Tensor:
        """Probe features `[B, N, K * S]` of flat parameters `[B, P]` (canonical node order).

        With a sequence of architecture variants (one parameter layout, e.g. the relu and the
        tanh version of a zoo's CNN) and `spec_index` `[B]`, network `b` runs as variant
        `spec_index[b]`.
        """
        specs, index = resolve_variants(template_or_spec, spec_index, params.shape[0])
        x = self._probes_checked(specs)
        if index is None:
            return self._dense_one(specs[0], params, x)
        # one vectorised forward per variant; each group's maps are reduced to statistics
        # before the (small) features are put back in batch order
        return by_variant(
            specs,
            index,
            lambda spec, ids: [self._dense_one(spec, params if ids is None else params[ids], x)],
        )[0]

    def _dense_one(self, spec: ngc.NetworkSpec, params: Tensor, x: Tensor) -> Tensor:
        _, acts = functional_forward(spec, params, x, return_activations=True, shared_input=True)
        cols = []
        for layer, (a, n) in enumerate(zip(acts, spec.widths)):
            if a.dim() not in (3, 5) or a.shape[2] != n:
                raise ngc.ArchitectureError(
                    f"node layer {layer} has {n} nodes but its activations have shape "
                    f"{tuple(a.shape)}"
                )
            cols.append(_node_stats(a, self.stats))  # [B, K, n, S]
        feats = torch.cat(cols, dim=2)  # [B, K, N, S]
        return feats.permute(0, 2, 3, 1).reshape(params.shape[0], -1, self.feature_dim)

    def dense_outputs(
        self,
        template_or_spec: ArchitectureLike | Sequence[ArchitectureLike],
        params: Tensor,
        *,
        spec_index: Tensor | None = None,
    ) -> Tensor:
        """The output nodes' responses `[B, n_out, K]` (the outputs themselves, or the spatial
        means of output maps; cheaper than [`dense`][nngraph_probe.ProbeFeatures.dense], and
        independent of `stats`). Variants and `spec_index` as in `dense`."""
        specs, index = resolve_variants(template_or_spec, spec_index, params.shape[0])
        x = self._probes_checked(specs)
        out = functional_forward(
            specs if index is not None else specs[0],
            params,
            x,
            spec_index=index,
            shared_input=True,
        )
        assert isinstance(out, Tensor)
        v = out.flatten(3).mean(-1) if out.dim() > 3 else out
        if v.dim() != 3 or v.shape[2] != specs[0].widths[-1]:
            raise ngc.ArchitectureError(
                f"outputs of shape {tuple(out.shape)} do not match {specs[0].widths[-1]} "
                "output nodes"
            )
        return v.transpose(1, 2)

    # -- batches -------------------------------------------------------------------------------
    def forward(
        self,
        batch_or_params: ngc.GraphBatch | Tensor,
        template: ArchitectureLike | Sequence[ArchitectureLike] | None = None,
        *,
        spec_index: Tensor | None = None,
    ) -> Tensor:
        """Probe features `[B*N, K * S]` of a batch (or of flat parameters `[B, P]` and
        `template`).

        A mixed-architecture batch is handled one architecture at a time (one vectorised forward
        per distinct spec, never one per network); rows follow the batch's node order.

        Per-network variants: `template` a sequence of variants and `spec_index` `[B]`; for a
        batch of one architecture ([`GraphTemplate.batch`][nngraph_core.GraphTemplate.batch]),
        its parameters are read in its template's layout, which the variants must share.
        """
        if isinstance(batch_or_params, Tensor):
            if template is None:
                raise TypeError("flat parameters need template=")
            dense = self.dense(template, batch_or_params, spec_index=spec_index)
            return dense.reshape(-1, self.feature_dim)
        batch = batch_or_params
        if batch.template is not None:
            arch = _batch_architecture(batch, template, spec_index)
            dense = self.dense(arch, batch.params(), spec_index=spec_index)
            return dense.reshape(-1, self.feature_dim)
        _no_variants_for_mixed(template, spec_index)
        out = batch.node_features.new_zeros(batch.num_nodes, self.feature_dim)
        out = out.to(self.probes.dtype) if not batch.node_features.is_floating_point() else out
        for spec, ids in _groups(batch):
            params, rows = _group_params(batch, spec, ids)
            dense = self.dense(spec, params)  # [B_g, N, K * S]
            out = out.index_put((rows.reshape(-1),), dense.reshape(-1, self.feature_dim))
        return out

    def outputs(
        self,
        batch: ngc.GraphBatch,
        template: ArchitectureLike | Sequence[ArchitectureLike] | None = None,
        *,
        spec_index: Tensor | None = None,
    ) -> Tensor:
        """The output nodes' responses `[B, n_out, K]` of a batch (every graph needs the same
        number of outputs). Variants and `spec_index` as in `forward`."""
        if batch.template is not None:
            arch = _batch_architecture(batch, template, spec_index)
            return self.dense_outputs(arch, batch.params(), spec_index=spec_index)
        _no_variants_for_mixed(template, spec_index)
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

    def attach(
        self,
        batch: ngc.GraphBatch,
        template: ArchitectureLike | Sequence[ArchitectureLike] | None = None,
        *,
        spec_index: Tensor | None = None,
    ) -> ngc.GraphBatch:
        """Set `batch.probe_features` to `self(batch, template, spec_index=spec_index)` and
        return the batch."""
        batch.probe_features = self(batch, template, spec_index=spec_index)
        return batch


def _batch_architecture(
    batch: ngc.GraphBatch,
    template: ArchitectureLike | Sequence[ArchitectureLike] | None,
    spec_index: Tensor | None,
) -> ArchitectureLike | Sequence[ArchitectureLike]:
    """The architecture (variants) to run a one-architecture batch with."""
    assert batch.template is not None
    if template is None:
        if spec_index is not None:
            raise ArchitectureVariantError(
                "spec_index= needs the architecture variants: pass template=[variant, ...]"
            )
        return batch.template
    specs = (
        [resolve_spec(template)]
        if isinstance(template, ngc.GraphTemplate | ngc.NetworkSpec)
        else [resolve_spec(t) for t in template]
    )
    for spec in specs:
        if _layout(spec) != _layout(batch.template.spec):
            raise ArchitectureVariantError(
                f"architecture {spec.describe()} does not share the parameter layout of the "
                f"batch ({batch.template.spec.describe()})"
            )
    return template


def _no_variants_for_mixed(template: object, spec_index: Tensor | None) -> None:
    if template is not None or spec_index is not None:
        raise ArchitectureVariantError(
            "a mixed-architecture batch carries every graph's own spec: template= and "
            "spec_index= apply to batches of one architecture (GraphTemplate.batch) only"
        )


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
