"""Local selective distillation under DP-SGD (FedSA step 2), one privacy accountant per node for the whole run.

Each round the node copies the student backbone into its proxy, trains proxy + translator Phi_i
with the FitNets loss ||Phi_i(F_S(x)) - F_T(x)||^2 on its private images under Opacus DP-SGD
(Poisson sampling), and releases only the backbone delta. The noise multiplier is calibrated
once, up front, so that the node's teacher training followed by `planned_rounds` rounds lands at
or under the target epsilon: the rounds compose on top of the teacher in the node's one accountant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsa_secure.data import NodeData, task_input
from fedsa_secure.errors import BudgetExhausted, ConfigError, ProtocolError
from fedsa_secure.models import (
    ConvNet,
    HeadedBackbone,
    Translator,
    backbone_state,
    flatten_state,
    load_backbone_state,
    make_student,
)
from fedsa_secure.privacy.accounting import History, Step, calibrate_noise, epsilon_of, extend_history, fits_budget
from fedsa_secure.privacy.dpsgd import DPSGD, Mechanism, poisson_schedule


@dataclass(frozen=True)
class DPSettings:
    """A node's DP budget and DP-SGD hyper-parameters (defaults chosen by measurement on the digits demo).

    Measured with `python -m fedsa_secure.experiment.simulation --seeds 0 1 2 3 4` (5 rounds, cohort 3
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

    update: np.ndarray  # float32, proxy - student for the released parts, in flatten_state order
    epsilon: float  # cumulative over everything the accountant holds, this round included
    mechanism: Mechanism


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

    @property
    def module(self) -> nn.Module: ...

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]: ...

    @property
    def released(self) -> tuple[str, ...]:  # top-level submodules of `module` whose delta leaves the node
        ...

    def per_sample_loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor: ...


def feature_teacher(teacher: nn.Module) -> ConvNet:
    """`teacher`, if it has the feature maps that FitNets and Grad-CAM need; a teacher given as a file has outputs only."""
    if not isinstance(teacher, ConvNet):
        raise ProtocolError(
            f"this node's teacher ({type(teacher).__name__}, given as a file) has outputs only, no feature maps: it takes "
            "part in fedsa+ (output distillation), not in fedsa (feature distillation and Grad-CAM)"
        )
    return teacher


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


@dataclass(frozen=True)
class DistillationPlan:
    """The DP-SGD mechanism of every distillation round, fixed before the first one.

    The noise is calibrated so that the node's teacher training (`teacher_history`, from its
    ledger) followed by `planned_rounds` rounds lands at the target epsilon. It depends only on
    public figures (dataset size, settings) and the ledger, so a restarted node plans the same.
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int

    @classmethod
    def make(cls, records: int, settings: DPSettings, teacher_history: Sequence[Step] = ()) -> DistillationPlan:
        sample_rate, per_epoch = poisson_schedule(records, settings.batch_size)
        steps = settings.local_epochs * per_epoch
        sigma = calibrate_noise(
            settings.target_epsilon, settings.delta, sample_rate, settings.planned_rounds * steps,
            settings.accountant, tuple(teacher_history),
        )
        return cls(sigma, sample_rate, steps)


class DPDistiller:
    """A node's DP proxy trainer; holds the node's single accountant and its persistent translator.

    `objective` defaults to the faithful FitNets objective; `fedsa+` passes an OutputObjective.
    `ledger_history` is everything the node's ledger holds (its teacher's training, earlier rounds
    and runs): the accountant starts from it, so epsilon continues where the ledger left off.
    `teacher_history` is the part the noise is calibrated after (see DistillationPlan).

    `mechanism_seed` seeds Poisson sampling and the Gaussian noise. Leave it None in deployment
    (fresh OS entropy): anyone who knows it can reproduce the batches and the noise.
    """

    def __init__(
        self,
        teacher: nn.Module,
        node: NodeData,
        settings: DPSettings,
        seed: int,
        *,
        mechanism_seed: int | None = None,
        objective: Objective | None = None,
        ledger_history: Sequence[Step] = (),
        teacher_history: Sequence[Step] = (),
    ) -> None:
        self.settings = settings
        self._rounds_trained = 0
        self._objective = objective or FeatureObjective(feature_teacher(teacher), node, seed)
        proxy = self._objective.module
        self.plan = DistillationPlan.make(len(self._objective.tensors[0]), settings, teacher_history)
        if settings.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(proxy.parameters(), lr=settings.learning_rate)
        else:
            optimizer = torch.optim.SGD(proxy.parameters(), lr=settings.learning_rate, momentum=settings.momentum)
        self._dp = DPSGD(
            proxy, self._objective.tensors, optimizer,
            batch_size=settings.batch_size, noise_multiplier=self.plan.noise_multiplier,
            max_grad_norm=settings.max_grad_norm, accountant=settings.accountant,
            grad_sample_mode=settings.grad_sample_mode, history=ledger_history, mechanism_seed=mechanism_seed,
        )
        if (self._dp.sample_rate, self._dp.steps_per_epoch * settings.local_epochs) != (
            self.plan.sample_rate, self.plan.steps_per_round
        ):
            raise AssertionError("the DP-SGD loader differs from the calibrated plan")

    @property
    def noise_multiplier(self) -> float:
        return self.plan.noise_multiplier

    @property
    def sample_rate(self) -> float:
        return self.plan.sample_rate

    @property
    def steps_per_round(self) -> int:
        return self.plan.steps_per_round

    @property
    def rounds_trained(self) -> int:
        """Rounds this trainer ran (in this process)."""
        return self._rounds_trained

    @property
    def history(self) -> History:
        """The accountant's (noise_multiplier, sample_rate, steps) history, copied."""
        return self._dp.history

    def sync(self, ledger_history: History) -> None:
        """Make the accountant's history the ledger's again (after a round whose charge could not be written)."""
        self._dp.history = ledger_history

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, everything the accountant holds included (0 for an empty history)."""
        return epsilon_of(self.history, self.settings.delta, self.settings.accountant)

    def epsilon_if_trained(self) -> float:
        """Epsilon after one more round, from a fresh accountant; the live accountant is untouched."""
        future = extend_history(self.history, self.noise_multiplier, self.sample_rate, self.steps_per_round)
        return epsilon_of(future, self.settings.delta, self.settings.accountant)

    def fits_budget(self) -> bool:
        """True if one more round keeps cumulative epsilon within the target."""
        s = self.settings
        return fits_budget(self.history, self.noise_multiplier, self.sample_rate, self.steps_per_round,
                           s.target_epsilon, s.delta, s.accountant)

    def train_round(self, student_state: dict[str, np.ndarray]) -> RoundResult:
        """Distil into a proxy of `student_state` under DP and return the released parts' delta.

        Raises BudgetExhausted, before touching any state, if the round would exceed the budget.
        """
        if not self.fits_budget():
            raise BudgetExhausted(
                f"one more round would spend epsilon {self.epsilon_if_trained():.3f} > target "
                f"{self.settings.target_epsilon} (delta {self.settings.delta}); this node declines"
            )
        proxy, released = self._dp.module, self._objective.released
        load_backbone_state(proxy, student_state, released)
        self._dp.reset_optimizer()  # moments / momentum of last round's proxy are stale
        steps = self._dp.train(self.settings.local_epochs, self._objective.per_sample_loss)
        self._rounds_trained += 1
        update = flatten_state(backbone_state(proxy, released)) - flatten_state(student_state)
        return RoundResult(
            update=update.astype(np.float32),
            epsilon=self.epsilon,
            mechanism=Mechanism(
                self.noise_multiplier, self.sample_rate, steps, self.settings.max_grad_norm,
                self.settings.delta, self.settings.accountant,
            ),
        )
