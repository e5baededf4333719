"""Typed errors of nngraph-probe.

All derive from [`NNGraphError`][nngraph_core.NNGraphError] (and from `ValueError`), so
`except NNGraphError` catches them with the rest of nngraph's errors.
"""

from __future__ import annotations

import nngraph_core as ngc

__all__ = [
    "ArchitectureVariantError",
    "NonFiniteProbeError",
    "ProbeInputError",
    "ProbeShapeError",
]


class ProbeInputError(ngc.NNGraphError, ValueError):
    """Probe inputs (coordinates or images) that cannot be used: see the subclasses; also a
    selection of probe images that cannot be made (more images asked for than given, integer
    images that were not normalised)."""


class ProbeShapeError(ProbeInputError, ngc.ShapeMismatchError):
    """Probe inputs of the wrong shape for the architecture (e.g. 3-channel probe images for a
    network that reads 1-channel images); the message names the expected and the given shape."""


class NonFiniteProbeError(ProbeInputError):
    """Probe inputs that contain NaN or infinite values (given ones, or learned ones that
    diverged during training)."""


class ArchitectureVariantError(ngc.ArchitectureError):
    """Architecture variants (one per network, e.g. a relu and a tanh version of one parameter
    layout) are inconsistent: they do not share a parameter layout, or `spec_index` does not
    select among them (wrong shape, dtype or range)."""
