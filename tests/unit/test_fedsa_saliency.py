import numpy as np
import pytest
import torch
from torch import nn

from fedsa_secure.fedsa.saliency import draw_cohort, gradcam_maps, inclusion_probabilities, selection_probabilities, transferability
from fedsa_secure.models import make_student

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower


class Affine(nn.Module):
    """features(x) = offset + scale * x; logits = [mean A, -mean A].

    For images with positive mean A, class 0 wins, alpha = 1/64 everywhere, so
    M = ReLU(1 + A/64) is increasing in A and the normalised map is minmax(A).
    """

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.offset + self.scale * x

    def classify(self, a: torch.Tensor) -> torch.Tensor:
        m = a.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)


def _minmax(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return ((flat - lo) / (hi - lo)).reshape(len(x), *x.shape[2:])


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)


def test_gradcam_known_answer(images):
    np.testing.assert_allclose(gradcam_maps(Affine(1.0, 0.0), images), _minmax(images), atol=2e-5)  # float32: 1 + A/64
    np.testing.assert_allclose(gradcam_maps(Affine(-1.0, 1.0), images), 1.0 - _minmax(images), atol=2e-5)  # float32: 1 + A/64


def test_constant_map_is_all_ones_not_nan(images):
    maps = gradcam_maps(Affine(0.0, 0.5), images)
    assert np.array_equal(maps, np.ones_like(maps))


def test_gradcam_on_the_student_is_normalised_resized_and_leaves_no_grads(images):
    model = make_student(seed=0).train()
    maps = gradcam_maps(model, images, size=16)
    assert maps.shape == (6, 16, 16) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and maps.max() > 0.9  # normalised, then resized
    assert gradcam_maps(model, images).shape == (6, 8, 8)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_transferability_known_answers(images):
    same = gradcam_maps(Affine(1.0, 0.0), images)
    assert transferability(same, gradcam_maps(Affine(1.0, 0.0), images)) == 1.0
    inverse = transferability(same, gradcam_maps(Affine(-1.0, 1.0), images))
    assert inverse > transferability(same, 0.5 * same + 0.5 * images[:, 0]) > 1.0
    left, right = np.zeros((2, 4, 4)), np.zeros((2, 4, 4))
    left[:, :, :2], right[:, :, 2:] = 1.0, 1.0
    assert transferability(left, right) == 2.0  # orthogonal maps: s = 0.5
    with pytest.raises(ValueError):
        transferability(same, same[:3])


def test_selection_probabilities_favour_lower_transferability():
    p = selection_probabilities([1.0, 2.0])
    np.testing.assert_allclose(p, [np.e / (np.e + 1), 1 / (np.e + 1)])
    p = selection_probabilities([1.1, 1.3, 1.2, 1.9])
    assert p.sum() == pytest.approx(1.0) and list(np.argsort(-p)) == [0, 2, 1, 3]
    np.testing.assert_allclose(selection_probabilities([1.2, 1.2, 1.2]), [1 / 3] * 3)


def test_draw_cohort_distinct_deterministic_and_weighted():
    names = ["a", "b", "c", "d"]
    p = np.array([0.4, 0.3, 0.2, 0.1])
    cohort = draw_cohort(names, p, 3, np.random.default_rng(5))
    assert len(set(cohort)) == 3 and set(cohort) <= set(names)
    assert cohort == draw_cohort(names, p, 3, np.random.default_rng(5))
    rng = np.random.default_rng(0)
    firsts = [draw_cohort(names, p, 1, rng)[0] for _ in range(2000)]
    counts = [firsts.count(n) / 2000 for n in names]
    np.testing.assert_allclose(counts, p, atol=0.04)
    with pytest.raises(ValueError):
        draw_cohort(names, p, 5, rng)


def test_inclusion_probabilities_are_the_chance_of_being_in_the_cohort() -> None:
    weights = np.array([0.90, 0.05, 0.03, 0.02])
    inclusion = inclusion_probabilities(weights, 3)
    assert inclusion.sum() == pytest.approx(3.0)  # three places, whoever fills them
    assert inclusion[0] == pytest.approx(1.0, abs=0.01)
    assert inclusion[1] > 0.6  # a 5% draw weight still fills a place most of the time: what the progress line shows
    rng, drawn = np.random.default_rng(1), np.zeros(4)
    for _ in range(4000):
        drawn[[["a", "b", "c", "d"].index(n) for n in draw_cohort(["a", "b", "c", "d"], weights, 3, rng)]] += 1
    assert np.allclose(drawn / 4000, inclusion, atol=0.03)  # what draw_cohort does
    assert inclusion_probabilities(weights, 4).tolist() == [1.0] * 4
