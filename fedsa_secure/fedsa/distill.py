"""Local selective distillation under DP-SGD (FedSA step 2), one privacy accountant per node for the whole run.

Each round the node copies the student backbone into its proxy, trains proxy + translator Phi_i
with the FitNets loss ||Phi_i(F_S(x)) - F_T(x)||^2 on its private images under Opacus DP-SGD
(Poisson sampling), and releases only the backbone delta. The noise multiplier is calibrated
once, up front, so that `planned_rounds` rounds land at or under the target epsilon.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsa_secure.data import NodeData, task_input
from fedsa_secure.errors import BudgetExhausted, ConfigError
from fedsa_secure.models import (
    ConvNet,
    HeadedBackbone,
    Translator,
    backbone_state,
    flatten_state,
    load_backbone_state,
    make_student,
)
from fedsa_secure.privacy.accounting import calibrate_noise, epsilon_of, extend_history, fits_budget


@dataclass(frozen=True)
class DPSettings:
    """A node's DP budget and DP-SGD hyper-parameters (defaults chosen by measurement on the digits demo).

    Measured with `python -m fedsa_secure.fedsa.simulation --seeds 0 1 2 3 4` (5 rounds, cohort 3
    of 4, epsilon 8): SGD with momentum 0.9 at lr 0.1 gave the best final accuracy (mean 0.927
    against Scratch 0.913, at or above Scratch on every seed). Adam at lr 1e-3 barely moves the
    proxy in 12 noisy steps (max |w*Delta| 0.004; the student stays Scratch); SGD at lr 0.3 or
    0.05, or one local epoch, did worse. Each weighted update coordinate stays below ~0.06, far
    inside the secure-aggregation clip of 0.5.
    """

    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    planned_rounds: int = 5
    local_epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 0.1
    accountant: str = "prv"
    optimizer: str = "sgd"  # "sgd" (with `momentum`) or "adam"
    momentum: float = 0.9
    # Opacus per-sample-gradient engine: "ew" (torch ExpandedWeights), "hooks" or "functorch"; all three
    # give the same clipped gradient. "ew" is the fastest on the demo's proxy (`python -m bench.dp`) and,
    # unlike "hooks", stays exact on channels-last inputs. Ghost clipping needs another training loop.
    grad_sample_mode: str = "ew"

    def __post_init__(self) -> None:
        for name in ("target_epsilon", "max_grad_norm", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"dp.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"dp.delta must be in (0, 1), got {self.delta}")
        for name in ("planned_rounds", "local_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dp.{name} must be a positive integer, got {getattr(self, name)}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"dp.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"dp.momentum must be in [0, 1), got {self.momentum}")
        if self.accountant not in ("prv", "rdp"):
            raise ConfigError(f"dp.accountant must be 'prv' or 'rdp', got {self.accountant!r}")
        if self.grad_sample_mode not in ("ew", "hooks", "functorch"):
            raise ConfigError(
                f"dp.grad_sample_mode must be 'ew', 'hooks' or 'functorch', got {self.grad_sample_mode!r}"
            )


@dataclass(frozen=True)
class RoundResult:
    """The released update and the DP mechanism that produced it (what the ledger records)."""

    update: np.ndarray  # float32, proxy backbone - student backbone, in flatten_state order
    epsilon: float  # cumulative over every round this node trained, including this one
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    train_loss: float


class _Proxy(nn.Module):
    """Student backbone followed by the translator; only `features` is ever released."""

    def __init__(self, features: nn.Module, translator: Translator) -> None:
        super().__init__()
        self.features = features
        self.translator = translator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.translator(self.features(x))


class Objective(Protocol):
    """What a node trains its proxy for: the proxy, per-record tensors (images first), the loss, the released parts."""

    module: nn.Module
    tensors: tuple[torch.Tensor, ...]
    released: tuple[str, ...]  # top-level submodules of `module` whose delta leaves the node

    def per_sample_loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor: ...


def seeded_translator(student: HeadedBackbone, teacher: ConvNet, teacher_side: tuple[int, int], seed: int) -> Translator:
    """The node's translator from `student`'s maps to the teacher's (channels and [H, W]), initialised from `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Translator(student.feature_channels, teacher.feature_channels, teacher_side)


class FeatureObjective:
    """Faithful FedSA: FitNets loss ||Phi_i(F_S(x)) - F_T(x)||^2 through a node-local translator; releases the backbone.

    `arch` names the student architecture (models.STUDENT_ARCHS); the translator resizes the
    student's maps to the teacher's grid when they differ.
    """

    released = ("features",)

    def __init__(self, teacher: ConvNet, node: NodeData, seed: int, *, arch: str = "cnn") -> None:
        with torch.no_grad():
            teacher.eval()
            target = teacher.features(torch.from_numpy(task_input(node.task, node.train.x)))
        student = make_student(seed=seed, arch=arch)
        translator = seeded_translator(student, teacher, tuple(target.shape[-2:]), seed)
        self.module = _Proxy(student.features, translator)
        self.tensors = (torch.from_numpy(node.train.x), target)

    def per_sample_loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        xb, tb = batch
        return F.mse_loss(model(xb), tb, reduction="none").flatten(1).mean(dim=1)


class DPDistiller:
    """A node's DP proxy trainer; holds the node's single accountant and its persistent translator.

    `objective` defaults to the faithful FitNets objective; `fedsa+` passes an OutputObjective.

    `mechanism_seed` seeds Poisson sampling and the Gaussian noise. Leave it None in deployment
    (fresh OS entropy): anyone who knows it can reproduce the batches and the noise.
    """

    def __init__(
        self,
        teacher: ConvNet,
        node: NodeData,
        settings: DPSettings,
        seed: int,
        *,
        mechanism_seed: int | None = None,
        objective: Objective | None = None,
    ) -> None:
        self.settings = settings
        self._rounds_trained = 0
        self._objective = objective or FeatureObjective(teacher, node, seed)
        proxy = self._objective.module

        if mechanism_seed is None:
            mechanism_seed = secrets.randbits(62)
        sampler_rng = torch.Generator().manual_seed(mechanism_seed)
        noise_rng = torch.Generator().manual_seed(mechanism_seed + 1)
        loader = DataLoader(TensorDataset(*self._objective.tensors), batch_size=settings.batch_size, generator=sampler_rng)
        # Opacus samples each record with probability 1/len(loader) (~ batch_size/N); use exactly that.
        self._sample_rate = 1.0 / len(loader)
        self._steps_per_round = settings.local_epochs * len(loader)
        self._noise_multiplier = calibrate_noise(
            settings.target_epsilon,
            settings.delta,
            self._sample_rate,
            settings.planned_rounds * self._steps_per_round,
            settings.accountant,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self._engine = PrivacyEngine(accountant=settings.accountant, secure_mode=False)
        if settings.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(proxy.parameters(), lr=settings.learning_rate)
        else:
            optimizer = torch.optim.SGD(proxy.parameters(), lr=settings.learning_rate, momentum=settings.momentum)
        self._model, self._optimizer, self._loader = self._engine.make_private(
            module=proxy,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self._noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise_rng,
            grad_sample_mode=settings.grad_sample_mode,
            # Per-sample gradients of the per-record losses themselves (the loop backpropagates their sum);
            # "mean" would scale them by the batch size in the backward pass only to undo it with the loss.
            loss_reduction="sum",
        )
        # The step is still the mean: (sum of clipped gradients + noise) / expected batch size, as with "mean".
        self._optimizer.loss_reduction = "mean"
        if len(self._loader) * settings.local_epochs != self._steps_per_round:
            raise AssertionError("Opacus steps per epoch differ from the calibrated schedule")

    @property
    def noise_multiplier(self) -> float:
        return self._noise_multiplier

    @property
    def sample_rate(self) -> float:
        return self._sample_rate

    @property
    def steps_per_round(self) -> int:
        return self._steps_per_round

    @property
    def rounds_trained(self) -> int:
        return self._rounds_trained

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's (noise_multiplier, sample_rate, steps) history, copied."""
        return [tuple(h) for h in self._engine.accountant.history]

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far (0 before the first round)."""
        return epsilon_of(self.history, self.settings.delta, self.settings.accountant)

    def epsilon_if_trained(self) -> float:
        """Epsilon after one more round, from a fresh accountant; the live accountant is untouched."""
        future = extend_history(self.history, self._noise_multiplier, self._sample_rate, self._steps_per_round)
        return epsilon_of(future, self.settings.delta, self.settings.accountant)

    def fits_budget(self) -> bool:
        """True if one more round keeps cumulative epsilon within the target."""
        s = self.settings
        return fits_budget(self.history, self._noise_multiplier, self._sample_rate, self._steps_per_round,
                           s.target_epsilon, s.delta, s.accountant)

    def train_round(self, student_state: dict[str, np.ndarray]) -> RoundResult:
        """Distil into a proxy of `student_state` under DP and return the backbone delta.

        Raises BudgetExhausted, before touching any state, if the round would exceed the budget.
        """
        if not self.fits_budget():
            raise BudgetExhausted(
                f"one more round would spend epsilon {self.epsilon_if_trained():.3f} > target "
                f"{self.settings.target_epsilon} (delta {self.settings.delta}); this node declines"
            )
        proxy = self._model._module
        released = self._objective.released
        load_backbone_state(proxy, student_state, released)
        self._optimizer.original_optimizer.state.clear()  # moments / momentum of last round's proxy are stale
        steps_before = sum(n for _, _, n in self._engine.accountant.history)
        self._model.train()
        losses: list[float] = []
        with warnings.catch_warnings():
            # Opacus's per-sample-gradient hooks fire on module outputs; our inputs need no gradient.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(self.settings.local_epochs):
                for batch in self._loader:
                    self._optimizer.zero_grad(set_to_none=True)
                    if len(batch[0]) == 0:
                        # An empty Poisson batch is still a DP-SGD step: zero clipped gradients plus noise, and
                        # the accountant counts it. Give every parameter an empty per-sample gradient, as
                        # Opacus's hooks would, rather than run "ew"/"functorch" on a batch of zero records.
                        for p in self._optimizer.params:
                            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                        self._optimizer.step()
                        losses.append(0.0)
                        continue
                    per_sample = self._objective.per_sample_loss(self._model, batch)
                    per_sample.sum().backward()  # loss_reduction="sum": per-sample gradients of each record's loss
                    self._optimizer.step()
                    losses.append(per_sample.detach().mean().item())
        self._optimizer.zero_grad(set_to_none=True)
        steps = sum(n for _, _, n in self._engine.accountant.history) - steps_before
        if steps != self._steps_per_round:
            raise AssertionError(f"accountant saw {steps} steps, calibrated for {self._steps_per_round}")
        self._rounds_trained += 1
        update = flatten_state(backbone_state(proxy, released)) - flatten_state(student_state)
        return RoundResult(
            update=update.astype(np.float32),
            epsilon=self.epsilon,
            noise_multiplier=self._noise_multiplier,
            sample_rate=self._sample_rate,
            steps=steps,
            max_grad_norm=self.settings.max_grad_norm,
            delta=self.settings.delta,
            accountant=self.settings.accountant,
            train_loss=float(np.mean(losses)),
        )
