"""The aggregator's journal: a run stopped after any committed round and started again finishes with the same student
a run without the stop gives; another configuration, or a checkpoint that is not the journalled one, is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsa_secure.channel import InMemoryChannel
from fedsa_secure.crypto import FixedRandomness, sha256
from fedsa_secure.data import aggregator_data
from fedsa_secure.errors import ConfigError, IntegrityError
from fedsa_secure.experiment.simulation import federation_teachers, teacher_seed
from fedsa_secure.fedsa.distill import DPSettings
from fedsa_secure.journal import JOURNAL_FILE, Journal
from fedsa_secure.models import state_digest
from fedsa_secure.node import Node
from fedsa_secure.rounds import Federation, RoundSettings

torch.set_num_threads(1)
SETTINGS = RoundSettings(method="fedsa+", rounds=4, adapt_every=2, average_rounds=2, seed=0)
IDENTITY = {"settings": "fedsa+ 4 rounds", "nodes": ["node-1", "node-2", "node-3", "node-4"]}


class Crash(Exception):
    """The aggregator process dies here."""


class CrashingChannel(InMemoryChannel):
    def __init__(self, nodes: dict[str, Node], at_round: int) -> None:
        super().__init__(nodes)
        self.at_round = at_round

    def begin_round(self, number: int) -> None:
        if number == self.at_round:
            raise Crash(f"killed as round {number} began")
        super().begin_round(number)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return federation_teachers("digits", 0, tmp_path_factory.mktemp("teachers"))


def nodes(teachers: dict) -> dict[str, Node]:
    """Plaintext nodes (no DP noise), seeded: two sets of them compute exactly the same."""
    return {name: Node(name, t.data, DPSettings(planned_rounds=4, local_epochs=1), seed=teacher_seed(0, i), teacher=t.model,
                       dp=False, mechanism_seed=i, randomness=FixedRandomness(sha256(name.encode())))
            for i, (name, t) in enumerate(sorted(teachers.items()))}


def federation(run: Path, channel: InMemoryChannel, names: list[str], identity: dict = IDENTITY) -> Federation:
    probe, test = aggregator_data(0)
    return Federation(SETTINGS, probe, test, channel, names, report=lambda line: None, checkpoints=run / "checkpoints",
                      journal=Journal(run / JOURNAL_FILE, identity))


@pytest.mark.parametrize("crash_at", [pytest.param(2, marks=pytest.mark.slow), 3, pytest.param(4, marks=pytest.mark.slow)])
def test_a_run_resumed_after_a_crash_ends_with_the_students_of_a_run_without_one(
    tmp_path: Path, teachers: dict, crash_at: int
) -> None:
    whole = nodes(teachers)
    plain = federation(tmp_path / "whole", InMemoryChannel(whole), list(whole)).run(set(whole))

    survivors = nodes(teachers)  # the nodes live on; only the aggregator dies
    with pytest.raises(Crash):
        federation(tmp_path / "crashed", CrashingChannel(survivors, crash_at), list(survivors)).run(set(survivors))
    assert len(Journal(tmp_path / "crashed" / JOURNAL_FILE, IDENTITY).rounds()) == crash_at - 1
    resumed = federation(tmp_path / "crashed", InMemoryChannel(survivors), list(survivors)).run(set(survivors))

    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4]
    assert [r.cohort for r in resumed.rounds] == [r.cohort for r in plain.rounds]  # the draws continue where they stopped
    assert state_digest(resumed.student.state_dict()) == state_digest(plain.student.state_dict())
    assert resumed.accuracy == plain.accuracy  # the adapted student too: the tail average was restored
    assert {n: r.rounds_trained for n, r in resumed.nodes.items()} == {n: r.rounds_trained for n, r in plain.nodes.items()}


def test_another_configuration_or_a_replaced_checkpoint_is_refused(tmp_path: Path, teachers: dict) -> None:
    crashing = nodes(teachers)
    with pytest.raises(Crash):
        federation(tmp_path, CrashingChannel(crashing, 3), list(crashing)).run(set(crashing))
    with pytest.raises(ConfigError, match="journals a run of another configuration .*settings: 'fedsa\\+ 4 rounds' then"):
        Journal(tmp_path / JOURNAL_FILE, {**IDENTITY, "settings": "fedsa 9 rounds"})
    checkpoint = tmp_path / "checkpoints" / "student-r2.pt"
    blob = bytearray(checkpoint.read_bytes())
    blob[len(blob) // 2] ^= 1  # one bit of one weight
    checkpoint.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="student-r2.pt is not the checkpoint the journal recorded for round 2"):
        federation(tmp_path, InMemoryChannel(crashing), list(crashing)).run(set(crashing))
