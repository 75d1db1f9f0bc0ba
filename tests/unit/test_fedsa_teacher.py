import pytest
import torch

from fedsa_secure.data import NodeData, aggregator_data, node_data
from fedsa_secure.fedsa import teacher as teacher_mod
from fedsa_secure.fedsa.supervised import accuracy

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower


@pytest.fixture(scope="module")
def node() -> NodeData:
    return node_data("node-1", 0)


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_teacher_learns_its_task_is_frozen_and_is_cached(node, tmp_path, monkeypatch):
    cache = tmp_path / "t" / "node-1.pt"
    model = teacher_mod.load_or_train_teacher(node, cache, seed=1)
    _, test = aggregator_data(0)
    unseen = test.y < 5
    assert accuracy(model, test.x[unseen], test.y[unseen]) > 0.95  # learned digits 0-4, not memorised
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert cache.exists() and list(cache.parent.iterdir()) == [cache]  # no temp file left behind

    def must_not_train(*_args, **_kwargs):
        raise AssertionError("should have loaded the cache")

    monkeypatch.setattr(teacher_mod, "train_teacher", must_not_train)
    loaded = teacher_mod.load_or_train_teacher(node, cache, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(_weights(model), _weights(loaded)))


def test_corrupt_or_mismatched_cache_retrains(node, tmp_path):
    cache = tmp_path / "node-1.pt"
    cache.write_bytes(b"not a torch file")
    model = teacher_mod.load_or_train_teacher(node, cache, seed=1)
    assert accuracy(model, node.train.x, node.train.y) > 0.9
    reloaded = teacher_mod.load_or_train_teacher(node, cache, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(_weights(model), _weights(reloaded)))
    other_seed = teacher_mod.load_or_train_teacher(node, cache, seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(_weights(model), _weights(other_seed)))
    assert torch.load(cache, weights_only=True)["seed"] == 2
