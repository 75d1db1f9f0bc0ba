"""The aggregator's gRPC endpoint: nodes dial in over mutual TLS and long-poll for work.

Each node has an outbox (messages for it, delivered in order on its polls) and an inbox (messages it
sent, taken out by `collect`). A node's identity is its client certificate's CN, never a message field.
`Limits` bound what one node may hold at a time (uploads in flight, their size and duration, held
polls), so a hostile or broken node cannot take the memory the others need.

The server is gRPC's asyncio one, on an event loop in a thread of its own: a held poll or a
stalled upload is a suspended coroutine, not a thread, so the aggregator's threads do not grow
with the number of nodes. The rounds call `send`, `collect` and `wait_for` from their own thread;
the shared state is guarded by one lock, which the loop only ever takes briefly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Collection, Iterable
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
        limits: Limits = Limits(),
    ) -> None:
        self._bind = bind
        self._tls = tls
        self._allowed = frozenset(allowed_nodes) if allowed_nodes is not None else None
        self._epoch = secrets.randbits(64) or 1  # identifies this server instance in acks; 0 means "none"
        self._next_seq = 1
        self._cond = threading.Condition()
        self._outbox: defaultdict[str, deque[tuple[int, bytes]]] = defaultdict(deque)
        self._inbox = Inbox(self._cond)
        self._seen: set[str] = set()
        self._limits = limits
        self._held_by: defaultdict[str, int] = defaultdict(int)
        self._uploading: defaultdict[str, int] = defaultdict(int)
        self._stopping = False
        self._denied_logged: set[str] = set()
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._wakeups: dict[str, asyncio.Event] = {}  # a node's held poll waits on its event (loop thread only)

    def start(self) -> int:
        """Load the TLS files, listen, and return the bound port."""
        if self._server is not None:
            raise RuntimeError("FederationServer already started")
        ca, cert, key = self._tls.load()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="fedsa-grpc-loop", daemon=True)
        self._loop_thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._serve(credentials), self._loop).result()
        except BaseException:
            self._close_loop()
            raise
        log.info("aggregator listening on %s (port %d)", self._bind, port)
        return port

    async def _serve(self, credentials: grpc.ServerCredentials) -> int:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_FederationServicer_to_server(_Servicer(self), server)
        try:
            port = server.add_secure_port(self._bind, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            await server.stop(None)
            raise TransportError(
                f"cannot listen on {self._bind}: is another aggregator already using the port, or is the address wrong?"
            )
        await server.start()
        self._server = server
        return int(port)

    def stop(self, grace: float = 1.0) -> None:
        """Release held polls, then stop serving; in-flight calls get `grace` seconds to finish."""
        with self._cond:
            self._stopping = True  # held polls see it when _wake_all wakes them
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result()
            self._server = None
        self._close_loop()

    def _close_loop(self) -> None:
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop.close()
        self._loop, self._loop_thread = None, None

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
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake, node)

    def _wake(self, node: str) -> None:
        if node in self._wakeups:
            self._wakeups[node].set()

    def _wake_all(self) -> None:
        for event in self._wakeups.values():
            event.set()

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

    async def _identify(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's certificate CN, if it is allowed; otherwise abort the call."""
        names = context.auth_context().get("x509_common_name", [])
        if len(names) != 1:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "client certificate has no single common name; use a certificate issued by the federation CA",
            )
        node: str = names[0].decode("utf-8", "replace")
        if self._allowed is not None and node not in self._allowed:
            if node not in self._denied_logged:
                self._denied_logged.add(node)
                log.warning("refusing node %r: not in allowed nodes", node)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {node!r} is not part of this federation; allowed node names: {', '.join(sorted(self._allowed))}",
            )
        return node

    async def _poll(self, request: pb.PollRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Chunk]:
        node = await self._identify(context)
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
            held = not box and hold > 0 and self._held_by[node] < self._limits.held_polls
            if held:
                self._held_by[node] += 1
        if held:
            try:
                await self._hold(node, box, hold)
            finally:
                with self._cond:
                    self._held_by[node] -= 1
        with self._cond:
            # Peek, don't pop: the message stays queued until the node acknowledges it on its next poll.
            sequence, data = box[0] if box else (0, _WAIT)
        for chunk in chunks.split(data, self._epoch, sequence):
            yield chunk

    async def _hold(self, node: str, box: deque[tuple[int, bytes]], seconds: float) -> None:
        """Until something is queued for `node`, the server stops, or `seconds` pass: a suspended coroutine, no thread."""
        assert self._loop is not None
        wakeup = self._wakeups.setdefault(node, asyncio.Event())
        deadline = self._loop.time() + seconds
        while True:
            with self._cond:
                if box or self._stopping:
                    return
                wakeup.clear()  # under the lock: a message queued after this check sets it again
            left = deadline - self._loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(wakeup.wait(), left)
            except TimeoutError:
                return

    async def _receive(self, request_iterator: AsyncIterator[pb.Chunk], context: grpc.aio.ServicerContext) -> pb.SendAck:
        node = await self._identify(context)
        with self._cond:
            busy = self._uploading[node] >= self._limits.uploads
            if not busy:
                self._uploading[node] += 1
        if busy:
            log.warning("refused an upload from node %r: %d of its uploads are in flight", node, self._limits.uploads)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"node {node!r} has {self._limits.uploads} uploads in flight; send one message at a time")
        try:
            assembly = chunks.Assembly(self._limits.upload_bytes)
            async with asyncio.timeout(self._limits.upload_seconds):  # cuts a stream that stalls
                async for chunk in request_iterator:
                    assembly.add(chunk)
            round_tag, message = decode_client_tagged(assembly.result()[0])
        except ProtocolError as exc:
            log.warning("malformed upload from node %r: %s", node, exc)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed upload from node {node!r}: {exc}; check that node and aggregator run the same version",
            )
        except TimeoutError:
            log.warning("dropped an upload from node %r: not complete within %.0fs", node, self._limits.upload_seconds)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"upload not complete within {self._limits.upload_seconds:.0f}s")
        finally:
            with self._cond:
                self._uploading[node] -= 1
        claimed = _claimed_senders(message)
        if claimed - {node}:
            await context.abort(
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

    async def Poll(self, request: pb.PollRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Chunk]:  # noqa: N802
        async for chunk in self._owner._poll(request, context):  # gRPC serves a stream from an async generator function
            yield chunk

    async def Send(self, request_iterator: AsyncIterator[pb.Chunk], context: grpc.aio.ServicerContext) -> pb.SendAck:  # noqa: N802
        return await self._owner._receive(request_iterator, context)
