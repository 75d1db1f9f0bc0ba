import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from fedsa_secure.fedsa.logme import logme, logme_significance


def _brute_force_evidence(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of log N(y; 0, F F^T / alpha + I / beta) / N, by direct optimisation."""
    n = len(y)

    def negative(log_ab: np.ndarray) -> float:
        alpha, beta = np.exp(log_ab)
        return -multivariate_normal(np.zeros(n), f @ f.T / alpha + np.eye(n) / beta).logpdf(y) / n

    return -minimize(negative, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12}).fun


@pytest.mark.parametrize("n, d", [(30, 5), (20, 50)])  # more samples than features, and fewer
def test_logme_is_the_maximum_evidence(n, d):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    labels = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    expected = np.mean([_brute_force_evidence(f, (labels == c).astype(float)) for c in (0, 1)])
    assert logme(f, labels) == pytest.approx(expected, abs=1e-4)


def test_informative_features_score_higher_than_noise():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 4)
    informative = np.eye(10)[labels] * 3 + 0.3 * rng.normal(size=(40, 10))
    noise = rng.normal(size=(40, 10))
    assert logme(informative, labels) > logme(noise, labels) + 0.2
    assert logme(np.hstack([informative, noise]), labels) < logme(informative, labels)  # extra useless dims cost evidence


def test_logme_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        logme(np.zeros((3, 2)), np.array([0, 1]))


def test_significance_separates_weak_information_from_none():
    """On 40 samples raw LogME barely separates a weak signal from noise; its z-score against shuffled labels does."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 4)
    weak = (labels % 2)[:, None] * 2.0 + rng.normal(size=(40, 2))  # knows parity, a little
    noise = rng.normal(size=(40, 10))
    assert logme(weak, labels, 10) - logme(noise, labels, 10) < 0.03
    assert logme_significance(weak, labels, 10) > 4 > 1 > abs(logme_significance(noise, labels, 10))
    assert logme_significance(weak, labels, 10) == logme_significance(weak, labels, 10)  # deterministic: a fixed seed
