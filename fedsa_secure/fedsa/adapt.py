"""Task adaptation (FedSA step 5) and the Scratch baseline: fine-tune on the aggregator's probe set."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedsa_secure.data import LabelledSet
from fedsa_secure.fedsa.supervised import accuracy, fit_classifier
from fedsa_secure.models import ConvNet, make_student

ADAPT_EPOCHS = 60
ADAPT_LR = 3e-3
ADAPT_BATCH = 16


def adapt(student: ConvNet, probe: LabelledSet, seed: int, epochs: int = ADAPT_EPOCHS) -> ConvNet:
    """A copy of `student` with a fresh head for the probe's task, fully fine-tuned on the probe set."""
    model = copy.deepcopy(student)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.head = nn.Linear(model.feature_channels, probe.num_classes)
    for p in model.parameters():
        p.requires_grad_(True)
    return fit_classifier(model, probe.x, probe.y, epochs=epochs, lr=ADAPT_LR, batch_size=ADAPT_BATCH, seed=seed)


def scratch(probe: LabelledSet, seed: int, epochs: int = ADAPT_EPOCHS) -> ConvNet:
    """The Scratch baseline: a fresh student trained on the probe set only, with the adaptation recipe."""
    return adapt(make_student(probe.num_classes, seed), probe, seed, epochs)


def evaluate(model: nn.Module, test: LabelledSet) -> float:
    """Top-1 accuracy on a labelled set."""
    return accuracy(model, test.x, test.y)
