"""The privacy ledger detects edits, deletions, reordering and refuses to extend a broken chain."""

import json

import pytest

from fedsa_secure.errors import LedgerError
from fedsa_secure.privacy.ledger import Ledger, read_entries, verify_entries


def charge(round_number: int, epsilon: float) -> dict:
    return {
        "round": round_number, "noise_multiplier": 1.1, "sample_rate": 0.1, "steps": 10,
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
    with pytest.raises(LedgerError, match="refusing to append"):
        Ledger(ledger_path)


def test_torn_line_is_reported(ledger_path):
    with open(ledger_path, "a") as handle:
        handle.write('{"seq": 3, "rou')
    with pytest.raises(LedgerError, match="entry 3 is not valid JSON"):
        read_entries(ledger_path)


def test_charge_without_required_fields_is_refused(tmp_path):
    with pytest.raises(LedgerError, match="epsilon"):
        Ledger(tmp_path / "l.jsonl").append({k: v for k, v in charge(1, 1.0).items() if k != "epsilon"})
