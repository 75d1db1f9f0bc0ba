"""Enforcement: whatever the schedule, a node that follows `fits_budget` never spends more than its target."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_secure.privacy.accounting import calibrate_noise, epsilon_of, extend_history, fits_budget

SCHEDULES = dict(
    # Few distinct mechanisms (calibration is cached and costs ~1 s), many schedules.
    target=st.sampled_from([1.0, 3.0, 8.0]),
    delta=st.sampled_from([1e-6, 1e-5]),
    batches=st.sampled_from([5, 20]),  # sample rate 1/batches, as Opacus's Poisson loader uses
    epochs=st.sampled_from([1, 2]),
    planned=st.integers(1, 5),
    schedule=st.lists(st.booleans(), min_size=1, max_size=14),  # True: the node is asked to train this round
)


@settings(max_examples=25, deadline=None)
@given(**SCHEDULES)
def test_no_schedule_exceeds_the_target_rdp(**schedule):
    check_schedule("rdp", **schedule)


@settings(max_examples=6, deadline=None)  # each PRV calibration takes about a second
@given(**SCHEDULES)
def test_no_schedule_exceeds_the_target_prv(**schedule):
    check_schedule("prv", **schedule)


def check_schedule(accountant, target, delta, batches, epochs, planned, schedule):
    sample_rate, steps = 1.0 / batches, epochs * batches
    sigma = calibrate_noise(target, delta, sample_rate, planned * steps, accountant)
    history: list[tuple[float, float, int]] = []
    trained = 0
    for asked in schedule:
        if asked and fits_budget(history, sigma, sample_rate, steps, target, delta, accountant):
            history = extend_history(history, sigma, sample_rate, steps)
            trained += 1
        assert epsilon_of(history, delta, accountant) <= target
    # Calibrated for `planned` rounds, the node can train exactly that many when asked often enough.
    if sum(schedule) >= planned:
        assert trained == planned


def test_a_round_that_would_overspend_is_refused():
    sigma = calibrate_noise(2.0, 1e-5, 0.1, 20, "rdp")  # two rounds of 10 steps fit epsilon 2
    two_rounds = extend_history([], sigma, 0.1, 20)
    assert fits_budget([], sigma, 0.1, 10, 2.0, 1e-5, "rdp")
    assert fits_budget(extend_history([], sigma, 0.1, 10), sigma, 0.1, 10, 2.0, 1e-5, "rdp")
    assert not fits_budget(two_rounds, sigma, 0.1, 10, 2.0, 1e-5, "rdp")
    assert 1.95 <= epsilon_of(two_rounds, 1e-5, "rdp") <= 2.0
