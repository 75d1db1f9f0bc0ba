"""A multi-task student: one shared backbone, one linear head per target task (DESIGN section 2, step 5)."""

from __future__ import annotations

import torch
from torch import nn

from fedsa_secure.models.cnn import HeadedBackbone


class MultiTaskModel(nn.Module):
    """`student` (its `head` serves the first task) plus `extra_heads` for the others; `forward` gives {task: logits}.

    The first task's head is the student's own, so a head that the federation released and
    amalgamated for the probe's task can carry over; the other heads exist only at the aggregator.
    """

    def __init__(self, student: HeadedBackbone, tasks: tuple[str, ...], extra_heads: dict[str, nn.Linear]) -> None:
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks) or set(extra_heads) != set(tasks[1:]):
            raise ValueError(f"need distinct tasks with a head for each after the first; got {tasks}, {sorted(extra_heads)}")
        self.student = student
        self.tasks = tuple(tasks)
        self.extra_heads = nn.ModuleDict(extra_heads)
        self.feature_channels = student.feature_channels

    def head_of(self, task: str) -> nn.Linear:
        """The head that predicts `task`."""
        if task not in self.tasks:
            raise ValueError(f"no head for task {task!r}; this model predicts {self.tasks}")
        head = self.student.head if task == self.tasks[0] else self.extra_heads[task]
        assert isinstance(head, nn.Linear)
        return head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.features(x)

    def classify(self, features: torch.Tensor, task: str | None = None) -> torch.Tensor:
        """Logits of `task` (default: the first) from the shared maps; Grad-CAM differentiates this."""
        return self.head_of(task or self.tasks[0])(self.student.head_input(features))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.student.head_input(self.features(x))
        return {t: self.head_of(t)(pooled) for t in self.tasks}

    def view(self, task: str) -> TaskView:
        """A single-task model (features, classify, forward -> logits) for accuracy and Grad-CAM of one task."""
        self.head_of(task)
        return TaskView(self, task)


class TaskView(nn.Module):
    """One task of a MultiTaskModel seen as an ordinary classifier; shares its parameters."""

    def __init__(self, model: MultiTaskModel, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.feature_channels = model.feature_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.classify(features, self.task)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
