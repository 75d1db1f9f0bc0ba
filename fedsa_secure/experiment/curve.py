"""The privacy-utility curve: student accuracy against each node's total epsilon, from grids run at several budgets.

Each grid (`fedsa-secure experiment --epsilon E`) gives one point per secure method; Scratch does
not depend on epsilon. Points are paired with Scratch seed by seed, and grids run with teachers
trained without DP (`--no-dp-teachers`, the accounting before 2026-12-06) are kept apart and
labelled: their epsilon covers the rounds alone.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from fedsa_secure.errors import ConfigError  # noqa: E402
from fedsa_secure.experiment.stats import mean_std, paired_difference  # noqa: E402
from fedsa_secure.plots import save_figure  # noqa: E402

COVERED, UNCOVERED = "teacher covered", "teacher not covered (until 2026-12-06)"


@dataclass(frozen=True)
class CurvePoint:
    method: str
    accounting: str  # COVERED or UNCOVERED
    epsilon: float
    seeds: int
    accuracy: float
    accuracy_std: float
    gain: float  # over Scratch, same seeds, paired
    gain_se: float


def read_grid_runs(directories: list[Path]) -> list[dict]:
    """Every record of the grids' results.json; ConfigError naming a directory that has none."""
    records = []
    for directory in directories:
        try:
            records += json.loads((directory / "results.json").read_text(encoding="utf-8"))["records"]
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"--curve: cannot read {directory / 'results.json'} ({error})") from None
    return records


def _teacher_covered(record: dict) -> bool:
    """Whether the run's epsilon covers the teachers; records written before that flag existed say it by
    holding the DP teachers' epsilon (uncovered runs recorded none)."""
    if "teacher_covered" in record:
        return bool(record["teacher_covered"])
    return record.get("teacher_epsilon") is not None


def curve_points(records: list[dict]) -> tuple[list[CurvePoint], dict[int, float]]:
    """One point per (method, accounting, epsilon) of the secure records, and Scratch's accuracy per seed."""
    scratch = {r["seed"]: r["accuracy"] for r in records if r["method"] == "scratch"}
    groups: dict[tuple[str, str, float], dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.get("secure") and r.get("dp_target_epsilon") is not None:
            accounting = COVERED if _teacher_covered(r) else UNCOVERED
            groups[(r["method"], accounting, float(r["dp_target_epsilon"]))][r["seed"]] = r["accuracy"]
    points = []
    for (method, accounting, epsilon), by_seed in sorted(groups.items()):
        mean, std = mean_std(list(by_seed.values()))
        gain, gain_se = paired_difference(by_seed, scratch)
        points.append(CurvePoint(method, accounting, epsilon, len(by_seed), mean, std, gain, gain_se))
    return points, scratch


def format_curve(points: list[CurvePoint], scratch: dict[int, float]) -> str:
    """Markdown: accuracy and gain over Scratch (points ± SE) per total epsilon, one row per method and accounting."""
    epsilons = sorted({p.epsilon for p in points})
    rows = sorted({(p.accounting, p.method) for p in points})
    by_key = {(p.accounting, p.method, p.epsilon): p for p in points}
    scratch_mean, scratch_std = mean_std(list(scratch.values())) if scratch else (float("nan"), float("nan"))
    lines = [
        "| accounting | method | " + " | ".join(f"epsilon {e:g}" for e in epsilons) + " |",
        "|---|---|" + "---|" * len(epsilons),
        f"| – | Scratch ({len(scratch)} seeds) | " + " | ".join(f"{scratch_mean:.3f} ± {scratch_std:.3f}" for _ in epsilons) + " |",
    ]
    for accounting, method in rows:
        cells = []
        for e in epsilons:
            p = by_key.get((accounting, method, e))
            cells.append("–" if p is None else
                         f"{p.accuracy:.3f} ({100 * p.gain:+.1f} ± {100 * p.gain_se:.1f}; {p.seeds} seeds)")
        lines.append(f"| {accounting} | {method} secure | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curve(points: list[CurvePoint], scratch: dict[int, float], path: Path) -> Path:
    """Accuracy against total epsilon (log scale), one line per method and accounting; Scratch as a line."""
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for (method, accounting) in sorted({(p.method, p.accounting) for p in points}):
        mine = sorted((p for p in points if (p.method, p.accounting) == (method, accounting)), key=lambda p: p.epsilon)
        axis.errorbar([p.epsilon for p in mine], [p.accuracy for p in mine], yerr=[p.gain_se for p in mine],
                      marker="o", capsize=3, linestyle="-" if accounting == COVERED else ":",
                      label=f"{method} secure, {accounting}")
    if scratch:
        axis.axhline(sum(scratch.values()) / len(scratch), color="black", linestyle="--", label="Scratch (probe only)")
    axis.set_xscale("log", base=2)
    axis.set(xlabel="each node's total epsilon (delta 1e-5)", ylabel="test accuracy (mean over seeds)",
             title="Privacy-utility: what each node's budget buys")
    axis.legend(fontsize="x-small", loc="lower right")
    return save_figure(figure, path)
