"""One certified node cannot stall or exhaust the aggregator: uploads in flight, their size and time, held polls,
and answers to other rounds are bounded per node, while the other nodes are served."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from fedsa_secure import messages as m
from fedsa_secure.crypto import pki
from fedsa_secure.proto import federation_pb2 as pb
from fedsa_secure.proto import federation_pb2_grpc as pb_grpc
from fedsa_secure.transport import chunks
from fedsa_secure.transport.client import AggregatorClient
from fedsa_secure.transport.serde import encode_client
from fedsa_secure.transport.server import FederationServer, Limits
from fedsa_secure.transport.tls import TlsFiles

NODES = ("node-1", "node-2")
LIMITS = Limits(uploads=2, upload_bytes=3 << 20, upload_seconds=1.5, held_polls=1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, dict[str, TlsFiles]]:
    root = tmp_path_factory.mktemp("limits")
    ca, ca_key = pki.create_ca(root / "ca")
    server = TlsFiles(ca, *pki.issue_certificate(ca, ca_key, "aggregator", root / "agg", hosts=["127.0.0.1"], role=pki.AGGREGATOR))
    return server, {n: TlsFiles(ca, *pki.issue_certificate(ca, ca_key, n, root / n)) for n in NODES}


@pytest.fixture
def server(keys) -> Iterator[tuple[FederationServer, str]]:
    srv = FederationServer("127.0.0.1:0", keys[0], allowed_nodes=NODES, limits=LIMITS)
    port = srv.start()
    try:
        yield srv, f"127.0.0.1:{port}"
    finally:
        srv.stop(grace=0)


def raw_stub(address: str, tls: TlsFiles) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
    ca, cert, key = tls.load()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "aggregator")])
    return channel, pb_grpc.FederationStub(channel)


def stalled(stop: threading.Event) -> Iterator[pb.Chunk]:
    """An upload that opens and then sends nothing until told to stop."""
    stop.wait(30)
    return
    yield  # a generator


def test_stalled_uploads_are_bounded_per_node_and_cut_after_their_time(server, keys) -> None:
    srv, address = server
    channel, stub = raw_stub(address, keys[1]["node-1"])
    stop = threading.Event()
    outcomes: list[grpc.StatusCode] = []

    def hold() -> None:
        try:
            stub.Send(stalled(stop), timeout=20)
        except grpc.RpcError as err:
            outcomes.append(err.code())

    holders = [threading.Thread(target=hold) for _ in range(4)]  # twice its allowance
    started = time.monotonic()
    for t in holders:
        t.start()
    time.sleep(0.5)
    with AggregatorClient(address, keys[1]["node-2"], rpc_timeout=10, server_name="aggregator") as other:
        other.send(m.SelectReply(round=0, transferability=1.0))  # served while node-1 holds what it may
        assert srv.collect(["node-2"], m.SelectReply, timeout=5) == {"node-2": m.SelectReply(0, 1.0)}
    for t in holders:
        t.join(20)
    stop.set()
    channel.close()
    assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2  # beyond two in flight: refused at once
    cut = [o for o in outcomes if o != grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(cut) == 2 and set(cut) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    assert time.monotonic() - started < 15  # the two it held were cut after upload_seconds, not the client's 20 s


def test_an_oversized_or_shredded_upload_is_refused_and_the_node_can_send_again(server, keys) -> None:
    srv, address = server
    channel, stub = raw_stub(address, keys[1]["node-1"])
    try:
        big = encode_client(m.Decline(round=0, reason="x" * (4 << 20)))
        with pytest.raises(grpc.RpcError) as too_big:
            stub.Send(chunks.split(big), timeout=10)
        assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "3 MiB limit" in too_big.value.details()
        with pytest.raises(grpc.RpcError) as shredded:
            stub.Send(iter([pb.Chunk(data=b"")] * 100_000), timeout=10)
        assert shredded.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than 5 chunks" in shredded.value.details()
        stub.Send(chunks.split(encode_client(m.Decline(round=0, reason="fine"))), timeout=10)
    finally:
        channel.close()
    assert srv.collect(["node-1"], m.Decline, timeout=2) == {"node-1": m.Decline(0, "fine")}


def test_answers_to_rounds_other_than_the_current_one_are_not_kept(server, keys) -> None:
    srv, address = server
    srv.begin_round(3)
    with AggregatorClient(address, keys[1]["node-1"], rpc_timeout=10, server_name="aggregator") as node:
        node.send(m.SelectReply(round=999, transferability=0.5), round=999)  # a future round: dropped on arrival
        node.send(m.SelectReply(round=2, transferability=0.5), round=2)  # a past one: dropped too
        node.send(m.SelectReply(round=3, transferability=0.7), round=3)
        for i in range(40):  # more than a node may have waiting
            node.send(m.Decline(round=3, reason=str(i)), round=3)
    assert srv.collect(["node-1"], m.SelectReply, timeout=1, round=3) == {"node-1": m.SelectReply(3, 0.7)}
    declines = [srv.collect(["node-1"], m.Decline, timeout=0.1, round=3) for _ in range(40)]
    assert sum(bool(d) for d in declines) == 31  # 32 waiting at most, the select reply among them


def test_one_node_holds_one_poll_at_a_time(server, keys) -> None:
    srv, address = server
    clients = [AggregatorClient(address, keys[1]["node-1"], rpc_timeout=10, server_name="aggregator") for _ in range(3)]
    try:
        durations = []

        def poll(client: AggregatorClient) -> None:
            started = time.monotonic()
            assert isinstance(client.poll(wait=3.0), m.Wait)
            durations.append(time.monotonic() - started)

        threads = [threading.Thread(target=poll, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    finally:
        for c in clients:
            c.close()
    assert sorted(durations)[-1] >= 2.5 and sorted(durations)[0] < 1.5  # one held; the others answered at once

