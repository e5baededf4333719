"""nngraph-core: neural networks <-> neural graphs.

Neurons (conv channels) become nodes carrying their bias; weights (conv kernels) become edges.
The conversion is exact and invertible, respects the hidden-neuron permutation symmetry, and
batches a whole zoo of one architecture with one gather
([`GraphTemplate`][nngraph_core.GraphTemplate]).
"""

from .activations import Sine
from .batch import GraphBatch, batch
from .errors import (
    ArchitectureError,
    MissingKeyError,
    NNGraphError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    UnexpectedKeyError,
    UnsupportedLayerError,
)
from .graph import NeuralGraph, from_module, from_state_dict, to_state_dict
from .permutation import HiddenPermutation, permute_hidden, random_hidden_permutation
from .spec import LayerSpec, NetworkSpec, network_spec
from .template import GraphTemplate, NodeRole, check_finite

__version__ = "0.1.0"

__all__ = [
    "ArchitectureError",
    "GraphBatch",
    "GraphTemplate",
    "HiddenPermutation",
    "LayerSpec",
    "MissingKeyError",
    "NNGraphError",
    "NetworkSpec",
    "NeuralGraph",
    "NodeRole",
    "NonFiniteWeightsError",
    "ShapeMismatchError",
    "Sine",
    "UnexpectedKeyError",
    "UnsupportedLayerError",
    "__version__",
    "batch",
    "check_finite",
    "from_module",
    "from_state_dict",
    "network_spec",
    "permute_hidden",
    "random_hidden_permutation",
    "to_state_dict",
]
