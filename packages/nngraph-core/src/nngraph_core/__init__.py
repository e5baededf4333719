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
    InvalidTransformError,
    MissingKeyError,
    NNGraphError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    UnexpectedKeyError,
    UnsupportedLayerError,
    UnsupportedOperationError,
    UnsupportedSymmetryError,
)
from .graph import NeuralGraph, from_module, from_state_dict, to_state_dict
from .permutation import HiddenPermutation, permute_hidden, random_hidden_permutation
from .spec import LayerSpec, NetworkSpec, network_spec
from .structure import EdgeBlock, EdgeType, HiddenSet, NodeGroup, NodeType
from .symmetry import (
    canonicalize,
    flip_signs,
    fold_input_affine,
    fold_output_affine,
    random_symmetry,
    rescale,
    shift_phases,
)
from .template import GraphTemplate, NodeRole, check_finite
from .trace import TracedOp, fold_batchnorm

__version__ = "0.1.0"

__all__ = [
    "ArchitectureError",
    "EdgeBlock",
    "EdgeType",
    "GraphBatch",
    "GraphTemplate",
    "HiddenPermutation",
    "HiddenSet",
    "InvalidTransformError",
    "LayerSpec",
    "MissingKeyError",
    "NNGraphError",
    "NetworkSpec",
    "NeuralGraph",
    "NodeGroup",
    "NodeRole",
    "NodeType",
    "NonFiniteWeightsError",
    "ShapeMismatchError",
    "Sine",
    "TracedOp",
    "UnexpectedKeyError",
    "UnsupportedLayerError",
    "UnsupportedOperationError",
    "UnsupportedSymmetryError",
    "__version__",
    "batch",
    "canonicalize",
    "check_finite",
    "flip_signs",
    "fold_batchnorm",
    "fold_input_affine",
    "fold_output_affine",
    "from_module",
    "from_state_dict",
    "network_spec",
    "permute_hidden",
    "random_hidden_permutation",
    "random_symmetry",
    "rescale",
    "shift_phases",
    "to_state_dict",
]
