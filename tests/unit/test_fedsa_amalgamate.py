import numpy as np
import pytest
import torch

from fedsa_secure.fedsa.amalgamate import TailAverage, apply_update
from fedsa_secure.models import backbone_state, flatten_state, make_student


def test_apply_update_moves_exactly_the_backbone_by_the_vector():
    student = make_student(seed=0)
    before = flatten_state(backbone_state(student))
    head_before = [p.detach().clone() for p in student.head.parameters()]
    delta = np.random.default_rng(0).normal(size=before.shape).astype(np.float32)
    apply_update(student, delta)
    np.testing.assert_array_equal(flatten_state(backbone_state(student)), before + delta)
    assert all(torch.equal(a, b) for a, b in zip(head_before, student.head.parameters()))


def _moved(student, rng):
    apply_update(student, rng.normal(size=flatten_state(backbone_state(student)).shape).astype(np.float32))
    return flatten_state(backbone_state(student))


def test_tail_average_is_the_mean_of_the_last_rounds_and_leaves_the_student_alone():
    rng = np.random.default_rng(1)
    student = make_student(seed=0)
    tail = TailAverage(2)
    assert tail.averaged(student) is student  # nothing recorded yet: the student as it is
    states = []
    for _ in range(3):
        states.append(_moved(student, rng))
        tail.add(student)
    head = [p.detach().clone() for p in student.head.parameters()]
    average = tail.averaged(student)
    np.testing.assert_allclose(flatten_state(backbone_state(average)), (states[1] + states[2]) / 2, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(flatten_state(backbone_state(student)), states[2])  # not modified
    assert all(torch.equal(a, b) for a, b in zip(head, average.head.parameters()))  # head copied as is


def test_tail_average_of_one_round_is_the_latest_student():
    rng = np.random.default_rng(2)
    student = make_student(seed=0)
    tail = TailAverage(1)
    for _ in range(2):
        _moved(student, rng)
        tail.add(student)
    np.testing.assert_array_equal(flatten_state(backbone_state(tail.averaged(student))), flatten_state(backbone_state(student)))


def test_tail_average_needs_a_round():
    with pytest.raises(ValueError, match="at least 1 round"):
        TailAverage(0)
