"""A node's connection to the aggregator: it dials out (so nodes may sit behind firewalls) and long-polls for work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import grpc

from fedsa_secure import messages as m
from fedsa_secure.crypto import pki
from fedsa_secure.errors import TransportError
from fedsa_secure.proto import federation_pb2 as pb
from fedsa_secure.proto import federation_pb2_grpc as pb_grpc
from fedsa_secure.transport import chunks
from fedsa_secure.transport.serde import decode_server, encode_client
from fedsa_secure.transport.tls import TlsFiles

log = logging.getLogger(__name__)
T = TypeVar("T")

CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", chunks.GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", chunks.GRPC_MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 30_000),  # >= the server's min_recv_ping_interval, or it sends GOAWAY
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
_MAX_BACKOFF = 10.0
_TLS_HINTS = ("ssl", "tls", "handshake", "certificate", "cert", "alert")


class AggregatorClient:
    """Mutual-TLS client; every RPC has a deadline and failures become TransportError."""

    def __init__(
        self,
        address: str,
        tls: TlsFiles,
        rpc_timeout: float = 60.0,
        server_name: str | None = None,
        *,
        reconnect_for: float = 30.0,
        retry_backoff: float = 0.5,
    ) -> None:
        ca, cert, key = tls.load()
        self.name = pki.common_name(cert)
        self._address = address
        self._rpc_timeout = rpc_timeout
        self._reconnect_for = reconnect_for
        self._retry_backoff = retry_backoff
        self.server_epoch = 0  # the aggregator process last heard from (a new one: the node must join it again)
        options: list[tuple[str, str | int]] = list(CLIENT_OPTIONS)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = pb_grpc.FederationStub(self._channel)
        self._ack = (0, 0)  # (server epoch, sequence) of the last queued message received

    def poll(self, wait: float = 5.0) -> m.ServerMessage:
        """Next message for this node, or Wait() if none arrived within `wait` seconds.

        Nothing is lost between polls: the server keeps a message until the next poll acknowledges it.
        """
        request = pb.PollRequest(wait_seconds=wait, ack_epoch=self._ack[0], ack_sequence=self._ack[1])
        data, first = self._retrying("poll", wait + self._rpc_timeout,
                                     lambda: chunks.join(self._stub.Poll(request, timeout=wait + self._rpc_timeout)))
        if first is None:
            raise TransportError(f"aggregator at {self._address} ended a poll without a message; is it shutting down?")
        message = decode_server(data)
        self.server_epoch = first.epoch
        if first.sequence:
            self._ack = (first.epoch, first.sequence)
        return message

    def send(self, message: m.ClientMessage, round: int = 0) -> None:
        """Upload one message answering a request of `round`, streamed in chunks.

        Retried while the aggregator is unreachable: a copy that did arrive is never taken twice
        (the aggregator takes one answer of a kind per node and stage).
        """
        data = encode_client(message, round)
        self._retrying("send", self._rpc_timeout, lambda: self._stub.Send(chunks.split(data), timeout=self._rpc_timeout))

    def _retrying(self, action: str, timeout: float, call: Callable[[], T]) -> T:
        """`call()`, retried with exponential backoff while the aggregator is UNAVAILABLE, for up to `reconnect_for` s."""
        delay, give_up = self._retry_backoff, time.monotonic() + self._reconnect_for
        while True:
            try:
                return call()
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > give_up:
                    raise self._error(err, action, timeout) from None
                log.info("aggregator at %s unavailable, retrying %s in %.1fs", self._address, action, delay)
                time.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _error(self, err: grpc.RpcError, action: str, timeout: float) -> TransportError:
        """Turn a gRPC status into a message that says what to check."""
        code: grpc.StatusCode = err.code()
        details = err.details() or "no details"
        where = f"aggregator at {self._address}"
        if code == grpc.StatusCode.UNAVAILABLE:
            if any(hint in details.lower() for hint in _TLS_HINTS):
                return TransportError(
                    f"TLS handshake with {where} failed ({details}); check that node {self.name!r} has a "
                    "certificate from the federation CA, that the CA file is the federation's, and that the "
                    "aggregator's certificate names the host you dial (or set server_name)"
                )
            return TransportError(
                f"cannot reach {where}: is it running and is the address right? A firewall or a certificate "
                f"rejected by the aggregator can also cause this ({details})"
            )
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return TransportError(f"{where} refused node {self.name!r}: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TransportError(
                f"{where} did not complete {action} within {timeout:.0f}s; it may be overloaded or the network slow"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return TransportError(f"{where} rejected the {action}: {details}")
        return TransportError(f"{action} to {where} failed with {code.name}: {details}")
