"""Amalgamation (FedSA step 4): add the securely aggregated weighted update to the student backbone."""

from __future__ import annotations

import numpy as np
from torch import nn

from fedsa_secure.models import backbone_state, flatten_state, load_backbone_state, unflatten_like
from fedsa_secure.models.state import BACKBONE


def apply_update(student: nn.Module, summed_update: np.ndarray, parts: tuple[str, ...] = (BACKBONE,)) -> None:
    """student `parts` += sum_i w_i Delta_i (a flat vector in `flatten_state` order); other parts are untouched.

    `fedsa` releases the backbone only; `fedsa+` also the target-task head (see fedsa.output_kd).
    """
    state = backbone_state(student, parts)
    load_backbone_state(student, unflatten_like(flatten_state(state) + summed_update, state), parts)
