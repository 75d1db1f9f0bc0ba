"""A federation whose records are not images: three hospitals' breast-cancer records, 30 measurements each.

The data is scikit-learn's copy of the Wisconsin Diagnostic Breast Cancer set (569 records, shipped
with the package, nothing downloaded), split here into what each party would hold: three
hospitals' records, and the student owner's 20 labelled probe records and its test set. Each
party standardises its records with its own statistics; nothing about them is shared.
"""

import numpy as np
from sklearn.datasets import load_breast_cancer
from torch import nn

from fedsa_secure import Student

FEATURES = 30
PARTS = {"probe": 20, "test": 169, "hospital-a": 130, "hospital-b": 130, "hospital-c": 120}


def student(num_classes: int) -> Student:
    """A small perceptron over the 30 measurements; nodes train and release `features` and `head`."""
    return Student(nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()), 32, num_classes)


def records(node: str) -> tuple[np.ndarray, np.ndarray]:
    """A hospital's own records (its config: records = "federation:records")."""
    return _part(node)


def labelled(which: str) -> tuple[np.ndarray, np.ndarray]:
    """The student owner's probe or test set (its config: probe/test = "federation:labelled")."""
    return _part(which)


def _part(name: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(data.target))
    start = sum(list(PARTS.values())[: list(PARTS).index(name)])
    rows = order[start : start + PARTS[name]]
    x = data.data[rows]
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)  # with this party's own statistics
    return x.astype(np.float32), data.target[rows].astype(np.int64)
