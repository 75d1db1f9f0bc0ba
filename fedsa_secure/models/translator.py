"""The node-local translator Phi_i: maps student features to the teacher's feature space."""

from __future__ import annotations

from torch import nn

from fedsa_secure.models.cnn import norm_groups


class Translator(nn.Sequential):
    """Three 1x1 conv + GroupNorm + LeakyReLU layers (DESIGN section 2); it never leaves the node."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
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
