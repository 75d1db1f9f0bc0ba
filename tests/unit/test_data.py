import numpy as np
import pytest

from fedsa_secure.data import DEMO_NODES, TASK_CLASSES, aggregator_data, node_data, task_input
from fedsa_secure.errors import ConfigError


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}  # load_digits has no duplicate images


def test_same_seed_same_split_and_other_seed_differs():
    p1, t1 = aggregator_data(3)
    p2, t2 = aggregator_data(3)
    assert np.array_equal(p1.x, p2.x) and np.array_equal(t1.y, t2.y)
    for name in DEMO_NODES:
        a, b = node_data(name, 3), node_data(name, 3)
        assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.train.y, b.train.y)
    assert not np.array_equal(aggregator_data(4)[1].x, t1.x)


def test_probe_has_exactly_five_per_class_and_test_is_a_fifth():
    probe, test = aggregator_data(0)
    assert np.bincount(probe.y, minlength=10).tolist() == [5] * 10
    assert len(test) == round(0.2 * 1797)
    assert np.bincount(aggregator_data(0, probe_per_class=2)[0].y).tolist() == [2] * 10


def test_every_record_belongs_to_exactly_one_party():
    probe, test = aggregator_data(1)
    parts = [_rows(probe.x), _rows(test.x)] + [_rows(node_data(n, 1).train.x) for n in DEMO_NODES]
    assert sum(len(p) for p in parts) == 1797
    assert len(set().union(*parts)) == 1797


def test_node_tasks_and_labels():
    n1, n2, n3, n4 = (node_data(n, 0) for n in DEMO_NODES)
    assert (n1.task, n2.task, n3.task, n4.task) == ("digits-0-4", "digits-5-9", "parity", "unrelated")
    assert set(n1.train.y) == set(range(5)) and set(n2.train.y) == set(range(5))
    assert set(n3.train.y) == {0, 1} and n4.train.num_classes == 10
    for nd in (n1, n2, n3, n4):
        assert nd.train.x.shape[1:] == (1, 8, 8) and nd.train.x.dtype == np.float32
        assert 0.0 <= nd.train.x.min() and nd.train.x.max() <= 1.0
        assert nd.train.num_classes == TASK_CLASSES[nd.task] and len(nd.train) > 300


def test_node_shards_hold_the_digits_their_task_says():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    digit = {(img / 16.0).astype(np.float32).tobytes(): int(t) for img, t in zip(bunch.images, bunch.target)}
    digits_of = lambda nd: np.array([digit[x[0].tobytes()] for x in nd.train.x])  # noqa: E731
    n1, n2, n3 = node_data("node-1", 2), node_data("node-2", 2), node_data("node-3", 2)
    assert np.array_equal(digits_of(n1), n1.train.y)
    assert np.array_equal(digits_of(n2), n2.train.y + 5)
    assert np.array_equal(digits_of(n3) % 2, n3.train.y)
    assert len(set(digits_of(n3))) == 10  # parity records are random, not a digit range


def test_task_input_permutes_only_for_the_unrelated_task():
    x = aggregator_data(0)[0].x
    assert task_input("parity", x) is x
    shuffled = task_input("unrelated", x)
    assert shuffled.shape == x.shape and not np.array_equal(shuffled, x)
    assert np.array_equal(np.sort(shuffled.reshape(len(x), -1)), np.sort(x.reshape(len(x), -1)))
    assert np.array_equal(task_input("unrelated", x), shuffled)  # fixed permutation
    with pytest.raises(ConfigError, match="parity"):
        task_input("nope", x)


def test_unknown_node_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="node-1, node-2, node-3, node-4"):
        node_data("node-9", 0)
