"""The cross-check rebuilds epsilon from recorded parameters with four accountants and flags ledgers they contradict."""

import math

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import create_accountant

from fedsa_secure.privacy.crosscheck import ACCOUNTANTS, crosscheck, epsilon_by, histories
from fedsa_secure.privacy.ledger import Ledger, read_entries

DEMO_SIGMA, DEMO_Q = 0.86181640625, 1 / 6  # what the demo's nodes calibrate to (target 8, 2 planned rounds of 12 steps)

# Pinned figures at delta = 1e-5, computed once with opacus 1.6.0 and dp-accounting 0.6.0 by
# `epsilon_by(name, history, 1e-5)`. They are not self-evident, so two independent checks hold them:
# Opacus PRV and Google PLD are different numerical methods in different libraries and agree to
# within PRV's eps_error (0.01) plus PLD's discretisation; the two RDP implementations (different
# order grids) agree to 0.2%, and RDP, a looser bound, is above both. The demo's 7.99829650167516
# is also the epsilon its ledgers recorded for two rounds (/tmp/demo2, summary.json).
PINNED = [
    ([(1.0, 0.01, 1000)],
     {"opacus_prv": 1.83837, "opacus_rdp": 2.10137, "dp_accounting_pld": 1.82824, "dp_accounting_rdp": 2.10137}),
    ([(DEMO_SIGMA, DEMO_Q, 24)],
     {"opacus_prv": 7.99830, "opacus_rdp": 9.11464, "dp_accounting_pld": 7.98773, "dp_accounting_rdp": 9.12990}),
    ([(1.1, 0.05, 100), (2.0, 0.05, 50)],
     {"opacus_prv": 2.99876, "opacus_rdp": 3.41301, "dp_accounting_pld": 2.98854, "dp_accounting_rdp": 3.41311}),
]


@pytest.mark.parametrize("history,expected", PINNED)
def test_pinned_epsilons(history, expected):
    got = {name: epsilon_by(name, history, 1e-5) for name in ACCOUNTANTS}
    for name in ACCOUNTANTS:
        assert got[name] == pytest.approx(expected[name], rel=2e-3), name
    assert abs(got["opacus_prv"] - got["dp_accounting_pld"]) < 0.02
    assert got["opacus_rdp"] > got["opacus_prv"] and got["dp_accounting_rdp"] > got["dp_accounting_pld"]


def test_shared_work_matches_fresh_library_accountants_bit_for_bit():
    """epsilon_by reuses each mechanism's RDP vector and one-step PLD across histories; that must not move a figure."""
    history, delta = [(1.2, 0.1, 5), (1.5, 0.1, 7)], 1e-5
    event = dp_event.ComposedDpEvent([
        dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
        for sigma, q, steps in history
    ])
    expected = {"dp_accounting_pld": PLDAccountant().compose(event).get_epsilon(delta),
                "dp_accounting_rdp": RdpAccountant().compose(event).get_epsilon(delta)}
    for mechanism in ("prv", "rdp"):
        accountant = create_accountant(mechanism=mechanism)
        accountant.history = list(history)
        expected[f"opacus_{mechanism}"] = accountant.get_epsilon(delta=delta)
    assert {name: epsilon_by(name, history, delta) for name in ACCOUNTANTS} == expected


def test_no_noise_means_no_guarantee():
    assert all(math.isinf(epsilon_by(name, [(0.0, 0.1, 10)], 1e-5)) for name in ACCOUNTANTS)


def demo_ledger(tmp_path, rounds=2, sigma=DEMO_SIGMA):
    """A ledger whose epsilons are the Opacus PRV figures for `rounds` demo rounds of 12 steps."""
    ledger = Ledger(tmp_path / "node-1.jsonl")
    for r in range(1, rounds + 1):
        eps = epsilon_by("opacus_prv", [(sigma, DEMO_Q, 12 * r)], 1e-5)
        ledger.append({"kind": "distillation", "round": r, "noise_multiplier": sigma, "sample_rate": DEMO_Q, "steps": 12,
                       "max_grad_norm": 1.0,
                       "delta": 1e-5, "accountant": "prv", "epsilon": eps})
    return read_entries(tmp_path / "node-1.jsonl")


def test_histories_merge_like_opacus(tmp_path):
    entries = demo_ledger(tmp_path)
    assert histories(entries) == [[(DEMO_SIGMA, DEMO_Q, 12)], [(DEMO_SIGMA, DEMO_Q, 24)]]


def test_honest_ledger_crosschecks(tmp_path):
    check = crosscheck(demo_ledger(tmp_path))
    assert check.ok and [e.ok for e in check.entries] == [True, True]
    assert check.recorded == pytest.approx(7.99830, abs=1e-4)
    assert check.figures["dp_accounting_pld"] == pytest.approx(7.98773, abs=1e-3)
    # RDP is the loosest; the largest gap to the recorded PRV figure is Google's RDP, ~1.13.
    assert check.largest_disagreement_with == "dp_accounting_rdp"
    assert check.largest_disagreement == pytest.approx(9.12990 - 7.99830, abs=2e-3)


def test_understated_epsilon_is_named(tmp_path):
    entries = demo_ledger(tmp_path)
    entries[1]["epsilon"] = 6.5  # the chain is not the point here: the figure contradicts its parameters
    check = crosscheck(entries)
    assert not check.ok and [e.ok for e in check.entries] == [True, False]
    assert "entry 1 (round 2) records epsilon 6.5000, its parameters give 7.9983" in check.problems[0]


def test_unknown_accountant_is_a_problem_not_a_crash(tmp_path):
    entries = demo_ledger(tmp_path, rounds=1)
    entries[0]["accountant"] = "gdp"
    check = crosscheck(entries)
    assert not check.ok and check.entries[0].recomputed is None
    assert crosscheck([]) is None
