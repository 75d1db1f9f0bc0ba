"""Choosing the SecAgg+ graph degree k and Shamir threshold t for n nodes.

Follows the reasoning of Bell et al. 2020 and Google's fcp `graph_parameter_finder.cc`
(semi-malicious server), adapted to our neighbourhoods of k neighbours plus the node itself.
"""

from __future__ import annotations

import math

from fedsa_secure.errors import ConfigError

SECURITY_BITS = 40  # Pr[some honest input is exposed] < 2**-40 (statistical)
CORRECTNESS_BITS = 20  # Pr[the round fails although dropouts stay within the estimate] < 2**-20


def graph_parameters(n: int, dropout_fraction: float, corrupt_fraction: float) -> tuple[int, int]:
    """The smallest degree k (and its threshold t) meeting the bounds below; (n-1, t) if none does.

    Assumptions: at most floor(corrupt_fraction*n) nodes collude with the aggregator and at
    most floor(dropout_fraction*n) honest nodes drop out, both chosen independently of the
    random ring order (which comes from the session id, fixed after keys are advertised); the
    aggregator may be malicious but cannot forge signatures, so it can only lie about who
    survived consistently to everyone (ConsistencyCheck). Then, with a union bound over all n
    nodes: (1) Pr[a node has t or more corrupt neighbours] < 2**-41, and t exceeds half of a
    neighbourhood beyond the corrupt ones ((t1 + k) / 2, fcp's semi-malicious rule) so the
    aggregator cannot collect both kinds of share of an honest node; (2) Pr[the Harary graph of
    honest survivors is disconnected] < 2**-41; (3) Pr[a node keeps fewer than t surviving
    neighbourhood members] < 2**-20. k is at most n-1; an odd k needs an even n.
    """
    if n < 2:
        raise ConfigError(f"secure aggregation needs at least 2 nodes, got {n}")
    if not (0 <= dropout_fraction < 1 and 0 <= corrupt_fraction < 1):
        raise ConfigError("dropout_fraction and corrupt_fraction must lie in [0, 1)")
    if corrupt_fraction + 2 * dropout_fraction > 0.9:
        raise ConfigError("corrupt_fraction + 2 * dropout_fraction must be at most 0.9 (fcp's feasibility bound)")
    corrupt = math.floor(corrupt_fraction * n + 1e-12)
    bad = corrupt + math.floor(dropout_fraction * n + 1e-12)
    alive = math.ceil((1 - dropout_fraction) * n - 1e-12)
    for k in range(2, n - 1, 2):
        t = _threshold(n, k, corrupt, bad, alive)
        if t is not None:
            return k, t
    return n - 1, max(n // 2 + 1, math.ceil((n + corrupt) / 2) + 1, 2)


def _threshold(n: int, k: int, corrupt: int, bad: int, alive: int) -> int | None:
    """fcp's CheckNumberOfNeighbors, for one even k; None if k is too small."""
    if _log_prob_disconnected(n, k, bad) >= -(SECURITY_BITS + 1) * math.log(2):
        return None
    # t1: corrupt neighbours exceed it with probability <= 2**-41 / n.
    t1 = _upper_quantile(n, corrupt, k, 2.0 ** -(SECURITY_BITS + 1) / n)
    t1 = math.ceil((t1 + k - 1.25) / 2)  # semi-malicious server
    # t2: surviving neighbours fall to it or below with probability <= 2**-20 / n.
    t2 = _lower_quantile(n, alive, k, 2.0**-CORRECTNESS_BITS / n)
    t = max(t1 + 1, 2, (k + 1) // 2 + 1)  # and 2t > k+1, which our protocol requires
    return t if t <= t2 else None


def _log_prob_disconnected(n: int, k: int, bad: int) -> float:
    """Union bound: two disjoint runs of k/2 consecutive bad nodes on the ring (fcp's bound)."""
    if k > bad:
        return -math.inf
    pairs = math.log(n) + math.log(n - k - 1) - math.log(2)
    return pairs + math.lgamma(bad + 1) + math.lgamma(n - k + 1) - math.lgamma(n + 1) - math.lgamma(bad - k + 1)


def _hypergeometric(n: int, marked: int, draws: int) -> list[float]:
    """P[X = x] for x marked among `draws` drawn without replacement from n."""
    total = math.comb(n, draws)
    return [math.comb(marked, x) * math.comb(n - marked, draws - x) / total for x in range(draws + 1)]


def _upper_quantile(n: int, marked: int, draws: int, tail: float) -> int:
    """Smallest x with P[X > x] <= tail."""
    pmf = _hypergeometric(n, marked, draws)
    above = 0.0
    for x in range(draws, -1, -1):
        if above + pmf[x] > tail:
            return x
        above += pmf[x]
    return 0


def _lower_quantile(n: int, marked: int, draws: int, tail: float) -> int:
    """Largest x with P[X < x] <= tail: at least x marked except with probability `tail`."""
    below = 0.0
    pmf = _hypergeometric(n, marked, draws)
    for x in range(draws + 1):
        if below + pmf[x] > tail:
            return x
        below += pmf[x]
    return draws
