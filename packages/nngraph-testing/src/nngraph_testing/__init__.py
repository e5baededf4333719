"""nngraph-testing: the shared test machinery of nngraph.

Hypothesis strategies for architectures, seeded networks and hidden permutations; equivariance
assertions with a tolerance table by dtype; base test classes for graph models; Hypothesis
profiles (`ci`, `dev`, `thorough`, `fuzz`). The reliability machinery lives in
submodules: `nngraph_testing.fuzz` (fuzzing readers of outside bytes),
`nngraph_testing.malicious` (a generated malicious-file corpus) and `nngraph_testing.faults`
(a simulated full disk, a SIGKILL at a chosen moment).
"""

from .architectures import (
    FAMILIES,
    BasicBlock,
    FamilyRecipe,
    ResNet,
    SmallViT,
    TokenNet,
    attention_recipes,
    family_recipes,
    norm_recipes,
    randomize_,
    resnet18,
    resnet_recipes,
)
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
    "FAMILIES",
    "PROFILES",
    "SMOOTH_ACTIVATIONS",
    "STRUCTURAL_PROBE_DIM",
    "TOLERANCES",
    "BasicBlock",
    "EquivariantModelTests",
    "FamilyRecipe",
    "GraphModelTests",
    "InvariantModelTests",
    "NetworkRecipe",
    "ResNet",
    "SmallViT",
    "TokenNet",
    "assert_close_by_dtype",
    "assert_differs",
    "assert_equivariant",
    "assert_graphs_isomorphic",
    "assert_invariant",
    "assert_same_function",
    "assert_sensitive",
    "attention_recipes",
    "batch_with_structural_probes",
    "cnn_recipes",
    "device_under_test",
    "dtypes",
    "family_recipes",
    "hidden_permutations",
    "load_profile",
    "mlp_recipes",
    "network_recipes",
    "networks",
    "nontrivial_hidden_permutations",
    "norm_recipes",
    "partial_permutation_index",
    "randomize_",
    "register_profiles",
    "resnet18",
    "resnet_recipes",
    "seeds",
    "structural_probe_features",
    "tolerance",
]
