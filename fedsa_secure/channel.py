"""How a federation's rounds reach its nodes: a `Channel`, over gRPC (transport.server) or in memory.

The round code (`rounds.Federation`) sends each node its requests and collects their answers by
type and round; it never knows whether the nodes are processes across the internet or objects in
this process. `Inbox` is the one implementation of "take each node's first answer of a type,
drop late answers to older rounds", shared by both channels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fedsa_secure import messages as m
from fedsa_secure.secagg.messages import MaskedInput, payload_bytes

log = logging.getLogger(__name__)

Kinds = type | tuple[type, ...]


class Channel(Protocol):
    """What the round needs from a transport."""

    def send(self, node: str, message: m.ServerMessage) -> None:
        """Deliver `message` to `node` (in order with the others sent to it)."""

    def collect(self, nodes: Iterable[str], expect: Kinds, timeout: float, round: int = 0) -> dict[str, m.ClientMessage]:
        """Each node's first answer of an `expect` type, waiting up to `timeout`; a missing node did not answer."""
        ...

    def discard_inbox(self, node: str) -> int:
        """Drop what `node` sent and nobody collected (answers of its previous process); returns how many."""
        ...

    def begin_round(self, number: int) -> None:
        """From now on answers to other rounds than `number` are dropped as they arrive (untagged ones kept)."""


MAX_QUEUED = 32  # answers one node may have waiting; a round asks for a few at a time


class Inbox:
    """What nodes sent, queued per node with the round each answers, taken out by type.

    Thread-safe: `put` may run on transport threads while `collect` waits on the round's thread.
    A message of another type stays queued for a later collect. Once a round has begun, an answer
    tagged with another round is dropped on arrival (nothing is kept for a round that is not the
    current one), and a node with MAX_QUEUED answers waiting has the next one dropped.
    """

    def __init__(self, condition: threading.Condition | None = None) -> None:
        self._cond = condition or threading.Condition()
        self._boxes: defaultdict[str, list[tuple[int, m.ClientMessage]]] = defaultdict(list)
        self._round = 0

    def begin_round(self, number: int) -> None:
        with self._cond:
            self._round = number
            for node, box in self._boxes.items():
                for tagged in [t for t in box if t[0] not in (0, number)]:
                    log.info("discarding %s from node %r: answers round %d, now %d", type(tagged[1]).__name__, node,
                             tagged[0], number)
                    box.remove(tagged)

    def put(self, node: str, round_tag: int, message: m.ClientMessage) -> None:
        with self._cond:
            if self._round and round_tag not in (0, self._round):
                log.warning("dropped %s from node %r: it answers round %d, the current round is %d",
                            type(message).__name__, node, round_tag, self._round)
                return
            if len(self._boxes[node]) >= MAX_QUEUED:
                log.warning("dropped %s from node %r: %d of its answers are waiting already", type(message).__name__,
                            node, MAX_QUEUED)
                return
            self._boxes[node].append((round_tag, message))
            self._cond.notify_all()

    def collect(self, nodes: Iterable[str], expect: Kinds, timeout: float, round: int = 0) -> dict[str, m.ClientMessage]:
        wanted = list(dict.fromkeys(nodes))
        got: dict[str, m.ClientMessage] = {}
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for node in wanted:
                    if node not in got and (message := self._take(node, expect, round)) is not None:
                        got[node] = message
                left = deadline - time.monotonic()
                if len(got) == len(wanted) or left <= 0:
                    return got
                self._cond.wait(left)

    def discard(self, node: str) -> int:
        with self._cond:
            return len(self._boxes.pop(node, []))

    def _take(self, node: str, expect: Kinds, round: int) -> m.ClientMessage | None:
        box = self._boxes.get(node, [])
        if round:
            for tagged in [t for t in box if 0 < t[0] < round]:
                log.info("discarding %s from node %r: answers round %d, now %d", type(tagged[1]).__name__, node, tagged[0], round)
                box.remove(tagged)
        for index, (tag, message) in enumerate(box):
            if isinstance(message, expect) and (not round or tag in (0, round)):
                return box.pop(index)[1]
        return None


class Responder(Protocol):
    """A node as the in-memory channel drives it (fedsa_secure.node.Node)."""

    def join(self) -> m.Join: ...

    def respond(self, request: m.ServerMessage) -> tuple[int, list[m.ClientMessage]]: ...


@dataclass
class Traffic:
    """What crossed an in-memory channel: payload bytes each way (messages.payload_bytes) and time spent in the nodes."""

    down: int = 0  # aggregator -> nodes: student states, probe sets, secure-aggregation requests
    up_masked: int = 0  # nodes -> aggregator: the bit-packed masked updates
    up_protocol: int = 0  # nodes -> aggregator: everything else (keys, shares, signatures, scores, statuses)
    node_seconds: dict[str, float] = field(default_factory=dict)


class InMemoryChannel:
    """Nodes in this process: a message sent is handled at once, and the node's answers wait in the inbox.

    For simulations and experiments: the same round code as a networked federation, without
    processes, TLS or serialisation. `traffic` counts what crossed it.
    """

    def __init__(self, nodes: Mapping[str, Responder]) -> None:
        self._nodes = dict(nodes)
        self._inbox = Inbox()
        self.traffic = Traffic(node_seconds=dict.fromkeys(self._nodes, 0.0))
        for name, node in self._nodes.items():  # every node joins, as a process does when it connects
            self._inbox.put(name, 0, node.join())

    def send(self, node: str, message: m.ServerMessage) -> None:
        started = time.perf_counter()
        round_tag, replies = self._nodes[node].respond(message)
        self.traffic.node_seconds[node] += time.perf_counter() - started
        self.traffic.down += payload_bytes(message)
        for reply in replies:
            if isinstance(reply, MaskedInput):
                self.traffic.up_masked += len(reply.packed)
            else:
                self.traffic.up_protocol += payload_bytes(reply)
            self._inbox.put(node, round_tag, reply)

    def collect(self, nodes: Iterable[str], expect: Kinds, timeout: float, round: int = 0) -> dict[str, m.ClientMessage]:
        return self._inbox.collect(nodes, expect, 0.0, round)  # every answer is already in: waiting adds nothing

    def discard_inbox(self, node: str) -> int:
        return self._inbox.discard(node)

    def begin_round(self, number: int) -> None:
        self._inbox.begin_round(number)
