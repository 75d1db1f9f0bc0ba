"""simulate() with the experiment's knobs: selection mode and secure aggregation, on the small digits federation."""

import pytest

from fedsa_secure.data import DEMO_NODES
from fedsa_secure.fedsa.simulation import simulate
from fedsa_secure.secagg.packing import packed_size
from fedsa_secure.secagg.quantize import required_modulus_bits


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


def run(teachers, private=False, **kwargs):
    return simulate(0, 1, method="fedsa+", dataset="digits", private=private, teacher_cache=teachers, **kwargs)


def test_secure_aggregation_gives_the_plain_result_and_uploads_packed_vectors(teachers):
    # DP with fixed mechanism seeds: both runs train exactly the same updates; only their sum differs
    plain = run(teachers, private=True)
    secure = run(teachers, private=True, aggregation="secure")
    assert plain["rounds"][1]["cohort"] == secure["rounds"][1]["cohort"]  # same seed, same draw
    m, cohort = secure["vector_length"], len(secure["rounds"][1]["cohort"])
    assert secure["bytes_up"] == cohort * packed_size(m, required_modulus_bits(cohort, 16))
    assert plain["bytes_up"] == cohort * 4 * m and secure["bytes_up"] < plain["bytes_up"]
    assert secure["bytes_down"] > plain["bytes_down"] == cohort * 4 * m  # the student, plus protocol messages
    assert secure["protocol_bytes_up"] > 0 and plain["protocol_bytes_up"] == 0
    assert secure["max_abs_weighted_update"] < 0.5  # inside the clip: the sum differs from plain by quantization only
    assert secure["max_abs_weighted_update"] == plain["max_abs_weighted_update"]
    assert secure["scratch_accuracy"] == plain["scratch_accuracy"]
    # (their adapted students' accuracies are not compared: 200 adaptation steps amplify the quantization
    # noise to about a point; test_experiment_secure_sum bounds the parameter difference itself)


def test_uniform_selection_trains_every_node(teachers):
    every = run(teachers, selection="uniform")
    assert sorted(every["rounds"][1]["cohort"]) == sorted(DEMO_NODES)
    assert every["rounds"][1]["probabilities"] == pytest.approx(dict.fromkeys(DEMO_NODES, 0.25))


def test_unknown_modes_are_refused_by_name(teachers):
    with pytest.raises(ValueError, match="selection must be one of"):
        run(teachers, selection="best")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        run(teachers, aggregation="homomorphic")
