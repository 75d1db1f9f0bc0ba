"""A node brings its own records as an `.npz` file: checked before any training, and federated like built-in ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsa_secure import DPSettings, Node, RoundSettings, load_records, run_federation
from fedsa_secure.config import DataSection, NodeConfig, NodeSection, TlsConfig, load_node_config
from fedsa_secure.crypto import pki
from fedsa_secure.data import aggregator_data, node_data
from fedsa_secure.data.records import MIN_RECORDS
from fedsa_secure.data.tasks import OWN_TASK, task_input
from fedsa_secure.errors import ConfigError
from fedsa_secure.models import backbone_state, flatten_state, make_student

torch.set_num_threads(1)


def _records(n: int = 40, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8)), np.arange(n) % classes


def test_records_load_as_grey_float32_images_with_their_own_labels(tmp_path: Path) -> None:
    x, y = _records()
    np.savez(tmp_path / "mine.npz", x=x, y=y.astype(np.uint8))
    data = load_records(tmp_path / "mine.npz", "clinic")
    assert (data.name, data.task) == ("clinic", OWN_TASK)
    assert data.train.x.dtype == np.float32 and data.train.x.shape == (40, 1, 8, 8)
    np.testing.assert_allclose(data.train.x[:, 0], x.astype(np.float32))
    assert data.train.y.dtype == np.int64 and data.train.y.tolist() == y.tolist()
    assert data.train.num_classes == 3
    assert task_input(OWN_TASK, data.train.x) is data.train.x  # own records reach the teacher as they are


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": _records()[0]}, "has no labels y"),
        ({"x": _records()[0].astype(np.int64), "y": _records()[1]}, "x must be float records"),
        ({"x": np.zeros((40, 3, 8, 8)), "y": _records()[1]}, "one grey channel"),
        ({"x": np.where(np.arange(40)[:, None, None] < 2, np.nan, _records()[0]), "y": _records()[1]},
         "NaN or infinite values in 2 record(s)"),
        ({"x": _records()[0], "y": _records()[1][:39]}, "one integer label per record (40)"),
        ({"x": _records()[0], "y": _records()[1].astype(np.float32)}, "one integer label per record"),
        ({"x": _records()[0], "y": _records()[1] - 1}, "labels must lie in 0.."),
        ({"x": _records()[0], "y": np.full(40, 2)}, "at least two classes"),
        ({"x": _records(MIN_RECORDS - 1)[0], "y": _records(MIN_RECORDS - 1)[1]}, f"at least {MIN_RECORDS}"),
    ],
)
def test_bad_records_are_refused_naming_the_file_and_what_was_expected(
    tmp_path: Path, arrays: dict[str, np.ndarray], expected: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError) as caught:
        load_records(path, "clinic")
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_pickled_arrays_and_other_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([object()] * 20, dtype=object), y=np.arange(20) % 2)
    with pytest.raises(ConfigError, match="no object arrays"):
        load_records(pickled, "clinic")
    text = tmp_path / "records.npz"
    text.write_text("x,y\n0.1,1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read the records file"):
        load_records(text, "clinic")
    with pytest.raises(ConfigError, match="cannot read the records file"):
        load_records(tmp_path / "missing.npz", "clinic")


def test_a_node_config_names_its_records_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nname = "clinic"\naggregator = "127.0.0.1:1"\nstate_dir = "state"\n'
        '[data]\nrecords = "data/mine.npz"\n'
        '[tls]\nca_cert = "ca.pem"\ncert = "c.pem"\nkey = "c.key"\n', encoding="utf-8")
    assert load_node_config(tmp_path / "node.toml").data.records == tmp_path / "data" / "mine.npz"


def test_nodes_on_their_own_records_federate_and_charge_their_own_ledgers(tmp_path: Path) -> None:
    """Three nodes whose records come from .npz files train DP teachers on them and run two fedsa+ rounds."""
    nodes = []
    for name in ("node-1", "node-2", "node-3"):  # the digits demo's shards: digits 0-4, digits 5-9, parity
        shard = node_data(name, seed=0)
        np.savez(tmp_path / f"{name}.npz", x=shard.train.x[:, 0], y=shard.train.y)
        data = load_records(tmp_path / f"{name}.npz", f"own-{name}")
        assert data.train.num_classes == shard.train.num_classes
        settings = DPSettings(target_epsilon=8.0, planned_rounds=2, local_epochs=1)
        nodes.append(Node(data.name, data, settings, state_dir=tmp_path / "state" / name, mechanism_seed=1))
    spent_on_teachers = [node.state.epsilon() for node in nodes if node.state is not None]
    assert len(spent_on_teachers) == 3 and all(0 < eps < 8.0 for eps in spent_on_teachers)

    probe, test = aggregator_data(0)
    outcome = run_federation(nodes, probe, test, RoundSettings(method="fedsa+", rounds=2, adapt_every=2))

    assert [r.aborted for r in outcome.rounds] == [None, None]
    assert all(sorted(r.survivors) == sorted(n.name for n in nodes) for r in outcome.rounds)
    final = outcome.rounds[-1].epsilon
    for node, teacher_only in zip(nodes, spent_on_teachers):
        assert node.state is not None
        assert teacher_only < final[node.name] <= 8.0 + 1e-6  # the rounds composed on top of the teacher, within budget
        assert node.state.epsilon() == pytest.approx(final[node.name])
    initial = flatten_state(backbone_state(make_student(probe.num_classes, 0), outcome.parts))
    amalgamated = flatten_state(backbone_state(outcome.student, outcome.parts))
    assert np.isfinite(amalgamated).all() and np.abs(amalgamated - initial).max() > 1e-3  # the sums were applied


def test_a_deployed_node_reads_its_records_from_its_config_before_training(tmp_path: Path) -> None:
    """`Node.from_config` loads `data.records`, so a bad file stops the node with the file named, before any teacher."""
    ca_cert, ca_key = pki.create_ca(tmp_path / "keys")
    cert, key = pki.issue_certificate(ca_cert, ca_key, "clinic", tmp_path / "keys", hosts=("localhost",), role=pki.NODE)
    x, _ = _records()
    np.savez(tmp_path / "mine.npz", x=x)  # no labels
    config = NodeConfig(NodeSection(name="clinic", aggregator="127.0.0.1:1", state_dir=tmp_path / "state"),
                        TlsConfig(ca_cert, cert, key), DataSection(records=tmp_path / "mine.npz"))
    with pytest.raises(ConfigError, match=r"mine\.npz has no labels y"):
        Node.from_config(config)
    assert not (tmp_path / "state").exists()  # nothing trained, no ledger started
