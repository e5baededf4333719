"""nngraph-layers: graph-network layers and models for neural graphs.

Encoders (per-layer normalisation, Fourier features, probe projection), positional
embeddings, readout heads, the NG-GNN layer [`EdgePNAConv`][nngraph_layers.EdgePNAConv] and model
[`NGGNN`][nngraph_layers.NGGNN], the NG-T layers
[`RelationalAttention`][nngraph_layers.RelationalAttention], [`RTLayer`][nngraph_layers.RTLayer] and
model [`NGTransformer`][nngraph_layers.NGTransformer], and the baselines
[`FlatMLP`][nngraph_layers.baselines.FlatMLP], [`DeepSets`][nngraph_layers.baselines.DeepSets] and
[`NFNBaseline`][nngraph_layers.baselines.NFNBaseline].
"""

from ._graph import ACTIVATION_KINDS, activation_kind, node_activation_kind
from .baselines import DeepSets, FlatMLP, NFNBaseline
from .dropout import Dropout
from .edge_pna import AGGREGATORS, SCALERS, EdgePNAConv, avg_log_degree, pna_combine
from .encoders import FourierFeatures, ProbeProjection, WeightNormalizer
from .heads import EquivariantHead, InvariantHead, mlp
from .model import GraphEncoder, GraphModel, as_template
from .ngnn import NGGNN, dense_edges, sparse_edges
from .ngt import NGTransformer
from .positional import PositionalEmbedding
from .relational_attention import BlockLayout, RelationalAttention
from .rt_layer import EdgeUpdate, RTLayer

__all__ = [
    "ACTIVATION_KINDS",
    "AGGREGATORS",
    "NGGNN",
    "SCALERS",
    "BlockLayout",
    "DeepSets",
    "Dropout",
    "EdgePNAConv",
    "EdgeUpdate",
    "EquivariantHead",
    "FlatMLP",
    "FourierFeatures",
    "GraphEncoder",
    "GraphModel",
    "InvariantHead",
    "NFNBaseline",
    "NGTransformer",
    "PositionalEmbedding",
    "ProbeProjection",
    "RTLayer",
    "RelationalAttention",
    "WeightNormalizer",
    "activation_kind",
    "as_template",
    "avg_log_degree",
    "dense_edges",
    "mlp",
    "node_activation_kind",
    "pna_combine",
    "sparse_edges",
]
