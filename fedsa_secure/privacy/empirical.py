"""Empirical lower bound on epsilon from one training run with canaries (Steinke, Nasr, Jagielski 2023, arXiv 2305.08846).

The accountant's epsilon is an upper bound proved on paper; this audit measures from below, so a
bug in clipping, sampling or noise (or in the accounting) shows up as a lower bound above the
accounted figure. It replays a node's DP mechanism (noise multiplier, sample rate, steps,
clipping norm, via the same Opacus code path: Poisson DPDataLoader, per-sample gradients,
DPOptimizer) on a linear model over the node's records plus m canaries, each included
independently with probability 1/2.

Canaries are gradient canaries in input space: canary j is a one-hot input on its own extra
coordinate, scaled so its gradient is always clipped, with a random label. Only canary j ever
moves column j of the weights, so the column's final drift toward the label is the sum, over
steps, of that canary's clipped gradient (when sampled) plus the Gaussian noise: the auditor
sees the full signal a white-box adversary would. The auditor guesses "in" for the top scores
and "out" for the bottom ones and abstains on the rest; the paper's (epsilon, delta) test turns (m, guesses,
correct) into an epsilon the mechanism provably exceeds, at the stated confidence.

What this does not audit: the FitNets proxy network itself (only the mechanism it runs under).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from scipy import stats
from torch import nn
from torch.utils.data import TensorDataset

from fedsa_secure.privacy.crosscheck import OPACUS_NAMES, epsilon_by

CANARY_SCALE = 1e3  # input magnitude: a canary's gradient norm is far above any clipping norm we use
LEARNING_RATE = 0.01
# Guess counts (positive, negative), as fractions of m, fixed before looking at the scores.
# The bound is the best over this grid, each tested at (1 - confidence) / len(grid) (union bound).
GUESS_GRID = ((0.01, 0.0), (0.02, 0.0), (0.05, 0.0), (0.1, 0.0), (0.2, 0.0), (0.05, 0.05), (0.1, 0.1), (0.2, 0.2))


@dataclass(frozen=True)
class CanaryAudit:
    """The outcome of one canary audit, next to the epsilon accounted for the same mechanism."""

    node: str
    canaries: int
    guesses: int
    correct: int
    confidence: float
    epsilon_lower_bound: float
    accounted_epsilon: float | None  # None: no noise, no finite epsilon
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    records: int  # the node's records the mechanism was replayed on (its ledger says how many it has)
    method: str = (
        "One-run canary audit (Steinke, Nasr, Jagielski 2023): the node's DP-SGD mechanism replayed with Opacus "
        "on a linear model over its records plus gradient canaries, each included with probability 1/2; "
        "scores are each canary's weight drift toward its label; guesses from a fixed grid, union-bounded."
    )

    @property
    def consistent(self) -> bool:
        """A lower bound above the accounted epsilon means the mechanism or its accounting is wrong."""
        return self.accounted_epsilon is None or self.epsilon_lower_bound <= self.accounted_epsilon

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"consistent": self.consistent}


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] if the mechanism were (epsilon, delta)-DP (the paper's main theorem, with its delta term).

    Under pure DP each guess is right with probability at most e^eps/(1+e^eps); delta adds
    2 m delta times the largest average mass just below v.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v-1], P[Bin = v-2], ...
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float) -> float:
    """Largest epsilon rejected at `confidence`: the mechanism is not (epsilon, delta)-DP (0 if none is)."""
    threshold = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= threshold:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < threshold:
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if p_value(m, r, v, middle, delta) < threshold else (low, middle)
    return low


def best_guesses(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float) -> tuple[int, int, float]:
    """(guesses, correct, lower bound) for the best grid point; each point is tested at a Bonferroni-split level."""
    m = len(scores)
    order = np.argsort(-scores, kind="stable")  # highest score first
    level = 1.0 - (1.0 - confidence) / len(GUESS_GRID)
    best = (0, 0, 0.0)
    for positive_fraction, negative_fraction in GUESS_GRID:
        k_pos, k_neg = int(positive_fraction * m), int(negative_fraction * m)
        correct = int(included[order[:k_pos]].sum()) + int((~included[order[m - k_neg:]]).sum() if k_neg else 0)
        bound = epsilon_lower_bound(m, k_pos + k_neg, correct, delta, level)
        if bound > best[2]:
            best = (k_pos + k_neg, correct, bound)
    return best


def canary_audit(
    x: np.ndarray,
    y: np.ndarray,
    *,
    history: Sequence[tuple[float, float, int]],
    max_grad_norm: float,
    delta: float,
    accountant: str = "prv",
    canaries: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    node: str = "",
) -> CanaryAudit:
    """Train once under the mechanism `history` (noise multiplier, sample rate, steps per phase) and bound epsilon."""
    rng = np.random.default_rng(seed)
    included = rng.random(canaries) < 0.5
    num_classes = int(y.max()) + 1
    canary_labels = rng.integers(0, num_classes, size=canaries)
    inputs, labels, first_canary = _training_set(x, y, included, canary_labels)
    weights = _train(inputs, labels, num_classes, history, max_grad_norm, seed)
    columns = weights[:, first_canary:]  # [classes, canaries]; untouched by the real records
    own = columns[canary_labels, np.arange(canaries)]
    scores = own - (columns.sum(axis=0) - own) / max(num_classes - 1, 1)
    scores = scores + rng.uniform(0, 1e-12, size=canaries) * (scores == 0)  # break exact ties at random
    guesses, correct, bound = best_guesses(scores, included, delta, confidence)
    accounted = epsilon_by(OPACUS_NAMES[accountant], list(history), delta)
    sigma, q, _ = history[0]
    return CanaryAudit(
        node, canaries, guesses, correct, confidence, bound, accounted if math.isfinite(accounted) else None, delta,
        float(sigma), float(q), int(sum(n for _, _, n in history)), max_grad_norm, len(x),
    )


def _training_set(x: np.ndarray, y: np.ndarray, included: np.ndarray, canary_labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Real records (flattened, plus a constant 1) with zeros on the canary coordinates, then the included canaries."""
    real = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    real = np.hstack([real, np.ones((len(real), 1), np.float32)])
    first_canary, m = real.shape[1], len(included)
    members = np.flatnonzero(included)
    canary_inputs = np.zeros((len(members), first_canary + m), np.float32)
    canary_inputs[np.arange(len(members)), first_canary + members] = CANARY_SCALE
    inputs = np.vstack([np.hstack([real, np.zeros((len(real), m), np.float32)]), canary_inputs])
    labels = np.concatenate([np.asarray(y, dtype=np.int64), canary_labels[members]])
    return torch.from_numpy(inputs), torch.from_numpy(labels), first_canary


def _train(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int, history: Sequence[tuple[float, float, int]],
           max_grad_norm: float, seed: int) -> np.ndarray:
    """DP-SGD through Opacus exactly as configured, phase by phase; returns the final weights [classes, features]."""
    model = nn.Linear(inputs.shape[1], num_classes, bias=False)
    nn.init.zeros_(model.weight)
    private = GradSampleModule(model, loss_reduction="sum")
    noise = torch.Generator().manual_seed(seed + 1)
    sampler = torch.Generator().manual_seed(seed + 2)
    dataset = TensorDataset(inputs, labels)
    for sigma, q, steps in history:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            optimizer = DPOptimizer(
                torch.optim.SGD(private.parameters(), lr=LEARNING_RATE), noise_multiplier=sigma,
                max_grad_norm=max_grad_norm, expected_batch_size=max(1, round(q * len(dataset))),
                loss_reduction="sum", generator=noise,
            )
        loader = DPDataLoader(dataset, sample_rate=q, generator=sampler)
        done = 0
        with warnings.catch_warnings():
            # Opacus's per-sample-gradient hooks fire on module outputs; the inputs need no gradient.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            while done < steps:
                for xb, yb in loader:
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(private(xb), yb, reduction="sum").backward()
                    optimizer.step()
                    done += 1
                    if done == steps:
                        break
    return model.weight.detach().numpy().copy()
