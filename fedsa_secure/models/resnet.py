"""A residual student: the small CNN's shape with identity / projection shortcuts, GroupNorm throughout.

GroupNorm (not BatchNorm) normalises each record on its own, so Opacus's per-sample gradients stay
exact; every layer is one Opacus and torch ExpandedWeights support (Conv2d, GroupNorm, Linear).
"""

from __future__ import annotations

import torch
from torch import nn

from fedsa_secure.models.cnn import HeadedBackbone, norm_groups

RESNET_WIDTH = 16


class ResidualBlock(nn.Module):
    """relu(x' + GN(conv(relu(GN(conv(x)))))), x' = x or a 1x1 conv + GN projection when channels change."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(norm_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups(c_out), c_out)
        self.shortcut: nn.Module = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.GroupNorm(norm_groups(c_out), c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.shortcut(x) + self.norm2(self.conv2(out)))


class ResNet(HeadedBackbone):
    """Stem conv, a residual block at full resolution, 2x2 max-pool, a widening residual block.

    On SxS inputs `features` returns [B, 2*width, S/2, S/2], the same shape as the small CNN's, so
    the two differ only in depth and shortcuts; the last residual block is the Grad-CAM / FitNets layer.
    """

    def __init__(self, width: int, num_classes: int, head: str = "spatial") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.GroupNorm(norm_groups(width), width),
            nn.ReLU(),
            ResidualBlock(width, width),
            nn.MaxPool2d(2),
            ResidualBlock(width, 2 * width),
        )
        self._init_head(2 * width, num_classes, head)
