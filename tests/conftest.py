"""Shared test setup: one torch thread per process; these machines have two cores and run several processes."""

import torch

torch.set_num_threads(1)
