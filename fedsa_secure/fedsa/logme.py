"""LogME (You, Liu, Wang, Long, ICML 2021): how well features explain labels, by Bayesian linear-model evidence.

No maintained pip package offers LogME (the authors publish a script, not a package), so this is
the paper's Algorithm 1 in numpy: for each class's one-hot target y, maximise the evidence of
y = F w + noise (prior w ~ N(0, 1/alpha), noise ~ N(0, 1/beta)) over (alpha, beta) by the
fixed-point updates, and average the maximum log evidence per sample over classes. Higher is
better; it penalises features that fit only by chance, which a training-accuracy score does not.
"""

from __future__ import annotations

import numpy as np

MAX_ITERATIONS = 100
TOLERANCE = 1e-6


def _max_log_evidence(y: np.ndarray, u: np.ndarray, s2: np.ndarray, dim: int) -> float:
    """Maximum log evidence per sample for one target, given F = U diag(sqrt(s2)) V^T."""
    n = len(y)
    z = u.T @ y  # y's coordinates in the span of F's left singular vectors
    residual_outside = float(y @ y - z @ z)  # the part of y no weight vector can fit
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITERATIONS):
        shrink = beta * s2 / (alpha + beta * s2)
        gamma = float(shrink.sum())  # effective number of parameters
        m2 = float(np.sum((beta * z) ** 2 * s2 / (alpha + beta * s2) ** 2))  # |m|^2
        fit_error = float(np.sum((z * (1.0 - shrink)) ** 2)) + residual_outside  # |F m - y|^2
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(fit_error, 1e-12)
        converged = abs(new_alpha - alpha) / alpha < TOLERANCE and abs(new_beta - beta) / beta < TOLERANCE
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    shrink = beta * s2 / (alpha + beta * s2)
    m2 = float(np.sum((beta * z) ** 2 * s2 / (alpha + beta * s2) ** 2))
    fit_error = float(np.sum((z * (1.0 - shrink)) ** 2)) + residual_outside
    # log|alpha I + beta F^T F| over all `dim` directions: the ones outside F's row space contribute log alpha.
    log_det = float(np.sum(np.log(alpha + beta * s2))) + (dim - len(s2)) * np.log(alpha)
    evidence = (
        dim / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * fit_error
        - alpha / 2 * m2
        - log_det / 2
    )
    return float(evidence / n)


def _decompose(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(labels, U, squared singular values, feature dim) of the features F = U diag(s) V^T, checked."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels, dtype=np.int64)
    if len(f) != len(y) or len(f) < 2:
        raise ValueError(f"need at least 2 samples with one label each; got {f.shape} and {y.shape}")
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    return y, u[:, keep], s[keep] ** 2, f.shape[1]


def _mean_evidence(y: np.ndarray, u: np.ndarray, s2: np.ndarray, dim: int, num_classes: int) -> float:
    return float(np.mean([_max_log_evidence((y == c).astype(np.float64), u, s2, dim) for c in range(num_classes)]))


def logme(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Mean over classes of the maximum log evidence per sample of one-hot `labels` given `features` [N, D]."""
    y, u, s2, dim = _decompose(features, labels)
    return _mean_evidence(y, u, s2, dim, num_classes or int(y.max()) + 1)


def logme_significance(
    features: np.ndarray, labels: np.ndarray, num_classes: int | None = None, *, permutations: int = 100, seed: int = 0
) -> float:
    """How many standard deviations the LogME of `labels` lies above its LogME on shuffled labels (a z-score).

    LogME alone ranks features by evidence, but on a few dozen labelled samples features that
    know nothing of the labels (random projections of the input) score close to weakly useful
    ones: the absolute gaps shrink to noise. Against the same features' scores on
    `permutations` label shufflings, a useless teacher sits near 0 and a useful one many
    deviations above (the singular value decomposition is shared by every shuffle).
    """
    y, u, s2, dim = _decompose(features, labels)
    classes = num_classes or int(y.max()) + 1
    rng = np.random.default_rng(seed)
    null = np.array([_mean_evidence(rng.permutation(y), u, s2, dim, classes) for _ in range(permutations)])
    spread = float(null.std())
    return (_mean_evidence(y, u, s2, dim, classes) - float(null.mean())) / max(spread, 1e-12)
