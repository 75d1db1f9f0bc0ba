"""A node's private teacher, trained on the node's own labelled records and then frozen.

A deployed node trains it with DP-SGD (`train_dp_teacher`): everything the node later computes
with it (transferability scores, output maps, distillation targets) is then post-processing of
a DP release, and its charge is the first entry of the node's ledger. `train_teacher` (no DP)
serves only the plaintext arms and the centralised baselines of experiments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsa_secure.data import LabelledSet, NodeData, task_input
from fedsa_secure.data.records import UNLABELLED
from fedsa_secure.entry_points import EntryPoint
from fedsa_secure.errors import BudgetExhausted, ConfigError
from fedsa_secure.fedsa.supervised import fit_classifier
from fedsa_secure.files import atomic_torch_save
from fedsa_secure.models import HeadedBackbone, make_teacher, state_digest
from fedsa_secure.privacy.accounting import calibrate_noise, epsilon_of, fits_budget
from fedsa_secure.privacy.dpsgd import DPSGD, Mechanism, poisson_schedule
from fedsa_secure.privacy.ledger import DECLARATION
from fedsa_secure.privacy.state import PrivacyState

log = logging.getLogger("fedsa_secure.teacher")

TEACHER_EPOCHS = 12
TEACHER_LR = 3e-3
TEACHER_BATCH = 32
_CACHE_FORMAT = 3  # 3: width-16 teachers, DP mechanism stored with DP ones


@dataclass(frozen=True)
class TeacherRecipe:
    """DP-SGD of a teacher: 20 epochs of Poisson batches of 256 (expected), SGD lr 0.2, momentum 0.9, clip 1.

    Chosen on MNIST-1D's digits 0-4 node (3,000 records, epsilon 4 for the teacher alone,
    docs/research/2026-12-06-dp-teacher.md): it beat batches of 64 and 128, lr 0.05-0.5, 10-40
    epochs, and a teacher twice as wide.
    """

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 0.2
    momentum: float = 0.9
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class TeacherPrivacy:
    """What the teacher's DP-SGD may spend on its own: (epsilon, delta) under an accountant."""

    epsilon: float
    delta: float
    accountant: str


class TrainedTeacher(NamedTuple):
    """A node's records, its frozen teacher and the DP mechanism that trained it (None: trained without DP)."""

    data: NodeData
    model: HeadedBackbone
    mechanism: Mechanism | None


def train_teacher(node: NodeData, seed: int) -> HeadedBackbone:
    """Non-private training (Adam, cross-entropy): experiments' plaintext arms and baselines only."""
    model = make_teacher(node.train.num_classes, seed, node.train.x.shape[1:])
    fit_classifier(
        model,
        task_input(node.task, node.train.x),
        node.train.y,
        epochs=TEACHER_EPOCHS,
        lr=TEACHER_LR,
        batch_size=TEACHER_BATCH,
        seed=seed,
    )
    return freeze(model)


def teacher_mechanism(records: int, privacy: TeacherPrivacy, recipe: TeacherRecipe = TeacherRecipe()) -> Mechanism:
    """The DP-SGD mechanism of a teacher trained on `records` records, calibrated to spend `privacy.epsilon` alone."""
    sample_rate, per_epoch = poisson_schedule(records, recipe.batch_size)
    steps = recipe.epochs * per_epoch
    sigma = calibrate_noise(privacy.epsilon, privacy.delta, sample_rate, steps, privacy.accountant)
    return Mechanism(sigma, sample_rate, steps, recipe.max_grad_norm, privacy.delta, privacy.accountant)


def train_dp_teacher(
    node: NodeData, mechanism: Mechanism, seed: int, *, recipe: TeacherRecipe = TeacherRecipe(), mechanism_seed: int | None = None
) -> HeadedBackbone:
    """DP-SGD training of the node's teacher on its labelled records, under `mechanism` (see `teacher_mechanism`).

    `seed` fixes the initial weights (public); `mechanism_seed` the batches and noise (None: fresh entropy).
    """
    model = make_teacher(node.train.num_classes, seed, node.train.x.shape[1:])
    tensors = (torch.from_numpy(task_input(node.task, node.train.x)), torch.from_numpy(node.train.y))
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum)
    dp = DPSGD(
        model, tensors, optimizer, batch_size=recipe.batch_size, noise_multiplier=mechanism.noise_multiplier,
        max_grad_norm=mechanism.max_grad_norm, accountant=mechanism.accountant, mechanism_seed=mechanism_seed,
    )
    if (dp.sample_rate, dp.steps_per_epoch * recipe.epochs) != (mechanism.sample_rate, mechanism.steps):
        raise AssertionError("the teacher's DP-SGD loader differs from its calibrated mechanism")
    dp.train(recipe.epochs, _cross_entropy)
    return freeze(model)


def _cross_entropy(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1], reduction="none")


def load_or_train_teacher(
    node: NodeData, cache: Path, seed: int, privacy: TeacherPrivacy | None = None, mechanism_seed: int | None = None
) -> TrainedTeacher:
    """The teacher cached at file `cache` if it matches the request; otherwise train it (with DP if `privacy`) and cache it.

    For experiments, which share one seed's teachers across methods. An unreadable or mismatched
    cache file is not an error: the teacher is retrained and the file replaced. A deployed node
    keeps its DP teacher with its ledger instead (fedsa_secure.privacy.state).
    """
    key: dict[str, object] = {
        "format": _CACHE_FORMAT,
        "node": node.name,
        "task": node.task,
        "seed": seed,
        "shape": list(node.train.x.shape),  # tells datasets apart (digits and MNIST-5k use the same node names)
        "privacy": None if privacy is None else [privacy.epsilon, privacy.delta, privacy.accountant, mechanism_seed],
    }
    cached = _load(Path(cache), key, node, seed)
    if cached is not None:
        return TrainedTeacher(node, *cached)
    mechanism = None if privacy is None else teacher_mechanism(len(node.train), privacy)
    if mechanism is None:
        model = train_teacher(node, seed)
    else:
        model = train_dp_teacher(node, mechanism, seed, mechanism_seed=mechanism_seed)
    mechanism_fields = None if mechanism is None else mechanism.fields()
    atomic_torch_save({**key, "mechanism": mechanism_fields, "state_dict": model.state_dict()}, Path(cache))
    return TrainedTeacher(node, model, mechanism)


def _load(cache: Path, key: dict[str, object], node: NodeData, seed: int) -> tuple[HeadedBackbone, Mechanism | None] | None:
    try:
        blob = torch.load(cache, weights_only=True)
        if any(blob.get(k) != v for k, v in key.items()):
            return None
        model = load_teacher(blob["state_dict"], node, seed)
        stored = blob["mechanism"]
        mechanism = None if stored is None else Mechanism(**{f.name: stored[f.name] for f in fields(Mechanism)})
    except Exception:  # missing, truncated, corrupt or from another architecture: retrain
        return None
    return model, mechanism


def load_teacher(state_dict: dict[str, torch.Tensor], node: NodeData, seed: int) -> HeadedBackbone:
    """A frozen teacher for `node`'s records with the given weights (raises if they do not fit the architecture)."""
    model = make_teacher(node.train.num_classes, seed, node.train.x.shape[1:])
    model.load_state_dict(state_dict)
    return freeze(model)


Teacher = TypeVar("Teacher", bound=nn.Module)


def freeze(model: Teacher) -> Teacher:
    """Evaluation mode, no gradients: the teacher never changes after training."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass(frozen=True)
class TrainTeacher:
    """Provenance `train`: the node trains its teacher on its own labelled records with DP-SGD, charged first."""

    recipe: TeacherRecipe = TeacherRecipe()


@dataclass(frozen=True)
class DPTrainedTeacher:
    """Provenance `dp`: trained elsewhere with DP-SGD on these same records; the node charges `mechanism` to its
    ledger before using it (experiments share one seed's teachers across methods this way). Any module that maps
    a batch of records to logits."""

    model: nn.Module
    mechanism: Mechanism


@dataclass(frozen=True)
class PublicTeacher:
    """Provenance `public`: trained on data outside the protected records; the ledger declares it and charges nothing."""

    model: nn.Module


@dataclass(frozen=True)
class NonPrivateTeacher:
    """Provenance `non-private`: trained on these records without DP. The records are then not protected; a node
    takes it only when told to accept that, and the report says so first, in red."""

    model: nn.Module


TeacherSource = TrainTeacher | DPTrainedTeacher | PublicTeacher | NonPrivateTeacher
CHECK_RECORDS = 16  # records a teacher file is tried on before the node starts


class ExportedTeacher(nn.Module):
    """A teacher saved with torch.export (`.pt2`): its graph was fixed, in evaluation mode, when it was exported."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.program = torch.export.load(str(path)).module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.program(x)
        return logits

    def train(self, mode: bool = True) -> ExportedTeacher:
        if mode:
            raise ValueError("a teacher loaded from a .pt2 file cannot be trained")
        self.training = False  # an exported graph has no modes to switch (torch.export refuses .eval())
        return self


def load_teacher_file(path: Path, node: NodeData, factory: EntryPoint | None = None) -> tuple[nn.Module, NodeData]:
    """An institution's own teacher, from a torch.export `.pt2` file, a TorchScript file, or the weights in `path` of
    the network `factory` builds; tried on the node's first records, and the records relabelled with its number of
    outputs K (labelled by its predictions if they have none). ConfigError naming the file if it does not load,
    fails on the records, gives other than finite logits [N, K] with K >= 2, or predicts fewer classes than the
    labels hold."""
    if factory is not None:
        model = freeze(_built_teacher(path, factory))
    else:
        model = freeze(_saved_teacher(path))
    return model, _checked_on_records(model, path, node)


def _built_teacher(path: Path, factory: EntryPoint) -> nn.Module:
    network = factory.load("teacher factory")()
    if not isinstance(network, nn.Module):
        raise ConfigError(f"teacher factory {factory.spec!r} returned a {type(network).__name__}, not a torch nn.Module")
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # tensors only: no pickled code
    except Exception as error:  # a foreign, damaged or mismatched weights file
        raise ConfigError(f"teacher weights {path} do not load into {factory.spec!r}: {type(error).__name__}: {error}. "
                          "Save them with torch.save(model.state_dict(), path)") from None
    return network


def _saved_teacher(path: Path) -> nn.Module:
    try:
        return ExportedTeacher(path) if path.suffix == ".pt2" else torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch's loaders raise many kinds on a damaged or foreign file
        raise ConfigError(f"teacher file {path} is not a {'torch.export' if path.suffix == '.pt2' else 'TorchScript'} "
                          f"model ({type(error).__name__}: {error}); save it with torch.export.save(torch.export.export("
                          "model, (example,)), 'teacher.pt2') or torch.jit.save(torch.jit.script(model), 'teacher.pt')") from None


def _checked_on_records(model: nn.Module, path: Path, node: NodeData) -> NodeData:
    sample = task_input(node.task, node.train.x[:CHECK_RECORDS])
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(sample))
    except Exception as error:  # whatever the institution's code raises on our records
        raise ConfigError(f"teacher file {path} fails on this node's records (shape {list(sample.shape[1:])}): "
                          f"{type(error).__name__}: {error}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != len(sample) or logits.shape[1] < 2:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"teacher file {path}: expected logits [{len(sample)}, K >= 2] for {len(sample)} records, got {got}")
    if not torch.isfinite(logits).all():
        raise ConfigError(f"teacher file {path} gives NaN or infinite logits on this node's records")
    classes = int(logits.shape[1])
    if node.train.num_classes == UNLABELLED:  # records without labels: the teacher's own predictions label them
        with torch.no_grad():
            labels = torch.cat([model(torch.from_numpy(chunk)).argmax(dim=1)
                                for chunk in np.array_split(task_input(node.task, node.train.x), max(1, len(node.train) // 512))])
        return NodeData(node.name, node.task, LabelledSet(node.train.x, labels.numpy().astype(np.int64), classes))
    if node.train.num_classes > classes:
        raise ConfigError(f"teacher file {path} predicts {classes} classes, but the records' labels go up to "
                          f"{node.train.num_classes - 1}: give the labels of the teacher's own task")
    return NodeData(node.name, node.task, LabelledSet(node.train.x, node.train.y, classes))


def node_teacher(
    state: PrivacyState, node: NodeData, source: TeacherSource, privacy: TeacherPrivacy, target_epsilon: float, seed: int,
    *, mechanism_seed: int | None = None,
) -> nn.Module:
    """A node's DP teacher: the one its ledger recorded last if it is the one asked for, else the source's, charged first.

    The file must hold exactly the weights whose digest the ledger recorded. If it is missing or
    differs (deleted, a restored backup), the teacher is trained (or the given one charged) again:
    the ledger over-counts, never under-counts. BudgetExhausted if that no longer fits the records'
    budget.
    """
    if isinstance(source, PublicTeacher | NonPrivateTeacher):
        return _declared_teacher(state, source, target_epsilon)
    recorded = state.entries("teacher")
    if recorded:
        digest = str(recorded[-1].get("teacher_sha256"))
        if isinstance(source, TrainTeacher):
            trained = _recorded_teacher(state.teacher_file, digest, node, seed)
            if trained is None and _pending(state).exists():
                os.replace(_pending(state), state.teacher_file)  # charged, then the process died before it moved it
                trained = _recorded_teacher(state.teacher_file, digest, node, seed)
            if trained is not None:
                return trained
        elif state_digest(source.model.state_dict()).hex() == digest:
            return freeze(source.model)
        log.warning("%s: %s is missing or is not the teacher asked for (ledger entry %d); charging a teacher again",
                    node.name, state.teacher_file if isinstance(source, TrainTeacher) else "the given teacher",
                    recorded[-1]["seq"])
    mechanism = teacher_mechanism(len(node.train), privacy, source.recipe) if isinstance(source, TrainTeacher) else source.mechanism
    m = mechanism
    if not fits_budget(state.history(), m.noise_multiplier, m.sample_rate, m.steps, target_epsilon, m.delta, m.accountant):
        raise BudgetExhausted(
            f"{node.name}: these records' ledger already holds epsilon {state.epsilon():.4f}; a teacher "
            f"(epsilon {epsilon_of([(m.noise_multiplier, m.sample_rate, m.steps)], m.delta, m.accountant):.4g} on its own) "
            f"would exceed the budget {target_epsilon:g}"
        )
    if not isinstance(source, TrainTeacher):  # its owner keeps the file; the ledger records which weights were charged
        model = freeze(source.model)
        state.charge("teacher", 0, mechanism, target_epsilon, teacher_sha256=state_digest(model.state_dict()).hex(),
                     provenance="dp")
        return model
    trained = train_dp_teacher(node, mechanism, seed, recipe=source.recipe, mechanism_seed=mechanism_seed)
    # Saved (as pending) before it is charged, put in place after: a crash before the charge leaves a pending file that
    # nothing used (the next start trains again), a crash after it a pending file the charge covers (the next start
    # takes it). Saved only after the charge, a crash in between would leave a charge for a teacher that is gone.
    pending = _pending(state)
    atomic_torch_save(trained.state_dict(), pending, mode=0o600)  # the institution's model: its owner's only
    state.charge("teacher", 0, mechanism, target_epsilon, teacher_sha256=state_digest(trained.state_dict()).hex(),
                 provenance="train")
    os.replace(pending, state.teacher_file)
    return trained


def _pending(state: PrivacyState) -> Path:
    return state.teacher_file.with_name(state.teacher_file.name + ".pending")


def _declared_teacher(state: PrivacyState, source: PublicTeacher | NonPrivateTeacher, target_epsilon: float) -> nn.Module:
    """A teacher that costs nothing to charge: its provenance is declared in the ledger once, before it is used."""
    model = freeze(source.model)
    provenance = "public" if isinstance(source, PublicTeacher) else "non-private"
    digest = state_digest(model.state_dict()).hex()
    declared = state.entries(DECLARATION)
    if not declared or (declared[-1]["provenance"], declared[-1]["teacher_sha256"]) != (provenance, digest):
        state.declare(provenance, digest, target_epsilon)
    return model


def _recorded_teacher(path: Path, digest: str, node: NodeData, seed: int) -> HeadedBackbone | None:
    try:
        weights = torch.load(path, weights_only=True)
        if state_digest(weights).hex() != digest:
            return None
        return load_teacher(weights, node, seed)
    except Exception:  # missing, truncated or another architecture: not the recorded teacher
        return None
