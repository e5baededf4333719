"""nngraph-probe: probe features from forward passes of whole model zoos.

* [`functional_forward`][nngraph_probe.functional_forward] -- run `B` networks of one architecture
  (or of per-network variants of one parameter layout, e.g. relu / tanh) on `K` inputs,
  vectorised over the batch (batched matmuls, grouped convolutions).
* [`ProbeFeatures`][nngraph_probe.ProbeFeatures] -- each node's values on `K` fixed, learned or
  generated probe inputs (for CNNs: per-channel statistics of the feature maps on probe images),
  `[B*N, K * S]` in canonical node order (equivariant to hidden permutations); `attach(batch)`
  stores them in `batch.probe_features`.
* [`select_probe_images`][nngraph_probe.select_probe_images] -- `K` real probe images picked
  deterministically (class-balanced with labels).
* [`ProbeMLP`][nngraph_probe.ProbeMLP] -- the probe-only, permutation-invariant baseline classifier.
"""

from .classifier import ProbeMLP
from .errors import ArchitectureVariantError, NonFiniteProbeError, ProbeInputError, ProbeShapeError
from .features import (
    STATS,
    ProbeFeatures,
    ProbeInit,
    ProbeStat,
    coordinate_grid,
    probe_image_index,
    select_probe_images,
)
from .functional import ArchitectureLike, NodeActivations, functional_forward

__version__ = "0.1.0"

__all__ = [
    "STATS",
    "ArchitectureLike",
    "ArchitectureVariantError",
    "NodeActivations",
    "NonFiniteProbeError",
    "ProbeFeatures",
    "ProbeInit",
    "ProbeInputError",
    "ProbeMLP",
    "ProbeShapeError",
    "ProbeStat",
    "__version__",
    "coordinate_grid",
    "functional_forward",
    "probe_image_index",
    "select_probe_images",
]
