"""Issue 3 item 7: a malicious aggregator or a bad node, with signed keys and survivor sets.

Every attack must be refused with a specific error, the refusing node must reveal no share,
and a bad node must only drop itself while the honest nodes' round completes exactly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_secagg_round import grid_vector, make_config

from fedsa_secure.crypto import TrustAnchor, generate_keypair, pki
from fedsa_secure.errors import AbortRound, IntegrityError, ProtocolError
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.identity import Credentials
from fedsa_secure.secagg.messages import ConsistencyCheckRequest, Roster, RoundConfig, UnmaskRequest
from fedsa_secure.secagg.server import SecAggServer
from fedsa_secure.secagg.stages import Stage

NAMES = tuple(f"node{i:02d}" for i in range(5))


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes, bytes]]:
    """(ca, cert, key) PEM for every node, plus 'outsider' certified by another CA as node01."""
    root = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = pki.create_ca(root / "ca")
    ca = ca_cert.read_bytes()
    files = {}
    for name in NAMES:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name, root / name)
        files[name] = (ca, cert.read_bytes(), Path(key).read_bytes())
    other_cert, other_key = pki.create_ca(root / "other", name="other-ca")
    cert, key = pki.issue_certificate(other_cert, other_key, "node01", root / "outsider")
    files["outsider"] = (ca, cert.read_bytes(), Path(key).read_bytes())
    return files


def signed_round(pem: dict[str, tuple[bytes, bytes, bytes]], config: RoundConfig) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    server = SecAggServer(config, TrustAnchor(pem[NAMES[0]][0]))
    clients = {name: SecAggClient(name, config, Credentials.from_pem(*pem[name])) for name in config.participants}
    return server, clients


def advertised(server: SecAggServer, clients: dict[str, SecAggClient]) -> Roster:
    for client in clients.values():
        server.receive_advertise(client.advertise())
    return server.roster()


def through_masked(
    server: SecAggServer, clients: dict[str, SecAggClient], vectors: dict[str, np.ndarray]
) -> ConsistencyCheckRequest:
    roster = advertised(server, clients)
    for client in clients.values():
        server.receive_shares(client.share_keys(roster))
    deliveries = server.deliveries()
    for name, client in clients.items():
        server.receive_masked(client.masked_input(deliveries[name], vectors[name]))
    return server.consistency_request()


def vectors_for(config: RoundConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: grid_vector(rng, config.vector_length) for name in config.participants}


def test_signed_round_sums_exactly(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    config = make_config(5, 3, 64)
    vectors = vectors_for(config, 1)
    server, clients = signed_round(pem, config)
    check = through_masked(server, clients, vectors)
    for client in clients.values():
        server.receive_consistency(client.consistency_check(check))
    request = server.unmask_request()
    assert [signer for signer, _ in request.signatures] == list(NAMES)
    for client in clients.values():
        server.receive_unmask(client.unmask(request))
    assert np.array_equal(server.finish(), sum(vectors.values()))


def test_substituted_public_key_refused(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    config = make_config(5, 3, 8)
    server, clients = signed_round(pem, config)
    roster = advertised(server, clients)
    forged = tuple(
        replace(ad, mask_public_key=generate_keypair()[1]) if ad.sender == "node02" else ad for ad in roster.advertisements
    )
    with pytest.raises(IntegrityError, match="signature by 'node02' does not verify"):
        clients["node01"].share_keys(Roster(forged))
    assert clients["node01"].stage is Stage.ABORTED  # no shares were sealed to the fake key


def test_unsigned_or_foreign_certificate_refused(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    config = make_config(5, 3, 8)
    server, clients = signed_round(pem, config)
    roster = advertised(server, clients)
    unsigned = tuple(replace(ad, signature=b"") if ad.sender == "node03" else ad for ad in roster.advertisements)
    with pytest.raises(IntegrityError, match="not signed"):
        clients["node00"].share_keys(Roster(unsigned))
    # Keys signed by a key certified as 'node01' by some other CA: the aggregator's own keys.
    outsider = SecAggClient("node01", config, Credentials.from_pem(*pem["outsider"])).advertise()
    swapped = tuple(outsider if ad.sender == "node01" else ad for ad in roster.advertisements)
    with pytest.raises(IntegrityError, match="not from the federation CA"):
        clients["node02"].share_keys(Roster(swapped))
    # The server, holding the CA too, drops such a message and keeps the round going.
    fresh, _ = signed_round(pem, config)
    with pytest.raises(IntegrityError, match="not from the federation CA"):
        fresh.receive_advertise(outsider)
    assert fresh.stage is Stage.ADVERTISE_KEYS


def test_replayed_advertisement_from_earlier_round_refused(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    old = make_config(5, 3, 8)
    new = replace(old, round=old.round + 1)
    old_ad = SecAggClient("node03", old, Credentials.from_pem(*pem["node03"])).advertise()
    server, clients = signed_round(pem, new)
    with pytest.raises(IntegrityError, match="signature by 'node03' does not verify"):
        server.receive_advertise(old_ad)
    roster = advertised(server, clients)
    replayed = tuple(old_ad if ad.sender == "node03" else ad for ad in roster.advertisements)
    with pytest.raises(IntegrityError, match="does not verify"):
        clients["node00"].share_keys(Roster(replayed))


def test_replayed_unmask_request_from_earlier_round_refused(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    config = make_config(5, 3, 8)
    vectors = vectors_for(config, 2)
    old_server, old_clients = signed_round(pem, config)
    check = through_masked(old_server, old_clients, vectors)
    for client in old_clients.values():
        old_server.receive_consistency(client.consistency_check(check))
    old_request = old_server.unmask_request()
    # Same config even (a lying aggregator reusing the nonce): new keys give a new session id.
    server, clients = signed_round(pem, config)
    check = through_masked(server, clients, vectors)
    victim = clients["node00"]
    victim.consistency_check(check)
    with pytest.raises(IntegrityError, match="does not verify"):
        victim.unmask(old_request)
    assert victim.stage is Stage.ABORTED


def test_split_view_of_survivors_cannot_reveal_both_shares(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    """The aggregator tells nodes 0-1 that everyone survived and nodes 2-3 that node04 dropped,
    hoping for node04's self-mask share from the first group and its mask-key share from the second."""
    config = make_config(5, 3, 8)
    vectors = vectors_for(config, 3)
    server, clients = signed_round(pem, config)
    everyone = through_masked(server, clients, vectors)
    without_4 = ConsistencyCheckRequest(tuple(n for n in NAMES if n != "node04"))
    sig_all = {n: clients[n].consistency_check(everyone).signature for n in ("node00", "node01")}
    sig_wo4 = {n: clients[n].consistency_check(without_4).signature for n in ("node02", "node03")}
    # Only 2 < t signatures for either view.
    with pytest.raises(ProtocolError, match="only 2 survivors signed"):
        clients["node00"].unmask(UnmaskRequest(everyone.survivors, (), tuple(sorted(sig_all.items()))))
    # Passing the other group's signatures off as signatures of this view fails verification.
    mixed = tuple(sorted((sig_all | sig_wo4).items()))
    with pytest.raises(IntegrityError, match="does not verify"):
        clients["node02"].unmask(UnmaskRequest(without_4.survivors, ("node04",), mixed))
    # The alive and dead lists overlapping in one request is refused outright.
    with pytest.raises(ProtocolError, match="differs from the one this node signed"):
        clients["node03"].unmask(UnmaskRequest(everyone.survivors, ("node04",), mixed))
    assert all(clients[n].stage is Stage.ABORTED for n in ("node00", "node02", "node03"))


def test_bad_messages_drop_only_their_sender(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    """A wrong-length upload and a bad survivor signature each drop only their sender."""
    config = make_config(5, 3, 32)
    vectors = vectors_for(config, 4)
    server, clients = signed_round(pem, config)
    roster = advertised(server, clients)
    for client in clients.values():
        server.receive_shares(client.share_keys(roster))
    deliveries = server.deliveries()
    masked = {name: c.masked_input(deliveries[name], vectors[name]) for name, c in clients.items()}
    with pytest.raises(ProtocolError, match="packed vector has"):
        server.receive_masked(replace(masked["node04"], packed=masked["node04"].packed + b"\0"))
    for name in NAMES[:4]:
        server.receive_masked(masked[name])
    check = server.consistency_request()
    assert check.survivors == NAMES[:4]
    responses = {name: clients[name].consistency_check(check) for name in NAMES[:4]}
    with pytest.raises(IntegrityError, match="does not verify"):
        server.receive_consistency(replace(responses["node03"], signature=responses["node02"].signature))
    for name in NAMES[:3]:
        server.receive_consistency(responses[name])
    request = server.unmask_request()
    assert [s for s, _ in request.signatures] == list(NAMES[:3])
    for name in NAMES[:3]:
        server.receive_unmask(clients[name].unmask(request))
    assert np.array_equal(server.finish(), sum(vectors[n] for n in NAMES[:4]))


@pytest.mark.parametrize(
    ("kind", "survivors"),
    [
        ("self_mask_shares", NAMES),  # t+2 holders: the parity check pins down the liar
        ("mask_key_shares", NAMES[:4]),  # node04 dropped; t+1 holders and its public key suffice
    ],
)
def test_tampered_unmask_share_drops_its_sender(
    pem: dict[str, tuple[bytes, bytes, bytes]], kind: str, survivors: tuple[str, ...]
) -> None:
    config = make_config(5, 3, 32)
    vectors = vectors_for(config, 5)
    server, clients = signed_round(pem, config)
    roster = advertised(server, clients)
    for client in clients.values():
        server.receive_shares(client.share_keys(roster))
    deliveries = server.deliveries()
    for name in survivors:
        server.receive_masked(clients[name].masked_input(deliveries[name], vectors[name]))
    check = server.consistency_request()
    for name in survivors:
        server.receive_consistency(clients[name].consistency_check(check))
    request = server.unmask_request()
    answers = {name: clients[name].unmask(request) for name in survivors}
    shares = getattr(answers["node01"], kind)
    owner, share = shares[0]
    tampered = ((owner, share[:-1] + bytes([share[-1] ^ 1])),) + shares[1:]
    server.receive_unmask(replace(answers["node01"], **{kind: tampered}))
    for name in survivors:
        if name != "node01":
            server.receive_unmask(answers[name])
    result = server.finish()
    assert list(server.rejected) == ["node01"] and owner in server.rejected["node01"]
    assert np.array_equal(result, sum(vectors[n] for n in survivors))


def test_tampered_share_without_redundancy_aborts_cleanly(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    """t+1 holders of a self-mask seed and one bad share: the liar cannot be told apart, so abort."""
    config = make_config(5, 3, 8)
    vectors = vectors_for(config, 6)
    server, clients = signed_round(pem, config)
    check = through_masked(server, clients, vectors)
    for client in clients.values():
        server.receive_consistency(client.consistency_check(check))
    request = server.unmask_request()
    answers = [clients[name].unmask(request) for name in NAMES[:4]]  # node04 vanished after signing
    owner, share = answers[0].self_mask_shares[0]
    answers[0] = replace(answers[0], self_mask_shares=((owner, share[:-1] + bytes([share[-1] ^ 1])),) + answers[0].self_mask_shares[1:])
    for answer in answers:
        server.receive_unmask(answer)
    with pytest.raises(AbortRound, match="no single responder"):
        server.finish()
    assert server.stage is Stage.ABORTED


def test_credentials_repr_hides_the_key(pem: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    credentials = Credentials.from_pem(*pem["node00"])
    assert repr(credentials) == "Credentials(<signing key>)"
    assert "PRIVATE" not in repr(SecAggClient("node00", make_config(5, 3, 4), credentials))
