"""A node brings its own teacher as a TorchScript file with a declared provenance, charged or declared in its ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedsa_secure import DPSettings, DPTrainedTeacher, Node, PublicTeacher, RoundSettings, load_records, run_federation
from fedsa_secure import messages as msg
from fedsa_secure.config import load_node_config
from fedsa_secure.crypto import pki
from fedsa_secure.data import aggregator_data, node_data
from fedsa_secure.entry_points import EntryPoint
from fedsa_secure.errors import ConfigError
from fedsa_secure.fedsa.teacher import load_teacher_file
from fedsa_secure.models import architecture_digest, state_digest
from fedsa_secure.privacy.accounting import epsilon_of
from fedsa_secure.privacy.dpsgd import Mechanism
from fedsa_secure.privacy.ledger import DECLARATION

torch.set_num_threads(1)
# TorchScript files are still read (institutions have them), though PyTorch 2.13 deprecates writing and reading them
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

SETTINGS = DPSettings(target_epsilon=8.0, planned_rounds=2, local_epochs=1)
DP_RUN = {"noise_multiplier": 1.2, "sample_rate": 0.05, "steps": 400, "max_grad_norm": 1.0}


class Flat(nn.Module):
    """An institution's own architecture (not ours): a two-layer perceptron on flattened 8x8 images."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _script(module: nn.Module, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _export(module: nn.Module, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    module.eval()
    program = torch.export.export(module, (torch.zeros(4, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own-records")
    paths = {}
    for name in ("node-1", "node-2", "node-3"):  # digits 0-4, digits 5-9, parity
        shard = node_data(name, seed=0)
        paths[name] = root / f"{name}.npz"
        np.savez(paths[name], x=shard.train.x, y=shard.train.y)
    return paths


def test_a_teacher_file_is_tried_on_the_records_and_gives_their_classes(tmp_path: Path, shards: dict[str, Path]) -> None:
    data = load_records(shards["node-3"], "clinic")  # parity: labels 0, 1
    model, relabelled = load_teacher_file(_script(Flat(4), tmp_path / "t.pt"), data)
    assert relabelled.train.num_classes == 4 and relabelled.train.y is data.train.y  # four outputs, labels as given
    assert not any(p.requires_grad for p in model.parameters())  # frozen
    assert model(torch.from_numpy(data.train.x[:3])).shape == (3, 4)


class Scalar(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(dim=1)


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(100, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class Unstable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.flatten(1)[:, :3] - 10.0)  # NaN


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (Scalar(), "expected logits [16, K >= 2] for 16 records, got [16]"),
        (Wide(), "fails on this node's records (shape [1, 8, 8]): RuntimeError"),
        (Unstable(), "NaN or infinite logits"),
        (Flat(1), "got [16, 1]"),
    ],
)
def test_a_teacher_file_that_does_not_fit_the_records_is_refused_by_name(
    tmp_path: Path, shards: dict[str, Path], module: nn.Module, expected: str
) -> None:
    path = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    with pytest.raises(ConfigError) as caught:
        load_teacher_file(path, load_records(shards["node-1"], "clinic"))
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_a_torch_export_file_loads_frozen_with_the_same_weights_each_time(tmp_path: Path, shards: dict[str, Path]) -> None:
    data = load_records(shards["node-1"], "clinic")
    path = _export(Flat(5), tmp_path / "teacher.pt2")
    first, relabelled = load_teacher_file(path, data)
    second, _ = load_teacher_file(path, data)
    assert relabelled.train.num_classes == 5 and not first.training
    assert not any(p.requires_grad for p in first.parameters())
    x = torch.from_numpy(data.train.x[:40])
    torch.testing.assert_close(first(x), second(x))
    assert state_digest(first.state_dict()) == state_digest(second.state_dict())  # a restart finds the charged teacher
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ConfigError, match="is not a torch.export model"):
        load_teacher_file(broken, data)


def test_a_teacher_file_must_be_torchscript_and_cover_the_labels(tmp_path: Path, shards: dict[str, Path]) -> None:
    pickled = tmp_path / "weights.pt"
    torch.save(Flat(5).state_dict(), pickled)
    with pytest.raises(ConfigError, match="is not a TorchScript model"):
        load_teacher_file(pickled, load_records(shards["node-1"], "clinic"))
    with pytest.raises(ConfigError, match="predicts 3 classes, but the records' labels go up to 4"):
        load_teacher_file(_script(Flat(3), tmp_path / "t.pt"), load_records(shards["node-1"], "clinic"))


@pytest.mark.parametrize(
    ("teacher", "expected"),
    [
        ('file = "t.pt"', "teacher.file is set but teacher.provenance is 'train'"),
        ('provenance = "public"', "set teacher.file"),
        ('provenance = "dp"\nfile = "t.pt"\nnoise_multiplier = 1.0', "missing teacher.sample_rate, teacher.steps, teacher.max_grad_norm"),
        ('provenance = "public"\nfile = "t.pt"\nsteps = 10', "teacher.steps describes a DP-SGD run"),
        ('provenance = "public"\nfile = "t.pt"\naccept_non_private = true', "applies to a 'non-private' teacher only"),
        ('provenance = "secret"', "allowed values: train, dp, public, non-private"),
        ('provenance = "public"\nfile = "t.pt"\nfactory = "not code"', "must be module:function"),
    ],
)
def test_teacher_configs_that_do_not_add_up_are_refused(tmp_path: Path, teacher: str, expected: str) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nname = "clinic"\naggregator = "127.0.0.1:1"\nstate_dir = "state"\n'
        f'[teacher]\n{teacher}\n[tls]\nca_cert = "ca.pem"\ncert = "c.pem"\nkey = "c.key"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        load_node_config(tmp_path / "node.toml")


def test_a_deployed_node_charges_a_dp_teacher_file_once_across_restarts(tmp_path: Path, shards: dict[str, Path]) -> None:
    """From a config: the stated DP-SGD run is charged before the teacher is used, and not again on restart."""
    ca_cert, ca_key = pki.create_ca(tmp_path / "keys")
    pki.issue_certificate(ca_cert, ca_key, "clinic", tmp_path / "keys", hosts=("localhost",), role=pki.NODE)
    _script(Flat(5), tmp_path / "teacher.pt")
    run = "\n".join(f"{key} = {value}" for key, value in DP_RUN.items())
    (tmp_path / "node.toml").write_text(
        '[node]\nname = "clinic"\naggregator = "127.0.0.1:1"\nstate_dir = "state"\n'
        f'[data]\nrecords = "{shards["node-1"]}"\n'
        f'[teacher]\nprovenance = "dp"\nfile = "teacher.pt"\n{run}\n'
        '[privacy]\nplanned_rounds = 2\nlocal_epochs = 1\n'
        '[tls]\nca_cert = "keys/ca.pem"\ncert = "keys/clinic.pem"\nkey = "keys/clinic.key"\n', encoding="utf-8")
    config = load_node_config(tmp_path / "node.toml")
    mechanism = Mechanism(**DP_RUN, delta=config.privacy.delta, accountant=config.privacy.accountant)
    expected = epsilon_of([(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)], mechanism.delta,
                          mechanism.accountant)

    first = Node.from_config(config)
    assert first.state is not None
    teacher_entries = first.state.entries("teacher")
    assert [e["provenance"] for e in teacher_entries] == ["dp"]
    assert first.state.epsilon() == pytest.approx(expected, rel=1e-6)
    assert teacher_entries[0]["noise_multiplier"] == DP_RUN["noise_multiplier"]
    assert teacher_entries[0]["steps"] == DP_RUN["steps"]

    again = Node.from_config(config)  # a restart on the same records and file
    assert again.state is not None
    assert len(again.state.ledger) == len(first.state.ledger) and again.state.epsilon() == pytest.approx(expected, rel=1e-6)

    _, replies = again.respond(msg.SelectRequest(round=1, probe_images=np.zeros((4, 1, 8, 8), np.float32),
                                              student_maps=np.ones((4, 8, 8), np.float32),
                                              student=msg.StudentArchitecture("cnn", 10, architecture_digest("cnn", 10))))
    assert [type(r) for r in replies] == [msg.Abort]  # fedsa needs feature maps, which a file teacher does not have
    abort = replies[0]
    assert isinstance(abort, msg.Abort) and "outputs only, no feature maps" in abort.reason


def test_nodes_with_a_trained_a_dp_and_a_public_teacher_run_fedsa_plus_together(tmp_path: Path, shards: dict[str, Path]) -> None:
    mechanism = Mechanism(**DP_RUN, delta=SETTINGS.delta, accountant=SETTINGS.accountant)
    own = load_records(shards["node-1"], "trains-its-own")
    dp_model, dp_data = load_teacher_file(_script(Flat(5), tmp_path / "dp.pt", seed=1), load_records(shards["node-2"], "dp-file"))
    public_model, public_data = load_teacher_file(_export(Flat(2), tmp_path / "public.pt2", seed=2),
                                                  load_records(shards["node-3"], "public-file"))
    nodes = [
        Node(own.name, own, SETTINGS, state_dir=tmp_path / "s1", mechanism_seed=1),
        Node(dp_data.name, dp_data, SETTINGS, teacher=DPTrainedTeacher(dp_model, mechanism), state_dir=tmp_path / "s2",
             mechanism_seed=2),
        Node(public_data.name, public_data, SETTINGS, teacher=PublicTeacher(public_model), state_dir=tmp_path / "s3",
             mechanism_seed=3),
    ]
    public = nodes[2].state
    assert public is not None and public.epsilon() == 0.0  # declared, nothing charged yet
    assert [e["provenance"] for e in public.entries(DECLARATION)] == ["public"]

    probe, test = aggregator_data(0)
    outcome = run_federation(nodes, probe, test, RoundSettings(method="fedsa+", rounds=2, adapt_every=2))

    assert [r.aborted for r in outcome.rounds] == [None, None]
    assert all(len(r.survivors) == 3 for r in outcome.rounds)
    assert set(outcome.scores) == {n.name for n in nodes} and all(np.isfinite(list(outcome.scores.values())))
    for node in nodes:
        assert node.state is not None and 0 < node.state.epsilon() <= SETTINGS.target_epsilon + 1e-6
        assert len(node.state.entries("distillation")) == 2


TEACHER_CODE = """
from torch import nn


def teacher():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))


def not_a_network():
    return 42
"""


def test_a_teacher_from_the_institutions_code_and_its_weights(tmp_path: Path, shards: dict[str, Path]) -> None:
    """`[teacher] factory = "module:function"` builds the network; `file` holds only its weights (tensors, no code)."""
    (tmp_path / "clinic_models.py").write_text(TEACHER_CODE)
    torch.manual_seed(3)
    trained = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    data = load_records(shards["node-1"], "clinic")
    model, relabelled = load_teacher_file(tmp_path / "weights.pt", data, EntryPoint("clinic_models:teacher", tmp_path))
    assert relabelled.train.num_classes == 5 and not any(p.requires_grad for p in model.parameters())
    x = torch.from_numpy(data.train.x[:4])
    assert torch.equal(model(x), trained(x).detach())  # the institution's weights, not a fresh draw
    torch.save({"0.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"teacher weights .*other\.pt do not load into 'clinic_models:teacher'"):
        load_teacher_file(tmp_path / "other.pt", data, EntryPoint("clinic_models:teacher", tmp_path))
    with pytest.raises(ConfigError, match="returned a int, not a torch nn.Module"):
        load_teacher_file(tmp_path / "weights.pt", data, EntryPoint("clinic_models:not_a_network", tmp_path))
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        load_teacher_file(tmp_path / "weights.pt", data, EntryPoint("no_such_module:teacher", tmp_path))
