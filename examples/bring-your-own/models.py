"""The student the federation trains, in the example's own code: the student owner names it in aggregator.toml and
every clinic in its own config; each builds it from its copy of this file, and only its name and a digest travel."""

from torch import nn

from fedsa_secure import Student


def student(num_classes: int) -> Student:
    """Two 3x3 convolutions (GroupNorm keeps Opacus's per-sample gradients exact), pooled to 4x4, then a linear head."""
    features = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
    )
    return Student(features, 32 * 16, num_classes)
