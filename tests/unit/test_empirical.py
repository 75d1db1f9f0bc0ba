"""The one-run canary audit: its statistics are right, it stays below the accounted epsilon under DP, and it catches no noise."""

import math

import pytest

from fedsa_secure.data import node_data
from fedsa_secure.privacy.empirical import canary_audit, epsilon_lower_bound, p_value

DEMO_SIGMA, DEMO_Q, DEMO_STEPS = 0.86181640625, 1 / 6, 24  # the demo's two rounds (accounted epsilon 7.998 at 1e-5)


@pytest.fixture(scope="module")
def records():
    data = node_data("node-1", 0)
    return data.train.x, data.train.y


def test_perfect_guesses_under_pure_dp_have_a_closed_form():
    # 100 of 100 right: P = q^100 with q = e^eps / (1 + e^eps); the bound is where that equals 0.05.
    q = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(1000, 100, 100, 0.0, 0.95) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)
    assert p_value(1000, 100, 100, math.log(q / (1 - q)), 0.0) == pytest.approx(0.05, rel=1e-6)


def test_chance_level_guessing_proves_nothing():
    assert epsilon_lower_bound(1000, 200, 100, 1e-5, 0.95) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, 1e-5, 0.95) == 0.0


def test_delta_only_weakens_the_bound():
    pure = epsilon_lower_bound(2000, 400, 400, 0.0, 0.95)
    approx = epsilon_lower_bound(2000, 400, 400, 1e-5, 0.95)
    assert 0 < approx < pure


def test_with_dp_the_lower_bound_stays_below_the_accounted_epsilon(records):
    audit = canary_audit(*records, history=[(DEMO_SIGMA, DEMO_Q, DEMO_STEPS)], max_grad_norm=1.0, delta=1e-5, seed=0)
    assert audit.accounted_epsilon == pytest.approx(7.9983, abs=1e-3)
    assert 0 <= audit.epsilon_lower_bound < 2.0 and audit.consistent
    assert audit.canaries == 2000 and audit.steps == DEMO_STEPS


def test_without_noise_the_audit_finds_a_much_larger_lower_bound(records):
    private = canary_audit(*records, history=[(DEMO_SIGMA, DEMO_Q, DEMO_STEPS)], max_grad_norm=1.0, delta=1e-5, seed=0)
    leaky = canary_audit(*records, history=[(0.0, DEMO_Q, DEMO_STEPS)], max_grad_norm=1.0, delta=1e-5, seed=0)
    assert leaky.accounted_epsilon is None  # no noise: no finite epsilon to compare with
    assert leaky.correct == leaky.guesses > 0  # every guess right: the canaries are plainly visible
    assert leaky.epsilon_lower_bound > 3.5 and leaky.epsilon_lower_bound > 3 * private.epsilon_lower_bound


def test_an_understated_mechanism_is_caught(records):
    """Train without noise but account as if sigma were 4: the bound exceeds the (false) accounted epsilon."""
    leaky = canary_audit(*records, history=[(0.0, DEMO_Q, DEMO_STEPS)], max_grad_norm=1.0, delta=1e-5, seed=0)
    claimed = canary_audit(*records, history=[(4.0, DEMO_Q, DEMO_STEPS)], max_grad_norm=1.0, delta=1e-5, seed=0).accounted_epsilon
    assert claimed < 1.5 < leaky.epsilon_lower_bound


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_dp_bound_holds_across_seeds_and_more_canaries(records, seed):
    audit = canary_audit(*records, history=[(DEMO_SIGMA, DEMO_Q, DEMO_STEPS)], max_grad_norm=1.0, delta=1e-5,
                         canaries=5000, seed=seed)
    assert audit.consistent and audit.epsilon_lower_bound < 2.0
