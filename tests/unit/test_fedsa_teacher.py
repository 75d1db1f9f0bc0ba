"""The node's teacher: trained with DP-SGD, charged in the ledger before use, reused only as recorded."""

import os

import pytest
import torch

from fedsa_secure.data import NodeData, aggregator_data, node_data
from fedsa_secure.errors import BudgetExhausted
from fedsa_secure.fedsa import teacher as teacher_mod
from fedsa_secure.fedsa.supervised import accuracy
from fedsa_secure.fedsa.teacher import (
    DPTrainedTeacher,
    TeacherPrivacy,
    TrainTeacher,
    load_or_train_teacher,
    node_teacher,
    teacher_mechanism,
)
from fedsa_secure.models import state_digest
from fedsa_secure.privacy.accounting import epsilon_of
from fedsa_secure.privacy.state import PrivacyState

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower

PRIVACY = TeacherPrivacy(epsilon=4.0, delta=1e-5, accountant="prv")


@pytest.fixture(scope="module")
def node() -> NodeData:
    return node_data("node-1", 0)


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))


def test_the_mechanism_spends_the_teachers_share_alone(node):
    m = teacher_mechanism(len(node.train), PRIVACY)
    assert (m.sample_rate, m.steps, m.max_grad_norm) == (0.5, 40, 1.0)  # 358 records, batches of 256, 20 epochs
    assert 4.0 - 0.01 <= epsilon_of([(m.noise_multiplier, m.sample_rate, m.steps)], 1e-5, "prv") <= 4.0


def test_dp_teacher_learns_its_task_is_frozen_and_is_cached_with_its_mechanism(node, tmp_path, monkeypatch):
    cache = tmp_path / "t" / "node-1.pt"
    trained = load_or_train_teacher(node, cache, seed=1, privacy=PRIVACY, mechanism_seed=0)
    _, test = aggregator_data(0)
    unseen = test.y < 5
    assert accuracy(trained.model, test.x[unseen], test.y[unseen]) > 0.9  # learned digits 0-4 under DP
    assert not trained.model.training and not any(p.requires_grad for p in trained.model.parameters())
    assert trained.mechanism == teacher_mechanism(len(node.train), PRIVACY)
    assert cache.exists() and list(cache.parent.iterdir()) == [cache]  # no temp file left behind

    def must_not_train(*_args, **_kwargs):
        raise AssertionError("should have loaded the cache")

    monkeypatch.setattr(teacher_mod, "train_dp_teacher", must_not_train)
    loaded = load_or_train_teacher(node, cache, seed=1, privacy=PRIVACY, mechanism_seed=0)
    assert _same(trained.model, loaded.model) and loaded.mechanism == trained.mechanism


def test_a_cache_of_other_privacy_or_a_corrupt_one_retrains(node, tmp_path):
    cache = tmp_path / "node-1.pt"
    cache.write_bytes(b"not a torch file")
    plain = load_or_train_teacher(node, cache, seed=1)
    assert plain.mechanism is None and accuracy(plain.model, node.train.x, node.train.y) > 0.9
    dp = load_or_train_teacher(node, cache, seed=1, privacy=PRIVACY, mechanism_seed=0)
    assert dp.mechanism is not None and not _same(plain.model, dp.model)
    assert torch.load(cache, weights_only=True)["privacy"] == [4.0, 1e-5, "prv", 0]


def test_a_node_charges_its_teacher_before_using_it_and_reuses_it_after_a_restart(node, tmp_path, monkeypatch):
    state = PrivacyState.open(tmp_path, "node-1", node.train)
    model = node_teacher(state, node, TrainTeacher(), PRIVACY, target_epsilon=8.0, seed=1, mechanism_seed=0)
    (entry,) = state.ledger.entries
    assert entry["kind"] == "teacher" and entry["round"] == 0 and 3.99 <= entry["epsilon"] <= 4.0
    assert entry["teacher_sha256"] == state_digest(model.state_dict()).hex()
    assert entry["record"] == {"shape": [1, 8, 8], "dtype": "float32", "labelled": True} and entry["records"] == 358

    monkeypatch.setattr(teacher_mod, "train_dp_teacher", lambda *a, **k: pytest.fail("retrained a recorded teacher"))
    restarted = PrivacyState.open(tmp_path, "node-1", node.train)
    assert _same(node_teacher(restarted, node, TrainTeacher(), PRIVACY, 8.0, seed=1), model) and len(restarted.ledger) == 1


class Killed(BaseException):
    """The node process dies here."""


@pytest.mark.parametrize("dies", ["before-the-charge", "after-the-charge"])
def test_a_node_killed_while_saving_its_teacher_never_charges_it_twice(node, tmp_path, monkeypatch, dies):
    """Found by the chaos test: killed between the charge and the save, a node trained and charged its teacher again."""
    state = PrivacyState.open(tmp_path, "node-1", node.train)
    if dies == "before-the-charge":
        monkeypatch.setattr(state, "charge", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    else:
        real_replace = os.replace

        def dies_moving_the_pending_file(source, target):
            if str(source).endswith(".pending"):
                raise Killed()
            real_replace(source, target)
        monkeypatch.setattr(teacher_mod.os, "replace", dies_moving_the_pending_file)
    with pytest.raises(Killed):
        node_teacher(state, node, TrainTeacher(), PRIVACY, target_epsilon=8.0, seed=1, mechanism_seed=0)
    monkeypatch.undo()
    assert len(state.ledger) == (dies == "after-the-charge")
    restarted = PrivacyState.open(tmp_path, "node-1", node.train)  # the pending file alone does not stop the node
    model = node_teacher(restarted, node, TrainTeacher(), PRIVACY, 8.0, seed=1, mechanism_seed=0)
    charged = [e for e in restarted.ledger.entries if e["kind"] == "teacher"]
    assert len(charged) == 1 and charged[0]["teacher_sha256"] == state_digest(model.state_dict()).hex()
    assert restarted.teacher_file.exists() and not restarted.teacher_file.with_name("teacher.pt.pending").exists()


def test_a_teacher_file_that_differs_from_the_ledger_is_retrained_and_charged_again(node, tmp_path):
    state = PrivacyState.open(tmp_path, "node-1", node.train)
    node_teacher(state, node, TrainTeacher(), PRIVACY, target_epsilon=8.0, seed=1, mechanism_seed=0)
    weights = torch.load(state.teacher_file, weights_only=True)
    weights["head.bias"] += 1.0  # a restored backup, a hand edit: not the teacher the ledger charged
    torch.save(weights, state.teacher_file)
    node_teacher(state, node, TrainTeacher(), PRIVACY, target_epsilon=8.0, seed=1, mechanism_seed=1)
    first, second = state.ledger.entries
    assert second["kind"] == "teacher" and second["epsilon"] > first["epsilon"]  # the two trainings compose
    assert second["teacher_sha256"] == state_digest(torch.load(state.teacher_file, weights_only=True)).hex()
    with pytest.raises(BudgetExhausted, match="would exceed the budget 8"):
        state.teacher_file.unlink()
        node_teacher(state, node, TrainTeacher(), TeacherPrivacy(6.0, 1e-5, "prv"), target_epsilon=8.0, seed=1)
    assert len(state.ledger) == 2  # refused before anything was trained or charged


def test_a_lost_ledger_next_to_its_teacher_stops_the_node(node, tmp_path):
    from fedsa_secure.errors import LedgerError
    from fedsa_secure.privacy.ledger import head_path

    state = PrivacyState.open(tmp_path, "node-1", node.train)
    node_teacher(state, node, TrainTeacher(), PRIVACY, target_epsilon=8.0, seed=1, mechanism_seed=0)
    state.ledger.path.unlink()
    with pytest.raises(LedgerError, match="truncated"):  # its head file still witnesses one entry
        PrivacyState.open(tmp_path, "node-1", node.train)
    head_path(state.ledger.path).unlink()
    with pytest.raises(LedgerError, match="holds a DP teacher but its ledger .* is missing"):
        PrivacyState.open(tmp_path, "node-1", node.train)


def test_a_teacher_trained_elsewhere_with_dp_is_charged_before_use_and_reused_as_recorded(node, tmp_path):
    trained = load_or_train_teacher(node, tmp_path / "cache.pt", seed=1, privacy=PRIVACY, mechanism_seed=0)
    source = DPTrainedTeacher(trained.model, trained.mechanism)
    state = PrivacyState.open(tmp_path / "state", "node-1", node.train)
    model = node_teacher(state, node, source, PRIVACY, target_epsilon=8.0, seed=1)
    (entry,) = state.ledger.entries
    assert entry["provenance"] == "dp" and entry["noise_multiplier"] == trained.mechanism.noise_multiplier
    assert entry["teacher_sha256"] == state_digest(model.state_dict()).hex() == state_digest(trained.model.state_dict()).hex()
    node_teacher(PrivacyState.open(tmp_path / "state", "node-1", node.train), node, source, PRIVACY, 8.0, seed=1)
    assert len(state.ledger) == 1  # the recorded teacher again: nothing charged twice
    other = load_or_train_teacher(node, tmp_path / "other.pt", seed=1, privacy=PRIVACY, mechanism_seed=1)
    reopened = PrivacyState.open(tmp_path / "state", "node-1", node.train)
    node_teacher(reopened, node, DPTrainedTeacher(other.model, other.mechanism), PRIVACY, 8.0, seed=1)
    assert [e["kind"] for e in reopened.ledger.entries] == ["teacher", "teacher"]  # another teacher: charged too
