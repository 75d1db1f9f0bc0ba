"""Student architectures by name: the built-in ones and those a program registers (a config's `module:function`).

An architecture travels between parties by name and digest, never as code: each party builds it
from its own code, and the digest (of the module tree and every parameter's name and shape) shows
that both built the same network. A node builds only the built-in architectures and the one its
own config names, so an aggregator cannot make it import anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedsa_secure.crypto import sha256
from fedsa_secure.entry_points import EntryPoint
from fedsa_secure.errors import ConfigError
from fedsa_secure.models.cnn import STUDENT_WIDTH, TEACHER_WIDTH, ConvNet, HeadedBackbone
from fedsa_secure.models.mlp import MLP, MLP_GRID_CHANNELS, MLP_HIDDEN
from fedsa_secure.models.resnet import RESNET_WIDTH, ResNet

StudentFactory = Callable[[int], nn.Module]  # number of target classes -> a freshly initialised HeadedBackbone

STUDENT_ARCHS: dict[str, StudentFactory] = {
    "cnn": lambda classes: ConvNet(STUDENT_WIDTH, classes),
    "resnet": lambda classes: ResNet(RESNET_WIDTH, classes),
    "mlp": lambda classes: MLP(MLP_HIDDEN, MLP_GRID_CHANNELS, classes),
}
_REGISTERED: dict[str, StudentFactory] = {}


class Student(HeadedBackbone):
    """A student from any `features` module that maps a batch of records to vectors [B, feature_size]; a linear head
    classifies them. The shape of a user's own student (for records that are not images, say): only `features` and
    `head` are trained and released."""

    def __init__(self, features: nn.Module, feature_size: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.feature_channels = self.head_in_features = feature_size
        self.head_type = "vector"
        self.head = nn.Linear(feature_size, num_classes)

    def head_input(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1)


VECTOR_TEACHER_HIDDEN = 64


def make_teacher(num_classes: int, seed: int, record_shape: tuple[int, ...] = (1, 8, 8)) -> HeadedBackbone:
    """A freshly initialised teacher for a node's task: the ConvNet for images [1, H, W], a two-layer perceptron for
    records that are vectors [D]."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if len(record_shape) == 1:
            hidden = VECTOR_TEACHER_HIDDEN
            layers = nn.Sequential(nn.Linear(record_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            return Student(layers, hidden, num_classes)
        return ConvNet(TEACHER_WIDTH, num_classes)


def register_student(name: str, factory: StudentFactory) -> None:
    """Make `name` buildable by `make_student` in this process (a config's `module:function` is registered under that)."""
    if name in STUDENT_ARCHS:
        raise ConfigError(f"student architecture {name!r} is built in; register your own under another name")
    _REGISTERED[name] = factory


def use_student(student: str | EntryPoint) -> str:
    """The name a config's student goes by: a built-in one, or its `module:function`, imported and registered here."""
    if isinstance(student, EntryPoint):
        register_student(student.spec, student.load("student"))
        return student.spec
    return student


def student_names() -> list[str]:
    return [*STUDENT_ARCHS, *_REGISTERED]


def make_student(num_classes: int = 10, seed: int = 0, arch: str = "cnn") -> HeadedBackbone:
    """A freshly initialised student of architecture `arch`; the seed fixes the initial weights."""
    factory = STUDENT_ARCHS.get(arch) or _REGISTERED.get(arch)
    if factory is None:
        raise ConfigError(f"unknown student architecture {arch!r}; this process builds {', '.join(student_names())}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = factory(num_classes)
    if not isinstance(model, HeadedBackbone) or not isinstance(getattr(model, "head", None), nn.Linear):
        raise ConfigError(f"student {arch!r} built a {type(model).__name__}; a student must be a fedsa_secure.Student "
                          "(or another HeadedBackbone): a `features` module and a linear `head`")
    return model


def architecture_digest(arch: str, num_classes: int) -> bytes:
    """SHA-256 of what `arch` builds for `num_classes` classes: its module tree and its parameters' names and shapes."""
    model = make_student(num_classes, 0, arch)
    shapes = [[name, list(p.shape)] for name, p in model.named_parameters()]
    return sha256(json.dumps(["fedsa-secure/v1/architecture", arch, repr(model), shapes]).encode())


def round_context(architecture: bytes, state_digest: bytes) -> bytes:
    """What a round's secure sum binds: the architecture the nodes built and the weights they were sent."""
    return sha256(b"fedsa-secure/v1/round-context" + architecture + state_digest)


def check_student(arch: str, num_classes: int, records: np.ndarray) -> None:
    """Build `arch` and run it on a few `records`: it must give finite logits [n, num_classes]."""
    model = make_student(num_classes, 0, arch).eval()
    sample = torch.from_numpy(np.ascontiguousarray(records[:8], dtype=np.float32))
    try:
        with torch.no_grad():
            logits = model(sample)
    except Exception as exc:
        raise ConfigError(f"student {arch!r} fails on records of shape {list(records.shape[1:])}: {type(exc).__name__}: "
                          f"{exc}") from None
    if tuple(logits.shape) != (len(sample), num_classes) or not torch.isfinite(logits).all():
        raise ConfigError(f"student {arch!r} gives {list(logits.shape)} on {len(sample)} records; expected finite logits "
                          f"[{len(sample)}, {num_classes}] (one per class of the probe labels)")
