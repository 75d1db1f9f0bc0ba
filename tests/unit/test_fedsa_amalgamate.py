import numpy as np
import torch

from fedsa_secure.fedsa.amalgamate import apply_update
from fedsa_secure.models import backbone_state, flatten_state, make_student


def test_apply_update_moves_exactly_the_backbone_by_the_vector():
    student = make_student(seed=0)
    before = flatten_state(backbone_state(student))
    head_before = [p.detach().clone() for p in student.head.parameters()]
    delta = np.random.default_rng(0).normal(size=before.shape).astype(np.float32)
    apply_update(student, delta)
    np.testing.assert_array_equal(flatten_state(backbone_state(student)), before + delta)
    assert all(torch.equal(a, b) for a, b in zip(head_before, student.head.parameters()))
