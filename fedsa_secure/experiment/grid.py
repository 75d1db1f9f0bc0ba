"""Run the experiment grid: every method on the same seeds' splits and teachers, one record per run.

Runs are ordered dataset -> budget -> seed -> student architecture -> method so that one seed's
teachers (trained once, cached on disk) serve every architecture and method of that seed, and one
Scratch model (of that architecture and those target tasks) every method of the architecture: the
comparison is paired, and teacher training is paid once per seed rather than once per method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path

from fedsa_secure.data import LabelledSet, federation
from fedsa_secure.experiment.baselines import Teachers, centralised_ka, transfer
from fedsa_secure.experiment.simulation import federation_teachers, simulate, teacher_privacy
from fedsa_secure.experiment.spec import CENTRAL_FEATURE_WEIGHT, FEDERATED, Grid
from fedsa_secure.fedsa.adapt import Adapted, AdaptRecipe, scratch, task_accuracy
from fedsa_secure.fedsa.distill import DPSettings
from fedsa_secure.files import write_json_atomic


def probe_fraction(probe_size: int, node_sizes: list[int]) -> float:
    """A fixed probe's budget: its share of the records outside the test set (digits gives all of them to parties)."""
    return round(probe_size / (probe_size + sum(node_sizes)), 4)


def _record(dataset: str, budget: float, seed: int, arch: str, method: str, secure: bool, **fields: object) -> dict:
    base = {
        "dataset": dataset, "arch": arch, "method": method, "probe_budget": budget, "seed": seed, "secure": secure,
        "dp_epsilon": None, "accuracy": None, "task_accuracy": None, "bytes_up": 0, "bytes_down": 0,
        "node_seconds": 0.0, "accuracy_per_round": None, "selection_counts": None,
    }
    return base | fields


def _accuracies(per_task: dict[str, float]) -> dict:
    """Record fields of a run's accuracy per task: `accuracy` stays the digit task's, so single-task readers work."""
    return {"accuracy": per_task["digit"], "task_accuracy": per_task}


@dataclass(frozen=True)
class _Cell:
    """What every method of one dataset, budget, seed and student architecture shares: split, teachers, Scratch."""

    dataset: str
    budget: float | None  # None: digits' fixed probe
    reported_budget: float
    seed: int
    arch: str
    probe: LabelledSet
    test: LabelledSet
    teachers: Teachers  # trained without DP: plaintext arms and the baselines
    dp_teachers: Teachers | None  # trained with DP-SGD (the secure arms' nodes); None: no secure arms, or Grid.dp_teachers off
    baseline: Adapted  # this cell's Scratch model


def run_grid(grid: Grid, out: Path, teacher_cache: Path, progress: Callable[[str], None]) -> list[dict]:
    """Run every cell, seed, architecture and method; rewrite `out/results.json` after each run (a partial grid is kept)."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    total = len(grid.cells()) * len(grid.seeds) * grid.runs_per_seed()
    dp = DPSettings(target_epsilon=grid.epsilon, planned_rounds=grid.rounds, local_epochs=grid.local_epochs)
    dp_arms = True in grid.arms and any(m in FEDERATED for m in grid.methods) and grid.dp_teachers
    recipe = AdaptRecipe(batch_size=grid.adapt_batch or None)
    for dataset, budget in grid.cells():
        for seed in grid.seeds:
            probe, test = federation(dataset).aggregator(seed, budget)
            teachers = federation_teachers(dataset, seed, teacher_cache)
            dp_teachers = (federation_teachers(dataset, seed, teacher_cache, teacher_privacy(dp, grid.teacher_share))
                           if dp_arms else None)
            reported_budget = budget if budget is not None else probe_fraction(
                len(probe), [len(t.data.train) for t in teachers.values()])
            # Transfer's model is a teacher, not a student: one run serves every architecture of the seed
            run_transfer = cache(partial(transfer, teachers, probe, test, seed, recipe, grid.tasks))
            for arch in grid.archs:
                cell = _Cell(dataset, budget, reported_budget, seed, arch, probe, test, teachers, dp_teachers,
                             scratch(probe, seed, recipe, arch=arch, tasks=grid.tasks))
                scratch_tasks = task_accuracy(cell.baseline, test)
                for method in grid.methods:
                    for secure in (grid.arms if method in FEDERATED else (False,)):
                        started = time.perf_counter()
                        record = _run(grid, cell, method, secure, dp, recipe, scratch_tasks, run_transfer)
                        record["scratch_accuracy"] = scratch_tasks["digit"]
                        record["scratch_task_accuracy"] = scratch_tasks
                        record["probe_size"] = len(probe)
                        record["seconds"] = round(time.perf_counter() - started, 2)
                        records.append(record)
                        write_json_atomic(out / "results.json", {"grid": asdict(grid), "records": records})
                        progress(progress_line(len(records), total, record))
    return records


def _run(grid: Grid, cell: _Cell, method: str, secure: bool, dp: DPSettings, recipe: AdaptRecipe,
         scratch_tasks: dict[str, float], run_transfer: Callable[[], dict]) -> dict:
    """One method's record in `cell` (Scratch's accuracy is known already; Transfer runs once per seed)."""
    key = (cell.dataset, cell.reported_budget, cell.seed, cell.arch, method)
    if method == "scratch":
        return _record(*key, False, **_accuracies(scratch_tasks))
    if method == "transfer":
        result = run_transfer()
        return _record(*key, False, **_accuracies(result["task_accuracy"]), transfer_teacher=result["teacher"])
    if method == "centralised-ka":
        result = centralised_ka(cell.teachers, cell.probe, cell.test, cell.seed, recipe, dp,
                                grid.rounds * grid.local_epochs, CENTRAL_FEATURE_WEIGHT, cell.arch, grid.tasks)
        return _record(*key, False, **_accuracies(result["task_accuracy"]))
    return _federated(grid, cell, method, secure, dp, recipe)


def _federated(grid: Grid, cell: _Cell, method: str, secure: bool, dp: DPSettings, recipe: AdaptRecipe) -> dict:
    teachers = cell.dp_teachers if secure and cell.dp_teachers else cell.teachers
    result = simulate(
        cell.seed, grid.rounds, grid.cohort, dp, method=method, dataset=cell.dataset, probe_budget=cell.budget,
        private=secure, teachers=teachers, recipe=recipe,
        baseline=cell.baseline, eval_every=grid.eval_every, arch=cell.arch, target_tasks=grid.tasks,
    )
    epsilon = max(result["epsilon"].values()) if secure else None
    return _record(
        cell.dataset, cell.reported_budget, cell.seed, cell.arch, method, secure,
        dp_epsilon=epsilon, **_accuracies(result["task_accuracy"]), bytes_up=result["bytes_up"],
        bytes_down=result["bytes_down"], node_seconds=round(sum(result["node_seconds"].values()), 3),
        accuracy_per_round=[h["accuracy"] for h in result["rounds"]],
        selection_counts=result["selection_counts"],
        cohorts=[h["cohort"] for h in result["rounds"][1:]],
        protocol_bytes_up=result["protocol_bytes_up"], vector_length=result["vector_length"],
        secagg=result["secagg"], dp_target_epsilon=grid.epsilon if secure else None,
        teacher_epsilon=max((e for e in result["teacher_epsilon"].values() if e is not None), default=None) if secure else None,
        teacher_covered=secure and grid.dp_teachers,
        average_rounds=result["average_rounds"], student_sha256=result["student_sha256"],
    )


def progress_line(done: int, total: int, record: dict) -> str:
    """One line per finished run."""
    arm = (" secure" if record["secure"] else " plain") if record["method"] in FEDERATED else ""
    eps = "" if record["dp_epsilon"] is None else f" eps {record['dp_epsilon']:.2f}"
    traffic = f" up {record['bytes_up'] / 1e3:.0f} kB" if record["bytes_up"] else ""
    delta = 100 * (record["accuracy"] - record["scratch_accuracy"])
    others = "".join(f" {task} {value:.4f}" for task, value in record["task_accuracy"].items() if task != "digit")
    return (f"[{done}/{total}] {record['dataset']} {record['probe_budget']:g} seed {record['seed']} {record['arch']} "
            f"{record['method']}{arm}: accuracy {record['accuracy']:.4f} ({delta:+.1f} vs scratch){others}{eps}{traffic} "
            f"{record['seconds']:.0f}s")

