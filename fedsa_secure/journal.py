"""The aggregator's journal: what a restarted aggregator needs to continue a run, in SQLite, one transaction per round.

A round is committed only after its student checkpoint is on disk (written atomically): the row
names the checkpoint's SHA-256, the round's record, every node's reported figures, the cohort
draw's random state and which rounds the tail average holds. A crash before the commit leaves the
round uncommitted, and the restarted aggregator redoes it with fresh keys and a fresh session. The
first row binds the run's configuration: a restart with another one is refused, not mixed in.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsa_secure.errors import ConfigError

JOURNAL_FILE = "journal.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS run (id INTEGER PRIMARY KEY CHECK (id = 1), configuration TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    number INTEGER PRIMARY KEY,
    record TEXT NOT NULL,          -- the round as the summary shows it (JSON)
    nodes TEXT NOT NULL,           -- every node's reported privacy figures after the round (JSON)
    draws TEXT NOT NULL,           -- the state of the cohort draw's generator after the round (JSON)
    tail TEXT NOT NULL,            -- the rounds whose students the tail average holds (JSON list)
    student_sha256 TEXT NOT NULL   -- of checkpoints/student-r<number>.pt
);
"""


@dataclass(frozen=True)
class Committed:
    """One committed round, as a restarted aggregator reads it back."""

    number: int
    record: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    draws: dict[str, Any]
    tail: list[int]
    student_sha256: str


class Journal:
    """The run's journal at `path`, bound to `configuration` (a JSON-able description of what the run computes)."""

    def __init__(self, path: Path, configuration: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        bound = json.dumps(configuration, sort_keys=True)
        with closing(self._connect()) as db:
            db.executescript(SCHEMA)  # each statement is its own transaction (executescript commits first)
        with self._transaction() as db:
            row = db.execute("SELECT configuration FROM run").fetchone()
            if row is None:
                db.execute("INSERT INTO run (id, configuration) VALUES (1, ?)", (bound,))
            elif row[0] != bound:
                raise ConfigError(
                    f"{self.path} journals a run of another configuration ({_difference(json.loads(row[0]), configuration)}); "
                    "restart with the configuration it was started with, or give the new run its own run_dir"
                )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only a killed process
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def commit(self, round_: Committed) -> None:
        """Record one completed round, all of it or nothing."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO rounds (number, record, nodes, draws, tail, student_sha256) VALUES (?, ?, ?, ?, ?, ?)",
                (round_.number, json.dumps(round_.record), json.dumps(round_.nodes), json.dumps(round_.draws),
                 json.dumps(round_.tail), round_.student_sha256),
            )

    def rounds(self) -> list[Committed]:
        """Every committed round, in order."""
        with self._transaction() as db:
            rows = db.execute("SELECT number, record, nodes, draws, tail, student_sha256 FROM rounds ORDER BY number").fetchall()
        return [Committed(n, json.loads(r), json.loads(s), json.loads(d), json.loads(t), h) for n, r, s, d, t, h in rows]


def _difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    changed = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
    return ", ".join(f"{key}: {before.get(key)!r} then, {now.get(key)!r} now" for key in changed[:3])
