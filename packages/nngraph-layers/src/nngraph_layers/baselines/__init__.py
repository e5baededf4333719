"""Baselines for the comparison table, with the graph models' interface:
`Model.for_graphs(template, num_outputs)` and `model(GraphBatch) -> [B, num_outputs]`.

* [`FlatMLP`][nngraph_layers.baselines.FlatMLP] -- MLP on the flattened, normalised weights (not
  permutation invariant).
* [`DeepSets`][nngraph_layers.baselines.DeepSets] -- set encoder over all weights and biases
  (invariant, but to a much larger group than the hidden-neuron permutations).
* [`NFNBaseline`][nngraph_layers.baselines.NFNBaseline] -- NFN_HNP / NFN_NP through the `nfn`
  package (extra `nfn`).
* [`StatNN`][nngraph_layers.baselines.StatNN] -- MLP on per-tensor statistics of the weights
  (mean, variance, quantiles; Unterthiner et al., 2020), the generalisation-prediction baseline.
"""

from ._normalize import ParamNormalizer
from .deep_sets import DeepSets
from .flat_mlp import FlatMLP
from .nfn_baseline import NFNBaseline, to_weight_space_features
from .statnn import StatNN, weight_statistics

__all__ = [
    "DeepSets",
    "FlatMLP",
    "NFNBaseline",
    "ParamNormalizer",
    "StatNN",
    "to_weight_space_features",
    "weight_statistics",
]
