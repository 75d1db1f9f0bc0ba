"""Opacus DP-SGD: the one training loop through which a node's private records are used.

Poisson sampling (every record joins each step with probability `sample_rate`), per-sample
clipping to `max_grad_norm`, Gaussian noise of standard deviation `noise_multiplier *
max_grad_norm`, and an Opacus accountant whose history starts from what the node has already
spent. The node's teacher training and every distillation round run through `DPSGD.train`.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsa_secure.privacy.accounting import History, Step

PerSampleLoss = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]  # (model, batch) -> loss per record


@dataclass(frozen=True)
class Mechanism:
    """One run of DP-SGD as a ledger records it: enough to recompute its epsilon."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str

    def fields(self) -> dict[str, Any]:
        return asdict(self)


def poisson_schedule(records: int, batch_size: int) -> tuple[float, int]:
    """(sample rate, steps per epoch) of Opacus's Poisson loader for `records` and an expected batch of `batch_size`.

    Opacus turns a loader of ceil(records / batch_size) batches into as many steps, each drawing
    every record with probability 1 / that number.
    """
    if records < 1 or batch_size < 1:
        raise ValueError(f"need at least one record and a positive batch size, got {records} and {batch_size}")
    batches = math.ceil(records / batch_size)
    return 1.0 / batches, batches


class DPSGD:
    """DP-SGD of `module` on per-record `tensors` (records first), with one Opacus accountant.

    `history` is replayed into the accountant (what the node spent before). `mechanism_seed` seeds
    the Poisson sampling and the noise: leave it None outside tests (fresh OS entropy), since
    anyone who knows it can reproduce the batches and the noise.
    """

    def __init__(
        self,
        module: nn.Module,
        tensors: tuple[torch.Tensor, ...],
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        accountant: str,
        grad_sample_mode: str = "ew",
        history: Sequence[Step] = (),
        mechanism_seed: int | None = None,
    ) -> None:
        if mechanism_seed is None:
            mechanism_seed = secrets.randbits(62)
        loader = DataLoader(
            TensorDataset(*tensors), batch_size=batch_size, generator=torch.Generator().manual_seed(mechanism_seed)
        )
        self.sample_rate, self.steps_per_epoch = poisson_schedule(len(tensors[0]), batch_size)
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self._engine = PrivacyEngine(accountant=accountant, secure_mode=False)
        self._engine.accountant.history = [tuple(h) for h in history]
        self.module = module
        self._model: nn.Module
        self._model, self._optimizer, self._loader = self._engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(mechanism_seed + 1),
            grad_sample_mode=grad_sample_mode,
            # Per-sample gradients of the per-record losses themselves (the loop backpropagates their sum);
            # "mean" would scale them by the batch size in the backward pass only to undo it with the loss.
            loss_reduction="sum",
        )
        # The step is still the mean: (sum of clipped gradients + noise) / expected batch size, as with "mean".
        self._optimizer.loss_reduction = "mean"
        if len(self._loader) != self.steps_per_epoch:
            raise AssertionError("Opacus's Poisson loader differs from the calibrated schedule")

    @property
    def model(self) -> nn.Module:
        """The module as Opacus wraps it (per-sample gradients); call it in a per-sample loss."""
        return self._model

    @property
    def history(self) -> History:
        """The accountant's (noise_multiplier, sample_rate, steps) history, copied."""
        return [(float(s), float(q), int(n)) for s, q, n in self._engine.accountant.history]

    @history.setter
    def history(self, history: History) -> None:
        """Replace the accountant's history (a node keeps it equal to its ledger's)."""
        self._engine.accountant.history = [tuple(h) for h in history]

    def reset_optimizer(self) -> None:
        """Forget momentum and moments: a new round starts from another model."""
        self._optimizer.original_optimizer.state.clear()

    def train(self, epochs: int, per_sample_loss: PerSampleLoss) -> int:
        """`epochs` passes of DP-SGD steps; returns the number of steps the accountant counted."""
        steps_before = sum(n for _, _, n in self._engine.accountant.history)
        self._model.train()
        with warnings.catch_warnings():
            # Opacus's per-sample-gradient hooks fire on module outputs; our inputs need no gradient.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(epochs):
                for batch in self._loader:
                    self._optimizer.zero_grad(set_to_none=True)
                    if len(batch[0]) == 0:
                        # An empty Poisson batch is still a DP-SGD step: zero clipped gradients plus noise, and
                        # the accountant counts it. Give every parameter an empty per-sample gradient, as
                        # Opacus's hooks would, rather than run "ew"/"functorch" on a batch of zero records.
                        for p in self._optimizer.params:
                            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                    else:
                        # loss_reduction="sum": per-sample gradients of each record's loss
                        per_sample_loss(self._model, batch).sum().backward()
                    self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        steps: int = sum(int(n) for _, _, n in self._engine.accountant.history) - steps_before
        if steps != epochs * self.steps_per_epoch:
            raise AssertionError(f"accountant saw {steps} steps, calibrated for {epochs * self.steps_per_epoch}")
        return steps
