"""A fully connected student whose last layer is laid out as a small grid of feature maps.

Why a grid [B, 16, 4, 4] rather than a vector [B, C, 1, 1]: the FitNets loss compares the
translated student maps with the teacher's maps position by position. A 1x1 map resized to the
teacher's grid is the same vector everywhere, so it could only match the spatial *mean* of the
teacher's features and Grad-CAM would be a constant map. A grid lets the last linear layer put a
different vector at every cell; feature distillation then ties cells to image regions (the
teacher's), and Grad-CAM has a map to compare. Before distillation the cells are arbitrary.

Images of any side are average-pooled to 8x8 first (the digits' native size; for 14x14 MNIST
it is a mild downsampling), so one parameter shape serves every dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsa_secure.models.cnn import FEATURE_SIDE, HeadedBackbone, norm_groups

MLP_INPUT_SIDE = 8
MLP_HIDDEN = 256
MLP_GRID_CHANNELS = 16


class ResizeImage(nn.Module):
    """Average-pool images to `side` x `side` (parameter-free; adaptive, so any input side works)."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.side)


class MLP(HeadedBackbone):
    """pool -> flatten -> Linear, LayerNorm, ReLU -> Linear -> [B, channels, 4, 4], GroupNorm, ReLU -> head."""

    def __init__(self, hidden: int, channels: int, num_classes: int, head: str = "spatial") -> None:
        super().__init__()
        grid = FEATURE_SIDE
        self.features = nn.Sequential(
            ResizeImage(MLP_INPUT_SIDE),
            nn.Flatten(),
            nn.Linear(MLP_INPUT_SIDE**2, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels * grid * grid),
            nn.Unflatten(1, (channels, grid, grid)),
            nn.GroupNorm(norm_groups(channels), channels),
            nn.ReLU(),
        )
        self._init_head(channels, num_classes, head)
