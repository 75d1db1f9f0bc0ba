"""Full secure-aggregation rounds in memory: exact sums, dropouts, refusals, mask hiding."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsa_secure.crypto import generate_keypair, random_bytes
from fedsa_secure.errors import AbortRound, IntegrityError, ProtocolError
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.masks import add_signed_keystreams, signed_pairwise_seeds
from fedsa_secure.secagg.messages import (
    ConsistencyCheckRequest,
    EncryptedShare,
    MaskedInput,
    QuantizationSpec,
    Roster,
    RoundConfig,
    ShareDelivery,
    UnmaskRequest,
)
from fedsa_secure.secagg.packing import unpack
from fedsa_secure.secagg.quantize import quantization_step, required_modulus_bits
from fedsa_secure.secagg.server import SecAggServer
from fedsa_secure.secagg.session import session_id
from fedsa_secure.secagg.stages import Stage

LEVEL_BITS = 8
SPEC = QuantizationSpec(clip=1.0, level_bits=LEVEL_BITS)
STEP = quantization_step(SPEC)
T = TypeVar("T")

# A node's last completed stage before it vanishes.
BEFORE_ADVERTISE, AFTER_ADVERTISE, AFTER_SHARE, AFTER_MASKED, AFTER_CONSISTENCY = (
    "vanishes during advertise", "advertise", "share", "masked", "consistency"
)


def make_config(n: int, t: int, m: int, level_bits: int = LEVEL_BITS) -> RoundConfig:
    names = tuple(f"node{i:02d}" for i in range(n))
    return RoundConfig(
        round=7,
        participants=names,
        threshold=t,
        vector_length=m,
        quantization=QuantizationSpec(1.0, level_bits),
        modulus_bits=required_modulus_bits(n, level_bits),
        nonce=random_bytes(32),
    )


def grid_vector(rng: np.random.Generator, m: int) -> np.ndarray:
    """Values on the quantization grid: quantize is then deterministic and sums are exact."""
    return -1.0 + rng.integers(0, 2**LEVEL_BITS + 1, size=m) * STEP


def _answers(names: list[str], ask: Callable[[str], T]) -> list[tuple[str, T]]:
    """Each node's answer; a node that refuses (e.g. too few neighbours left) leaves the round."""
    answers = []
    for name in names:
        try:
            answers.append((name, ask(name)))
        except (AbortRound, ProtocolError):
            continue
    return answers


def run_round(
    config: RoundConfig, vectors: Mapping[str, np.ndarray], drop_after: Mapping[str, str] | None = None
) -> tuple[np.ndarray, SecAggServer]:
    """Drive server and clients through one round; `drop_after` makes nodes vanish after a stage."""
    drop_after = drop_after or {}
    server = SecAggServer(config)
    clients = {name: SecAggClient(name, config) for name in config.participants}
    alive = list(config.participants)

    alive = [n for n in alive if drop_after.get(n) != BEFORE_ADVERTISE]
    for name in alive:
        server.receive_advertise(clients[name].advertise())
    roster = server.roster()
    alive = [n for n in alive if drop_after.get(n) != AFTER_ADVERTISE]
    for _name, msg in _answers(alive, lambda n: clients[n].share_keys(roster)):
        server.receive_shares(msg)
    deliveries = server.deliveries()
    alive = [n for n in alive if drop_after.get(n) != AFTER_SHARE and n in deliveries]
    for _name, msg in _answers(alive, lambda n: clients[n].masked_input(deliveries[n], vectors[n])):
        server.receive_masked(msg)
    check = server.consistency_request()
    alive = [n for n in check.survivors if drop_after.get(n) != AFTER_MASKED]
    for _name, msg in _answers(alive, lambda n: clients[n].consistency_check(check)):
        server.receive_consistency(msg)
    request = server.unmask_request()
    alive = [n for n, _ in request.signatures if drop_after.get(n) != AFTER_CONSISTENCY]
    for _name, msg in _answers(alive, lambda n: clients[n].unmask(request)):
        server.receive_unmask(msg)
    return server.finish(), server


def test_five_nodes_threshold_three_sum_within_n_steps() -> None:
    config = make_config(5, 3, 2000)
    rng = np.random.default_rng(1)
    vectors = {name: rng.uniform(-1.0, 1.0, 2000) for name in config.participants}
    result, server = run_round(config, vectors)
    expected = sum(vectors.values())
    assert result.dtype == np.float64 and result.shape == (2000,)
    assert np.max(np.abs(result - expected)) < 5 * STEP
    assert server.survivors == config.participants
    assert server.stage is Stage.DONE


def test_grid_vectors_sum_exactly() -> None:
    config = make_config(5, 3, 500)
    rng = np.random.default_rng(2)
    vectors = {name: grid_vector(rng, 500) for name in config.participants}
    result, server = run_round(config, vectors)
    assert np.array_equal(result, sum(vectors.values()))
    expected_q = sum(np.rint((v + 1.0) / STEP).astype(np.int64) for v in vectors.values())
    assert np.array_equal(server.sum_quantized, expected_q)


def test_dropout_after_share_keys_gives_survivors_sum() -> None:
    config = make_config(5, 3, 300)
    rng = np.random.default_rng(3)
    vectors = {name: grid_vector(rng, 300) for name in config.participants}
    result, server = run_round(config, vectors, {"node02": AFTER_SHARE})
    assert server.survivors == ("node00", "node01", "node03", "node04")
    assert np.array_equal(result, sum(v for n, v in vectors.items() if n != "node02"))


def test_dropouts_at_every_stage_still_sum_exactly() -> None:
    config = make_config(11, 6, 100)
    rng = np.random.default_rng(4)
    vectors = {name: grid_vector(rng, 100) for name in config.participants}
    drops = {
        "node00": BEFORE_ADVERTISE, "node01": AFTER_ADVERTISE, "node03": AFTER_SHARE,
        "node05": AFTER_MASKED, "node07": AFTER_CONSISTENCY,
    }
    result, server = run_round(config, vectors, drops)
    assert server.survivors == ("node02", "node04", "node05", "node06", "node07", "node08", "node09", "node10")
    assert np.array_equal(result, sum(vectors[n] for n in server.survivors))


def test_too_many_dropouts_abort() -> None:
    config = make_config(5, 3, 10)
    vectors = {name: np.zeros(10) for name in config.participants}
    with pytest.raises(AbortRound):
        run_round(config, vectors, {"node00": AFTER_SHARE, "node01": AFTER_SHARE, "node02": AFTER_SHARE})


def test_too_few_unmask_responses_abort() -> None:
    config = make_config(5, 3, 10)
    vectors = {name: np.zeros(10) for name in config.participants}
    drops = {n: AFTER_MASKED for n in ("node00", "node01", "node02")}
    with pytest.raises(AbortRound):
        run_round(config, vectors, drops)


def test_pairwise_masks_cancel() -> None:
    names = ["a", "b", "c", "d"]
    keys = {name: generate_keypair() for name in names}
    publics = {name: pair[1] for name, pair in keys.items()}
    total = np.zeros(1000, dtype=np.uint32)
    for name in names:
        mine = np.zeros(1000, dtype=np.uint32)
        add_signed_keystreams(mine, signed_pairwise_seeds(name, keys[name][0], publics, b"session"))
        assert np.count_nonzero(mine) > 990  # each node's own sum is not trivially zero
        total += mine
    assert not total.any()


def test_single_masked_input_hides_its_vector() -> None:
    m = 20_000
    config = make_config(3, 2, m)
    clients = {name: SecAggClient(name, config) for name in config.participants}
    server = SecAggServer(config)
    for client in clients.values():
        server.receive_advertise(client.advertise())
    roster = server.roster()
    for client in clients.values():
        server.receive_shares(client.share_keys(roster))
    deliveries = server.deliveries()
    vector = np.linspace(-1.0, 1.0, m)  # strongly structured input
    masked_msg = clients["node00"].masked_input(deliveries["node00"], vector)
    masked = unpack(masked_msg.packed, config.modulus_bits, m).astype(np.float64)
    quantized = (vector + 1.0) / STEP
    modulus = 2.0**config.modulus_bits
    assert abs(np.corrcoef(masked, quantized)[0, 1]) < 0.05
    assert masked.min() < 0.01 * modulus and masked.max() > 0.99 * modulus
    assert abs(masked.mean() / modulus - 0.5) < 0.02


def _through_share_keys(config: RoundConfig) -> tuple[SecAggServer, dict[str, SecAggClient], dict[str, ShareDelivery]]:
    server = SecAggServer(config)
    clients = {name: SecAggClient(name, config) for name in config.participants}
    for client in clients.values():
        server.receive_advertise(client.advertise())
    roster = server.roster()
    for client in clients.values():
        server.receive_shares(client.share_keys(roster))
    return server, clients, server.deliveries()


def test_out_of_order_and_repeated_calls_refused() -> None:
    config = make_config(3, 2, 4)
    client = SecAggClient("node00", config)
    with pytest.raises(ProtocolError, match="out of order"):
        client.share_keys(Roster(()))
    with pytest.raises(ProtocolError, match="out of order"):
        client.unmask(UnmaskRequest(("node00",), ()))
    client.advertise()
    with pytest.raises(ProtocolError, match="out of order"):
        client.advertise()

    server = SecAggServer(config)
    with pytest.raises(ProtocolError, match="out of order"):
        server.deliveries()
    with pytest.raises(ProtocolError, match="out of order"):
        server.receive_masked(MaskedInput("node00", b""))
    with pytest.raises(ProtocolError, match="not known"):
        _ = server.survivors

    server, clients, deliveries = _through_share_keys(config)
    with pytest.raises(ProtocolError, match="out of order"):
        server.roster()
    msg = clients["node00"].masked_input(deliveries["node00"], np.zeros(4))
    with pytest.raises(ProtocolError, match="out of order"):
        clients["node00"].masked_input(deliveries["node00"], np.zeros(4))
    server.receive_masked(msg)
    with pytest.raises(ProtocolError, match="already"):
        server.receive_masked(msg)
    with pytest.raises(ProtocolError, match="out of order"):
        server.finish()


def _through_consistency(config: RoundConfig) -> tuple[SecAggServer, dict[str, SecAggClient], UnmaskRequest]:
    """Everyone masks zeros and signs the survivor set; returns the genuine unmask request."""
    server, clients, deliveries = _through_share_keys(config)
    for name, client in clients.items():
        server.receive_masked(client.masked_input(deliveries[name], np.zeros(config.vector_length)))
    check = server.consistency_request()
    for client in clients.values():
        server.receive_consistency(client.consistency_check(check))
    return server, clients, server.unmask_request()


def test_unmask_refuses_overlap_and_then_stays_aborted() -> None:
    config = make_config(3, 2, 4)
    _, clients, request = _through_consistency(config)
    client = clients["node00"]
    with pytest.raises(ProtocolError, match="both"):
        client.unmask(replace(request, dropped=("node02",)))
    assert client.stage is Stage.ABORTED
    with pytest.raises(ProtocolError):  # no second chance with another split
        client.unmask(request)


@pytest.mark.parametrize(
    ("survivors", "match"),
    [
        (("node00",), "below the threshold"),
        (("node00", "node01", "node09"), "not in this round's roster"),
        (("node01", "node02"), "not a survivor"),
        (("node00", "node00", "node01"), "duplicates"),
    ],
)
def test_consistency_check_refuses_bad_survivor_sets(survivors: tuple[str, ...], match: str) -> None:
    config = make_config(3, 2, 4)
    _, clients, deliveries = _through_share_keys(config)
    clients["node00"].masked_input(deliveries["node00"], np.zeros(4))
    with pytest.raises(ProtocolError, match=match):
        clients["node00"].consistency_check(ConsistencyCheckRequest(survivors))
    assert clients["node00"].stage is Stage.ABORTED


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"survivors": ("node00", "node01")}, "differs from the one this node signed"),
        ({"signatures": (("node00", b""),)}, "only 1 survivors signed"),
        ({"signatures": (("node00", b""), ("node00", b""))}, "twice"),
        ({"signatures": (("node00", b""), ("node07", b""))}, "not survivors"),
        ({"dropped": ("node09",)}, "not participants"),
    ],
)
def test_unmask_refuses_bad_requests(change: dict[str, object], match: str) -> None:
    config = make_config(3, 2, 4)
    _, clients, request = _through_consistency(config)
    with pytest.raises(ProtocolError, match=match):
        clients["node00"].unmask(replace(request, **change))  # type: ignore[arg-type]
    assert clients["node00"].stage is Stage.ABORTED


def test_tampered_misaddressed_or_duplicated_shares_refused() -> None:
    config = make_config(3, 2, 4)
    _, clients, deliveries = _through_share_keys(config)
    first = deliveries["node00"].shares[0]

    flipped = bytearray(first.ciphertext)
    flipped[20] ^= 1
    tampered = ShareDelivery((replace(first, ciphertext=bytes(flipped)),) + deliveries["node00"].shares[1:])
    with pytest.raises(IntegrityError):
        clients["node00"].masked_input(tampered, np.zeros(4))

    with pytest.raises(ProtocolError, match="addressed to"):
        clients["node01"].masked_input(ShareDelivery((first,)), np.zeros(4))

    genuine = deliveries["node02"].shares[0]
    with pytest.raises(ProtocolError, match="two share bundles"):
        clients["node02"].masked_input(ShareDelivery((genuine, genuine)), np.zeros(4))


def test_share_redirected_to_another_recipient_fails_authentication() -> None:
    config = make_config(3, 2, 4)
    _, clients, deliveries = _through_share_keys(config)
    share_for_00 = next(s for s in deliveries["node00"].shares if s.sender == "node01")
    redirected = EncryptedShare("node01", "node02", share_for_00.ciphertext)
    with pytest.raises(IntegrityError):
        clients["node02"].masked_input(ShareDelivery((redirected,)), np.zeros(4))


def test_roster_key_substitution_is_detected() -> None:
    config = make_config(3, 2, 4)
    server = SecAggServer(config)
    clients = {name: SecAggClient(name, config) for name in config.participants}
    for client in clients.values():
        server.receive_advertise(client.advertise())
    roster = server.roster()
    # node00's own keys replaced: node00 refuses the roster outright.
    fake = replace(roster.advertisements[0], mask_public_key=generate_keypair()[1])
    with pytest.raises(ProtocolError, match="own keys"):
        clients["node00"].share_keys(Roster((fake,) + roster.advertisements[1:]))
    # node01 is shown a substituted key for node02: its session id differs, so sealed shares fail.
    fake02 = replace(roster.advertisements[2], channel_public_key=generate_keypair()[1])
    shares01 = clients["node01"].share_keys(Roster(roster.advertisements[:2] + (fake02,)))
    shares02 = clients["node02"].share_keys(roster)
    to_01 = next(s for s in shares02.shares if s.recipient == "node01")
    with pytest.raises(IntegrityError):
        clients["node01"].masked_input(ShareDelivery((to_01,)), np.zeros(4))
    assert len(shares01.shares) == 2


def test_server_rejects_bad_messages_without_aborting() -> None:
    config = make_config(3, 2, 5)
    server = SecAggServer(config)
    clients = {name: SecAggClient(name, config) for name in config.participants}
    ads = {name: c.advertise() for name, c in clients.items()}
    server.receive_advertise(ads["node00"])
    with pytest.raises(ProtocolError, match="already"):
        server.receive_advertise(ads["node00"])
    with pytest.raises(ProtocolError, match="not a participant"):
        server.receive_advertise(replace(ads["node01"], sender="mallory"))
    with pytest.raises(ProtocolError, match="32 bytes"):
        server.receive_advertise(replace(ads["node01"], mask_public_key=b"x"))
    server.receive_advertise(ads["node01"])
    server.receive_advertise(ads["node02"])
    roster = server.roster()
    shares = {name: c.share_keys(roster) for name, c in clients.items()}
    with pytest.raises(ProtocolError, match="exactly one"):
        server.receive_shares(replace(shares["node00"], shares=shares["node00"].shares[:1]))
    for msg in shares.values():
        server.receive_shares(msg)
    deliveries = server.deliveries()
    masked = clients["node00"].masked_input(deliveries["node00"], np.zeros(5))
    with pytest.raises(ProtocolError, match="bytes"):
        server.receive_masked(replace(masked, packed=masked.packed[:-1]))
    with pytest.raises(ProtocolError, match="did not share"):
        server.receive_masked(replace(masked, sender="mallory"))
    server.receive_masked(masked)
    assert server.stage is Stage.MASKED_INPUT


def test_config_validation() -> None:
    good = make_config(4, 3, 8)
    SecAggServer(good)
    with pytest.raises(ProtocolError, match="threshold"):
        SecAggServer(replace(good, threshold=2))  # 2t must exceed n
    with pytest.raises(ProtocolError, match="sorted"):
        SecAggServer(replace(good, participants=tuple(reversed(good.participants))))
    with pytest.raises(ProtocolError, match="nonce"):
        SecAggServer(replace(good, nonce=b"short"))
    with pytest.raises(ProtocolError, match="modulus too small"):
        SecAggServer(replace(good, modulus_bits=LEVEL_BITS + 2))
    with pytest.raises(ProtocolError, match="not a participant"):
        SecAggClient("stranger", good)


def test_repr_hides_secrets() -> None:
    config = make_config(3, 2, 4)
    client = SecAggClient("node00", config)
    ad = client.advertise()
    text = repr(client) + repr(SecAggServer(config))
    assert "node00" in text and ad.mask_public_key.hex() not in text
    assert client._self_seed.hex() not in text  # noqa: SLF001 - checking the secret does not leak


STAGES = [None, BEFORE_ADVERTISE, AFTER_ADVERTISE, AFTER_SHARE, AFTER_MASKED, AFTER_CONSISTENCY]


@st.composite
def round_scenarios(draw: st.DrawFn) -> tuple[RoundConfig, dict[str, str], int]:
    """Random n, k (classic or SecAgg+), t, vector length and a vanishing stage per node."""
    n = draw(st.integers(3, 9))
    k = draw(st.sampled_from([k for k in range(2, n) if not (k % 2 and n % 2)]))
    t = draw(st.integers((k + 1) // 2 + 1, k + 1))
    config = replace(make_config(n, t, draw(st.integers(1, 24))), degree=0 if k == n - 1 else k)
    stages = draw(st.lists(st.sampled_from(STAGES), min_size=n, max_size=n))
    drops = {name: stage for name, stage in zip(config.participants, stages) if stage}
    return config, drops, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(round_scenarios())
def test_property_exact_sum_or_abort(scenario: tuple[RoundConfig, dict[str, str], int]) -> None:
    """Any n, k, t and dropout pattern: the exact sum of exactly the masked inputs, or AbortRound."""
    config, drops, seed = scenario
    rng = np.random.default_rng(seed)
    vectors = {name: grid_vector(rng, config.vector_length) for name in config.participants}
    try:
        result, server = run_round(config, vectors, drops)
    except AbortRound:
        assert drops  # a round without dropouts always completes
        return
    masked = [n for n in config.participants if drops.get(n) not in (BEFORE_ADVERTISE, AFTER_ADVERTISE, AFTER_SHARE)]
    assert set(server.survivors) <= set(masked)  # a node may refuse on its own when its neighbours vanish
    assert np.array_equal(result, sum(vectors[name] for name in server.survivors))


def test_session_id_binds_config_and_keys_unambiguously() -> None:
    config = make_config(3, 2, 4)
    ads = [SecAggClient(name, config).advertise() for name in config.participants]
    sid = session_id(config, ads)
    assert len(sid) == 32
    assert session_id(config, list(reversed(ads))) == sid  # order of arrival does not matter
    variants = [
        replace(config, round=8),
        replace(config, threshold=3),
        replace(config, vector_length=5),
        replace(config, modulus_bits=config.modulus_bits + 1),
        replace(config, quantization=QuantizationSpec(0.5, LEVEL_BITS)),
        replace(config, nonce=random_bytes(32)),
        replace(config, degree=2),
    ]
    assert all(session_id(variant, ads) != sid for variant in variants)
    swapped = [replace(ads[0], channel_public_key=ads[0].mask_public_key, mask_public_key=ads[0].channel_public_key)]
    assert session_id(config, swapped + ads[1:]) != sid
    # Length prefixes keep field boundaries: ("ab", "c") and ("a", "bc") encode differently.
    assert session_id(replace(config, participants=("ab", "c")), []) != session_id(
        replace(config, participants=("a", "bc")), []
    )


def _plus_config(n: int, k: int, t: int, m: int) -> RoundConfig:
    return replace(make_config(n, t, m), degree=k)


def test_secagg_plus_shares_only_with_graph_neighbours() -> None:
    config = _plus_config(12, 4, 3, 50)
    _, _, deliveries = _through_share_keys(config)
    graph = {name: {share.sender for share in delivery.shares} for name, delivery in deliveries.items()}
    assert all(len(peers) == 4 and name not in peers for name, peers in graph.items())
    assert all(name in graph[peer] for name, peers in graph.items() for peer in peers)


def test_secagg_plus_exact_sum_with_dropouts_at_every_stage() -> None:
    config = _plus_config(12, 6, 4, 200)
    rng = np.random.default_rng(11)
    vectors = {name: grid_vector(rng, 200) for name in config.participants}
    drops = {"node02": AFTER_ADVERTISE, "node05": AFTER_SHARE, "node09": AFTER_MASKED}
    result, server = run_round(config, vectors, drops)
    assert "node05" not in server.survivors and "node09" in server.survivors
    assert np.array_equal(result, sum(vectors[n] for n in server.survivors))


def test_secagg_plus_clients_keep_one_sealing_key_per_neighbour() -> None:
    """A SecAgg+ round (n=8, k=4): the key a client keeps for each neighbour after ShareKeys is
    the one that neighbour keeps for it, distinct per pair; a bundle opens at its recipient and
    fails at another neighbour of its sender, who holds a key with the sender too."""
    config = _plus_config(8, 4, 3, 4)
    names = config.participants
    _, clients, deliveries = _through_share_keys(config)
    kept = {name: client._sealing for name, client in clients.items()}  # noqa: SLF001 - the cached keys
    graph = {name: {share.sender for share in deliveries[name].shares} for name in names}
    pair_keys = set()
    for name in names:
        assert set(kept[name]) == graph[name] and len(graph[name]) == 4
        for peer in graph[name]:
            assert kept[name][peer] == kept[peer][name]
            pair_keys.add(kept[name][peer])
    assert len(pair_keys) == 8 * 4 // 2

    sender = "node00"
    recipient, other = sorted(graph[sender])[:2]
    bundle = next(share for share in deliveries[recipient].shares if share.sender == sender)
    clients[recipient].masked_input(deliveries[recipient], np.zeros(4))
    assert sender in clients[recipient].u2
    with pytest.raises(IntegrityError):
        clients[other].masked_input(ShareDelivery((replace(bundle, recipient=other),)), np.zeros(4))


def test_secagg_plus_threshold_is_per_neighbourhood() -> None:
    good = _plus_config(12, 4, 3, 8)
    SecAggServer(good)
    with pytest.raises(ProtocolError, match="k\\+1=5"):
        SecAggServer(replace(good, threshold=2))  # 2t must exceed k+1 = 5
    with pytest.raises(ProtocolError, match="even n"):
        SecAggServer(replace(make_config(11, 6, 8), degree=3))


def _secrets(client: SecAggClient) -> dict[str, object]:
    return {
        "channel key": client._channel_private,  # noqa: SLF001 - checking what the client still holds
        "mask key": client._mask_private,  # noqa: SLF001
        "self-mask seed": client._self_seed,  # noqa: SLF001
        "sealing keys": client._sealing,  # noqa: SLF001
        "held shares": client._held,  # noqa: SLF001
    }


def test_keys_and_seed_are_dropped_once_masked_and_everything_on_abort() -> None:
    """After MaskedInput only the held shares are needed (for Unmask); an aborted client keeps nothing."""
    config = make_config(3, 2, 4)
    server, clients, deliveries = _through_share_keys(config)
    masked = clients["node00"].masked_input(deliveries["node00"], np.zeros(4))
    server.receive_masked(masked)
    left = {name: bool(value) for name, value in _secrets(clients["node00"]).items()}
    assert left == {"channel key": False, "mask key": False, "self-mask seed": False, "sealing keys": False, "held shares": True}

    flipped = bytearray(deliveries["node01"].shares[0].ciphertext)
    flipped[20] ^= 1
    first = replace(deliveries["node01"].shares[0], ciphertext=bytes(flipped))
    with pytest.raises(IntegrityError):
        clients["node01"].masked_input(ShareDelivery((first,) + deliveries["node01"].shares[1:]), np.zeros(4))
    assert not any(_secrets(clients["node01"]).values())
