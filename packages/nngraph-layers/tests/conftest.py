"""Shared fixtures for the nngraph-layers tests."""

from __future__ import annotations

import torch

# Tiny graphs run much faster single-threaded (and the test workers do not fight over cores).
torch.set_num_threads(1)
