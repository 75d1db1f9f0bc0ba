"""How many X25519 agreements a round performs, counted through spies on the real functions.

What the code intends (secagg/sealing.py, secagg/masks.py): in ShareKeys a client agrees once
per neighbour that advertised keys, with its channel key, and keeps the resulting sealing key;
in MaskedInput it opens its neighbours' bundles with those kept keys (no agreement) and agrees
once per other member of its U2 with its mask key for the pairwise masks. So a client with k
neighbours that all stay performs k agreements for sealing plus k for masking, 2k in all, where
deriving the sealing key afresh for opening would take 3k. The server agrees once per surviving
neighbour of each node dropped after ShareKeys, and not at all without dropouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import pytest

from fedsa_secure.crypto import agreement, random_bytes
from fedsa_secure.secagg import masks, sealing
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.graph import neighbours
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig
from fedsa_secure.secagg.server import SecAggServer
from fedsa_secure.secagg.session import session_id

T = TypeVar("T")


class Agreements:
    """Spies on the `shared_secrets` that secagg's sealing and masks modules look up, and on the
    X25519 exchange inside crypto.agreement; each passes through to the real function."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, bytes, tuple[bytes, ...]]] = []  # (module, private key, peer publics)
        self.exchanges = 0
        for module in (sealing, masks):
            monkeypatch.setattr(module, "shared_secrets", self._spy(module.__name__.rsplit(".", 1)[1]))
        exchange = agreement._exchange  # noqa: SLF001 - counting every X25519 the crypto layer does

        def counted(own: object, peer_public: bytes) -> bytes:
            self.exchanges += 1
            return exchange(own, peer_public)  # type: ignore[arg-type]

        monkeypatch.setattr(agreement, "_exchange", counted)

    def _spy(self, module: str) -> Callable[[bytes, Sequence[bytes]], list[bytes]]:
        original = agreement.shared_secrets

        def shared_secrets(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
            self.calls.append((module, private, tuple(peer_publics)))
            return original(private, peer_publics)

        return shared_secrets

    def during(self, action: Callable[[], T]) -> tuple[T, list[tuple[str, bytes, tuple[bytes, ...]]], int]:
        """Run `action`; its result, the secagg-level calls and the X25519 exchanges it made."""
        calls, exchanges = len(self.calls), self.exchanges
        result = action()
        return result, self.calls[calls:], self.exchanges - exchanges


def _config(n: int, degree: int) -> RoundConfig:
    size = (degree or n - 1) + 1
    return RoundConfig(
        5, tuple(f"node{i:02d}" for i in range(n)), size // 2 + 1, 64, QuantizationSpec(1.0, 8), 14,
        random_bytes(32), degree,
    )


@pytest.mark.parametrize(("n", "degree"), [(10, 4), (9, 6), (6, 0)])
def test_each_client_agrees_k_times_for_sealing_and_k_for_masking(
    n: int, degree: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(n, degree)
    k = degree or n - 1
    spy = Agreements(monkeypatch)
    server = SecAggServer(config)
    clients = {name: SecAggClient(name, config) for name in config.participants}
    ads = {}
    for name, client in clients.items():
        ads[name], calls, exchanges = spy.during(client.advertise)
        assert calls == [] and exchanges == 0
        server.receive_advertise(ads[name])
    roster = server.roster()
    for client in clients.values():
        shares, calls, exchanges = spy.during(lambda: client.share_keys(roster))
        peers = {share.recipient for share in shares.shares}
        assert len(peers) == k
        # One call, with the channel key, against exactly the neighbours' channel keys.
        assert [(module, len(publics)) for module, _, publics in calls] == [("sealing", k)]
        assert calls[0][1] == client._channel_private  # noqa: SLF001
        assert set(calls[0][2]) == {ads[peer].channel_public_key for peer in peers}
        assert exchanges == k
        server.receive_shares(shares)
    deliveries = server.deliveries()
    rng = np.random.default_rng(0)
    for name, client in clients.items():
        mask_private = client._mask_private  # noqa: SLF001
        masked, calls, exchanges = spy.during(lambda: client.masked_input(deliveries[name], rng.uniform(-1, 1, 64)))
        peers = {share.sender for share in deliveries[name].shares}
        assert len(peers) == k and client.u2 == peers | {name}
        # Opening k bundles reuses the kept keys: the only agreements are the k pairwise masks.
        assert [(module, len(publics)) for module, _, publics in calls] == [("masks", k)]
        assert calls[0][1] == mask_private
        assert set(calls[0][2]) == {ads[peer].mask_public_key for peer in peers}
        assert exchanges == k
        server.receive_masked(masked)
    check = server.consistency_request()
    for client in clients.values():
        server.receive_consistency(client.consistency_check(check))
    request = server.unmask_request()
    for client in clients.values():
        server.receive_unmask(client.unmask(request))
    _, calls, exchanges = spy.during(server.finish)
    assert calls == [] and exchanges == 0  # nobody dropped: only self masks to remove
    assert len(spy.calls) == 2 * n and spy.exchanges == 2 * k * n


def test_dropouts_change_the_counts_as_intended(monkeypatch: pytest.MonkeyPatch) -> None:
    """A neighbour gone after AdvertiseKeys still gets a sealed bundle (k agreements) but is
    missing from U2 (k-1 masking agreements); for a node gone after ShareKeys the server agrees
    once per neighbour of it that survived."""
    config = _config(10, 4)
    spy = Agreements(monkeypatch)
    server = SecAggServer(config)
    clients = {name: SecAggClient(name, config) for name in config.participants}
    for client in clients.values():
        server.receive_advertise(client.advertise())
    roster = server.roster()
    absent = "node03"  # vanishes after AdvertiseKeys
    sent = {}
    for name, client in clients.items():
        if name != absent:
            sent[name], _, exchanges = spy.during(lambda: client.share_keys(roster))
            assert exchanges == 4
            server.receive_shares(sent[name])
    deliveries = server.deliveries()
    graph = neighbours(config, session_id(config, roster.advertisements))
    gone = next(name for name in sorted(graph) if name != absent and absent not in graph[name])  # after ShareKeys
    for name, client in clients.items():
        if name in (absent, gone):
            continue
        masked, _, exchanges = spy.during(lambda: client.masked_input(deliveries[name], np.zeros(64)))
        assert exchanges == (3 if absent in graph[name] else 4) == len(client.u2) - 1
        server.receive_masked(masked)
    check = server.consistency_request()
    for name in check.survivors:
        server.receive_consistency(clients[name].consistency_check(check))
    request = server.unmask_request()
    assert request.dropped == (gone,)
    for name in request.survivors:
        server.receive_unmask(clients[name].unmask(request))
    result, calls, exchanges = spy.during(server.finish)
    assert [module for module, _, _ in calls] == ["masks"]
    assert exchanges == len(calls[0][2]) == len(graph[gone] & set(request.survivors)) == 4
    assert np.array_equal(result, np.zeros(64))
