"""nngraph-testing: the shared test machinery of nngraph.

Hypothesis strategies for architectures, seeded networks and hidden permutations; equivariance
assertions with a tolerance table by dtype; base test classes for graph models; Hypothesis
profiles (`ci`, `dev`, `thorough`, `fuzz`). The reliability machinery lives in
submodules: `nngraph_testing.fuzz` (fuzzing readers of outside bytes),
`nngraph_testing.malicious` (a generated malicious-file corpus) and `nngraph_testing.faults`
(a simulated full disk, a SIGKILL at a chosen moment).
"""

from .asserts import (
    TOLERANCES,
    assert_close_by_dtype,
    assert_differs,
    assert_equivariant,
    assert_graphs_isomorphic,
    assert_invariant,
    assert_same_function,
    assert_sensitive,
    tolerance,
)
from .base import EquivariantModelTests, GraphModelTests, InvariantModelTests
from .permutations import partial_permutation_index
from .probes import (
    STRUCTURAL_PROBE_DIM,
    batch_with_structural_probes,
    structural_probe_features,
)
from .profiles import PROFILES, device_under_test, load_profile, register_profiles
from .strategies import (
    ACTIVATIONS,
    SMOOTH_ACTIVATIONS,
    NetworkRecipe,
    cnn_recipes,
    dtypes,
    hidden_permutations,
    mlp_recipes,
    network_recipes,
    networks,
    nontrivial_hidden_permutations,
    seeds,
)

__all__ = [
    "ACTIVATIONS",
    "PROFILES",
    "SMOOTH_ACTIVATIONS",
    "STRUCTURAL_PROBE_DIM",
    "TOLERANCES",
    "EquivariantModelTests",
    "GraphModelTests",
    "InvariantModelTests",
    "NetworkRecipe",
    "assert_close_by_dtype",
    "assert_differs",
    "assert_equivariant",
    "assert_graphs_isomorphic",
    "assert_invariant",
    "assert_same_function",
    "assert_sensitive",
    "batch_with_structural_probes",
    "cnn_recipes",
    "device_under_test",
    "dtypes",
    "hidden_permutations",
    "load_profile",
    "mlp_recipes",
    "network_recipes",
    "networks",
    "nontrivial_hidden_permutations",
    "partial_permutation_index",
    "register_profiles",
    "seeds",
    "structural_probe_features",
    "tolerance",
]
