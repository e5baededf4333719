"""Typed errors raised by nngraph.

Every error derives from [`NNGraphError`][nngraph_core.NNGraphError], so `except NNGraphError`
catches all of them, and each also derives from the closest built-in exception (`TypeError` /
`ValueError`) so code that predates nngraph keeps working. Messages name the offending module or
state-dict key.
"""

from __future__ import annotations

__all__ = [
    "ArchitectureError",
    "InvalidTransformError",
    "MissingKeyError",
    "NNGraphError",
    "NonFiniteWeightsError",
    "ShapeMismatchError",
    "UnexpectedKeyError",
    "UnsupportedLayerError",
    "UnsupportedOperationError",
    "UnsupportedSymmetryError",
]


class NNGraphError(Exception):
    """Base class of every error raised by nngraph."""


class UnsupportedLayerError(NNGraphError, TypeError):
    """A module cannot be expressed as part of a neural graph (e.g. `BatchNorm2d`, `LSTM`)."""


class UnsupportedOperationError(UnsupportedLayerError):
    """An operation in a traced forward has no neural-graph form (e.g. `torch.matmul` of two
    activations, a gating product, a channel-wise concatenation).

    Attributes:
        op: the operation, e.g. `"operator.mul"`, `"F.linear"`, `"LSTM 'rnn'"`.
        where: the path of the module whose forward runs it (`"layer1.0"`), or
            `"<Class>.forward"` for the network's own forward.
    """

    def __init__(self, op: str, where: str, why: str) -> None:
        self.op = op
        self.where = where
        super().__init__(f"{op} in {where!r} {why}")


class ArchitectureError(NNGraphError, ValueError):
    """Layers do not chain (widths disagree), or the architecture is otherwise not a network we support."""


class UnsupportedSymmetryError(ArchitectureError):
    """The architecture lacks the transformation asked for: a sign flip of a neuron whose
    activation is not odd (ReLU), a phase shift of a neuron that is not a sine, a positive rescaling
    of a neuron whose activation is not positively homogeneous (tanh), an input transformation
    folded into a convolution. The message names the layer and its activation."""


class InvalidTransformError(NNGraphError, ValueError):
    """A transformation's values are invalid: signs other than ±1, non-integer phase shifts,
    non-positive scales."""


class ShapeMismatchError(NNGraphError, ValueError):
    """A tensor has a shape other than the one the architecture requires."""


class MissingKeyError(NNGraphError, KeyError):
    """A state dict lacks a key that the architecture requires."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnexpectedKeyError(NNGraphError, KeyError):
    """A state dict has a key that the architecture does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NonFiniteWeightsError(NNGraphError, ValueError):
    """A parameter contains NaN or infinite values (pass `allow_nonfinite=True` to accept them)."""
