"""The plaintext (no DP) counterpart of DPDistiller, for the `no DP` arms of experiments only.

Same objective, optimiser, epochs and batch size as the DP trainer, without per-sample clipping,
noise or Poisson sampling, so that a DP-vs-plaintext difference measures what DP costs. Each batch's
mean gradient is clipped to the same norm as a DP sample's (`max_grad_norm`): at the DP learning
rate, unclipped plaintext runs on MNIST-1D took steps of norm 15 and collapsed to chance. Never use
it on a deployed node: nothing here bounds what the update reveals about private records.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsa_secure.fedsa.distill import DPSettings, Objective
from fedsa_secure.models import backbone_state, flatten_state, load_backbone_state


class PlainTrainer:
    """Non-private local training of an objective's proxy; `train_round` returns the released delta."""

    def __init__(self, objective: Objective, settings: DPSettings, seed: int, learning_rate: float | None = None) -> None:
        self._objective = objective
        self._settings = settings
        self._lr = learning_rate or settings.learning_rate
        self._gen = torch.Generator().manual_seed(seed)

    def train_round(self, student_state: dict[str, np.ndarray]) -> np.ndarray:
        proxy, released, s = self._objective.module, self._objective.released, self._settings
        load_backbone_state(proxy, student_state, released)
        opt = torch.optim.SGD(proxy.parameters(), lr=self._lr, momentum=s.momentum)
        n = len(self._objective.tensors[0])
        proxy.train()
        for _ in range(s.local_epochs):
            order = torch.randperm(n, generator=self._gen)
            for start in range(0, n, s.batch_size):
                batch = [t[order[start : start + s.batch_size]] for t in self._objective.tensors]
                opt.zero_grad(set_to_none=True)
                self._objective.per_sample_loss(proxy, batch).mean().backward()
                torch.nn.utils.clip_grad_norm_(proxy.parameters(), s.max_grad_norm)
                opt.step()
        return (flatten_state(backbone_state(proxy, released)) - flatten_state(student_state)).astype(np.float32)
