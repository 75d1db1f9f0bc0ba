"""The aggregator's gRPC endpoint: nodes dial in over mutual TLS and long-poll for work.

Each node has an outbox (messages for it, delivered in order on its polls) and an inbox (messages it
sent, taken out by `collect`). A node's identity is its client certificate's CN, never a message field.
`Limits` bound what one node may hold at a time (uploads in flight, their size and duration, held
polls), so a hostile or broken node cannot take the threads or the memory the others need.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import grpc

from fedsa_secure import messages as m
from fedsa_secure.channel import Inbox
from fedsa_secure.errors import ProtocolError, TransportError
from fedsa_secure.proto import federation_pb2 as pb
from fedsa_secure.proto import federation_pb2_grpc as pb_grpc
from fedsa_secure.transport import chunks
from fedsa_secure.transport.serde import decode_client_tagged, encode_server
from fedsa_secure.transport.tls import TlsFiles

log = logging.getLogger(__name__)

MAX_HOLD_SECONDS = 10.0  # longest a Poll is held open when nothing is queued
_DEADLINE_MARGIN = 1.0  # answer a held Poll this long before the client's deadline
_RESERVED_WORKERS = 2  # threads never used for held polls, so uploads are always served
_WAIT = encode_server(m.Wait())


@dataclass(frozen=True)
class Limits:
    """What one node may hold of the aggregator at a time."""

    uploads: int = 2  # concurrent Send streams (a node sends one message at a time)
    upload_bytes: int = 256 << 20  # one message, far above a masked update of a few million coordinates
    upload_seconds: float = 120.0  # one Send stream, first byte to last
    held_polls: int = 1  # Polls held open while nothing is queued

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", chunks.GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", chunks.GRPC_MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),  # a second aggregator on the same port must fail, not share it
]


class FederationServer:
    """Mutual-TLS gRPC server holding per-node outboxes and inboxes."""

    def __init__(
        self,
        bind: str,
        tls: TlsFiles,
        allowed_nodes: Collection[str] | None = None,
        max_workers: int = 16,
        limits: Limits = Limits(),
    ) -> None:
        self._bind = bind
        self._tls = tls
        self._allowed = frozenset(allowed_nodes) if allowed_nodes is not None else None
        # Every held poll occupies a worker thread; make sure each allowed node can hold one.
        extra = len(self._allowed) + _RESERVED_WORKERS if self._allowed is not None else 0
        self._max_workers = max(max_workers, extra, _RESERVED_WORKERS + 1)
        self._max_held = self._max_workers - _RESERVED_WORKERS
        self._epoch = secrets.randbits(64) or 1  # identifies this server instance in acks; 0 means "none"
        self._next_seq = 1
        self._cond = threading.Condition()
        self._outbox: defaultdict[str, deque[tuple[int, bytes]]] = defaultdict(deque)
        self._inbox = Inbox(self._cond)
        self._seen: set[str] = set()
        self._held = 0
        self._limits = limits
        self._held_by: defaultdict[str, int] = defaultdict(int)
        self._uploading: defaultdict[str, int] = defaultdict(int)
        self._stopping = False
        self._denied_logged: set[str] = set()
        self._server: grpc.Server | None = None

    def start(self) -> int:
        """Load the TLS files, listen, and return the bound port."""
        if self._server is not None:
            raise RuntimeError("FederationServer already started")
        ca, cert, key = self._tls.load()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        server = grpc.server(
            ThreadPoolExecutor(self._max_workers, thread_name_prefix="fedsa-grpc"), options=SERVER_OPTIONS
        )
        pb_grpc.add_FederationServicer_to_server(_Servicer(self), server)
        try:
            port = server.add_secure_port(self._bind, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            server.stop(None)
            raise TransportError(
                f"cannot listen on {self._bind}: is another aggregator already using the port, or is the address wrong?"
            )
        server.start()
        self._server = server
        log.info("aggregator listening on %s (port %d)", self._bind, port)
        return int(port)

    def stop(self, grace: float = 1.0) -> None:
        """Release held polls, then stop serving; in-flight calls get `grace` seconds to finish."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> FederationServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def send(self, node: str, message: m.ServerMessage) -> None:
        """Queue a message for `node`; it is delivered on the node's next polls, in order."""
        if self._allowed is not None and node not in self._allowed:
            raise ValueError(f"cannot send to {node!r}: not among the allowed nodes {sorted(self._allowed)}")
        data = encode_server(message)
        with self._cond:
            self._outbox[node].append((self._next_seq, data))
            self._next_seq += 1
            self._cond.notify_all()

    def collect(
        self, nodes: Iterable[str], expect: type | tuple[type, ...], timeout: float, round: int = 0
    ) -> dict[str, m.ClientMessage]:
        """Each node's first answer of an `expect` type, waiting up to `timeout` seconds (channel.Inbox.collect)."""
        return self._inbox.collect(nodes, expect, timeout, round)

    def discard_inbox(self, node: str) -> int:
        """Drop everything `node` sent that is still queued (answers of its previous process); returns how many."""
        return self._inbox.discard(node)

    def begin_round(self, number: int) -> None:
        """Answers to any other round than `number` are dropped from now on (channel.Inbox)."""
        self._inbox.begin_round(number)

    def wait_for(self, nodes: Collection[str], timeout: float) -> set[str]:
        """Block until all `nodes` have polled at least once or `timeout` passes; return those seen."""
        wanted = set(nodes)
        with self._cond:
            self._cond.wait_for(lambda: wanted <= self._seen, timeout)
            return wanted & self._seen

    def seen(self) -> set[str]:
        """Every node that has polled since start."""
        with self._cond:
            return set(self._seen)

    def _identify(self, context: grpc.ServicerContext) -> str:
        """The caller's certificate CN, if it is allowed; otherwise abort the call."""
        names = context.auth_context().get("x509_common_name", [])
        if len(names) != 1:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "client certificate has no single common name; use a certificate issued by the federation CA",
            )
        node: str = names[0].decode("utf-8", "replace")
        if self._allowed is not None and node not in self._allowed:
            if node not in self._denied_logged:
                self._denied_logged.add(node)
                log.warning("refusing node %r: not in allowed nodes", node)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {node!r} is not part of this federation; allowed node names: {', '.join(sorted(self._allowed))}",
            )
        return node

    def _poll(self, request: pb.PollRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        node = self._identify(context)
        hold = min(request.wait_seconds, MAX_HOLD_SECONDS) if math.isfinite(request.wait_seconds) else 0.0
        remaining = context.time_remaining()
        if remaining is not None:
            hold = min(hold, remaining - _DEADLINE_MARGIN)
        with self._cond:
            if node not in self._seen:
                self._seen.add(node)
                log.info("node %r connected", node)
                self._cond.notify_all()
            box = self._outbox[node]
            if request.ack_epoch == self._epoch:  # the node has this message and everything before it
                while box and box[0][0] <= request.ack_sequence:
                    box.popleft()
            if not box and hold > 0 and self._held < self._max_held and self._held_by[node] < self._limits.held_polls:
                self._held += 1
                self._held_by[node] += 1
                try:
                    deadline = time.monotonic() + hold
                    while not box and not self._stopping and context.is_active():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(min(left, 0.5))
                finally:
                    self._held -= 1
                    self._held_by[node] -= 1
            # Peek, don't pop: the message stays queued until the node acknowledges it on its next poll.
            sequence, data = box[0] if box else (0, _WAIT)
        yield from chunks.split(data, self._epoch, sequence)

    def _receive(self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext) -> pb.SendAck:
        node = self._identify(context)
        with self._cond:
            busy = self._uploading[node] >= self._limits.uploads
            if not busy:
                self._uploading[node] += 1
        if busy:
            log.warning("refused an upload from node %r: %d of its uploads are in flight", node, self._limits.uploads)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"node {node!r} has {self._limits.uploads} uploads in flight; send one message at a time")
        timer = threading.Timer(self._limits.upload_seconds, context.cancel)  # unblocks a stream that stalls
        timer.daemon = True
        timer.start()
        try:
            data, _ = chunks.join(request_iterator, self._limits.upload_bytes)
            round_tag, message = decode_client_tagged(data)
        except ProtocolError as exc:
            log.warning("malformed upload from node %r: %s", node, exc)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed upload from node {node!r}: {exc}; check that node and aggregator run the same version",
            )
        except grpc.RpcError:  # cancelled: the node stopped sending, or took longer than upload_seconds
            log.warning("dropped an upload from node %r: not complete within %.0fs", node, self._limits.upload_seconds)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          f"upload not complete within {self._limits.upload_seconds:.0f}s")
        finally:
            timer.cancel()
            with self._cond:
                self._uploading[node] -= 1
        claimed = _claimed_senders(message)
        if claimed - {node}:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{type(message).__name__} names sender(s) {sorted(claimed)} but the certificate belongs to "
                f"{node!r}; a node may only send as itself",
            )
        self._inbox.put(node, round_tag, message)
        return pb.SendAck()


def _claimed_senders(message: m.ClientMessage) -> set[str]:
    """Every sender name a message asserts (top level and per sealed share)."""
    claimed = {message.sender} if hasattr(message, "sender") else set()
    for share in getattr(message, "shares", ()):
        claimed.add(share.sender)
    return claimed


class _Servicer(pb_grpc.FederationServicer):
    """Adapter from the generated service interface to FederationServer."""

    def __init__(self, owner: FederationServer) -> None:
        self._owner = owner

    def Poll(self, request: pb.PollRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:  # noqa: N802
        return self._owner._poll(request, context)

    def Send(self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext) -> pb.SendAck:  # noqa: N802
        return self._owner._receive(request_iterator, context)
