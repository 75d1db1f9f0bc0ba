"""The per-neighbour sealing key: derived once per pair, the same from both ends, and only that pair's."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import pytest

from fedsa_secure.crypto import generate_keypair, shared_secret
from fedsa_secure.errors import IntegrityError
from fedsa_secure.secagg.masks import pairwise_seed
from fedsa_secure.secagg.messages import AdvertiseKeys, QuantizationSpec, RoundConfig
from fedsa_secure.secagg.sealing import open_shares, open_with_key, seal_shares, seal_with_key, sealing_keys
from fedsa_secure.secagg.session import session_id
from fedsa_secure.secagg.shamir import SHARE_SIZE

NAMES = ("alice", "bob", "carol", "dave")
SHARES = (bytes(range(SHARE_SIZE)), bytes(range(100, 100 + SHARE_SIZE)))


def _config(names: tuple[str, ...]) -> RoundConfig:
    return RoundConfig(3, names, len(names) // 2 + 1, 4, QuantizationSpec(1.0, 8), 12, bytes(range(32)))


def _keys() -> dict[str, tuple[bytes, bytes]]:
    return {name: generate_keypair() for name in NAMES}


def _all_pair_keys(channel: dict[str, tuple[bytes, bytes]], session: bytes) -> dict[str, dict[str, bytes]]:
    """Each node's sealing keys with every other node, as a client derives them in ShareKeys."""
    return {
        me: sealing_keys(private, {peer: pair[1] for peer, pair in channel.items() if peer != me}, session, me)
        for me, (private, _) in channel.items()
    }


def test_both_ends_derive_the_same_key_and_every_pair_its_own() -> None:
    channel = _keys()
    keys = _all_pair_keys(channel, b"session-1")
    for me, mine in keys.items():
        assert set(mine) == set(NAMES) - {me}
        assert all(len(key) == 32 for key in mine.values())
    for a, b in combinations(NAMES, 2):
        assert keys[a][b] == keys[b][a]  # names enter sorted: either end, one key
    pair_keys = {frozenset(pair): keys[pair[0]][pair[1]] for pair in combinations(NAMES, 2)}
    assert len(set(pair_keys.values())) == len(pair_keys) == 6
    # Deriving for all neighbours at once gives each pair the key a single-peer derivation gives.
    alone = sealing_keys(channel["dave"][0], {"alice": channel["alice"][1]}, b"session-1", "dave")
    assert alone == {"alice": keys["dave"]["alice"]}


def test_key_changes_with_the_session_round_and_nonce() -> None:
    channel, masks = _keys(), _keys()
    config = _config(NAMES)
    ads = [AdvertiseKeys(name, channel[name][1], masks[name][1]) for name in NAMES]
    sessions = [
        session_id(config, ads),
        session_id(replace(config, round=config.round + 1), ads),
        session_id(replace(config, nonce=bytes(32)), ads),
    ]
    keys = [_all_pair_keys(channel, session)["alice"]["bob"] for session in sessions]
    assert len(set(keys)) == 3
    sealed = seal_with_key(keys[0], sessions[0], "alice", "bob", SHARES)
    assert open_with_key(keys[0], sessions[0], "alice", "bob", sealed) == SHARES
    for key, session in zip(keys[1:], sessions[1:]):  # the next round's key and session refuse it
        with pytest.raises(IntegrityError):
            open_with_key(key, session, "alice", "bob", sealed)
        with pytest.raises(IntegrityError):
            open_with_key(keys[0], session, "alice", "bob", sealed)


def test_key_is_separated_from_the_pairwise_mask_seed_of_the_same_secret() -> None:
    channel = _keys()
    key = sealing_keys(channel["alice"][0], {"bob": channel["bob"][1]}, b"s", "alice")["bob"]
    secret = shared_secret(channel["alice"][0], channel["bob"][1])
    assert key != pairwise_seed(secret, b"s", "alice", "bob") and key != secret


def test_sealed_for_b_opens_at_b_and_nowhere_else() -> None:
    channel = _keys()
    keys = _all_pair_keys(channel, b"session")
    sealed = seal_with_key(keys["alice"]["bob"], b"session", "alice", "bob", SHARES)
    assert open_with_key(keys["bob"]["alice"], b"session", "alice", "bob", sealed) == SHARES
    attempts = [
        (keys["carol"]["alice"], "alice", "carol"),  # carol's own key with alice, as if addressed to her
        (keys["carol"]["alice"], "alice", "bob"),  # carol's key, the genuine addressing
        (keys["carol"]["bob"], "alice", "bob"),
        (keys["bob"]["alice"], "bob", "alice"),  # the same pair key, reflected to its sender
        (keys["bob"]["alice"], "alice", "carol"),  # the right key, redirected
    ]
    for key, sender, recipient in attempts:
        with pytest.raises(IntegrityError):
            open_with_key(key, b"session", sender, recipient, sealed)
    # The raw-key helpers (known-answer vectors) use the same pair key.
    assert open_shares(channel["bob"][0], channel["alice"][1], b"session", "alice", "bob", sealed) == SHARES
    resealed = seal_shares(channel["alice"][0], channel["bob"][1], b"session", "alice", "bob", SHARES)
    assert open_with_key(keys["bob"]["alice"], b"session", "alice", "bob", resealed) == SHARES
    with pytest.raises(IntegrityError):
        open_shares(channel["carol"][0], channel["alice"][1], b"session", "alice", "carol", sealed)
