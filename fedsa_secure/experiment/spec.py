"""What an experiment runs: the grid's axes and defaults (light: no torch, so the CLI loads fast)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsa_secure.config import STUDENTS
from fedsa_secure.errors import ConfigError

PROBE_BUDGETS = (0.01, 0.05, 0.10)  # fedsa_secure.data.mnist5k.PROBE_BUDGETS

BASELINES = ("scratch", "transfer", "centralised-ka")
FEDERATED = ("fedavg+", "random", "fedsa", "fedsa+")  # experiment.simulation.METHODS, named here without importing torch
ALL_METHODS = (*BASELINES, *FEDERATED)
DATASETS = ("mnist5k", "digits", "mnist5k-skew", "mnist1d")  # data.FEDERATIONS, named here without importing it
DEFAULT_DATASETS = ("mnist5k", "digits")  # mnist5k-skew and mnist1d (nodes hold far more records) on request
BUDGETED = ("mnist5k", "mnist5k-skew", "mnist1d")  # the federations with probe_budgets; digits has one fixed probe
ARCHS = STUDENTS
TASKS = ("digit", "parity", "mod-3")  # data.tasks.TARGET_TASKS; the digit task (the probe's labels) comes first
TARGET_EPSILON = 8.0
TEACHER_SHARE = 0.5  # config.PrivacySection.teacher_share, named here without importing it
CENTRAL_FEATURE_WEIGHT = 1.0  # FitNets weight of Centralised KA, next to the output loss (weight 1)


@dataclass(frozen=True)
class Grid:
    """What to run: the cross product of datasets x budgets x seeds x methods, each federated method plain and secure."""

    datasets: tuple[str, ...] = DEFAULT_DATASETS
    budgets: tuple[float, ...] = PROBE_BUDGETS  # BUDGETED datasets only; digits has its one fixed probe
    methods: tuple[str, ...] = ALL_METHODS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    rounds: int = 3  # with eval_every = rounds, the full grid takes about an hour here (docs/experiments.md)
    local_epochs: int = 2
    cohort: int = 3
    eval_every: int = 3  # adapt + evaluate only after the last round (fedsa adapts every round for Grad-CAM)
    adapt_batch: int = 64  # probe images per adaptation step; 0: full batch (the same at 1% and on digits)
    arms: tuple[bool, ...] = (False, True)  # secure=False: no DP anywhere; True: DP teacher and rounds at `epsilon`
    archs: tuple[str, ...] = ("cnn",)  # student architectures; every method runs once per architecture
    tasks: tuple[str, ...] = ("digit",)  # target tasks: one head each on every adapted student, each reported
    epsilon: float = TARGET_EPSILON  # secure arms: each node's whole budget, its DP teacher's training included
    teacher_share: float = TEACHER_SHARE  # of `epsilon`, spent by each node's DP teacher on its own
    # False: the secure arms' teachers are trained without DP, as before 2026-12-06; their epsilon then covers
    # the rounds alone and is no guarantee for the records. Only to compare with the earlier figures.
    dp_teachers: bool = True

    def __post_init__(self) -> None:
        axes = (("dataset", DATASETS, self.datasets), ("method", ALL_METHODS, self.methods),
                ("arch", ARCHS, self.archs), ("task", TASKS, self.tasks))
        for name, allowed, chosen in axes:
            unknown = [c for c in chosen if c not in allowed]
            if unknown or not chosen:
                raise ConfigError(f"unknown or no {name}s {unknown}; allowed: {', '.join(allowed)}")
        if self.tasks[0] != "digit" or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks must be distinct and start with digit (the probe's labels), got {', '.join(self.tasks)}")
        counts = (self.rounds, self.local_epochs, self.cohort, self.eval_every)
        if not self.seeds or not self.arms or min(counts) < 1 or self.adapt_batch < 0:
            raise ConfigError(
                f"need seeds, arms, positive rounds, local_epochs, cohort and eval_every, and adapt_batch >= 0; got {self}")
        if not (self.epsilon > 0 and 0 < self.teacher_share < 1):
            raise ConfigError(f"need epsilon > 0 and 0 < teacher_share < 1, got {self.epsilon} and {self.teacher_share}")
        for budget in self.budgets:
            if not 0 < budget <= 0.10:
                raise ConfigError(f"probe budget {budget} is outside (0, 0.10]")

    def cells(self) -> list[tuple[str, float | None]]:
        """(dataset, budget) pairs; budget None is digits' fixed probe."""
        return [(d, b) for d in self.datasets for b in (self.budgets if d in BUDGETED else (None,))]

    def runs_per_seed(self) -> int:
        return len(self.archs) * sum(len(self.arms) if m in FEDERATED else 1 for m in self.methods)


QUICK = Grid(datasets=("mnist5k",), budgets=(0.01,), methods=("scratch", "transfer", "centralised-ka", "fedsa", "fedsa+"),
             seeds=(0, 1), rounds=2, eval_every=1)


def with_overrides(grid: Grid, **overrides: object) -> Grid:
    """`grid` with the given fields replaced where the value is not None."""
    return replace(grid, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
