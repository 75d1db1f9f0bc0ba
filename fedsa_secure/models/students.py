"""Student architectures selectable by name, all `HeadedBackbone`s (features, head_input, classify, head, new_head)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedsa_secure.models.cnn import STUDENT_WIDTH, ConvNet, HeadedBackbone
from fedsa_secure.models.mlp import MLP, MLP_GRID_CHANNELS, MLP_HIDDEN
from fedsa_secure.models.resnet import RESNET_WIDTH, ResNet

STUDENT_ARCHS: dict[str, Callable[[int], HeadedBackbone]] = {
    "cnn": lambda classes: ConvNet(STUDENT_WIDTH, classes),
    "resnet": lambda classes: ResNet(RESNET_WIDTH, classes),
    "mlp": lambda classes: MLP(MLP_HIDDEN, MLP_GRID_CHANNELS, classes),
}


def make_student(num_classes: int = 10, seed: int = 0, arch: str = "cnn") -> HeadedBackbone:
    """A freshly initialised student of architecture `arch`; the seed fixes the initial weights."""
    if arch not in STUDENT_ARCHS:
        raise ValueError(f"unknown student architecture {arch!r}; allowed: {', '.join(STUDENT_ARCHS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return STUDENT_ARCHS[arch](num_classes)
