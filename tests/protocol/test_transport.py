"""Real gRPC over mutual TLS on 127.0.0.1: chunked delivery, identity from the certificate, refusals, inbox rules."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedsa_secure import messages as m
from fedsa_secure.crypto import pki
from fedsa_secure.errors import TransportError
from fedsa_secure.proto import federation_pb2 as pb
from fedsa_secure.proto import federation_pb2_grpc as pb_grpc
from fedsa_secure.secagg import messages as sa
from fedsa_secure.transport.client import AggregatorClient
from fedsa_secure.transport.server import FederationServer
from fedsa_secure.transport.tls import TlsFiles

NODES = ("node-1", "node-2")
BIG = 5 * 1024 * 1024 + 17  # > gRPC's 4 MiB message limit, not a multiple of the chunk size


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: TlsFiles
    nodes: dict[str, TlsFiles]
    outsider: TlsFiles  # valid federation cert, CN not allowed
    rogue: TlsFiles  # CN node-1 but issued by another CA; trusts the federation CA to reach the server


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, ca_key = pki.create_ca(root / "ca")
    server = TlsFiles(ca, *pki.issue_certificate(ca, ca_key, "aggregator", root / "agg", hosts=["127.0.0.1", "localhost"],
                                                 role=pki.AGGREGATOR))
    nodes = {name: TlsFiles(ca, *pki.issue_certificate(ca, ca_key, name, root / name)) for name in NODES}
    outsider = TlsFiles(ca, *pki.issue_certificate(ca, ca_key, "mallory", root / "mallory"))
    rogue_ca, rogue_ca_key = pki.create_ca(root / "rogue-ca", name="rogue-ca")
    bundle = root / "rogue-bundle.pem"  # rogue CA first (so local checks pass), federation CA second
    bundle.write_bytes(rogue_ca.read_bytes() + ca.read_bytes())
    rogue = TlsFiles(bundle, *pki.issue_certificate(rogue_ca, rogue_ca_key, "node-1", root / "rogue"))
    return Pki(ca, server, nodes, outsider, rogue)


@pytest.fixture
def server(keys: Pki) -> Iterator[tuple[FederationServer, str]]:
    srv = FederationServer("127.0.0.1:0", keys.server, allowed_nodes=NODES)
    port = srv.start()
    try:
        yield srv, f"127.0.0.1:{port}"
    finally:
        srv.stop(grace=0)


def connect(address: str, tls: TlsFiles, **kwargs: object) -> AggregatorClient:
    return AggregatorClient(address, tls, rpc_timeout=10.0, **kwargs)  # type: ignore[arg-type]


def assert_same(a: object, b: object) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and (a.dtype, a.shape) == (b.dtype, b.shape)
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b)
        for name in a.__dataclass_fields__:  # type: ignore[attr-defined]
            assert_same(getattr(a, name), getattr(b, name))
    else:
        assert a == b


def server_messages(rng: np.random.Generator) -> list[m.ServerMessage]:
    config = sa.RoundConfig(
        round=1,
        participants=NODES,
        threshold=2,
        vector_length=BIG // 4,
        quantization=sa.QuantizationSpec(clip=1.0, level_bits=16),
        modulus_bits=32,
        nonce=rng.bytes(32),
    )
    share = sa.EncryptedShare(sender="node-2", recipient="node-1", ciphertext=rng.bytes(200))
    return [
        m.SelectRequest(
            round=1,
            probe_images=rng.standard_normal((2, 3, 512, 512), dtype=np.float32),  # 6 MiB
            student_maps=rng.random((2, 7, 7), dtype=np.float32),
            student=m.StudentArchitecture("cnn", 10, rng.bytes(32)),
        ),
        m.TrainRequest(
            round=1,
            student_state={
                "conv.weight": rng.standard_normal(BIG // 4, dtype=np.float32).reshape(-1, 1),
                "fc.bias": rng.standard_normal(10).astype(np.float32),
                "bn.num_batches_tracked": np.array(5, dtype=np.int64),
            },
            secagg=config,
        ),
        sa.Roster(
            advertisements=tuple(
                sa.AdvertiseKeys(sender=n, channel_public_key=rng.bytes(32), mask_public_key=rng.bytes(32)) for n in NODES
            )
        ),
        sa.ShareDelivery(shares=(share,)),
        sa.UnmaskRequest(survivors=("node-1",), dropped=("node-2",)),
        m.Shutdown(reason="done"),
    ]


def client_messages(rng: np.random.Generator) -> list[m.ClientMessage]:
    share = sa.EncryptedShare(sender="node-1", recipient="node-2", ciphertext=rng.bytes(200))
    return [
        m.SelectReply(round=1, transferability=0.625),
        m.Decline(round=1, reason="budget exhausted"),
        m.PrivacyStatus(round=1, epsilon=1.5, delta=1e-5, target_epsilon=8.0, rounds_trained=1,
                        fits_next_round=True, ledger_entries=1, ledger_head="ab" * 32),
        sa.AdvertiseKeys(sender="node-1", channel_public_key=rng.bytes(32), mask_public_key=rng.bytes(32)),
        sa.ShareKeys(sender="node-1", shares=(share,)),
        sa.MaskedInput(sender="node-1", packed=rng.bytes(BIG)),
        sa.UnmaskResponse(sender="node-1", self_mask_shares=(("node-1", b"b"),), mask_key_shares=(("node-2", b"s"),)),
    ]


def test_every_message_kind_crosses_in_chunks_exactly(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    rng = np.random.default_rng(1)
    outgoing = server_messages(rng)
    with connect(address, keys.nodes["node-1"]) as node:
        for msg in outgoing:
            srv.send("node-1", msg)
        for expected in outgoing:  # delivered in order
            assert_same(expected, node.poll(wait=2.0))
        assert node.poll(wait=0.1) == m.Wait()

        uploads = client_messages(rng)
        for msg in uploads:
            node.send(msg)
        for msg in uploads:
            got = srv.collect(["node-1"], type(msg), timeout=5.0)
            assert list(got) == ["node-1"]
            assert_same(msg, got["node-1"])


def test_identity_is_the_certificate_common_name(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    assert srv.seen() == set()
    with connect(address, keys.nodes["node-2"]) as node:
        assert node.name == "node-2"
        assert node.poll(wait=0) == m.Wait()
        node.send(m.SelectReply(round=1, transferability=0.5))
        assert srv.seen() == {"node-2"}
        assert srv.collect(NODES, m.SelectReply, timeout=0.5) == {"node-2": m.SelectReply(round=1, transferability=0.5)}

        with pytest.raises(TransportError, match="a node may only send as itself") as info:
            node.send(sa.MaskedInput(sender="node-1", packed=b"forged"))
        assert "node-2" in str(info.value)
        forged_share = sa.EncryptedShare(sender="node-1", recipient="node-2", ciphertext=b"x")
        with pytest.raises(TransportError, match="a node may only send as itself"):
            node.send(sa.ShareKeys(sender="node-2", shares=(forged_share,)))
    assert srv.collect(["node-1", "node-2"], (sa.MaskedInput, sa.ShareKeys), timeout=0.2) == {}


def test_certificate_from_another_ca_is_refused_and_server_keeps_serving(
    server: tuple[FederationServer, str], keys: Pki
) -> None:
    srv, address = server
    with connect(address, keys.rogue, reconnect_for=0.1, retry_backoff=0.05) as rogue:
        with pytest.raises(TransportError, match="cannot reach aggregator|TLS handshake") as info:
            rogue.poll(wait=0)
    assert address in str(info.value) and "certificate" in str(info.value)
    assert srv.seen() == set()

    srv.send("node-1", m.Shutdown(reason="still here"))
    with connect(address, keys.nodes["node-1"]) as good:
        assert good.poll(wait=1.0) == m.Shutdown(reason="still here")


def test_client_that_does_not_trust_the_server_gets_a_tls_hint(server: tuple[FederationServer, str], keys: Pki) -> None:
    _, address = server
    untrusting = TlsFiles(keys.rogue.ca_cert.parent / "rogue-ca" / "ca.pem", keys.rogue.cert, keys.rogue.key)
    with connect(address, untrusting, reconnect_for=0) as client:
        with pytest.raises(TransportError, match="TLS handshake .* failed.*federation CA"):
            client.poll(wait=0)


def test_node_not_in_the_federation_is_denied_by_name(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    with connect(address, keys.outsider) as outsider:
        with pytest.raises(TransportError, match="refused node 'mallory'") as info:
            outsider.poll(wait=0)
        assert "node-1, node-2" in str(info.value)
        with pytest.raises(TransportError, match="mallory"):
            outsider.send(m.SelectReply(round=1, transferability=1.0))
    assert srv.seen() == set()


def test_collect_returns_only_nodes_that_answered_in_time(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    with connect(address, keys.nodes["node-1"]) as node1:
        node1.send(m.SelectReply(round=2, transferability=0.25))
        start = time.monotonic()
        got = srv.collect(NODES, m.SelectReply, timeout=0.5)
        elapsed = time.monotonic() - start
    assert got == {"node-1": m.SelectReply(round=2, transferability=0.25)}
    assert 0.45 <= elapsed < 2.0


def test_collect_wakes_as_soon_as_everyone_answered(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    clients = {n: connect(address, keys.nodes[n]) for n in NODES}
    try:
        def answer(name: str, delay: float) -> None:
            time.sleep(delay)
            clients[name].send(m.Decline(round=3, reason=name))

        threads = [threading.Thread(target=answer, args=(n, 0.1 * i)) for i, n in enumerate(NODES)]
        start = time.monotonic()
        for t in threads:
            t.start()
        got = srv.collect(NODES, m.Decline, timeout=10.0)
        for t in threads:
            t.join()
    finally:
        for c in clients.values():
            c.close()
    assert got == {n: m.Decline(round=3, reason=n) for n in NODES}
    assert time.monotonic() - start < 5.0


def test_messages_of_unexpected_type_stay_queued(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    status = m.PrivacyStatus(round=1, epsilon=0.5, delta=1e-5, target_epsilon=8.0, rounds_trained=1,
                             fits_next_round=True, ledger_entries=1, ledger_head="cd" * 32)
    with connect(address, keys.nodes["node-1"]) as node:
        node.send(status)
        node.send(m.SelectReply(round=1, transferability=0.75))
        node.send(m.SelectReply(round=2, transferability=0.5))
    assert srv.collect(["node-1"], m.SelectReply, timeout=1.0) == {"node-1": m.SelectReply(round=1, transferability=0.75)}
    assert srv.collect(["node-1"], m.PrivacyStatus, timeout=1.0) == {"node-1": status}
    assert srv.collect(["node-1"], (m.Decline, m.SelectReply), timeout=1.0) == {
        "node-1": m.SelectReply(round=2, transferability=0.5)
    }
    assert srv.collect(["node-1"], m.SelectReply, timeout=0.1) == {}


def test_late_answers_to_an_earlier_round_are_discarded(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    late = m.SelectReply(round=1, transferability=0.9)
    fresh = m.SelectReply(round=2, transferability=0.4)
    with connect(address, keys.nodes["node-1"]) as node:
        node.send(late, round=1)
        node.send(fresh, round=2)
        node.send(m.SelectReply(round=3, transferability=0.1), round=3)
    assert srv.collect(["node-1"], m.SelectReply, timeout=1.0, round=2) == {"node-1": fresh}
    # The round-1 answer is gone for good; the round-3 one waits for its round.
    assert srv.collect(["node-1"], m.SelectReply, timeout=0.1, round=2) == {}
    assert srv.collect(["node-1"], m.SelectReply, timeout=1.0, round=3)["node-1"].round == 3


def test_poll_is_held_until_work_arrives(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    with connect(address, keys.nodes["node-1"]) as node:
        start = time.monotonic()
        assert node.poll(wait=0.5) == m.Wait()
        assert 0.4 <= time.monotonic() - start < 3.0

        timer = threading.Timer(0.2, srv.send, args=("node-1", m.Shutdown(reason="wake")))
        timer.start()
        start = time.monotonic()
        assert node.poll(wait=8.0) == m.Shutdown(reason="wake")
        assert time.monotonic() - start < 3.0
        timer.join()


def test_wait_for_reports_who_polled(server: tuple[FederationServer, str], keys: Pki) -> None:
    srv, address = server
    with connect(address, keys.nodes["node-1"]) as node:
        timer = threading.Timer(0.1, node.poll, kwargs={"wait": 0})
        timer.start()
        assert srv.wait_for(["node-1"], timeout=5.0) == {"node-1"}
        timer.join()
        start = time.monotonic()
        assert srv.wait_for(NODES, timeout=0.3) == {"node-1"}
        assert time.monotonic() - start >= 0.25


def test_unacknowledged_message_is_redelivered_to_a_reconnecting_node(
    server: tuple[FederationServer, str], keys: Pki
) -> None:
    srv, address = server
    srv.send("node-1", m.Shutdown(reason="first"))
    srv.send("node-1", m.Shutdown(reason="second"))
    with connect(address, keys.nodes["node-1"]) as crashed:
        assert crashed.poll(wait=0) == m.Shutdown(reason="first")  # received but never acknowledged
    with connect(address, keys.nodes["node-1"]) as restarted:
        assert restarted.poll(wait=0) == m.Shutdown(reason="first")
        assert restarted.poll(wait=0) == m.Shutdown(reason="second")  # acknowledges "first"
        assert restarted.poll(wait=0) == m.Wait()  # acknowledges "second"
        assert restarted.poll(wait=0) == m.Wait()


def test_malformed_upload_is_invalid_argument_and_server_keeps_serving(
    server: tuple[FederationServer, str], keys: Pki
) -> None:
    srv, address = server
    ca, cert, key = keys.nodes["node-1"].load()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(address, credentials) as channel:
        stub = pb_grpc.FederationStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Send(iter([pb.Chunk(data=b"\xff\xff\xff not protobuf")]), timeout=5.0)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed upload from node 'node-1'" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Send(iter([]), timeout=5.0)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with connect(address, keys.nodes["node-1"]) as node:
        node.send(m.SelectReply(round=9, transferability=0.0))
    assert srv.collect(["node-1"], m.SelectReply, timeout=1.0) == {"node-1": m.SelectReply(round=9, transferability=0.0)}


def test_unreachable_aggregator_is_reported_after_bounded_retries(keys: Pki) -> None:
    srv = FederationServer("127.0.0.1:0", keys.server)
    port = srv.start()
    srv.stop(grace=0)  # the port is now known to be closed
    with connect(f"127.0.0.1:{port}", keys.nodes["node-1"], reconnect_for=0.5, retry_backoff=0.05) as node:
        start = time.monotonic()
        with pytest.raises(TransportError, match=f"cannot reach aggregator at 127.0.0.1:{port}: is it running"):
            node.poll(wait=0)
        assert 0.3 <= time.monotonic() - start < 5.0  # backoffs of 0.05, 0.1 and 0.2 s fit in 0.5 s, the next does not


def test_server_refuses_to_queue_for_unknown_nodes_or_wrong_direction(server: tuple[FederationServer, str]) -> None:
    srv, _ = server
    with pytest.raises(ValueError, match="not among the allowed nodes"):
        srv.send("mallory", m.Wait())
    with pytest.raises(TypeError):
        srv.send("node-1", m.SelectReply(round=1, transferability=0.0))  # type: ignore[arg-type]


def test_second_server_on_a_busy_port_fails_clearly(server: tuple[FederationServer, str], keys: Pki) -> None:
    _, address = server
    with pytest.raises(TransportError, match=f"cannot listen on {address}"):
        FederationServer(address, keys.server).start()
