"""The SecAgg+ neighbour graph (Bell et al. 2020): a Harary graph on a random ring order.

Participants are placed on a ring in an order drawn from the session id, and each is joined
to its floor(k/2) nearest ring neighbours on either side, plus the antipodal node when k is
odd (n is then even). The graph is k-regular; k = n-1 is the complete graph of classic SecAgg.
The order comes from a PRG keyed by HKDF(session id), so every party derives the same graph
and the aggregator cannot pick it: the session id hashes the config and all advertised keys,
which the aggregator can vary only by dropping whole nodes' advertisements.
"""

from __future__ import annotations

from fedsa_secure.crypto import LABEL_GRAPH, derive_key, keystream_words
from fedsa_secure.errors import ProtocolError
from fedsa_secure.secagg.messages import RoundConfig


def effective_degree(config: RoundConfig) -> int:
    """k for this round: config.degree, or n-1 when it is 0 (classic SecAgg)."""
    return config.degree or len(config.participants) - 1


def check_degree(config: RoundConfig) -> None:
    """A k-regular Harary graph on n nodes needs 1 <= k <= n-1 and n*k even."""
    n, k = len(config.participants), config.degree
    if k == 0:
        return
    if not 1 <= k <= n - 1:
        raise ProtocolError(f"graph degree must be in 1..{n - 1} (or 0 for n-1), got {k}")
    if k % 2 and n % 2:
        raise ProtocolError(f"no {k}-regular graph on {n} nodes: an odd degree needs an even n")


def ring_order(config: RoundConfig, session: bytes) -> tuple[str, ...]:
    """The participants in this session's ring order; `neighbours` joins nodes by ring distance,
    so the graph, seen in ring positions, is the same for every session of a given n and k."""
    return tuple(_shuffled(list(config.participants), derive_key(session, LABEL_GRAPH, b"")))


def neighbours(config: RoundConfig, session: bytes) -> dict[str, frozenset[str]]:
    """Each participant's k neighbours (itself excluded) for the round with this session id."""
    ring = ring_order(config, session)
    n, k = len(ring), effective_degree(config)
    offsets = set(range(1, k // 2 + 1)) | set(range(n - k // 2, n))
    if k % 2:
        offsets.add(n // 2)
    return {
        name: frozenset(ring[(position + offset) % n] for offset in offsets)
        for position, name in enumerate(ring)
    }


def _shuffled(items: list[str], seed: bytes) -> list[str]:
    """Fisher-Yates driven by the PRG, with rejection sampling so every order is equally likely."""
    words = iter(keystream_words(seed, 8 * len(items) + 64).tolist())
    for i in range(len(items) - 1, 0, -1):
        bound = i + 1
        limit = (1 << 32) - (1 << 32) % bound  # accept words below a multiple of bound
        while True:
            try:
                word = next(words)
            except StopIteration:  # probability below 2**-200: more rejections than words
                raise ProtocolError("neighbour graph: PRG words exhausted") from None
            if word < limit:
                break
        j = word % bound
        items[i], items[j] = items[j], items[i]
    return items
