import numpy as np
import pytest
import torch

from fedsa_secure.data import LabelledSet, NodeData
from fedsa_secure.fedsa.distill import DPDistiller, DPSettings
from fedsa_secure.fedsa.nonprivate import PlainTrainer
from fedsa_secure.fedsa.output_kd import OutputKDSettings, OutputObjective, fit_output_map
from fedsa_secure.fedsa.select_plus import concentrated_probabilities, output_transferability
from fedsa_secure.models import ConvNet, backbone_state, flatten_state, make_student

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower


class Oracle(ConvNet):
    """A 'teacher' whose logits are a fixed function of the image: logit j = 10 * mean of row j (digit j drawn there)."""

    def __init__(self, classes: int, scramble: bool) -> None:
        super().__init__(4, classes)
        self.classes, self.scramble = classes, scramble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0].mean(dim=2)[:, : self.classes] * 10
        return rows[:, torch.randperm(self.classes, generator=torch.Generator().manual_seed(0))] if self.scramble else rows

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.repeat(1, 8, 1, 1), 2)


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = 0.1 * rng.random((len(labels), 1, 8, 8), dtype=np.float32)
    x[np.arange(len(labels)), 0, labels] += 0.8  # class c lights row c
    return x


@pytest.fixture(scope="module")
def probe() -> LabelledSet:
    labels = np.repeat(np.arange(4), 5)
    return LabelledSet(_images(labels, np.random.default_rng(0)), labels, 4)


def test_output_transferability_prefers_teachers_whose_logits_explain_the_labels(probe):
    useful = output_transferability(Oracle(4, scramble=False), "parity", probe)  # parity: images pass unchanged
    permuted = output_transferability(Oracle(4, scramble=True), "parity", probe)  # same information, other order
    rng = np.random.default_rng(9)
    blind = output_transferability(Oracle(4, False), "parity", LabelledSet(probe.x, rng.permutation(probe.y), 4))
    assert useful == pytest.approx(permuted, abs=1e-9)  # LogME is invariant to relabelling the teacher's classes
    assert useful > 3 and abs(blind) < 3  # deviations above what the same logits reach on shuffled labels


def test_concentrated_probabilities_known_values_and_top_k():
    np.testing.assert_allclose(concentrated_probabilities([0.0, -0.01], temperature=0.01), [np.e / (np.e + 1), 1 / (np.e + 1)])
    p = concentrated_probabilities([19.4, 14.1, 5.4, 0.1, 1.3, 3.3])  # MNIST-1D seed 0, DP teachers (z-scores)
    assert p[0] > 0.99 and max(p[2], p[3], p[4]) < 1e-5
    third = concentrated_probabilities([5.4, 0.1, 1.3, 3.3])  # the third cohort slot, once both digit teachers are in
    assert third[0] > 0.85 and third[1] + third[2] < 0.03
    np.testing.assert_allclose(concentrated_probabilities([3.0, 1.0, 2.0], temperature=100.0, top_k=2)[1], 0.0)
    with pytest.raises(ValueError):
        concentrated_probabilities([1.0, 2.0], top_k=3)


def test_output_map_recovers_the_class_correspondence(probe):
    out = fit_output_map(Oracle(4, scramble=True), "parity", probe, regularisation=10.0)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 50)
    q = out.probabilities(Oracle(4, scramble=True)(torch.from_numpy(_images(labels, rng))).detach().numpy())
    assert q.shape == (50, 4) and np.allclose(q.sum(axis=1), 1.0)
    assert (q.argmax(axis=1) == labels).mean() == 1.0


def _node(rng: np.random.Generator) -> NodeData:
    labels = rng.integers(0, 4, 60)
    return NodeData("node-1", "parity", LabelledSet(_images(labels, rng), labels % 2, 2))


@pytest.mark.parametrize("feature_weight", [0.0, 1.0])
def test_dp_output_distillation_releases_backbone_and_head(probe, feature_weight):
    teacher = Oracle(4, scramble=True)
    objective = OutputObjective(teacher, _node(np.random.default_rng(1)), fit_output_map(teacher, "parity", probe), seed=0,
                                settings=OutputKDSettings(feature_weight=feature_weight))
    assert objective.released == ("features", "head") and len(objective.tensors) == (3 if feature_weight else 2)
    settings = DPSettings(planned_rounds=2, local_epochs=1, batch_size=20, accountant="rdp")
    d = DPDistiller(teacher, _node(np.random.default_rng(1)), settings, seed=0, mechanism_seed=1, objective=objective)
    state = backbone_state(make_student(4, seed=0), ("features", "head"))
    r = d.train_round(state)
    assert r.update.shape == flatten_state(state).shape and np.all(np.isfinite(r.update))
    head_delta = r.update[-(4 * 512 + 4):]  # sorted names: features.* then head.bias, head.weight
    assert np.abs(head_delta).max() > 0 and 0 < r.epsilon <= 8.0 and r.mechanism.steps == 3


def test_plaintext_training_learns_the_mapped_labels(probe):
    teacher = Oracle(4, scramble=False)
    node = _node(np.random.default_rng(2))
    objective = OutputObjective(teacher, node, fit_output_map(teacher, "parity", probe, regularisation=10.0), seed=0,
                                settings=OutputKDSettings(release_head=False))
    assert objective.released == ("features",)
    student = make_student(4, seed=0)
    trainer = PlainTrainer(objective, DPSettings(local_epochs=30, batch_size=20), seed=0)
    update = trainer.train_round(backbone_state(student))
    assert np.linalg.norm(update) > 0
    with torch.no_grad():
        logits, _ = objective.module(torch.from_numpy(probe.x))
    assert (logits.argmax(dim=1).numpy() == probe.y).mean() >= 0.9  # the proxy learned the teacher's (mapped) knowledge


def test_plaintext_training_clips_each_batch_gradient_to_the_dp_norm(probe):
    """One step (one batch, fresh momentum) moves the proxy by at most learning_rate * max_grad_norm,
    however large the loss; the same objective scaled up a millionfold moves it exactly that far."""
    teacher = Oracle(4, scramble=False)
    node = _node(np.random.default_rng(2))
    objective = OutputObjective(teacher, node, fit_output_map(teacher, "parity", probe, regularisation=10.0), seed=0,
                                settings=OutputKDSettings(kd_weight=1e6))
    assert objective.released == ("features", "head")  # every trained parameter is in the update
    settings = DPSettings(local_epochs=1, batch_size=len(node.train), learning_rate=0.1, max_grad_norm=0.5)
    update = PlainTrainer(objective, settings, seed=0).train_round(backbone_state(make_student(4, seed=0), objective.released))
    assert np.linalg.norm(update) == pytest.approx(0.1 * 0.5, rel=1e-3)
