"""In-memory secure aggregation as the experiments use it: the real SecAgg round, its sum and its traffic."""

import numpy as np
import pytest

from fedsa_secure.fedsa.amalgamate import apply_update
from fedsa_secure.fedsa.secure_sum import secure_sum
from fedsa_secure.models import backbone_state, flatten_state, make_student
from fedsa_secure.secagg.messages import QuantizationSpec
from fedsa_secure.secagg.packing import packed_size
from fedsa_secure.secagg.quantize import quantization_step, required_modulus_bits

SPEC = QuantizationSpec(clip=0.5, level_bits=16)


def updates(n, m, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    return {f"node-{i}": rng.uniform(-scale, scale, m) for i in range(1, n + 1)}


def test_secure_and_plain_students_differ_by_at_most_the_quantization_of_each_input():
    student = make_student(10, 0)
    m = flatten_state(backbone_state(student)).size
    inputs = updates(3, m)
    result = secure_sum(inputs, 1, SPEC)
    plain, secure = make_student(10, 0), make_student(10, 0)
    apply_update(plain, np.sum(list(inputs.values()), axis=0))
    apply_update(secure, result.total)
    gap = np.abs(flatten_state(backbone_state(secure)) - flatten_state(backbone_state(plain)))
    step = quantization_step(SPEC)
    assert gap.max() <= len(inputs) * step + 1e-6  # each input rounds by less than one step
    assert gap.mean() < step  # stochastic rounding is unbiased: errors mostly cancel
    assert gap.max() > 0  # the sum really went through quantization


def test_upload_is_exactly_the_packed_masked_vectors():
    inputs = updates(4, 1001)
    result = secure_sum(inputs, 3, SPEC)
    bits = required_modulus_bits(4, SPEC.level_bits)
    assert result.upload_bytes == 4 * packed_size(1001, bits)
    assert result.protocol_up_bytes > 0 and result.protocol_down_bytes > 0
    assert set(result.node_seconds) == set(inputs) and all(s > 0 for s in result.node_seconds.values())


def test_secure_sum_refuses_a_cohort_that_would_reveal_inputs():
    with pytest.raises(ValueError, match="at least 3 nodes"):
        secure_sum(updates(2, 10), 1, SPEC)


def test_secure_sum_refuses_vectors_of_different_lengths():
    inputs = updates(3, 10)
    inputs["node-3"] = inputs["node-3"][:9]
    with pytest.raises(ValueError, match="one length"):
        secure_sum(inputs, 1, SPEC)
