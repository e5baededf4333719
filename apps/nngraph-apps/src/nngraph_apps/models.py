"""Model registry: one name per model of nngraph-layers / nngraph-probe, built for a template."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

import nngraph_core as ngc

from .errors import ConfigError

__all__ = ["GRAPH_MODELS", "MODELS", "build_model", "fit_normalization"]

#: Models that read probe features from `batch.probe_features` (`use_probes`).
GRAPH_MODELS = ("ngnn", "ngt")
MODELS = ("ngnn", "ngt", "flat_mlp", "deepsets", "nfn", "statnn", "probe_mlp")
"""Every model name the tasks accept."""


class ModelConfigError(ConfigError):
    """A model setting that cannot work (the message says what to do)."""


def build_model(
    name: str,
    template: ngc.GraphTemplate,
    num_outputs: int,
    *,
    head: Literal["invariant", "equivariant"] = "invariant",
    dropout: float = 0.2,
    use_probes: bool = False,
    num_probes: int = 64,
    learned_probes: bool = False,
    probe_generator: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build model `name` for graphs of `template`.

    Args:
        name: one of [`MODELS`][nngraph_apps.MODELS].
        template: the architecture of the networks the model reads.
        num_outputs: classes (invariant head).
        head: `"invariant"` (classification) or `"equivariant"` (editing; ngnn / ngt only).
        dropout: dropout of the model (paper: 0.2).
        use_probes: graph models add projected probe features (`num_probes` per node).
        num_probes, learned_probes, probe_generator: probe settings of `probe_mlp` (its own
            probes; `probe_generator` is the latent width of generated probes).
        kwargs: further constructor arguments of the model class.
    """
    kw = dict(kwargs or {})
    if name not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if head == "equivariant" and name not in GRAPH_MODELS:
        raise ModelConfigError(
            f"model {name!r} has no equivariant head; editing needs one of {GRAPH_MODELS}"
        )
    if use_probes and name not in GRAPH_MODELS:
        raise ModelConfigError(
            f"use_probes applies to {GRAPH_MODELS}; {name!r} does not read probe features "
            "(probe_mlp always probes)"
        )
    try:
        if name == "ngnn":
            from nngraph_layers import NGGNN

            return NGGNN.for_graphs(
                template, num_outputs, head=head, dropout=dropout, use_probes=use_probes,
                probe_dim=num_probes, **kw,
            )  # fmt: skip
        if name == "ngt":
            from nngraph_layers.ngt import NGTransformer

            return NGTransformer.for_graphs(
                template, num_outputs, head=head, dropout=dropout, use_probes=use_probes,
                probe_dim=num_probes, **kw,
            )  # fmt: skip
        if name == "flat_mlp":
            from nngraph_layers.baselines import FlatMLP

            return FlatMLP.for_graphs(template, num_outputs, dropout=dropout, **kw)
        if name == "deepsets":
            from nngraph_layers.baselines import DeepSets

            return DeepSets.for_graphs(template, num_outputs, dropout=dropout, **kw)
        if name == "statnn":
            from nngraph_layers.baselines import StatNN

            return StatNN.for_graphs(template, num_outputs, dropout=dropout, **kw)
        if name == "nfn":
            from nngraph_layers.baselines import NFNBaseline

            return NFNBaseline(template.spec, num_outputs, dropout=dropout, **kw)
        from nngraph_probe import ProbeMLP

        return ProbeMLP.for_graphs(
            template, num_outputs, num_probes=num_probes, learned=learned_probes,
            dropout=dropout, generator_latent=probe_generator, **kw,
        )  # fmt: skip
    except TypeError as e:
        raise ModelConfigError(f"bad model_kwargs for {name!r}: {e}") from e


def fit_normalization(model: nn.Module, template: ngc.GraphTemplate, params: Tensor) -> None:
    """Fit a model's per-layer weight statistics on training parameters `[n, P]` (no-op for
    models without one, e.g. `probe_mlp`)."""
    if hasattr(model, "fit_normalizer"):
        model.fit_normalizer(template, params)
    elif hasattr(model, "fit_normalization"):
        model.fit_normalization(params)
