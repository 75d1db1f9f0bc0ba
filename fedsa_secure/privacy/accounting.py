"""Accounting helpers shared by the DP trainer and the audit: calibrate, and ask "what if" without mutating.

A history is Opacus's own representation: a list of (noise_multiplier, sample_rate, steps),
consecutive identical mechanisms merged exactly as `IAccountant.step` merges them, so an
epsilon computed here from a history equals the live accountant's epsilon bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import version

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.analysis.prv import Domain, PoissonSubsampledGaussianPRV
from opacus.accountants.utils import get_noise_multiplier

from fedsa_secure.errors import BudgetExhausted

Step = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)
History = list[Step]

SECURE_MODE_AVAILABLE = False
SECURE_MODE_REASON = (
    "Opacus secure_mode needs torchcsprng, which has no build for this torch version; noise and "
    "Poisson sampling use torch's seeded pseudo-random generator (not cryptographically strong)."
)


EPSILON_TOLERANCE = 0.01  # calibrated epsilon lands in [target - tolerance, target]


@lru_cache(maxsize=64)
def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, prior: tuple[Step, ...] = ()
) -> float:
    """Smallest noise multiplier, to within EPSILON_TOLERANCE in epsilon, whose epsilon after `prior`
    followed by `steps` steps is <= target.

    `prior` is what the node has spent already (its teacher's training, say): the mechanisms compose
    (PRV and RDP both handle a history of different mechanisms). RDP without a prior: Opacus's own
    binary search (each evaluation is cheap). Otherwise each evaluation costs a fraction of a second
    (mostly PRV's RDP-based domain bound), and a bisection from [0, 20] needs about 15 of them.
    Instead start near the root (without a prior, from the RDP answer: RDP overestimates epsilon, so
    its sigma is just above PRV's; with one, from the answer without it, which is below), bracket it
    and close in by regula falsi (Illinois): a few evaluations. The answer always satisfies
    epsilon <= target as the live accountant computes it, within EPSILON_TOLERANCE of it.
    """
    spent = epsilon_of(list(prior), delta, accountant)
    if spent >= target_epsilon - EPSILON_TOLERANCE:
        raise BudgetExhausted(
            f"epsilon {spent:.4f} of {target_epsilon} is already spent: no noise level leaves room for {steps} more steps"
        )
    if not prior and accountant != "prv":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=EPSILON_TOLERANCE,
                )
            )
    start = calibrate_noise(target_epsilon, delta, sample_rate, steps, "rdp" if not prior else accountant)

    def excess(sigma: float) -> float:
        return epsilon_of(extend_history(list(prior), sigma, sample_rate, steps), delta, accountant) - target_epsilon

    return _root(excess, start, EPSILON_TOLERANCE)


def _root(excess: Callable[[float], float], start: float, tolerance: float) -> float:
    """Sigma with excess(sigma) in [-tolerance, 0] (excess falls as sigma grows), searched from `start`."""
    lo: float | None = None
    hi, f_hi = start, excess(start)
    growth = 1.05
    while f_hi > 0:  # over budget: move the upper end up, by larger steps each time
        lo, f_lo = hi, f_hi
        hi, f_hi = hi * growth, excess(hi * growth)
        growth = 1 + 2 * (growth - 1)
    if lo is None:
        lo, f_lo = hi * 0.9, excess(hi * 0.9)  # PRV's sigma is typically 5-7% below RDP's
        while f_lo <= 0:  # still within budget: a better upper end; look lower
            hi, f_hi = lo, f_lo
            lo, f_lo = lo * 0.9, excess(lo * 0.9)
    g_lo, g_hi = f_lo, f_hi  # the secant's copies of the end values (Illinois halves a stale end's)
    side = 0
    for _ in range(60):
        if -f_hi <= tolerance:
            break
        mid = hi - g_hi * (hi - lo) / (g_hi - g_lo)
        if not lo < mid < hi:
            mid = 0.5 * (lo + hi)
        f_mid = excess(mid)
        if f_mid <= 0:
            hi, f_hi, g_hi = mid, f_mid, f_mid
            if side == +1:
                g_lo /= 2
            side = +1
        else:
            lo, f_lo, g_lo = mid, f_mid, f_mid
            if side == -1:
                g_hi /= 2
            side = -1
    return float(hi)


def extend_history(history: History, noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """`history` followed by `steps` more steps of one mechanism, merged like `IAccountant.step`."""
    out: History = [(float(s), float(q), int(n)) for s, q, n in history]
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sample_rate:
        sigma, q, n = out.pop()
        out.append((sigma, q, n + steps))
    elif steps > 0:
        out.append((noise_multiplier, sample_rate, steps))
    return out


def fits_budget(
    history: History, noise_multiplier: float, sample_rate: float, steps: int,
    target_epsilon: float, delta: float, accountant: str,
) -> bool:
    """Whether `steps` more steps of the mechanism keep the whole history within `target_epsilon`.

    The node's enforcement rule: asked before a round, from a fresh accountant, so the live one
    is untouched when the answer is no.
    """
    future = extend_history(history, noise_multiplier, sample_rate, steps)
    return epsilon_of(future, delta, accountant) <= target_epsilon


def epsilon_of(history: History, delta: float, accountant: str) -> float:
    """Epsilon of a history under a fresh accountant of the given kind (0 for an empty history)."""
    return _epsilon_cached(tuple(tuple(h) for h in history), delta, accountant)


@lru_cache(maxsize=256)
def _epsilon_cached(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    # PRV takes log(1 - q), -inf at a sample rate of 1 (a full batch), only to compare against it: no error.
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # RDP notes its bound would be tighter with more orders: the value is still a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        if accountant == "rdp":
            return _rdp_epsilon(history, delta)
        acc = _SharedRdpPRVAccountant() if accountant == "prv" else create_accountant(mechanism=accountant)
        acc.history = [tuple(h) for h in history]
        return float(acc.get_epsilon(delta=delta))


@lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """One step's RDP at Opacus's default orders: the expensive part of RDP and PRV, shared by every step count and delta."""
    rdp = opacus_rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    rdp = np.asarray(rdp, dtype=np.float64)
    rdp.flags.writeable = False  # cached: shared by every caller
    return rdp


def _rdp_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """`RDPAccountant.get_epsilon` bit for bit: RDP adds up over steps, so it scales the cached per-step vectors."""
    rdp = sum([_rdp_per_step(sigma, q) * steps for sigma, q, steps in history])
    eps, _ = opacus_rdp.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


class _SharedRdpPRVAccountant(PRVAccountant):
    """Opacus's PRV accountant, with its discretisation domain computed from the cached RDP vectors.

    Opacus bounds the domain with fresh RDP accountants (`compute_safe_domain_size`, remark 5.6 of
    Gopi et al.), which is most of a PRV evaluation's cost. This is that function and `_get_domain`
    with `_rdp_epsilon` in their place: the same domain, hence the same epsilon (pinned by a test).
    """

    def _get_domain(
        self, prvs: list[PoissonSubsampledGaussianPRV], num_self_compositions: list[int], eps_error: float, delta_error: float
    ) -> Domain:
        total = sum(num_self_compositions)
        history = tuple((p.noise_multiplier, p.sample_rate, n) for p, n in zip(prvs, num_self_compositions))
        whole = _rdp_epsilon(history, delta_error / 4)
        singles = [_rdp_epsilon(((p.noise_multiplier, p.sample_rate, 1),), delta_error / (8 * total)) for p in prvs]
        half_width = max(whole, *singles, eps_error) + 3
        mesh_size = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
        return Domain.create_aligned(-half_width, half_width, mesh_size)


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose arithmetic a privacy claim depends on (for ledgers and audits)."""
    dists = {"torch": "torch", "opacus": "opacus", "dp_accounting": "dp-accounting", "numpy": "numpy"}
    return {key: version(dist) for key, dist in dists.items()}
