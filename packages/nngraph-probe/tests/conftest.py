from __future__ import annotations

import torch

# Tiny networks: one thread is faster, and pytest-xdist runs one worker per core.
torch.set_num_threads(1)
