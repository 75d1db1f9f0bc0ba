"""A whole federation in one process: the same rounds as the networked one, its nodes as objects.

For experiments, simulations and trying things out: `rounds.Federation` drives `node.Node`s through
an `InMemoryChannel`, every message the same as over gRPC (selection, every secure-aggregation
stage, the nodes' privacy statuses), without processes, TLS or serialisation. Nodes built without
credentials trust the channel to relay keys faithfully, which an in-process run can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fedsa_secure.channel import InMemoryChannel
from fedsa_secure.data import LabelledSet
from fedsa_secure.fedsa.adapt import Adapted
from fedsa_secure.node import Node
from fedsa_secure.rounds import Federation, Outcome, RoundSettings


def run_federation(
    nodes: Iterable[Node],
    probe: LabelledSet,
    test: LabelledSet,
    settings: RoundSettings,
    *,
    baseline: Adapted | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> Outcome:
    """Run `settings.rounds` rounds with `nodes` and return the adapted student and how it got there."""
    by_name = {node.name: node for node in nodes}
    rounds = Federation(settings, probe, test, InMemoryChannel(by_name), by_name, baseline=baseline, report=report)
    return rounds.run(set(by_name))
