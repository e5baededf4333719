"""Property tests run many tiny networks: one intra-op thread is several times faster for them
than two (thread start-up dominates), and leaves the second core to a parallel pytest worker."""

import torch

torch.set_num_threads(1)
