"""nngraph-probe: probe features from forward passes of whole model zoos.

* [`functional_forward`][nngraph_probe.functional_forward] -- run `B` networks of one architecture
  on `K` inputs, vectorised over the batch (batched matmuls, grouped convolutions).
* [`ProbeFeatures`][nngraph_probe.ProbeFeatures] -- each node's values on `K` fixed or learned probe
  inputs, `[B*N, K]` in canonical node order (equivariant to hidden permutations); `attach(batch)`
  stores them in `batch.probe_features`.
* [`ProbeMLP`][nngraph_probe.ProbeMLP] -- the probe-only, permutation-invariant baseline classifier.
"""

from .classifier import ProbeMLP
from .features import ProbeFeatures, ProbeInit, coordinate_grid
from .functional import NodeActivations, functional_forward

__version__ = "0.1.0"

__all__ = [
    "NodeActivations",
    "ProbeFeatures",
    "ProbeInit",
    "ProbeMLP",
    "__version__",
    "coordinate_grid",
    "functional_forward",
]
