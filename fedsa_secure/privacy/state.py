"""What belongs to a node's records across runs and restarts: their privacy ledger and their DP teacher.

A node keeps one directory per record set under its `state_dir`, named by a keyed fingerprint
of the records (HMAC-SHA256 under a key created once and never sent anywhere, so the name says
nothing about the records to whoever sees it in a report). A restart, or a new run, on the same
records opens the same ledger and its accountant continues from it; a different record set
starts its own ledger, and the node warns that records the two sets share are charged in both.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsa_secure.crypto import keyed_digest, random_bytes
from fedsa_secure.data import LabelledSet
from fedsa_secure.errors import KeyMaterialError, LedgerError
from fedsa_secure.files import create_secret, read_secret
from fedsa_secure.privacy.accounting import History, epsilon_of, extend_history, library_versions
from fedsa_secure.privacy.dpsgd import Mechanism
from fedsa_secure.privacy.ledger import DECLARATION, Ledger, charges

KEY_FILE = "fingerprint.key"
LEDGER_FILE = "ledger.jsonl"
TEACHER_FILE = "teacher.pt"
KEY_SIZE = 32
FINGERPRINT_CHARS = 16  # of the hex digest, naming the record set's directory (64 bits)


def records_fingerprint(key: bytes, records: LabelledSet) -> str:
    """Keyed digest of the records and labels (dtype, shape and bytes of each), as hex."""
    parts = []
    for array in (records.x, records.y):
        array = np.ascontiguousarray(array)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header = f"{little.dtype.str}{list(array.shape)}".encode()
        parts += [struct.pack(">Q", len(header)), header, struct.pack(">Q", little.nbytes), little.tobytes()]
    return keyed_digest(key, b"fedsa-secure/v1/records" + b"".join(parts)).hex()


def _fingerprint_key(state_dir: Path) -> bytes:
    path = state_dir / KEY_FILE
    if not path.exists():
        create_secret(path, random_bytes(KEY_SIZE))
    key = read_secret(path)
    if len(key) != KEY_SIZE:
        raise KeyMaterialError(f"{path} holds {len(key)} bytes, not a {KEY_SIZE}-byte key; restore it from a backup")
    return key


def history_of(entries: list[dict[str, Any]]) -> History:
    """The accountant history of ledger entries, rebuilt from the mechanisms their charges recorded."""
    history: History = []
    for entry in charges(entries):
        history = extend_history(history, float(entry["noise_multiplier"]), float(entry["sample_rate"]), int(entry["steps"]))
    return history


@dataclass
class PrivacyState:
    """One record set's directory: its ledger (verified on opening) and where its DP teacher is kept."""

    node: str
    directory: Path
    ledger: Ledger
    record: dict[str, Any]  # what one record is (the unit of privacy): its array's shape and dtype, labelled or not
    records: int
    other_record_sets: list[str]  # fingerprints of this node's other record sets with a ledger

    @classmethod
    def open(cls, state_dir: Path, node: str, records: LabelledSet) -> PrivacyState:
        """Open (or create) the state of `records` under `state_dir`; LedgerError if its ledger does not verify."""
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        fingerprint = records_fingerprint(_fingerprint_key(state_dir), records)[:FINGERPRINT_CHARS]
        directory = state_dir / fingerprint
        others = sorted(
            d.name for d in state_dir.iterdir() if d.is_dir() and d.name != fingerprint and (d / LEDGER_FILE).exists()
        )
        ledger = Ledger(directory / LEDGER_FILE)
        if not len(ledger) and (directory / TEACHER_FILE).exists():
            raise LedgerError(
                f"{directory} holds a DP teacher but its ledger ({LEDGER_FILE}) is missing or empty: the charges of these "
                "records are lost. Restore the ledger from a backup; the node will not start a fresh budget for them"
            )
        record = {"shape": list(records.x.shape[1:]), "dtype": str(records.x.dtype), "labelled": True}
        return cls(node, directory, ledger, record, len(records), others)

    @property
    def teacher_file(self) -> Path:
        return self.directory / TEACHER_FILE

    def entries(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The ledger's entries, optionally of one kind ("teacher", "distillation" or "declaration")."""
        return [e for e in self.ledger.entries if kind is None or e.get("kind") == kind]

    def history(self) -> History:
        """Everything the ledger holds, as the accountant's history."""
        return history_of(self.entries())

    def teacher_history(self) -> History:
        """The teacher trainings the ledger holds (what distillation noise is calibrated after)."""
        return history_of(self.entries("teacher"))

    def epsilon(self) -> float:
        """The cumulative epsilon of the last entry (0 for an empty ledger)."""
        entries = self.ledger.entries
        return float(entries[-1]["epsilon"]) if entries else 0.0

    def declare(self, provenance: str, teacher_sha256: str, target_epsilon: float) -> dict[str, Any]:
        """Record a teacher that costs these records nothing ("public") or that they are not protected from ("non-private")."""
        return self.ledger.append({
            "node": self.node, "kind": DECLARATION, "round": 0, "time": time.time(), "provenance": provenance,
            "teacher_sha256": teacher_sha256, "epsilon": self.epsilon(), "target_epsilon": target_epsilon,
            "record": self.record, "records": self.records, "versions": library_versions(),
        })

    def charge(self, kind: str, round_number: int, mechanism: Mechanism, target_epsilon: float, **extra: Any) -> dict[str, Any]:
        """Append one release's mechanism with the cumulative epsilon it brings the ledger to (write-ahead)."""
        history = extend_history(self.history(), mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)
        return self.ledger.append({
            "node": self.node,
            "kind": kind,
            "round": round_number,
            "time": time.time(),
            **mechanism.fields(),
            "epsilon": epsilon_of(history, mechanism.delta, mechanism.accountant),
            "target_epsilon": target_epsilon,
            "record": self.record,
            "records": self.records,
            "versions": library_versions(),
            **extra,
        })


def find_ledgers(nodes_dir: Path) -> dict[str, Path]:
    """The ledgers under a directory of node state dirs (`<nodes_dir>/<node>/<fingerprint>/ledger.jsonl`), by node.

    A node with ledgers for several record sets gets one key per set: `<node>/<fingerprint>`.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(Path(nodes_dir).glob(f"*/*/{LEDGER_FILE}")):
        found.setdefault(path.parent.parent.name, []).append(path)
    return {
        (node if len(paths) == 1 else f"{node}/{path.parent.name}"): path
        for node, paths in found.items()
        for path in paths
    }
