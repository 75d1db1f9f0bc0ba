"""Teacher tasks shared by every dataset: how a node's labels and teacher inputs derive from digit images.

Unrelated tasks see images under a fixed pixel shuffle (which destroys the spatial structure the
student uses) and learn random labels, so neither their features nor their outputs say anything
about digits. The shuffles are seed-independent so that `task_input` needs no seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedsa_secure.errors import ConfigError

NUM_DIGITS = 10
TASK_CLASSES: dict[str, int] = {
    "digits-0-4": 5,
    "digits-5-9": 5,
    "parity": 2,
    "mod-3": 3,
    "unrelated": 10,
    "unrelated-2": 10,
}
_SHUFFLE_SEEDS = {"unrelated": 0x5EED_F00D, "unrelated-2": 0x5EED_F00E}
OWN_TASK = "own"  # the task of records a node brings itself (data.records): its labels as given, its inputs as they are
# What the aggregator's student can be asked to predict (one head each) from a probe image's digit.
TARGET_TASKS: dict[str, int] = {"digit": NUM_DIGITS, "parity": 2, "mod-3": 3}


@lru_cache(maxsize=8)
def _pixel_permutation(task: str, pixels: int) -> np.ndarray:
    return np.random.default_rng(_SHUFFLE_SEEDS[task]).permutation(pixels)


def task_labels(task: str, digits: np.ndarray, random_key: list[int]) -> np.ndarray:
    """A node's labels for `task` from the records' digits; `random_key` seeds the unrelated tasks' labels."""
    if task not in TASK_CLASSES:
        raise ConfigError(f"unknown task {task!r}; allowed tasks: {', '.join(TASK_CLASSES)}")
    if task == "digits-0-4":
        return digits.astype(np.int64)
    if task == "digits-5-9":
        return (digits - 5).astype(np.int64)
    if task == "parity":
        return (digits % 2).astype(np.int64)
    if task == "mod-3":
        return (digits % 3).astype(np.int64)
    return np.random.default_rng(random_key).integers(0, TASK_CLASSES[task], len(digits)).astype(np.int64)


def task_input(task: str, images: np.ndarray) -> np.ndarray:
    """Map raw images [N, 1, S, S] to what `task`'s teacher was trained on."""
    if task == OWN_TASK:
        return images
    if task not in TASK_CLASSES:
        raise ConfigError(f"unknown task {task!r}; allowed tasks: {', '.join(TASK_CLASSES)}")
    if task not in _SHUFFLE_SEEDS:
        return images
    flat = images.reshape(len(images), -1)
    flat = flat[:, _pixel_permutation(task, flat.shape[1])]
    return np.ascontiguousarray(flat.reshape(images.shape))


def target_labels(task: str, digits: np.ndarray) -> np.ndarray:
    """Labels of the aggregator's target `task` (one head of a multi-task student) from the records' digits."""
    if task not in TARGET_TASKS:
        raise ConfigError(f"unknown target task {task!r}; allowed target tasks: {', '.join(TARGET_TASKS)}")
    digits = np.asarray(digits)
    if digits.size and (digits.min() < 0 or digits.max() >= NUM_DIGITS):
        raise ConfigError(f"target labels derive from digits 0-9, got labels in [{digits.min()}, {digits.max()}]")
    return digits.astype(np.int64) if task == "digit" else task_labels(task, digits, [])
