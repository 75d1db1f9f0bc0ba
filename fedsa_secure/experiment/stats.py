"""Statistics of a grid's records: mean +- std per arm, the paired difference to Scratch, selection frequency.

The difference to Scratch is taken seed by seed (same split, same teachers, same Scratch model),
so its standard error excludes the seed-to-seed variation that both share; an unpaired
comparison of the two means would hide real gains under that variation.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ArmSummary:
    """One table cell: a method's arm with one student architecture on one dataset and budget, one target task, over its seeds."""

    dataset: str
    probe_budget: float
    arch: str
    method: str
    secure: bool
    task: str  # the target task whose accuracy this is ("digit" unless the grid adapts several heads)
    seeds: int
    mean: float
    std: float  # sample standard deviation (ddof 1); NaN for one seed
    diff: float  # mean over seeds of accuracy - Scratch accuracy
    diff_se: float  # standard error of that mean (ddof 1); NaN for one seed
    mean_bytes_up: float
    mean_node_seconds: float
    max_epsilon: float | None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN when there is one value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values, mean) if len(values) > 1 else math.nan


def paired_difference(values: dict[int, float], reference: dict[int, float]) -> tuple[float, float]:
    """Mean and standard error of values[s] - reference[s] over the seeds s of `values`; every seed must be paired."""
    missing = sorted(set(values) - set(reference))
    if missing:
        raise ValueError(f"no reference (Scratch) result for seeds {missing}")
    mean, std = mean_std([values[s] - reference[s] for s in sorted(values)])
    return mean, std / math.sqrt(len(values))


ArmKey = tuple[str, float, str, str, bool]  # dataset, probe budget, student architecture, method, secure


def arm_key(record: dict) -> ArmKey:
    return record["dataset"], record["probe_budget"], record["arch"], record["method"], record["secure"]


def summarise(records: Iterable[dict]) -> list[ArmSummary]:
    """One ArmSummary per (dataset, budget, arch, method, secure) and target task, in first-seen order."""
    groups: dict[ArmKey, list[dict]] = defaultdict(list)
    for record in records:
        groups[arm_key(record)].append(record)
    out = []
    for (dataset, budget, arch, method, secure), group in groups.items():
        if len({r["seed"] for r in group}) != len(group):
            raise ValueError(f"duplicate seeds for {arch} {method} on {dataset} at {budget}")
        epsilons = [r["dp_epsilon"] for r in group if r["dp_epsilon"] is not None]
        for task in group[0]["task_accuracy"]:
            accuracy = {r["seed"]: r["task_accuracy"][task] for r in group}
            mean, std = mean_std(list(accuracy.values()))
            diff, se = paired_difference(accuracy, {r["seed"]: r["scratch_task_accuracy"][task] for r in group})
            out.append(ArmSummary(
                dataset, budget, arch, method, secure, task, len(group), mean, std, diff, se,
                mean_bytes_up=mean_std([r["bytes_up"] for r in group])[0],
                mean_node_seconds=mean_std([r["node_seconds"] for r in group])[0],
                max_epsilon=max(epsilons) if epsilons else None,
            ))
    return out


def selection_frequency(records: Iterable[dict]) -> dict[ArmKey, dict[str, float]]:
    """Share of cohort slots each node got, per federated arm, pooled over seeds and rounds."""
    counts: dict[ArmKey, dict[str, int]] = {}
    for record in records:
        if record.get("selection_counts"):
            into = counts.setdefault(arm_key(record), defaultdict(int))
            for node, count in record["selection_counts"].items():
                into[node] += count
    return {key: {n: c / max(1, sum(by.values())) for n, c in sorted(by.items())} for key, by in counts.items()}


@dataclass(frozen=True)
class Versus:
    """`method` minus `other` on the digit task, paired seed by seed within one dataset, budget, architecture and arm."""

    dataset: str
    probe_budget: float
    arch: str
    secure: bool
    method: str
    other: str
    seeds: int
    diff: float
    diff_se: float  # NaN for one seed

    @property
    def clear(self) -> bool:
        """The difference is positive by more than two standard errors."""
        return self.diff > 2 * self.diff_se


def versus(records: Iterable[dict], method: str, others: Sequence[str]) -> list[Versus]:
    """`method` against each of `others` on the seeds both ran: the comparisons an arm's Δ Scratch cannot show,
    since two arms' differences to Scratch share that Scratch's noise and their SEs do not subtract."""
    accuracy: dict[ArmKey, dict[int, float]] = defaultdict(dict)
    for record in records:
        accuracy[arm_key(record)][record["seed"]] = record["accuracy"]
    out = []
    for (dataset, budget, arch, name, secure), mine in accuracy.items():
        if name != method:
            continue
        for other in others:
            theirs = accuracy.get((dataset, budget, arch, other, secure), {})
            seeds = sorted(set(mine) & set(theirs))
            if seeds:
                diff, se = paired_difference({s: mine[s] for s in seeds}, theirs)
                out.append(Versus(dataset, budget, arch, secure, method, other, len(seeds), diff, se))
    return out
