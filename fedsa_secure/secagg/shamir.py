"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2**521 - 1.

No library in our dependency set provides this, so it is written here, deliberately small.
A secret s (read as a 256-bit big-endian integer, well below p) is the constant term of a
random polynomial f of degree t-1; the share for x is f(x). Any t shares determine f(0) = s
by Lagrange interpolation; t-1 shares are consistent with every secret, so reveal nothing.
Coefficients come from a `crypto.Randomness` (the OS CSPRNG unless a known-answer test
injects a fixed one).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from fedsa_secure.crypto import SYSTEM, Randomness
from fedsa_secure.errors import AbortRound, IntegrityError, ProtocolError

PRIME = 2**521 - 1  # Mersenne prime: 521 bits of field for 256 bits of secret
SECRET_SIZE = 32
SHARE_SIZE = (PRIME.bit_length() + 7) // 8  # 66 bytes: f(x) big-endian, fixed length


def split(secret: bytes, threshold: int, xs: Sequence[int], randomness: Randomness = SYSTEM) -> list[bytes]:
    """Shares of `secret` at each x in `xs` (distinct, 1 <= x < p); any `threshold` reconstruct it."""
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"Shamir secrets are {SECRET_SIZE} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in 1..{len(xs)} (number of shares), got {threshold}")
    _check_xs(xs)
    coefficients = [int.from_bytes(secret, "big")] + [_field_element(randomness) for _ in range(threshold - 1)]
    return [_evaluate(coefficients, x).to_bytes(SHARE_SIZE, "big") for x in xs]


def combine(points: Sequence[tuple[int, bytes]], threshold: int) -> bytes:
    """Reconstruct the secret from at least `threshold` (x, share) points.

    Uses the first `threshold` points. AbortRound if there are too few; IntegrityError if the
    interpolated value cannot be a 32-byte secret (shares inconsistent or tampered).
    """
    if len(points) < threshold:
        raise AbortRound(f"need {threshold} shares to reconstruct a secret, have {len(points)}")
    used = points[:threshold]
    xs = [x for x, _ in used]
    _check_xs(xs)
    ys = [_decode_share(share) for _, share in used]
    value = sum(y * weight for y, weight in zip(ys, _lagrange_at_zero(tuple(xs)))) % PRIME
    if value >> (8 * SECRET_SIZE):
        raise IntegrityError("Shamir shares are inconsistent: the reconstructed value is not a secret")
    return value.to_bytes(SECRET_SIZE, "big")


def parity_check(xs: Sequence[int], threshold: int) -> tuple[int, ...]:
    """A fresh random vector c such that sum(c_i * f(x_i)) = 0 for every f of degree < threshold.

    Shares at xs that do not lie on one such polynomial fail `passes` except with probability
    1/p, so a server can tell whether any of more than `threshold` shares was altered without
    interpolating once per extra share. c_i = v_i * g(x_i), with v_i = 1/prod_{j!=i}(x_i - x_j)
    (the dual Reed-Solomon code) and g random of degree < len(xs) - threshold; the randomness is
    drawn after the shares are fixed, so no responder can aim for a kernel vector.
    """
    _check_xs(xs)
    if len(xs) <= threshold:
        return tuple(0 for _ in xs)  # t or fewer points always fit: nothing to check
    g = [_field_element(SYSTEM) for _ in range(len(xs) - threshold)]
    return tuple(v * _evaluate(g, x) % PRIME for v, x in zip(_dual_weights(tuple(xs)), xs))


def passes(check: Sequence[int], shares: Sequence[bytes]) -> bool:
    """True iff the shares satisfy the parity check from `parity_check` (same order of xs)."""
    return sum(c * _decode_share(share) for c, share in zip(check, shares)) % PRIME == 0


@lru_cache(maxsize=64)
def _dual_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    weights = []
    for i, x_i in enumerate(xs):
        product = 1
        for j, x_j in enumerate(xs):
            if j != i:
                product = product * (x_i - x_j) % PRIME
        weights.append(pow(product, -1, PRIME))
    return tuple(weights)


@lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange weights of f(0) for these x-coordinates; cached because a round reconstructs
    every secret of a neighbourhood from the same set of responders."""
    weights = []
    for j, x_j in enumerate(xs):
        numerator, denominator = 1, 1
        for k, x_k in enumerate(xs):
            if k != j:
                numerator = numerator * x_k % PRIME
                denominator = denominator * (x_k - x_j) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def _field_element(randomness: Randomness) -> int:
    """Uniform in [0, p): 521 random bits, rejecting the single value p = 2**521 - 1."""
    while True:
        value = int.from_bytes(randomness.bytes(SHARE_SIZE), "big") >> (8 * SHARE_SIZE - PRIME.bit_length())
        if value < PRIME:
            return value


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):  # Horner
        result = (result * x + coefficient) % PRIME
    return result


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ProtocolError("Shamir x-coordinates must be distinct")
    if any(not 0 < x < PRIME for x in xs):
        raise ProtocolError("Shamir x-coordinates must be in 1..p-1")


def is_share(share: bytes) -> bool:
    """True iff `share` is a well-formed share: SHARE_SIZE bytes encoding a field element."""
    return len(share) == SHARE_SIZE and int.from_bytes(share, "big") < PRIME


def _decode_share(share: bytes) -> int:
    if len(share) != SHARE_SIZE:
        raise ProtocolError(f"a Shamir share is {SHARE_SIZE} bytes, got {len(share)}")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise ProtocolError("a Shamir share is not a field element")
    return value
