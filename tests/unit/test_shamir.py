"""Shamir secret sharing: any t shares reconstruct, t-1 do not, bad input is refused."""

from __future__ import annotations

from itertools import combinations

import pytest

from fedsa_secure.errors import AbortRound, IntegrityError, ProtocolError
from fedsa_secure.secagg import shamir

SECRET = bytes(range(32))


def _reconstructs(points: list[tuple[int, bytes]], threshold: int) -> bool:
    try:
        return shamir.combine(points, threshold) == SECRET
    except IntegrityError:
        return False


def test_any_t_of_n_reconstruct_and_no_t_minus_1_do() -> None:
    xs = [1, 2, 3, 4, 5]
    shares = shamir.split(SECRET, 3, xs)
    assert all(len(share) == shamir.SHARE_SIZE for share in shares)
    points = list(zip(xs, shares))
    for subset in combinations(points, 3):
        assert shamir.combine(list(subset), 3) == SECRET
    for subset in combinations(points, 2):
        assert not _reconstructs(list(subset), 2)


def test_extreme_secrets() -> None:
    for secret in (bytes(32), b"\xff" * 32):
        shares = shamir.split(secret, 2, [7, 9])
        assert shamir.combine([(9, shares[1]), (7, shares[0])], 2) == secret


def test_shares_are_fresh_each_time() -> None:
    assert shamir.split(SECRET, 2, [1, 2]) != shamir.split(SECRET, 2, [1, 2])


def test_threshold_one_share_is_the_secret_encoding() -> None:
    (share,) = shamir.split(SECRET, 1, [4])
    assert int.from_bytes(share, "big") == int.from_bytes(SECRET, "big")


def test_too_few_shares_abort() -> None:
    shares = shamir.split(SECRET, 3, [1, 2, 3])
    with pytest.raises(AbortRound):
        shamir.combine([(1, shares[0]), (2, shares[1])], 3)


def test_tampered_share_does_not_yield_the_secret() -> None:
    shares = shamir.split(SECRET, 2, [1, 2])
    tampered = bytearray(shares[1])
    tampered[-1] ^= 1
    assert not _reconstructs([(1, shares[0]), (2, bytes(tampered))], 2)


def test_bad_inputs_refused() -> None:
    with pytest.raises(ValueError):
        shamir.split(b"short", 2, [1, 2])
    with pytest.raises(ValueError):
        shamir.split(SECRET, 3, [1, 2])
    with pytest.raises(ProtocolError):
        shamir.split(SECRET, 2, [1, 1])
    with pytest.raises(ProtocolError):
        shamir.split(SECRET, 1, [0])
    shares = shamir.split(SECRET, 2, [1, 2])
    with pytest.raises(ProtocolError):
        shamir.combine([(1, shares[0]), (1, shares[1])], 2)
    with pytest.raises(ProtocolError):
        shamir.combine([(1, shares[0]), (2, shares[1][:-1])], 2)
    with pytest.raises(ProtocolError):
        shamir.combine([(1, shares[0]), (2, b"\xff" * shamir.SHARE_SIZE)], 2)


def test_parity_check_accepts_consistent_shares_and_catches_any_altered_one() -> None:
    xs = list(range(1, 9))
    shares = shamir.split(bytes(range(32)), 4, xs)
    check = shamir.parity_check(xs, 4)
    assert shamir.passes(check, shares)
    for index in range(len(shares)):
        altered = list(shares)
        altered[index] = ((int.from_bytes(altered[index], "big") + 1) % shamir.PRIME).to_bytes(shamir.SHARE_SIZE, "big")
        assert not shamir.passes(check, altered)
    # t points always fit a polynomial of degree < t: nothing to check.
    assert shamir.parity_check(xs[:4], 4) == (0, 0, 0, 0)
