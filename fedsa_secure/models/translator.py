"""The node-local translator Phi_i: maps student features to the teacher's feature space (channels and grid)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsa_secure.models.cnn import norm_groups


class Translator(nn.Sequential):
    """Three 1x1 conv + GroupNorm + LeakyReLU layers (DESIGN section 2); it never leaves the node.

    With `out_size` (the teacher's map side or (H, W)), student maps of another spatial size are
    first resized to it (bilinear, antialiased when shrinking), so students whose grid differs from
    the teacher's (e.g. the MLP's 4x4 against MNIST's 7x7 teacher maps) can be distilled. Maps that
    already have that size pass unchanged, so the same-shape case is exactly the plain 1x1 stack.
    """

    def __init__(self, in_channels: int, out_channels: int, out_size: int | tuple[int, int] | None = None) -> None:
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(3):
            layers += [
                nn.Conv2d(c_in, out_channels, 1),
                nn.GroupNorm(norm_groups(out_channels), out_channels),
                nn.LeakyReLU(0.1),
            ]
            c_in = out_channels
        super().__init__(*layers)
        self.out_size = (out_size, out_size) if isinstance(out_size, int) else (None if out_size is None else tuple(out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_size is not None and tuple(x.shape[-2:]) != self.out_size:
            shrinking = x.shape[-2] > self.out_size[0] or x.shape[-1] > self.out_size[1]
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False, antialias=shrinking)
        return super().forward(x)
