"""Plots of a run: accuracy and privacy spent over rounds, drawn from `summary.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; nodes and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedsa_secure.files import atomic_write_with  # noqa: E402


def plot_progress(summary: dict[str, Any], path: Path) -> Path:
    """Two panels: adapted-student accuracy per round against Scratch, and epsilon per node with budgets."""
    history = summary["history"]
    rounds = [r["round"] for r in history]
    figure, (accuracy_axis, epsilon_axis) = plt.subplots(1, 2, figsize=(11, 4))
    measured = [(r["round"], r["accuracy"]) for r in history if r["accuracy"] is not None]
    accuracy_axis.plot(*zip(*measured), marker="o", label=f"student ({summary['method']}, DP + SecAgg)")
    accuracy_axis.axhline(summary["scratch_accuracy"], color="grey", linestyle="--", label="Scratch (probe only)")
    accuracy_axis.set(xlabel="round", ylabel="test accuracy", title="Adapted student accuracy")
    accuracy_axis.legend(loc="lower right")
    for node in summary["nodes"]:
        name = node["name"]
        epsilon_axis.plot([0, *rounds], [0.0, *(r["epsilon"][name] for r in history)], marker="o", label=name)
    budgets = {n["target_epsilon"] for n in summary["nodes"] if n["target_epsilon"]}
    for budget in budgets:
        epsilon_axis.axhline(budget, color="red", linestyle=":", label=f"budget {budget:g}")
    epsilon_axis.set(xlabel="round", ylabel="cumulative epsilon", title="Privacy spent per node")
    epsilon_axis.legend(loc="upper left", fontsize="small")
    for axis in (accuracy_axis, epsilon_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(figure, path)


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Write the PNG atomically (temp file, then rename) and free the figure."""
    figure.tight_layout()
    try:
        atomic_write_with(path, lambda handle: figure.savefig(handle, dpi=100, format="png"))
    finally:
        plt.close(figure)
    return path
