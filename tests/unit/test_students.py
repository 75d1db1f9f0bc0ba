"""Heterogeneous students: shapes, exact per-sample gradients, DP training with both objectives, translators, Grad-CAM."""

import numpy as np
import pytest
import torch
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.validators import ModuleValidator
from torch import nn

from fedsa_secure.data import LabelledSet, NodeData, aggregator_data, node_data
from fedsa_secure.errors import ConfigError
from fedsa_secure.fedsa.distill import DPDistiller, DPSettings, FeatureObjective
from fedsa_secure.fedsa.output_kd import OutputKDSettings, OutputObjective, fit_output_map
from fedsa_secure.fedsa.saliency import gradcam_maps
from fedsa_secure.models import (
    MLP,
    STUDENT_ARCHS,
    ConvNet,
    ResNet,
    Student,
    Translator,
    architecture_digest,
    backbone_state,
    check_student,
    flatten_state,
    make_student,
    make_teacher,
    register_student,
    student_names,
)

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower

ARCHS = tuple(STUDENT_ARCHS)
# (type, feature channels, backbone parameter count) of each architecture's student
EXPECTED = {"cnn": (ConvNet, 32, 14208), "resnet": (ResNet, 32, 19520), "mlp": (MLP, 16, 82976)}


def test_three_architectures_and_cnn_is_the_default():
    assert set(ARCHS) == {"cnn", "resnet", "mlp"}
    default, cnn = make_student(10, seed=3), make_student(10, seed=3, arch="cnn")
    assert type(default) is ConvNet and np.array_equal(flatten_state(backbone_state(default)), flatten_state(backbone_state(cnn)))
    with pytest.raises(ConfigError, match="unknown student architecture 'vit'.*cnn, resnet, mlp"):
        make_student(10, seed=0, arch="vit")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", [8, 14])
def test_forward_shapes_and_shared_interface(arch, side):
    cls, channels, n_params = EXPECTED[arch]
    s = make_student(7, seed=0, arch=arch)
    x = torch.rand(3, 1, side, side)
    maps = s.features(x)
    grid = 4 if arch == "mlp" else side // 2  # the MLP's grid is fixed; the convolutional students halve the side
    assert isinstance(s, cls) and maps.shape == (3, channels, grid, grid) and s.feature_channels == channels
    assert s(x).shape == (3, 7) and torch.equal(s(x), s.classify(maps))
    assert s.head_input(maps).shape == (3, channels * 16) and s.head.in_features == channels * 16
    assert s.new_head(2).in_features == channels * 16 and s.new_head(2).out_features == 2
    assert sum(p.numel() for p in s.features.parameters()) == n_params
    assert ModuleValidator.validate(s, strict=False) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_seeded_students_are_deterministic(arch):
    a, b, c = (make_student(10, seed=s, arch=arch) for s in (5, 5, 6))
    assert np.array_equal(flatten_state(backbone_state(a)), flatten_state(backbone_state(b)))
    assert not np.array_equal(flatten_state(backbone_state(a)), flatten_state(backbone_state(c)))


@pytest.mark.parametrize("arch", ARCHS)
def test_ew_per_sample_gradients_equal_one_backward_per_record(arch):
    """GroupNorm / LayerNorm normalise each record alone, so ExpandedWeights' per-sample gradients are exact."""
    model = make_student(4, seed=0, arch=arch)
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 3, 1])
    gsm = GradSampleModuleExpandedWeights(model, loss_reduction="sum")
    torch.nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    for i in range(3):
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters()))
        for p, g in zip(model.parameters(), grads):
            torch.testing.assert_close(p.grad_sample[i], g, atol=1e-5, rtol=1e-4)


def test_translator_resizes_student_maps_to_the_teacher_grid():
    grow, shrink = Translator(16, 64, out_size=7), Translator(32, 64, out_size=(2, 2))
    assert grow(torch.rand(2, 16, 4, 4)).shape == (2, 64, 7, 7)
    assert shrink(torch.rand(2, 32, 7, 7)).shape == (2, 64, 2, 2)
    same, plain = Translator(32, 64, out_size=4), Translator(32, 64)
    plain.load_state_dict(same.state_dict())  # the resize adds no parameters
    a = torch.rand(2, 32, 4, 4)
    torch.testing.assert_close(same(a), plain(a), rtol=0, atol=0)  # same grid: no resize at all
    small = torch.rand(2, 16, 4, 4)
    resized = torch.nn.functional.interpolate(small, size=(7, 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grow(small), torch.nn.Sequential.forward(grow, resized))  # resize first, then the 1x1 stack


def _node(side: int) -> NodeData:
    full = node_data("node-1", 0)
    x = full.train.x[:60]
    if side != 8:
        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(side, side), mode="bilinear").numpy()
    return NodeData(full.name, full.task, LabelledSet(np.ascontiguousarray(x), full.train.y[:60], 5))


def _probe(side: int) -> LabelledSet:
    probe, _ = aggregator_data(0)
    x = probe.x if side == 8 else torch.nn.functional.interpolate(torch.from_numpy(probe.x), size=(side, side), mode="bilinear").numpy()
    return LabelledSet(np.ascontiguousarray(x), probe.y, probe.num_classes)


@pytest.mark.parametrize("objective", ["features", "outputs"])
@pytest.mark.parametrize(("arch", "side"), [("cnn", 8), ("resnet", 8), ("mlp", 8), ("mlp", 14), ("resnet", 14)])
def test_dp_step_for_every_architecture_and_objective(arch, side, objective):
    """One DP-SGD round with the default ("ew") per-sample gradients; 14x14 makes the MLP's translator resize 4x4 -> 7x7."""
    node, probe = _node(side), _probe(side)
    teacher = make_teacher(5, seed=0).eval()  # untrained: the shapes and the mechanism are under test, not accuracy
    if objective == "features":
        obj, parts = FeatureObjective(teacher, node, seed=0, arch=arch), ("features",)
        translated = obj.module(torch.from_numpy(node.train.x[:2]))
    else:
        obj = OutputObjective(teacher, node, fit_output_map(teacher, node.task, probe), 0, OutputKDSettings(feature_weight=1.0), arch=arch)
        parts = ("features", "head")
        translated = obj.module(torch.from_numpy(node.train.x[:2]))[1]
    assert translated.shape == (2, 32, side // 2, side // 2)  # the teacher's maps
    settings = DPSettings(planned_rounds=1, local_epochs=1, batch_size=20, accountant="rdp")
    assert settings.grad_sample_mode == "ew"
    d = DPDistiller(teacher, node, settings, seed=0, mechanism_seed=1, objective=obj)
    state = backbone_state(make_student(10, seed=0, arch=arch), parts)
    r = d.train_round(state)
    head = sum(p.numel() for p in make_student(10, seed=0, arch=arch).head.parameters())
    assert r.update.shape == flatten_state(state).shape == (EXPECTED[arch][2] + (head if objective == "outputs" else 0),)
    assert np.all(np.isfinite(r.update)) and np.abs(r.update).max() > 0 and r.mechanism.steps == 3 and 0 < r.epsilon <= 8.0


@pytest.mark.parametrize("arch", ARCHS)
def test_gradcam_maps_of_every_architecture(arch):
    probe, _ = aggregator_data(0)
    model = make_student(10, seed=0, arch=arch).train()
    maps = gradcam_maps(model, probe.x[:12])
    assert maps.shape == (12, 8, 8) and maps.dtype == np.float32 and np.all(np.isfinite(maps))
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    per_image_span = maps.reshape(12, -1).max(1) - maps.reshape(12, -1).min(1)
    assert np.all(per_image_span > 0.5)  # a map with structure, not the constant fallback
    assert model.training and all(p.grad is None for p in model.parameters())


def tabular_student(num_classes: int) -> Student:
    return Student(nn.Sequential(nn.Linear(12, 32), nn.ReLU()), 32, num_classes)


def test_a_registered_student_is_built_seeded_and_named_by_a_digest_of_its_architecture() -> None:
    register_student("tests:tabular", tabular_student)
    assert "tests:tabular" in student_names()
    a, b = make_student(3, 7, "tests:tabular"), make_student(3, 7, "tests:tabular")
    assert np.array_equal(flatten_state(backbone_state(a, ("features", "head"))), flatten_state(backbone_state(b, ("features", "head"))))
    assert a(torch.ones(5, 12)).shape == (5, 3)
    digest = architecture_digest("tests:tabular", 3)
    assert len(digest) == 32 and digest == architecture_digest("tests:tabular", 3)  # not the weights: the seed does not enter
    assert digest != architecture_digest("tests:tabular", 4)  # another head
    register_student("tests:tabular", lambda k: Student(nn.Sequential(nn.Linear(12, 33), nn.ReLU()), 33, k))
    assert architecture_digest("tests:tabular", 3) != digest  # the same name, other code: the digest tells them apart
    with pytest.raises(ConfigError, match="built in"):
        register_student("cnn", tabular_student)


def test_a_student_is_checked_on_the_records_it_will_see() -> None:
    register_student("tests:tabular-12", tabular_student)
    check_student("tests:tabular-12", 3, np.zeros((20, 12), np.float32))
    with pytest.raises(ConfigError, match=r"fails on records of shape \[7\]"):
        check_student("tests:tabular-12", 3, np.zeros((20, 7), np.float32))
    with pytest.raises(ConfigError, match=r"gives \[8, 10\].*\[8, 3\]"):
        register_student("tests:ten", lambda k: Student(nn.Linear(12, 10), 10, 10))
        check_student("tests:ten", 3, np.zeros((20, 12), np.float32))
    register_student("tests:not-a-student", lambda k: nn.Linear(12, k))
    with pytest.raises(ConfigError, match="built a Linear; a student must be a fedsa_secure.Student"):
        make_student(3, 0, "tests:not-a-student")


def test_the_teacher_a_node_trains_fits_its_records_shape() -> None:
    assert isinstance(make_teacher(4, 0, (1, 14, 14)), ConvNet)
    vector = make_teacher(4, 0, (12,))
    assert isinstance(vector, Student) and vector(torch.ones(3, 12)).shape == (3, 4)
