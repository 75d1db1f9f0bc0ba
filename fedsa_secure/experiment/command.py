"""`fedsa-secure experiment`: options, the run, and what it writes (results.json, table.md, two plots)."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from fedsa_secure.errors import ConfigError
from fedsa_secure.experiment.spec import ALL_METHODS, ARCHS, DATASETS, FEDERATED, QUICK, TASKS, Grid, with_overrides
from fedsa_secure.experiment.stats import arm_key


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `experiment` subcommand on the CLI's subparsers."""
    p = commands.add_parser(
        "experiment", help="run the comparison grid (Scratch, Transfer, FedAvg+, Random, fedsa, fedsa+, Centralised KA)",
        description="Every federated method runs twice per seed: plaintext (no DP anywhere, teachers trained "
                    "without DP) and secure (each node's records at epsilon 8 in all: its DP-SGD teacher and its "
                    "DP-SGD rounds, in-memory secure aggregation). Seeds are paired across methods.",
    )
    p.add_argument("--out", type=Path, help="output directory (default runs/experiment-<timestamp>)")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced grid: mnist5k 1%%, seeds {list(QUICK.seeds)}, {QUICK.rounds} rounds, "
                        f"methods {', '.join(QUICK.methods)}")
    p.add_argument("--json", action="store_true", help="print a summary object as JSON on the last line")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, help="default: mnist5k digits (quick: mnist5k)")
    p.add_argument("--budgets", nargs="+", type=float, help="mnist5k probe budgets (default 0.01 0.05 0.10)")
    p.add_argument("--methods", nargs="+", choices=ALL_METHODS, help="default: all")
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 3 4 (quick: 0 1)")
    p.add_argument("--rounds", type=int, help="federated rounds (default 3; quick 2)")
    p.add_argument("--local-epochs", type=int, help="a node's epochs per round (default 2)")
    p.add_argument("--eval-every", type=int, help="adapt and evaluate every N rounds and after the last (default 3; quick 1)")
    p.add_argument("--adapt-batch", type=int, metavar="N",
                   help="probe images per adaptation step, 0 for full batch (default 64: full batch whenever the "
                        "probe has at most 64 images, i.e. mnist5k 1%% and digits; cheaper at 5%% and 10%%)")
    p.add_argument("--arms", choices=("both", "plain", "secure"), default="both",
                   help="which arms of the federated methods to run (default both)")
    p.add_argument("--archs", nargs="+", type=_names(ARCHS), metavar="ARCH",
                   help=f"student architectures, each running every method (of {', '.join(ARCHS)}; "
                        "space- or comma-separated; default cnn)")
    p.add_argument("--tasks", nargs="+", type=_names(TASKS), metavar="TASK",
                   help=f"target tasks, one head each, digit first (of {', '.join(TASKS)}; space- or comma-separated; "
                        "default digit); every task's accuracy is reported")
    p.add_argument("--epsilon", type=float, help="secure arms: each node's whole budget, teacher included (default 8)")
    p.add_argument("--teacher-share", type=float, metavar="F",
                   help="secure arms: the share of --epsilon each node's DP teacher spends on its own (default 0.5)")
    p.add_argument("--no-dp-teachers", action="store_true",
                   help="secure arms with teachers trained WITHOUT DP, as before 2026-12-06: their epsilon covers the "
                        "rounds alone and is no guarantee (only to compare with the earlier figures)")
    p.add_argument("--teacher-cache", type=Path, help="where teachers are cached (default OUT/teachers)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                   help="run nothing: combine the results.json of grids run apart (e.g. seeds split across "
                        "processes or machines, same settings otherwise) into --out's results.json, table and plots")
    p.add_argument("--curve", nargs="+", type=Path, metavar="DIR",
                   help="run nothing: the privacy-utility curve (curve.md, curve.png in --out) of grids run at several "
                        "--epsilon values (and with --no-dp-teachers, kept apart)")
    p.set_defaults(handler=run_command)


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The quick or full grid with any explicit options applied."""
    arms = {"both": (False, True), "plain": (False,), "secure": (True,)}[args.arms]
    return with_overrides(
        QUICK if args.quick else Grid(),
        datasets=_tuple(args.datasets), budgets=_tuple(args.budgets), methods=_tuple(args.methods),
        seeds=_tuple(args.seeds), rounds=args.rounds, local_epochs=args.local_epochs, eval_every=args.eval_every,
        adapt_batch=args.adapt_batch, arms=arms, archs=_flat(args.archs), tasks=_flat(args.tasks),
        epsilon=args.epsilon, teacher_share=args.teacher_share, dp_teachers=False if args.no_dp_teachers else None,
    )


def _finite(value: object) -> object:
    """NaN (a spread over one seed) as null: JSON has no NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _tuple(values: list | None) -> tuple | None:
    return tuple(values) if values else None


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: one argument as comma-separated names from `allowed` (`cnn,mlp` as well as `cnn mlp`)."""

    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown or no names {unknown} in {text!r}; allowed: {', '.join(allowed)}")
        return names

    return parse


# Grid fields that may differ between merged runs: their union is the merged grid's.
JOINABLE = ("seeds", "methods", "arms")


def merge_results(directories: list[Path]) -> tuple[dict, list[dict]]:
    """The grid settings and the records of several runs' results.json; their seeds, methods and arms are joined.

    Lets seeds run in separate processes, or a method be added to a finished grid. ConfigError if a
    file is missing or unreadable, if the grids differ in anything else (their records would not be
    comparable) or if two hold the same run.
    """
    grids, records = [], []
    for directory in directories:
        path = directory / "results.json"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            grids.append(payload["grid"])
            records += payload["records"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"--merge: cannot read the records of {path} ({error}); "
                              "give directories written by `fedsa-secure experiment`") from None
    first = grids[0]
    for directory, grid in zip(directories[1:], grids[1:]):
        differing = sorted(key for key in first.keys() | grid.keys() if key not in JOINABLE and first.get(key) != grid.get(key))
        if differing:
            raise ConfigError(f"--merge: {directory} was run with other {', '.join(differing)} than {directories[0]}; "
                              f"only grids that differ in their {', '.join(JOINABLE)} can be merged")
    seen: set[tuple] = set()
    for record in records:
        key = (*arm_key(record), record["seed"])
        if key in seen:
            raise ConfigError(f"--merge: the run {key} appears twice; merge grids with disjoint seeds or methods")
        seen.add(key)
    merged = dict(first)
    for field in JOINABLE:
        values = [value for grid in grids for value in grid.get(field, ())]
        if values:
            merged[field] = list(dict.fromkeys(values)) if field == "methods" else sorted(set(values))
    return merged, records


def _flat(groups: list[list[str]] | None) -> tuple[str, ...] | None:
    return tuple(n for group in groups for n in group) if groups else None


def run_command(args: argparse.Namespace) -> int:
    """Run the grid (or merge finished ones), then write table.md and the plots next to results.json."""
    from fedsa_secure.experiment.report import format_table, plot_accuracy_over_rounds, plot_selection
    from fedsa_secure.experiment.stats import summarise
    from fedsa_secure.files import atomic_write, write_json_atomic

    out = args.out or Path("runs") / f"experiment-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    started = time.perf_counter()
    if args.curve:
        return write_curve(args.curve, out)
    if args.merge:
        grid_fields, records = merge_results(args.merge)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "results.json", {"grid": grid_fields, "merged_from": [str(d) for d in args.merge],
                                                 "records": records})
    else:
        import torch

        from fedsa_secure.experiment.grid import run_grid  # torch and the models: only for a run

        torch.set_num_threads(1)  # small models: one thread is fastest, and leaves the other cores to others
        grid = grid_from_args(args)
        grid_fields = asdict(grid)

        print(f"experiment: {len(grid.cells()) * len(grid.seeds) * grid.runs_per_seed()} runs into {out}; {grid}", flush=True)
        records = run_grid(grid, out, args.teacher_cache or out / "teachers", lambda line: print(line, flush=True))
    federated = set(FEDERATED)
    table = format_table(records, federated)
    atomic_write(out / "table.md", table + "\n")
    plot_accuracy_over_rounds(records, out / "accuracy_over_rounds.png")
    plot_selection(records, out / "selection.png")
    print(table)
    seconds = time.perf_counter() - started
    print(f"\n{len(records)} runs in {seconds:.0f}s; results.json, table.md, accuracy_over_rounds.png, selection.png in {out}")
    if args.json:
        summary = {
            "out": str(out.resolve()), "runs": len(records), "seconds": round(seconds, 1), "grid": grid_fields,
            "arms": [{k: _finite(v) for k, v in asdict(row).items()} for row in summarise(records)],
        }
        print(json.dumps(summary))
    return 0


def write_curve(directories: list[Path], out: Path) -> int:
    """curve.md and curve.png in `out` from the grids in `directories`."""
    from fedsa_secure.experiment.curve import curve_points, format_curve, plot_curve, read_grid_runs
    from fedsa_secure.files import atomic_write

    points, scratch = curve_points(read_grid_runs(directories))
    if not points:
        raise ConfigError(f"--curve: no secure runs in {', '.join(map(str, directories))}")
    out.mkdir(parents=True, exist_ok=True)
    table = format_curve(points, scratch)
    atomic_write(out / "curve.md", table + "\n")
    plot_curve(points, scratch, out / "curve.png")
    print(table)
    print(f"curve.md and curve.png in {out}")
    return 0
