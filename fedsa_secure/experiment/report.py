"""Write a grid's table.md (paper Table 1 layout), accuracy-over-rounds and selection plots."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on nodes and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedsa_secure.data import FEDERATIONS  # noqa: E402
from fedsa_secure.experiment.stats import ArmSummary, selection_frequency, summarise, versus  # noqa: E402
from fedsa_secure.plots import save_figure  # noqa: E402

BASELINE_STYLES = (":", "-.", (0, (1, 4)))  # Scratch / Transfer / Centralised KA lines, one dash pattern per architecture


def arm_label(method: str, secure: bool, federated: bool, arch: str | None = None) -> str:
    """`fedsa+ secure` (DP-SGD teacher and rounds at the budget) or `fedsa+ plain` (no DP); baselines bare.

    `arch` prefixes the student architecture, for grids over several (`resnet fedsa+ secure`).
    """
    label = f"{method} {'secure' if secure else 'plain'}" if federated else method
    return f"{arch} {label}" if arch else label


def shown_archs(records: list[dict]) -> list[str]:
    """The grid's student architectures, or none when there is one: labels then stay as they were."""
    archs = list(dict.fromkeys(r["arch"] for r in records))
    return archs if len(archs) > 1 else []


def _pm(mean: float, spread: float, scale: float = 1.0, digits: int = 3) -> str:
    spread_text = "n/a" if math.isnan(spread) else f"{scale * spread:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {spread_text}"


def format_table(records: list[dict], federated: set[str]) -> str:
    """Markdown: per dataset, accuracy mean ± std per arm x budget, paired difference to Scratch ± SE, costs, selection.

    With several student architectures an `arch` column leads every table; with several target
    tasks each arm gets one row per task (a `task` column), paired with Scratch's accuracy on that task.
    """
    rows = summarise(records)
    show_arch = bool(shown_archs(records))
    show_task = len({r.task for r in rows}) > 1
    lines = ["# Experiment results", "",
             "Accuracy: mean ± sample std over seeds. Δ Scratch: mean of the per-seed difference to Scratch "
             "(same split, teachers, student architecture and Scratch model), in points, ± its standard error. "
             "`secure`: each node's records at the grid's epsilon in all (DP-SGD teacher and rounds), secure aggregation; "
             "`plain`: no DP anywhere.", ""]
    for dataset in dict.fromkeys(r.dataset for r in rows):
        cells = [r for r in rows if r.dataset == dataset]
        lines += [f"## {dataset}", "", *_accuracy_lines(cells, federated, show_arch, show_task), "",
                  *_versus_lines(records, dataset, federated, show_arch),
                  *_cost_lines(cells, federated, show_arch), "", *_selection_lines(records, dataset, show_arch), ""]
    return "\n".join(lines)


def _accuracy_lines(cells: list[ArmSummary], federated: set[str], show_arch: bool, show_task: bool) -> list[str]:
    """One row per arm (and architecture, and task, when shown), one column pair per budget."""
    budgets = list(dict.fromkeys(r.probe_budget for r in cells))
    by_arm: dict[tuple[str, ...], dict[float, ArmSummary]] = defaultdict(dict)
    for r in cells:
        key = (*_only(r.arch, show_arch), arm_label(r.method, r.secure, r.method in federated), *_only(r.task, show_task))
        by_arm[key][r.probe_budget] = r
    keys = [*_only("arch", show_arch), "method", *_only("task", show_task)]
    header = " | ".join(f"{b:g}: accuracy | {b:g}: Δ Scratch (pts)" for b in budgets)
    lines = [_row([*keys, "seeds", header]), "|---" * (len(keys) + 1) + "|---|---" * len(budgets) + "|"]
    for key, per_budget in by_arm.items():
        seeds = "/".join(sorted({str(r.seeds) for r in per_budget.values()}))
        values = " | ".join(
            f"{_pm(per_budget[b].mean, per_budget[b].std)} | {_pm(per_budget[b].diff, per_budget[b].diff_se, 100, 1)}"
            if b in per_budget else "– | –" for b in budgets)
        lines.append(_row([*key, seeds, values]))
    return lines


OURS = "fedsa+"


def _versus_lines(records: list[dict], dataset: str, federated: set[str], show_arch: bool) -> list[str]:
    """`fedsa+` minus each other federated method, seed by seed, per arm and budget (digit task); empty without them."""
    others = sorted(federated - {OURS})
    rows = versus([r for r in records if r["dataset"] == dataset], OURS, others)
    if not rows:
        return []
    lines = [f"`{OURS}` against the other federated methods, paired by seed (digit task; points ± SE; "
             "yes: ahead by more than two standard errors):", "",
             _row([*_only("arch", show_arch), "arm", "budget", "versus", "seeds", "difference", "> 2 SE"]),
             "|---" * (6 + show_arch) + "|"]
    for v in rows:
        lines.append(_row([*_only(v.arch, show_arch), "secure" if v.secure else "plain", f"{v.probe_budget:g}",
                           v.other, str(v.seeds), _pm(v.diff, v.diff_se, 100, 1), "yes" if v.clear else "no"]))
    return [*lines, ""]


def _cost_lines(cells: list[ArmSummary], federated: set[str], show_arch: bool) -> list[str]:
    """Traffic, node time and epsilon per federated arm: once per arm, not once per task (they do not depend on it)."""
    first_task = cells[0].task
    lines = [_row([*_only("arch", show_arch), "method", "budget", "mean bytes up", "mean node seconds",
                   "max epsilon spent"]), "|---" * (5 + show_arch) + "|"]
    for r in cells:
        if r.method in federated and r.task == first_task:
            eps = "–" if r.max_epsilon is None else f"{r.max_epsilon:.2f}"
            lines.append(_row([*_only(r.arch, show_arch), arm_label(r.method, r.secure, True), f"{r.probe_budget:g}",
                               f"{r.mean_bytes_up:,.0f}", f"{r.mean_node_seconds:.1f}", eps]))
    return lines


def _only(cell: str, shown: bool) -> list[str]:
    """`[cell]` for a column the table shows, else nothing."""
    return [cell] if shown else []


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _selection_lines(records: list[dict], dataset: str, show_arch: bool) -> list[str]:
    frequency = {k: v for k, v in selection_frequency(records).items() if k[0] == dataset}
    if not frequency:
        return []
    tasks = FEDERATIONS[dataset].nodes
    nodes = sorted({n for shares in frequency.values() for n in shares})
    lines = ["Share of cohort slots per node (pooled over seeds and rounds):", "",
             _row([*_only("arch", show_arch), "method", "budget", *(f"{n} ({tasks.get(n, '?')})" for n in nodes)]),
             "|---" * (show_arch + 2 + len(nodes)) + "|"]
    for (_, budget, arch, method, secure), shares in frequency.items():
        lines.append(_row([*_only(arch, show_arch), arm_label(method, secure, True), f"{budget:g}",
                           *(f"{shares.get(n, 0.0):.0%}" for n in nodes)]))
    return lines


def plot_accuracy_over_rounds(records: list[dict], path: Path) -> Path:
    """One panel per (dataset, budget): mean adapted-student (digit) accuracy per round per federated arm; baselines dotted."""
    cells = list(dict.fromkeys((r["dataset"], r["probe_budget"]) for r in records))
    archs = shown_archs(records)
    figure, axes = plt.subplots(1, len(cells), figsize=(7 * len(cells), 4), squeeze=False)
    for axis, (dataset, budget) in zip(axes[0], cells):
        mine = [r for r in records if (r["dataset"], r["probe_budget"]) == (dataset, budget)]
        curves: dict[str, list[list[float | None]]] = defaultdict(list)
        for r in mine:
            if r["accuracy_per_round"]:
                curves[arm_label(r["method"], r["secure"], True, r["arch"] if archs else None)].append(r["accuracy_per_round"])
        for label, runs in curves.items():
            points = [(i, sum(v) / len(v)) for i, v in enumerate(zip(*runs)) if None not in v]
            axis.plot(*zip(*points), marker="o", label=label, linestyle="-" if "secure" in label else "--")
        for method, color in (("scratch", "black"), ("transfer", "grey"), ("centralised-ka", "darkgoldenrod")):
            for arch, style in zip(archs or [None], BASELINE_STYLES):  # type: ignore[list-item]
                values = [r["accuracy"] for r in mine if r["method"] == method and arch in (None, r["arch"])]
                if values:
                    axis.axhline(sum(values) / len(values), color=color, linestyle=style,
                                 label=arm_label(method, False, False, arch))
        axis.set(xlabel="round", ylabel="test accuracy (mean over seeds)", title=f"{dataset}, probe budget {budget:g}")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(figure, path)


def plot_selection(records: list[dict], path: Path) -> Path:
    """Grouped bars: share of cohort slots per node for every federated arm (pooled over cells and seeds)."""
    frequency = selection_frequency(records)
    archs = shown_archs(records)
    labels = [f"{arm_label(m, s, True, a if archs else None)}\n{d} {b:g}" for d, b, a, m, s in frequency]
    nodes = sorted({n for shares in frequency.values() for n in shares})
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4))
    width = 0.8 / max(1, len(nodes))
    for j, node in enumerate(nodes):
        task = next((f.nodes[node] for f in FEDERATIONS.values() if node in f.nodes), "?")
        axis.bar([i + j * width for i in range(len(labels))], [shares.get(node, 0.0) for shares in frequency.values()],
                 width, label=f"{node}: {task}")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, fontsize="x-small")
    axis.set(ylabel="share of cohort slots", title="Selection frequency per node")
    axis.legend(fontsize="x-small")
    return save_figure(figure, path)
