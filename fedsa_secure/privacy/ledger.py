"""Append-only, hash-chained privacy ledger: one JSON object per line, one line per charge.

Each entry carries the SHA-256 of the previous entry, so an edited, deleted or reordered
line breaks the chain at a named position. The node appends (and fsyncs) a charge before
its update leaves the machine: a crash between charge and release over-counts, never
under-counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsa_secure.errors import LedgerError

GENESIS = "0" * 64
REQUIRED_FIELDS = (
    "round",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "delta",
    "accountant",
    "epsilon",
)


def entry_hash(entry: dict[str, Any]) -> str:
    """Hash of an entry's canonical JSON without its own `hash` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    entries: int
    ok: bool
    first_bad: int | None  # 0-based line index of the first entry that breaks the chain
    reason: str


class Ledger:
    """A node's ledger file; `append` is the only way entries are written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        existing = read_entries(self.path) if self.path.exists() else []
        check = verify_entries(existing)
        if not check.ok:
            raise LedgerError(f"{self.path}: {check.reason}; refusing to append to a broken ledger")
        self._last_hash = existing[-1]["hash"] if existing else GENESIS
        self._count = len(existing)

    def __len__(self) -> int:
        return self._count

    def append(self, charge: dict[str, Any]) -> dict[str, Any]:
        missing = [f for f in REQUIRED_FIELDS if f not in charge]
        if missing:
            raise LedgerError(f"ledger charge lacks fields {missing}")
        entry = {"seq": self._count, **charge, "prev_hash": self._last_hash}
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._last_hash = entry["hash"]
        self._count += 1
        return entry


def read_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise LedgerError(f"{path}: entry {number} is not valid JSON (torn or edited line)") from None
        if not isinstance(entry, dict):
            raise LedgerError(f"{path}: entry {number} is not a JSON object")
        entries.append(entry)
    return entries


def verify_entries(entries: list[dict[str, Any]]) -> Verification:
    """Check sequence numbers, the hash chain and each entry's own hash; name the first bad entry."""
    previous = GENESIS
    for index, entry in enumerate(entries):
        if entry.get("seq") != index:
            return Verification(len(entries), False, index, f"entry {index} has seq {entry.get('seq')!r}")
        if entry.get("prev_hash") != previous:
            return Verification(len(entries), False, index, f"entry {index} does not follow entry {index - 1}")
        if entry.get("hash") != entry_hash(entry):
            return Verification(len(entries), False, index, f"entry {index} was modified (hash mismatch)")
        previous = entry["hash"]
    return Verification(len(entries), True, None, "chain intact")
