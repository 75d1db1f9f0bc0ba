"""Amalgamation (FedSA step 4): add the securely aggregated weighted update to the student backbone."""

from __future__ import annotations

import numpy as np
from torch import nn

from fedsa_secure.models import backbone_state, flatten_state, load_backbone_state, unflatten_like


def apply_update(student: nn.Module, summed_update: np.ndarray) -> None:
    """student backbone += sum_i w_i Delta_i (a flat vector in `flatten_state` order); the head is untouched."""
    state = backbone_state(student)
    load_backbone_state(student, unflatten_like(flatten_state(state) + summed_update, state))
