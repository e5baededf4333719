"""The probe-only baseline: an MLP on the outputs of each network at the probe inputs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

import nngraph_core as ngc

from .features import ProbeFeatures, ProbeInit
from .functional import ArchitectureLike, resolve_spec

__all__ = ["ProbeMLP"]


class ProbeMLP(nn.Module):
    r"""Probe-only classifier (ProbeGen-style; Kahana et al., 2024): query each network at `K`
    probe inputs and classify the responses with an MLP,

    $$
    \hat y = \mathrm{MLP}\big(\mathrm{vec}[f_\theta(x_1), \dots, f_\theta(x_K)]\big)
    \in \mathbb{R}^{\text{num\_outputs}},
    $$

    concatenated output node by output node (`[n_out * K]`). It sees the network only as a
    function, so it is exactly invariant to hidden-neuron permutations (up to floating-point
    summation order), and it keeps the identity of the output neurons. On INRs the responses are
    pixel intensities at the probe coordinates: with the 28x28 grid as probes the model sees the
    image. Any graph model that receives probe features contains this one, so it is the floor
    such a model must reach (DESIGN §3).

    On CNN classifiers the probes are images and the responses are the networks' logits on them
    (`[n_out * K]`, e.g. 10 logits on 32 real test images): the "reads only the function"
    baseline of predicting a CNN's generalization from its weights. A zoo whose networks have
    their own activation (relu or tanh, one parameter layout) is read with the architecture
    variants and `spec_index` (see `forward`).

    Args:
        probes: the [`ProbeFeatures`][nngraph_probe.ProbeFeatures] module holding the probe inputs
            (fixed or learned).
        num_output_nodes: `n_out` of the networks.
        num_outputs: classes / regression targets.
        hidden: widths of the MLP's hidden layers.
        dropout: dropout after each hidden activation.

    Shapes:
        - input: [`GraphBatch`][nngraph_core.GraphBatch] of `B` networks (any architectures with the
          probes' input shape and `n_out` outputs)
        - output: `[B, num_outputs]`
    """

    def __init__(
        self,
        probes: ProbeFeatures,
        num_output_nodes: int,
        num_outputs: int,
        *,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.probes = probes
        self.num_output_nodes = num_output_nodes
        self.num_outputs = num_outputs
        layers: list[nn.Module] = []
        width = num_output_nodes * probes.num_probes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def for_graphs(
        cls,
        template_or_spec: ngc.GraphTemplate | ngc.NetworkSpec,
        num_outputs: int = 10,
        *,
        num_probes: int = 64,
        learned: bool = False,
        init: ProbeInit | None = None,
        grid_size: Sequence[int] | None = None,
        seed: int = 0,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        generator_latent: int | None = None,
        probes: Tensor | None = None,
    ) -> ProbeMLP:
        """A probe MLP for networks of `template_or_spec` (see
        [`ProbeFeatures`][nngraph_probe.ProbeFeatures] for the
        probe options; `init="grid"` with `grid_size=(28, 28)` probes an INR on its pixels;
        `probes=` gives explicit probe inputs, e.g. real images `[K, C, H, W]` from
        [`select_probe_images`][nngraph_probe.select_probe_images], then `num_probes` is
        ignored)."""
        spec = resolve_spec(template_or_spec)
        module = ProbeFeatures.for_graphs(
            spec, num_probes, init=init, learned=learned, grid_size=grid_size, seed=seed,
            generator_latent=generator_latent, probes=probes,
        )  # fmt: skip
        return cls(module, spec.widths[-1], num_outputs, hidden=hidden, dropout=dropout)

    def forward(
        self,
        batch: ngc.GraphBatch,
        template: ArchitectureLike | Sequence[ArchitectureLike] | None = None,
        *,
        spec_index: Tensor | None = None,
    ) -> Tensor:
        """Logits `[B, num_outputs]` of a batch. For a zoo with per-network activations pass
        the architecture variants as `template` and `spec_index` `[B]` (see
        [`ProbeFeatures.forward`][nngraph_probe.ProbeFeatures.forward])."""
        return self.classify(self.probes.outputs(batch, template, spec_index=spec_index))

    def classify(self, responses: Tensor) -> Tensor:
        """Logits `[B, num_outputs]` of responses `[B, n_out, K]` already computed with
        `self.probes` (e.g. the output rows of probe features attached to a batch)."""
        if responses.shape[1] != self.num_output_nodes:
            raise ngc.ShapeMismatchError(
                f"networks with {responses.shape[1]} outputs; this model expects "
                f"{self.num_output_nodes}"
            )
        dtype = next(self.mlp.parameters()).dtype
        out: Tensor = self.mlp(responses.flatten(1).to(dtype))
        return out
