import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedsa_secure.models import (
    ConvNet,
    Translator,
    backbone_state,
    flatten_state,
    load_backbone_state,
    make_student,
    make_teacher,
    unflatten_like,
)

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower


def test_shapes_of_student_teacher_and_translator():
    x = torch.rand(3, 1, 8, 8)
    s, t = make_student(10, seed=0), make_teacher(5, seed=0)
    assert s.features(x).shape == (3, 32, 4, 4) and s(x).shape == (3, 10)
    assert t.features(x).shape == (3, 32, 4, 4) and t(x).shape == (3, 5)
    assert torch.equal(s(x), s.classify(s.features(x)))
    phi = Translator(32, 64)
    assert phi(s.features(x)).shape == (3, 64, 4, 4)
    convs = [m for m in phi.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.kernel_size == (1, 1) for c in convs)


def test_spatial_head_is_the_default_and_pooled_remains_available():
    x = torch.rand(3, 1, 8, 8)
    s = make_student(10, seed=0)
    assert s.head_type == "spatial" and s.head.in_features == 32 * 16 == s.head_in_features
    torch.testing.assert_close(s(x), s.head(s.features(x).flatten(1)))
    pooled = ConvNet(16, 10, head="pooled")
    assert pooled.head.in_features == 32
    torch.testing.assert_close(pooled(x), pooled.head(pooled.features(x).mean(dim=(2, 3))))
    assert s.new_head(4).in_features == 512 and s.new_head(4).out_features == 4
    with pytest.raises(ValueError, match="head"):
        ConvNet(16, 10, head="gap")


def test_models_are_opacus_compatible():
    for model in (make_student(seed=0), make_teacher(2, seed=0), Translator(32, 64)):
        assert ModuleValidator.validate(model, strict=False) == []


def test_seeded_construction_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = make_student(seed=7), make_student(seed=7)
    assert torch.rand(1) == expected
    assert all(np.array_equal(a_, b_) for a_, b_ in zip(backbone_state(a).values(), backbone_state(b).values()))
    assert not np.array_equal(flatten_state(backbone_state(make_student(seed=8))), flatten_state(backbone_state(a)))


def test_backbone_state_is_sorted_float32_copies_of_features_only():
    model = make_student(seed=0)
    state = backbone_state(model)
    assert list(state) == sorted(state) and all(k.startswith("features.") for k in state)
    assert sum(v.size for v in state.values()) == sum(p.numel() for p in model.features.parameters())
    assert all(v.dtype == np.float32 for v in state.values())
    state["features.0.weight"][:] = 99.0
    assert not torch.any(model.features[0].weight == 99.0)


def test_flatten_unflatten_and_load_round_trip():
    a, b = make_student(seed=0), make_student(seed=1)
    state = backbone_state(a)
    vec = flatten_state(state)
    assert vec.dtype == np.float32 and vec.ndim == 1
    back = unflatten_like(vec, state)
    assert list(back) == list(state) and all(np.array_equal(back[k], state[k]) for k in state)
    load_backbone_state(b, back)
    assert np.array_equal(flatten_state(backbone_state(b)), vec)
    with pytest.raises(ValueError):
        unflatten_like(vec[:-1], state)


def test_load_rejects_mismatched_state():
    model = make_student(seed=0)
    state = backbone_state(model)
    with pytest.raises(ValueError, match="missing"):
        load_backbone_state(model, {k: v for k, v in state.items() if k != "features.0.bias"})
    state["features.0.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="shape"):
        load_backbone_state(model, state)


def test_larger_images_are_pooled_to_the_same_spatial_head_and_parts_round_trip():
    s = make_student(10, seed=0)
    x = torch.rand(2, 1, 14, 14)
    assert s.features(x).shape == (2, 32, 7, 7) and s(x).shape == (2, 10)
    torch.testing.assert_close(s(x), s.head(torch.nn.functional.adaptive_avg_pool2d(s.features(x), 4).flatten(1)))
    both = backbone_state(s, ("features", "head"))
    assert set(both) - set(backbone_state(s)) == {"head.weight", "head.bias"}
    other = make_student(10, seed=1)
    load_backbone_state(other, both, ("features", "head"))
    torch.testing.assert_close(other(x), s(x))
