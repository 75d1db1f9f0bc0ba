"""The privacy ledger detects edits, deletions, reordering, truncation and refuses to extend a broken chain."""

import json

import pytest

from fedsa_secure.errors import LedgerError
from fedsa_secure.privacy.ledger import (
    GENESIS,
    Ledger,
    LedgerHead,
    entry_hash,
    head_path,
    read_entries,
    read_head,
    verify_entries,
    verify_file,
    write_head,
)


def charge(round_number: int, epsilon: float) -> dict:
    return {
        "kind": "distillation", "round": round_number, "noise_multiplier": 1.1, "sample_rate": 0.1, "steps": 10,
        "max_grad_norm": 1.0, "delta": 1e-5, "accountant": "prv", "epsilon": epsilon,
    }


@pytest.fixture
def ledger_path(tmp_path):
    ledger = Ledger(tmp_path / "node.jsonl")
    for r, eps in [(1, 1.0), (2, 1.5), (4, 2.2)]:
        ledger.append(charge(r, eps))
    return tmp_path / "node.jsonl"


def rewrite(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_intact_chain_verifies_and_reopens(ledger_path):
    check = verify_entries(read_entries(ledger_path))
    assert check.ok and check.entries == 3 and check.first_bad is None
    reopened = Ledger(ledger_path)
    assert len(reopened) == 3
    reopened.append(charge(5, 3.0))
    assert verify_entries(read_entries(ledger_path)).ok


def test_edit_is_detected_at_the_edited_entry(ledger_path):
    entries = read_entries(ledger_path)
    entries[1]["epsilon"] = 0.5
    rewrite(ledger_path, entries)
    check = verify_entries(read_entries(ledger_path))
    assert not check.ok and check.first_bad == 1 and "modified" in check.reason


def test_deletion_and_reordering_are_detected(ledger_path):
    entries = read_entries(ledger_path)
    rewrite(ledger_path, [entries[0], entries[2]])
    assert verify_entries(read_entries(ledger_path)).first_bad == 1
    rewrite(ledger_path, [entries[1], entries[0], entries[2]])
    assert verify_entries(read_entries(ledger_path)).first_bad == 0


def test_broken_ledger_is_not_extended(ledger_path):
    entries = read_entries(ledger_path)
    entries[0]["steps"] = 1
    rewrite(ledger_path, entries)
    with pytest.raises(LedgerError, match="refusing to use a broken ledger"):
        Ledger(ledger_path)


def test_torn_line_is_reported(ledger_path):
    with open(ledger_path, "a") as handle:
        handle.write('{"seq": 3, "rou')
    with pytest.raises(LedgerError, match="entry 3 is not valid JSON"):
        read_entries(ledger_path)


def test_a_line_a_crash_cut_short_is_rolled_back_on_opening(ledger_path):
    """The charge is written before the update leaves: a line without its newline was never followed by a release."""
    with open(ledger_path, "a") as handle:
        handle.write('{"seq": 3, "rou')
    reopened = Ledger(ledger_path)
    assert reopened.rolled_back and len(reopened) == 3 and verify_file(ledger_path)[1].ok
    reopened.append(charge(5, 3.0))
    assert verify_file(ledger_path)[1].ok and len(read_entries(ledger_path)) == 4


def test_an_edited_last_line_is_not_rolled_back(ledger_path):
    """A whole last line (newline and all) that does not parse is an edit, not a torn append: refused."""
    with open(ledger_path, "a") as handle:
        handle.write('{"seq": 3, "edited": \n')
    with pytest.raises(LedgerError, match="entry 3 is not valid JSON"):
        Ledger(ledger_path)


def test_an_append_that_fails_is_rolled_back_and_the_next_one_succeeds(ledger_path, monkeypatch):
    ledger = Ledger(ledger_path)
    size = ledger_path.stat().st_size
    real_fsync = __import__("os").fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fedsa_secure.privacy.ledger.os.fsync", full_disk)
    with pytest.raises(LedgerError, match="No space left on device.*rolled back to 3 entries"):
        ledger.append(charge(5, 3.0))
    assert ledger_path.stat().st_size == size and len(ledger) == 3 and verify_file(ledger_path)[1].ok
    monkeypatch.setattr("fedsa_secure.privacy.ledger.os.fsync", real_fsync)
    ledger.append(charge(5, 3.0))
    assert len(Ledger(ledger_path)) == 4


def test_charge_without_required_fields_is_refused(tmp_path):
    with pytest.raises(LedgerError, match="epsilon"):
        Ledger(tmp_path / "l.jsonl").append({k: v for k, v in charge(1, 1.0).items() if k != "epsilon"})


def test_sidecar_head_tracks_every_append(ledger_path):
    entries = read_entries(ledger_path)
    head = read_head(head_path(ledger_path))
    assert head_path(ledger_path).name == "node.head.json"
    assert (head.entries, head.head) == (3, entries[-1]["hash"])
    assert Ledger(ledger_path).head == LedgerHead(3, entries[-1]["hash"], "ledger")


def test_cut_tail_is_detected_by_the_sidecar_anchor(ledger_path):
    entries = read_entries(ledger_path)
    rewrite(ledger_path, entries[:2])
    assert verify_entries(read_entries(ledger_path)).ok  # the chain alone cannot see it
    _, check = verify_file(ledger_path, [read_head(head_path(ledger_path))])
    assert not check.ok and check.first_bad == 2 and "truncated" in check.reason
    with pytest.raises(LedgerError, match="truncated.*refusing to use a broken ledger"):
        Ledger(ledger_path)


def recompute_chain(entries):
    previous = GENESIS
    for entry in entries:
        entry["prev_hash"] = previous
        entry["hash"] = previous = entry_hash(entry)
    return entries


def test_edit_with_recomputed_hashes_is_caught_only_by_an_anchor(ledger_path):
    entries = read_entries(ledger_path)
    per_round = [LedgerHead(i + 1, e["hash"], f"summary round {e['round']}") for i, e in enumerate(entries)]
    entries[1]["epsilon"] = 0.5
    forged = recompute_chain(entries)
    assert verify_entries(forged).ok
    check = verify_entries(forged, per_round)
    assert not check.ok and check.first_bad == 1 and "entry 1 differ" in check.reason
    final_only = verify_entries(forged, [per_round[-1]])  # one witness bounds the change to a range
    assert not final_only.ok and final_only.first_bad == 0 and "entries 0..2" in final_only.reason


def test_ledger_may_run_ahead_of_its_witness(ledger_path):
    """A crash between the fsync'd append and the sidecar write over-counts; that is not tampering."""
    entries = read_entries(ledger_path)
    write_head(head_path(ledger_path), LedgerHead(2, entries[1]["hash"]))
    _, check = verify_file(ledger_path, [read_head(head_path(ledger_path))])
    assert check.ok
    Ledger(ledger_path).append(charge(6, 3.5))
    assert read_head(head_path(ledger_path)).entries == 4


def test_count_only_anchor_detects_a_cut(ledger_path):
    entries = read_entries(ledger_path)
    assert verify_entries(entries, [LedgerHead(3, None)]).ok
    check = verify_entries(entries[:1], [LedgerHead(3, None, "summary rounds_trained")])
    assert not check.ok and check.first_bad == 1 and "summary rounds_trained saw 3" in check.reason


def test_deleted_ledger_with_a_sidecar_is_refused(ledger_path):
    ledger_path.unlink()
    _, check = verify_file(ledger_path, [read_head(head_path(ledger_path))])
    assert not check.ok and check.first_bad == 0
    with pytest.raises(LedgerError, match="truncated"):
        Ledger(ledger_path)


def test_verify_file_names_a_torn_line(ledger_path):
    with open(ledger_path, "a") as handle:
        handle.write('{"seq": 3, "rou')
    entries, check = verify_file(ledger_path)
    assert len(entries) == 3 and not check.ok and check.first_bad == 3 and "torn" in check.reason
