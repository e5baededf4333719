"""Parameter-free activations that are common in weight-space learning but missing from torch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Sine"]


class Sine(nn.Module):
    r"""Elementwise $\sin(\omega_0 x)$, the SIREN nonlinearity (Sitzmann et al., 2020).

    Args:
        w0: the frequency factor $\omega_0$ (30 in SIREN and the INR benchmarks).
    """

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"
