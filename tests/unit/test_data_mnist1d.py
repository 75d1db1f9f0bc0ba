import random

import numpy as np
import pytest

from fedsa_secure.data.federations import federation
from fedsa_secure.data.mnist1d import OTHER_RECORDS, SUBSET_RECORDS, _split, hankel_images, load_mnist1d
from fedsa_secure.data.mnist5k import MNIST_NODES
from fedsa_secure.errors import ConfigError


def test_hankel_image_holds_the_signal_along_its_first_row_and_column():
    signal = np.linspace(-4.0, 4.0, 40)[None]  # scales onto [0, 1] exactly: (x + 4) / 8
    image = hankel_images(signal)[0, 0]
    scaled = (signal[0] + 4.0) / 8.0
    assert image.shape == (14, 14)
    np.testing.assert_allclose(image[0], scaled[:14], atol=1e-7)  # H[0, j] = x[j]
    np.testing.assert_allclose(image[:, 13], scaled[13::2], atol=1e-7)  # H[i, 13] = x[2i + 13]
    np.testing.assert_allclose(image[3, 5], scaled[11], atol=1e-7)
    assert hankel_images(np.full((1, 40), 9.0)).max() == 1.0  # out-of-range values are clipped
    with pytest.raises(ValueError, match="needs"):
        hankel_images(np.zeros((2, 39)))


def test_mnist1d_is_generated_offline_balanced_and_leaves_global_generators_alone():
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.random())
    random.seed(7)
    np.random.seed(7)
    load_mnist1d.cache_clear()
    x, digits = load_mnist1d()
    assert (random.random(), np.random.random()) == expected
    assert x.shape == (12_000, 1, 14, 14) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    assert np.bincount(digits).tolist() == [1200] * 10


@pytest.mark.parametrize("budget, per_class", [(0.01, 4), (0.05, 20), (0.10, 40)])
def test_mnist1d_probe_sizes_match_mnist5k_and_nest(budget, per_class):
    fed = federation("mnist1d")
    probe, test = fed.aggregator(0, budget)
    assert np.bincount(probe.y, minlength=10).tolist() == [per_class] * 10
    assert len(test) == 1000
    smaller, _ = fed.aggregator(0, 0.01)
    assert all(any(np.array_equal(row, other) for other in probe.x) for row in smaller.x)


def test_mnist1d_nodes_hold_far_more_records_than_the_probe_and_are_disjoint():
    fed, split = federation("mnist1d"), _split(0)
    parts = [split.test, split.reserve.ravel(), *split.nodes.values()]
    every = np.concatenate(parts)
    assert len(every) == len(set(every.tolist()))  # no record in two parties
    sizes = {name: len(fed.node(name, 0).train) for name in MNIST_NODES}
    assert sizes["node-1"] == sizes["node-2"] == SUBSET_RECORDS
    assert all(sizes[name] == OTHER_RECORDS for name in list(MNIST_NODES)[2:])
    low, high = fed.node("node-1", 0), fed.node("node-2", 0)
    _, digits = load_mnist1d()
    assert set(digits[split.nodes["node-1"]]) == set(range(5)) == set(low.train.y)
    assert set(digits[split.nodes["node-2"]]) == set(range(5, 10)) and set(high.train.y) == set(range(5))
    assert not np.array_equal(_split(1).test, split.test)
    with pytest.raises(ConfigError, match="allowed names"):
        fed.node("node-9", 0)
