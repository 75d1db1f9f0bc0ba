"""Append-only, hash-chained privacy ledger: one JSON object per line, one line per charge.

Each entry carries the SHA-256 of the previous entry, so an edited, deleted or reordered
line breaks the chain at a named position. The node appends (and fsyncs) a charge before
its update leaves the machine: a crash between charge and release over-counts, never
under-counts.

The chain alone cannot see a cut tail (a prefix of a valid chain is a valid chain), nor a
deliberate editor who recomputes every later hash (the hash is unkeyed). Both are caught
by an *anchor*: a (entries, head hash) pair recorded somewhere else. The ledger keeps one
in a sidecar `<name>.head.json` (catches an accidental cut, a stale restore, a partial
copy); the node can report `Ledger.head` to the aggregator, whose summary is an anchor the
node cannot rewrite later.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsa_secure.errors import LedgerError
from fedsa_secure.files import atomic_write

GENESIS = "0" * 64
DECLARATION = "declaration"  # an entry that charges nothing: a teacher's provenance ("public" or "non-private")
DECLARATION_FIELDS = ("kind", "round", "provenance", "teacher_sha256", "epsilon")
REQUIRED_FIELDS = (  # of a charge
    "kind",  # "teacher": the teacher's DP-SGD training; "distillation": one round's
    "round",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "delta",
    "accountant",
    "epsilon",
)


def charges(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries that spend budget (every one but declarations), in order."""
    return [e for e in entries if e.get("kind") != DECLARATION]


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


@dataclass(frozen=True)
class LedgerHead:
    """A witness of the ledger's state: its entry count and the hash of its last entry.

    `head` None means a count-only witness (e.g. a summary that only knows rounds trained).
    """

    entries: int
    head: str | None
    source: str = "anchor"

    def as_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "head": self.head}


def head_path(ledger_path: Path) -> Path:
    """Sidecar anchor next to the ledger: `node-1.jsonl` -> `node-1.head.json`."""
    ledger_path = Path(ledger_path)
    return ledger_path.with_name(f"{ledger_path.stem}.head.json")


class Ledger:
    """A node's ledger file; `append` is the only way entries are written.

    Opening it verifies the chain and its sidecar anchor (LedgerError names the first bad entry).
    A last line without its newline is an append that a crash cut short: its update never left
    (the charge is written before the release), so it is rolled back, and so is an append that
    fails (disk full, I/O error), which the node then reports as a reason to decline the round.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rolled_back = _roll_back_torn_line(self.path)
        existing = read_entries(self.path) if self.path.exists() else []
        anchors = [sidecar] if (sidecar := read_head(head_path(self.path))) is not None else []
        check = verify_entries(existing, anchors)
        if not check.ok:
            raise LedgerError(f"{self.path}: {check.reason}; refusing to use a broken ledger")
        self._entries = existing

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (copies)."""
        return [dict(entry) for entry in self._entries]

    @property
    def head(self) -> LedgerHead:
        """What a witness should record now (the node reports this to the aggregator)."""
        return LedgerHead(len(self._entries), self._entries[-1]["hash"] if self._entries else GENESIS, "ledger")

    def append(self, charge: dict[str, Any]) -> dict[str, Any]:
        required = DECLARATION_FIELDS if charge.get("kind") == DECLARATION else REQUIRED_FIELDS
        missing = [f for f in required if f not in charge]
        if missing:
            raise LedgerError(f"ledger charge lacks fields {missing}")
        entry = {"seq": len(self._entries), **charge, "prev_hash": self.head.head}
        entry["hash"] = entry_hash(entry)
        line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            size = handle.tell()
            try:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                handle.truncate(size)  # back to the last whole entry, so the next append can succeed
                raise LedgerError(
                    f"{self.path}: could not write entry {entry['seq']} ({exc.strerror or exc}); rolled back to "
                    f"{len(self._entries)} entries. Free space or fix the disk; nothing was charged or released"
                ) from None
        self._entries.append(entry)
        # After the ledger is durable: a crash here leaves the sidecar one entry behind, which
        # verifies (the ledger may run ahead of a witness, never behind it).
        write_head(head_path(self.path), self.head)
        return entry


def _roll_back_torn_line(path: Path) -> bool:
    """Cut a last line that lacks its newline (an append cut short); True if there was one."""
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def write_head(path: Path, head: LedgerHead) -> None:
    """Atomically replace the sidecar anchor."""
    atomic_write(path, json.dumps(head.as_dict(), sort_keys=True))


def read_head(path: Path) -> LedgerHead | None:
    """The sidecar anchor, or None if there is none."""
    if not Path(path).exists():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return LedgerHead(int(data["entries"]), str(data["head"]), f"sidecar {Path(path).name}")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise LedgerError(f"{path}: the ledger's head file is unreadable") from None


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


def verify_file(path: Path, anchors: Iterable[LedgerHead] = ()) -> tuple[list[dict[str, Any]], Verification]:
    """Readable entries and the verdict; a torn or non-object line is a bad entry, not an exception."""
    lines = Path(path).read_text(encoding="utf-8").splitlines() if Path(path).exists() else []
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict):
            return entries, Verification(len(lines), False, number, f"entry {number} is not a JSON object (torn or edited line)")
        entries.append(entry)
    return entries, verify_entries(entries, anchors)


def verify_entries(entries: list[dict[str, Any]], anchors: Iterable[LedgerHead] = ()) -> Verification:
    """Check sequence numbers, the hash chain, each entry's own hash, then every anchor; name the first bad entry."""
    previous = GENESIS
    for index, entry in enumerate(entries):
        if entry.get("seq") != index:
            return Verification(len(entries), False, index, f"entry {index} has seq {entry.get('seq')!r}")
        if entry.get("prev_hash") != previous:
            return Verification(len(entries), False, index, f"entry {index} does not follow entry {index - 1}")
        if entry.get("hash") != entry_hash(entry):
            return Verification(len(entries), False, index, f"entry {index} was modified (hash mismatch)")
        previous = entry["hash"]
    return _check_anchors(entries, sorted(anchors, key=lambda a: a.entries))


def _check_anchors(entries: list[dict[str, Any]], anchors: list[LedgerHead]) -> Verification:
    """Each anchor must be a prefix of the ledger; the first one that is not bounds where it changed."""
    witnessed = 0  # entries [0, witnessed) are confirmed by a passing hash anchor
    for anchor in anchors:
        if anchor.entries > len(entries):
            return Verification(
                len(entries), False, len(entries),
                f"truncated: {anchor.source} saw {anchor.entries} entries, the ledger has {len(entries)}; "
                f"entry {len(entries)} onwards is missing",
            )
        if anchor.head is None or anchor.entries == 0:
            continue
        if entries[anchor.entries - 1]["hash"] != anchor.head:
            span = f"entry {witnessed}" if witnessed == anchor.entries - 1 else f"entries {witnessed}..{anchor.entries - 1}"
            return Verification(
                len(entries), False, witnessed,
                f"rewritten: {span} differ from what {anchor.source} witnessed (chain recomputed or replaced)",
            )
        witnessed = anchor.entries
    return Verification(len(entries), True, None, "chain intact" + (f", {len(anchors)} anchor(s) match" if anchors else ""))
