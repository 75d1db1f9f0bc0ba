"""The two non-federated baselines of the grid: Transfer and Centralised KA (the upper bound).

Both see what a federation never may (a teacher, or every node's records and teachers, in one
place) and train without DP; they bound the federated methods from the side of practice and of
theory. Both end with the same adaptation recipe as Scratch and the federated students.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from fedsa_secure.data import LabelledSet, task_input
from fedsa_secure.fedsa.adapt import AdaptRecipe, adapt_tasks, task_accuracy
from fedsa_secure.fedsa.amalgamate import apply_update
from fedsa_secure.fedsa.distill import DPSettings
from fedsa_secure.fedsa.nonprivate import PlainTrainer
from fedsa_secure.fedsa.output_kd import MAP_C
from fedsa_secure.fedsa.select_plus import output_transferability, teacher_logits
from fedsa_secure.fedsa.teacher import TrainedTeacher
from fedsa_secure.models import HeadedBackbone, Translator, backbone_state, make_student

Teachers = dict[str, TrainedTeacher]  # trained without DP: these baselines make no privacy claim


def transfer(
    teachers: Teachers, probe: LabelledSet, test: LabelledSet, seed: int, recipe: AdaptRecipe, tasks: Sequence[str]
) -> dict:
    """Transfer: the teacher whose logits fit the probe labels best (LogME) gets fresh heads, fine-tuned on the probe.

    The teacher is the model, so the student architecture plays no part; `tasks` are the target tasks.
    """
    scores = {name: output_transferability(t.model, t.data.task, probe) for name, t in teachers.items()}
    best = max(scores, key=scores.__getitem__)
    data, teacher, _ = teachers[best]
    seen_probe = LabelledSet(task_input(data.task, probe.x), probe.y, probe.num_classes)
    seen_test = LabelledSet(task_input(data.task, test.x), test.y, test.num_classes)
    model = adapt_tasks(teacher, seen_probe, seed, tasks, recipe)
    return {"task_accuracy": task_accuracy(model, seen_test), "teacher": best, "scores": scores}


def joint_output_targets(teachers: Teachers, probe: LabelledSet, images: np.ndarray) -> np.ndarray:
    """Target-label probabilities of `images` from one map over all teachers' concatenated logits, fitted on the probe.

    The centralised counterpart of fedsa.output_kd's per-node map: with every teacher in one place
    the map can combine them (a 0-4 and a 5-9 teacher together cover all ten digits) and, being
    regularised as strongly, learns to ignore teachers whose logits explain nothing.
    """

    def logits(x: np.ndarray) -> np.ndarray:
        return np.concatenate([teacher_logits(t.model, t.data.task, x) for t in teachers.values()], axis=1)

    joint = LogisticRegression(C=MAP_C, max_iter=5000).fit(logits(probe.x), probe.y)
    out = np.zeros((len(images), probe.num_classes))
    out[:, joint.classes_] = joint.predict_proba(logits(images))
    return out.astype(np.float32)


class _CentralProxy(nn.Module):
    """Student backbone and head, plus one translator per teacher for the feature loss."""

    def __init__(self, student: HeadedBackbone, translators: list[Translator]) -> None:
        super().__init__()
        self.features = student.features
        self.head = student.head
        self.translators = nn.ModuleList(translators)
        self.head_input: Callable[[torch.Tensor], torch.Tensor] = student.head_input  # the architecture's pooling


class CentralObjective:
    """All records of all nodes: cross-entropy to the joint map's targets plus FitNets to the record's own teacher."""

    released = ("features", "head")

    def __init__(self, teachers: Teachers, probe: LabelledSet, seed: int, feature_weight: float, arch: str) -> None:
        self.feature_weight = feature_weight
        images = np.concatenate([t.data.train.x for t in teachers.values()])
        owner = np.concatenate([np.full(len(t.data.train), i) for i, t in enumerate(teachers.values())])
        with torch.no_grad():
            features = torch.cat([t.model.features(torch.from_numpy(task_input(t.data.task, t.data.train.x))) for t in teachers.values()])
        student = make_student(probe.num_classes, seed, arch)
        side = (int(features.shape[-2]), int(features.shape[-1]))  # the teachers' grid, which the MLP's 4x4 maps are resized to
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            translators = [Translator(student.feature_channels, t.model.feature_channels, side) for t in teachers.values()]
        self.module = _CentralProxy(student, translators)
        soft = torch.from_numpy(joint_output_targets(teachers, probe, images))
        self.tensors = (torch.from_numpy(images), soft, features, torch.from_numpy(owner))

    def per_sample_loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        x, soft, target_features, owner = batch
        proxy = cast(_CentralProxy, model)  # the proxy itself, or Opacus' wrapper, which forwards attributes to it
        a = proxy.features(x)
        loss = -(soft * F.log_softmax(proxy.head(proxy.head_input(a)), dim=1)).sum(dim=1)
        if self.feature_weight > 0:
            fitnets = torch.zeros_like(loss)
            for i in owner.unique().tolist():
                rows = (owner == i).nonzero().squeeze(1)
                mse = F.mse_loss(proxy.translators[i](a[rows]), target_features[rows], reduction="none")
                fitnets = fitnets.index_put((rows,), mse.flatten(1).mean(dim=1))
            loss = loss + self.feature_weight * fitnets
        return loss


def centralised_ka(
    teachers: Teachers,
    probe: LabelledSet,
    test: LabelledSet,
    seed: int,
    recipe: AdaptRecipe,
    settings: DPSettings,
    epochs: int,
    feature_weight: float,
    arch: str,
    tasks: Sequence[str],
) -> dict:
    """Centralised KA: one student of `arch` distilled without DP on every node's records, `epochs` passes, then adapted."""
    objective = CentralObjective(teachers, probe, seed, feature_weight, arch)
    student = make_student(probe.num_classes, seed, arch)
    trainer = PlainTrainer(objective, replace(settings, local_epochs=epochs), seed=seed)
    apply_update(student, trainer.train_round(backbone_state(student, objective.released)), objective.released)
    model = adapt_tasks(student, probe, seed, tasks, replace(recipe, fresh_head=False))
    return {"task_accuracy": task_accuracy(model, test)}
