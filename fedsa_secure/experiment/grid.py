"""Run the experiment grid: every method on the same seeds' splits and teachers, one record per run.

Runs are ordered dataset -> budget -> seed -> method so that one seed's teachers (trained once,
cached on disk) and Scratch model are shared by every method of that seed: the comparison is
paired, and teacher training is paid once per seed rather than once per method.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from fedsa_secure.data import federation
from fedsa_secure.experiment.baselines import centralised_ka, transfer
from fedsa_secure.experiment.spec import CENTRAL_FEATURE_WEIGHT, FEDERATED, TARGET_EPSILON, Grid
from fedsa_secure.fedsa.adapt import AdaptRecipe, evaluate, scratch
from fedsa_secure.fedsa.distill import DPSettings
from fedsa_secure.fedsa.simulation import federation_teachers, simulate

def probe_fraction(probe_size: int, node_sizes: list[int]) -> float:
    """A fixed probe's budget: its share of the records outside the test set (digits gives all of them to parties)."""
    return round(probe_size / (probe_size + sum(node_sizes)), 4)


def _record(dataset: str, budget: float, seed: int, method: str, secure: bool, **fields: object) -> dict:
    base = {
        "dataset": dataset, "method": method, "probe_budget": budget, "seed": seed, "secure": secure,
        "dp_epsilon": None, "accuracy": None, "bytes_up": 0, "bytes_down": 0, "node_seconds": 0.0,
        "accuracy_per_round": None, "selection_counts": None,
    }
    return base | fields


def run_grid(grid: Grid, out: Path, teacher_cache: Path, progress: Callable[[str], None]) -> list[dict]:
    """Run every cell, seed and method; rewrite `out/results.json` after each run (a partial grid is kept)."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    total = len(grid.cells()) * len(grid.seeds) * grid.runs_per_seed()
    dp = DPSettings(target_epsilon=TARGET_EPSILON, planned_rounds=grid.rounds, local_epochs=grid.local_epochs)
    recipe = AdaptRecipe(batch_size=grid.adapt_batch or None)
    for dataset, budget in grid.cells():
        for seed in grid.seeds:
            probe, test = federation(dataset).aggregator(seed, budget)
            teachers = federation_teachers(dataset, seed, teacher_cache)
            reported_budget = budget if budget is not None else probe_fraction(
                len(probe), [len(data.train) for data, _ in teachers.values()])
            baseline = scratch(probe, seed, recipe)
            scratch_accuracy = evaluate(baseline, test)
            for method in grid.methods:
                for secure in (grid.arms if method in FEDERATED else (False,)):
                    started = time.perf_counter()
                    if method == "scratch":
                        record = _record(dataset, reported_budget, seed, method, False, accuracy=scratch_accuracy)
                    elif method == "transfer":
                        result = transfer(teachers, probe, test, seed, recipe)
                        record = _record(dataset, reported_budget, seed, method, False, accuracy=result["accuracy"],
                                         transfer_teacher=result["teacher"])
                    elif method == "centralised-ka":
                        result = centralised_ka(teachers, probe, test, seed, recipe, dp, grid.rounds * grid.local_epochs,
                                                CENTRAL_FEATURE_WEIGHT)
                        record = _record(dataset, reported_budget, seed, method, False, accuracy=result["accuracy"])
                    else:
                        record = _federated(grid, dataset, budget, reported_budget, seed, method, secure, dp, recipe,
                                            teacher_cache, baseline)
                    record["scratch_accuracy"] = scratch_accuracy
                    record["probe_size"] = len(probe)
                    record["seconds"] = round(time.perf_counter() - started, 2)
                    records.append(record)
                    write_json_atomic(out / "results.json", {"grid": asdict(grid), "records": records})
                    progress(progress_line(len(records), total, record))
    return records


def _federated(grid: Grid, dataset: str, budget: float | None, reported_budget: float, seed: int, method: str,
               secure: bool, dp: DPSettings, recipe: AdaptRecipe, teacher_cache: Path, baseline: object) -> dict:
    result = simulate(
        seed, grid.rounds, grid.cohort, dp, method=method, dataset=dataset, probe_budget=budget, private=secure,
        teacher_cache=teacher_cache, recipe=recipe, aggregation="secure" if secure else "plain",
        baseline=baseline, eval_every=grid.eval_every,
    )
    epsilon = max(result["epsilon"].values()) if secure else None
    return _record(
        dataset, reported_budget, seed, method, secure,
        dp_epsilon=epsilon, accuracy=result["final_accuracy"], bytes_up=result["bytes_up"],
        bytes_down=result["bytes_down"], node_seconds=round(sum(result["node_seconds"].values()), 3),
        accuracy_per_round=[h["accuracy"] for h in result["rounds"]],
        selection_counts=result["selection_counts"],
        cohorts=[h["cohort"] for h in result["rounds"][1:]],
        protocol_bytes_up=result["protocol_bytes_up"], vector_length=result["vector_length"],
        secagg=result["secagg"], dp_target_epsilon=TARGET_EPSILON if secure else None,
        max_abs_weighted_update=result["max_abs_weighted_update"],
    )


def progress_line(done: int, total: int, record: dict) -> str:
    """One line per finished run."""
    arm = (" secure" if record["secure"] else " plain") if record["method"] in FEDERATED else ""
    eps = "" if record["dp_epsilon"] is None else f" eps {record['dp_epsilon']:.2f}"
    traffic = f" up {record['bytes_up'] / 1e3:.0f} kB" if record["bytes_up"] else ""
    delta = 100 * (record["accuracy"] - record["scratch_accuracy"])
    return (f"[{done}/{total}] {record['dataset']} {record['probe_budget']:g} seed {record['seed']} "
            f"{record['method']}{arm}: accuracy {record['accuracy']:.4f} ({delta:+.1f} vs scratch){eps}{traffic} "
            f"{record['seconds']:.0f}s")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def write_json_atomic(path: Path, payload: object) -> None:
    """`payload` as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=1))
