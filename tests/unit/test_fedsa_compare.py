import numpy as np
import pytest
from scipy.stats import binomtest

from fedsa_secure.fedsa.compare import paired_accuracy_difference
from fedsa_secure.launch import format_table


def test_only_disagreements_count_and_the_interval_is_clopper_pearson_mapped():
    student = [True] * 90 + [False] * 10
    reference = [True] * 88 + [False] * 2 + [True] * 2 + [False] * 8  # 2 wins, 2 losses, 96 agreements
    share = binomtest(2, 4).proportion_ci(0.95, method="exact")
    diff, low, high = paired_accuracy_difference(student, reference)
    assert diff == 0.0
    assert (low, high) == pytest.approx(((2 * share.low - 1) * 0.04, (2 * share.high - 1) * 0.04))
    assert low == pytest.approx(-high) and 0 < high < 0.04  # never wider than the disagreements allow


def test_agreement_everywhere_and_one_sided_wins():
    same = np.array([True, False, True])
    assert paired_accuracy_difference(same, same) == (0.0, 0.0, 0.0)
    diff, low, high = paired_accuracy_difference([True] * 10, [False] * 10)
    assert diff == 1.0 and high == 1.0 and low == pytest.approx(2 * 0.025 ** (1 / 10) - 1)  # exact lower bound


def test_mismatched_records_are_refused():
    with pytest.raises(ValueError, match="same test records"):
        paired_accuracy_difference([True], [True, False])
    with pytest.raises(ValueError, match="same test records"):
        paired_accuracy_difference([], [])


def test_demo_table_shows_the_difference_and_its_interval():
    summary = {
        "dataset": "digits", "probe_size": 50, "test_size": 359, "method": "fedsa",
        "scratch_accuracy": 0.9109, "student_accuracy": 0.9276,
        "student_minus_scratch": {"difference": 0.0167, "low": -0.012, "high": 0.046},
        "nodes": [{"name": "node-1", "epsilon": 7.2, "target_epsilon": 8.0, "delta": 1e-5, "rounds_trained": 4}],
        "guarantee": "privacy: every node's records at epsilon <= 7.20",
    }
    table = format_table(summary)
    assert "privacy: every node's records at epsilon <= 7.20" in table.splitlines()
    assert "student - Scratch: +1.7 points on these 359 test records (exact 95% interval -1.2 to +4.6;" in table


def test_the_guarantee_line_says_what_the_audit_found():
    from fedsa_secure.launch import guarantee_line

    nodes = [{"epsilon": 7.99, "delta": 1e-5}, {"epsilon": 3.99, "delta": 1e-5}]
    line = guarantee_line({"headline": {"holds": True}, "nodes": nodes})
    assert line.startswith("privacy: every node's records at epsilon <= 7.99, delta 1e-05, its teacher's training included")
    assert guarantee_line({"headline": {"holds": False}, "nodes": nodes}).startswith("privacy: NOT guaranteed")
