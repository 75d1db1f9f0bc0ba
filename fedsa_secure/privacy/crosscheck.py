"""Recompute a ledger's epsilon with four independent accountants, so a privacy claim does not rest on one library.

The ledger records each charge's mechanism (noise multiplier, sample rate, steps, delta). From
those alone the audit rebuilds the node's whole history and asks Opacus (PRV, RDP) and Google's
dp-accounting (PLD, RDP) for the cumulative epsilon. The accountant the node used must reproduce
every recorded epsilon (within PRV's own error bound); the others show how much the figure
depends on the accounting method (RDP is a looser upper bound by construction).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS, compute_epsilon

from fedsa_secure.privacy.accounting import History, epsilon_of, extend_history
from fedsa_secure.privacy.ledger import charges

# Opacus PRV's default eps_error: its epsilon is exact only to this much, so a recompute within it agrees.
RECOMPUTE_TOLERANCE = 0.01
ACCOUNTANTS = ("opacus_prv", "opacus_rdp", "dp_accounting_pld", "dp_accounting_rdp")
OPACUS_NAMES = {"prv": "opacus_prv", "rdp": "opacus_rdp"}
PLD_INTERVAL = 1e-4  # PLDAccountant's default value_discretization_interval
RDP_ORDERS = np.array(DEFAULT_RDP_ORDERS)  # RdpAccountant's default orders


@dataclass(frozen=True)
class EntryCheck:
    """One ledger entry: its recorded epsilon against a recompute with the accountant it names."""

    seq: int
    round: int
    recorded: float
    recomputed: float | None
    ok: bool


@dataclass(frozen=True)
class NodeCrossCheck:
    """A node's final cumulative epsilon under every accountant, and where the figures disagree."""

    delta: float
    accountant: str
    recorded: float
    figures: dict[str, float | None]
    errors: dict[str, str]
    largest_disagreement: float  # max |figure - recorded| over the accountants that answered
    largest_disagreement_with: str | None
    entries: list[EntryCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def histories(entries: Sequence[dict[str, Any]]) -> list[History]:
    """The cumulative Opacus-style history after each charge, rebuilt from the recorded parameters only."""
    out: list[History] = []
    history: History = []
    for entry in charges(list(entries)):
        history = extend_history(history, float(entry["noise_multiplier"]), float(entry["sample_rate"]), int(entry["steps"]))
        out.append(history)
    return out


def epsilon_by(accountant: str, history: History, delta: float) -> float:
    """Cumulative epsilon of `history` at `delta` under one of ACCOUNTANTS (inf without noise)."""
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    frozen = tuple((float(s), float(q), int(n)) for s, q, n in history)
    if accountant == "opacus_prv":
        return epsilon_of(list(frozen), delta, "prv")
    if accountant == "opacus_rdp":
        return epsilon_of(list(frozen), delta, "rdp")
    if accountant in ("dp_accounting_pld", "dp_accounting_rdp"):
        return _google_epsilon(accountant, frozen, delta)
    raise ValueError(f"unknown accountant {accountant!r}; choose from {ACCOUNTANTS}")


@lru_cache(maxsize=128)
def _google_epsilon(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    absl = logging.getLogger("absl")
    level = absl.level
    # RDP drops fractional orders whose series does not converge and says so per order; the bound stays valid.
    absl.setLevel(logging.ERROR)
    try:
        pld = accountant == "dp_accounting_pld"
        return _google_pld_epsilon(history, delta) if pld else _google_rdp_epsilon(history, delta)
    finally:
        absl.setLevel(level)


def _google_pld_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """`PLDAccountant` composing each (sigma, q, steps) as steps Poisson-subsampled Gaussians, bit for bit.

    It builds the one-step PLD (the expensive part) and self-composes it; this does the same with
    the one-step PLD built once per mechanism, so histories differing only in steps share it.
    """
    pld = privacy_loss_distribution.identity(value_discretization_interval=PLD_INTERVAL)
    for sigma, q, steps in history:
        if q != 0:  # the accountant skips a mechanism that never samples
            pld = pld.compose(_pld_per_step(sigma, q).self_compose(steps))
    return float(pld.get_epsilon_for_delta(delta))


@lru_cache(maxsize=8)  # about 1 MB each; a run has a few mechanisms
def _pld_per_step(sigma: float, q: float) -> privacy_loss_distribution.PrivacyLossDistribution:
    """One Poisson-subsampled Gaussian step's PLD, as `PLDAccountant` builds it (immutable, so shareable)."""
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma, value_discretization_interval=PLD_INTERVAL, sampling_prob=q,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
    )


def _google_rdp_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """`RdpAccountant` on the same events, bit for bit: it adds steps x the one-step RDP vector per mechanism."""
    rdp = np.zeros_like(RDP_ORDERS, dtype=np.float64)
    for sigma, q, steps in history:
        rdp += steps * _google_rdp_per_step(sigma, q)
    return float(compute_epsilon(RDP_ORDERS, rdp, delta)[0])


@lru_cache(maxsize=64)
def _google_rdp_per_step(sigma: float, q: float) -> np.ndarray:
    """One step's RDP at dp-accounting's default orders, from its own accountant (the expensive part)."""
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    rdp = np.asarray(RdpAccountant(orders=RDP_ORDERS).compose(event).rdp, dtype=np.float64)
    rdp.flags.writeable = False  # cached: shared by every caller
    return rdp


def crosscheck(all_entries: Sequence[dict[str, Any]]) -> NodeCrossCheck | None:
    """Recompute every charge with its own accountant and the last one with all four (None without charges)."""
    entries = charges(list(all_entries))
    if not entries:
        return None
    cumulative = histories(entries)
    checks, problems = [], []
    for entry, history in zip(entries, cumulative):
        recomputed = _try(OPACUS_NAMES.get(str(entry["accountant"]), ""), history, float(entry["delta"]))
        ok = recomputed is not None and abs(recomputed - float(entry["epsilon"])) <= RECOMPUTE_TOLERANCE
        checks.append(EntryCheck(int(entry["seq"]), int(entry["round"]), float(entry["epsilon"]), recomputed, ok))
        if not ok:
            problems.append(
                f"entry {entry['seq']} (round {entry['round']}) records epsilon {float(entry['epsilon']):.4f}, "
                f"its parameters give {recomputed if recomputed is None else round(recomputed, 4)} "
                f"under {entry['accountant']}"
            )
        if float(entry["delta"]) != float(entries[0]["delta"]):
            problems.append(f"entry {entry['seq']} changes delta mid-ledger ({entries[0]['delta']} -> {entry['delta']})")
    last = entries[-1]
    delta, recorded = float(last["delta"]), float(last["epsilon"])
    figures: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for name in ACCOUNTANTS:
        try:
            figures[name] = epsilon_by(name, cumulative[-1], delta)
        except Exception as exc:  # an accountant that cannot answer is reported, not fatal
            figures[name], errors[name] = None, f"{type(exc).__name__}: {exc}"
    answered = {k: v for k, v in figures.items() if v is not None}
    worst = max(answered, key=lambda k: abs(answered[k] - recorded), default=None)
    return NodeCrossCheck(
        delta, str(last["accountant"]), recorded, figures, errors,
        abs(answered[worst] - recorded) if worst else math.nan, worst, checks, problems,
    )


def _try(accountant: str, history: History, delta: float) -> float | None:
    try:
        return epsilon_by(accountant, history, delta)
    except Exception:  # an unknown accountant name or a library failure: reported by the caller as a mismatch
        return None
