"""Accounting helpers shared by the DP trainer and the audit: calibrate, and ask "what if" without mutating.

A history is Opacus's own representation: a list of (noise_multiplier, sample_rate, steps),
consecutive identical mechanisms merged exactly as `IAccountant.step` merges them, so an
epsilon computed here from a history equals the live accountant's epsilon bit for bit.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from importlib.metadata import version

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

History = list[tuple[float, float, int]]

SECURE_MODE_AVAILABLE = False
SECURE_MODE_REASON = (
    "Opacus secure_mode needs torchcsprng, which has no build for this torch version; noise and "
    "Poisson sampling use torch's seeded pseudo-random generator (not cryptographically strong)."
)


@lru_cache(maxsize=64)
def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Smallest noise multiplier (Opacus binary search) whose epsilon after `steps` is <= target."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    return float(sigma)


def extend_history(history: History, noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """`history` followed by `steps` more steps of one mechanism, merged like `IAccountant.step`."""
    out = [tuple(h) for h in history]
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sample_rate:
        sigma, q, n = out.pop()
        out.append((sigma, q, n + steps))
    elif steps > 0:
        out.append((noise_multiplier, sample_rate, steps))
    return out


def epsilon_of(history: History, delta: float, accountant: str) -> float:
    """Epsilon of a history under a fresh accountant of the given kind (0 for an empty history)."""
    return _epsilon_cached(tuple(tuple(h) for h in history), delta, accountant)


@lru_cache(maxsize=256)
def _epsilon_cached(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = [tuple(h) for h in history]
    with warnings.catch_warnings():
        # RDP notes its bound would be tighter with more orders: the value is still a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(acc.get_epsilon(delta=delta))


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose arithmetic a privacy claim depends on (for ledgers and audits)."""
    dists = {"torch": "torch", "opacus": "opacus", "dp_accounting": "dp-accounting", "numpy": "numpy"}
    return {key: version(dist) for key, dist in dists.items()}
