"""The whole algorithm in one process, with a plaintext weighted sum in place of secure aggregation.

For experiments and tuning; the federation runs the same steps across processes over gRPC.
Methods: `fedsa` (faithful: Grad-CAM selection, FitNets features) and `fedsa+` (ours: LogME
selection with a temperature, output + feature distillation, see fedsa.select_plus and
fedsa.output_kd); each with DP-SGD (default) or without (`--no-dp`). Scratch is always reported.
Run: `python -m fedsa_secure.fedsa.simulation --dataset mnist5k --methods fedsa fedsa+ --seeds 0 1 2`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fedsa_secure.data import LabelledSet, NodeData, federation, task_input
from fedsa_secure.errors import BudgetExhausted
from fedsa_secure.fedsa.adapt import AdaptRecipe, adapt, evaluate, scratch
from fedsa_secure.fedsa.amalgamate import apply_update
from fedsa_secure.fedsa.distill import DPDistiller, DPSettings, FeatureObjective, Objective
from fedsa_secure.fedsa.nonprivate import PlainTrainer
from fedsa_secure.fedsa.output_kd import OutputKDSettings, OutputObjective, fit_output_map
from fedsa_secure.fedsa.saliency import draw_cohort, gradcam_maps, selection_probabilities, transferability
from fedsa_secure.fedsa.select_plus import TEMPERATURE, concentrated_probabilities, output_transferability
from fedsa_secure.fedsa.teacher import load_or_train_teacher
from fedsa_secure.models import ConvNet, backbone_state, make_student

METHODS = ("fedsa", "fedsa+")


@dataclass(frozen=True)
class PlusSettings:
    """`fedsa+` knobs: selection temperature / top-k and the local objective."""

    temperature: float = TEMPERATURE
    top_k: int | None = None
    kd: OutputKDSettings = field(default_factory=OutputKDSettings)


@dataclass
class _Node:
    data: NodeData
    teacher: ConvNet
    trainer: DPDistiller | PlainTrainer
    objective: Objective


def _objective(method: str, teacher: ConvNet, data: NodeData, probe: LabelledSet, seed: int, plus: PlusSettings) -> Objective:
    if method == "fedsa":
        return FeatureObjective(teacher, data, seed)
    return OutputObjective(teacher, data, fit_output_map(teacher, data.task, probe), seed, plus.kd)


def simulate(
    seed: int,
    rounds: int,
    cohort_size: int = 3,
    dp: DPSettings | None = None,
    *,
    method: str = "fedsa",
    dataset: str = "digits",
    probe_budget: float | None = None,
    private: bool = True,
    plus: PlusSettings | None = None,
    teacher_cache: Path | None = None,
    recipe: AdaptRecipe | None = None,
) -> dict:
    """Run `rounds` rounds of `method` and the Scratch baseline on one seed's split; node seeds derive from `seed`.

    `dp=None` means the default DPSettings with `planned_rounds=rounds`; `private=False` trains the
    same objective without DP (PlainTrainer) and reports no epsilon.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dp = dp or DPSettings(planned_rounds=rounds)
    plus = plus or PlusSettings()
    recipe = recipe or AdaptRecipe()
    fed = federation(dataset)
    probe, test = fed.aggregator(seed, probe_budget)
    names = list(fed.nodes)
    nodes: dict[str, _Node] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(teacher_cache or tmp)
        for i, name in enumerate(names):
            data = fed.node(name, seed)
            teacher = load_or_train_teacher(data, cache_dir / f"{dataset}-{name}-seed{seed}.pt", seed=seed * 10 + i)
            objective = _objective(method, teacher, data, probe, seed, plus)
            trainer: DPDistiller | PlainTrainer
            if private:
                trainer = DPDistiller(teacher, data, dp, seed=seed, mechanism_seed=seed * 1000 + i, objective=objective)
            else:
                trainer = PlainTrainer(objective, dp, seed=seed * 1000 + i)
            nodes[name] = _Node(data, teacher, trainer, objective)
    released = nodes[names[0]].objective.released
    adapt_recipe = replace(recipe, fresh_head="head" not in released)

    rng = np.random.default_rng(seed)
    student = make_student(probe.num_classes, seed)
    t0 = time.perf_counter()
    baseline = scratch(probe, seed, recipe)
    scratch_accuracy = evaluate(baseline, test)
    adapted = baseline  # adapting the untrained student is exactly Scratch: same seed, same recipe
    history = [{"round": 0, "accuracy": scratch_accuracy, "adapt_seconds": time.perf_counter() - t0}]
    if method == "fedsa+":  # node side: one LogME scalar per node, independent of the student
        scores = {n: output_transferability(nodes[n].teacher, nodes[n].data.task, probe) for n in names}
        probs = concentrated_probabilities([scores[n] for n in names], plus.temperature, plus.top_k)

    for r in range(1, rounds + 1):
        if method == "fedsa":
            student_maps = gradcam_maps(adapted, probe.x)
            scores = {
                n: transferability(student_maps, gradcam_maps(nodes[n].teacher, task_input(nodes[n].data.task, probe.x)))
                for n in names
            }
            probs = selection_probabilities([scores[n] for n in names])
        cohort = draw_cohort(names, probs, cohort_size, rng)

        state = backbone_state(student, released)
        updates, train_seconds, declined = [], {}, []
        for name in cohort:
            t0 = time.perf_counter()
            trainer = nodes[name].trainer
            try:
                updates.append(trainer.train_round(state).update if private else trainer.train_round(state))
            except BudgetExhausted:
                declined.append(name)
            train_seconds[name] = time.perf_counter() - t0
        max_weighted = 0.0
        if updates:
            weighted = [u / len(updates) for u in updates]  # uniform weights over the nodes that trained
            max_weighted = float(max(np.abs(w).max() for w in weighted))
            apply_update(student, np.sum(weighted, axis=0), released)

        t0 = time.perf_counter()
        adapted = adapt(student, probe, seed, adapt_recipe)
        adapt_seconds = time.perf_counter() - t0
        history.append(
            {
                "round": r,
                "transferability": scores,
                "probabilities": dict(zip(names, probs.tolist())),
                "cohort": cohort,
                "declined": declined,
                "accuracy": evaluate(adapted, test),
                "epsilon": {n: nodes[n].trainer.epsilon for n in names} if private else None,
                "train_seconds": train_seconds,
                "max_abs_weighted_update": max_weighted,
                "adapt_seconds": adapt_seconds,
            }
        )
    return {
        "method": method,
        "dataset": dataset,
        "probe_budget": probe_budget,
        "private": private,
        "seed": seed,
        "dp": vars(dp),
        "rounds": history,
        "final_accuracy": history[-1]["accuracy"],
        "scratch_accuracy": scratch_accuracy,
        "epsilon": {n: nodes[n].trainer.epsilon for n in names} if private else None,
        "selection_counts": {n: sum(n in h["cohort"] for h in history[1:]) for n in names},
        "max_abs_weighted_update": max((h["max_abs_weighted_update"] for h in history[1:]), default=0.0),
    }


def _overrides(cls: type, items: list[str]) -> dict:
    """Parse FIELD=VALUE strings into keyword arguments typed like `cls`'s defaults."""
    defaults = cls()
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            raise SystemExit(f"unknown {cls.__name__} field {key!r}")
        current = getattr(defaults, key)
        if value == "None":
            out[key] = None
        elif isinstance(current, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = type(current)(value) if current is not None else int(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist5k"])
    parser.add_argument("--budget", type=float, help="probe budget (mnist5k: 0.01, 0.05, 0.10; default 0.01)")
    parser.add_argument("--methods", nargs="+", default=["fedsa"], help="of fedsa, fedsa+, fedsa+nodp, fedsanodp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cohort", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the full per-round results here")
    parser.add_argument("--teacher-cache", type=Path, help="directory to cache teachers in (default: a temporary one)")
    parser.add_argument(
        "--dp", action="append", default=[], metavar="FIELD=VALUE",
        help="override a DPSettings field, e.g. --dp learning_rate=0.5 (planned_rounds defaults to --rounds)",
    )
    parser.add_argument("--adapt", action="append", default=[], metavar="FIELD=VALUE", help="override an AdaptRecipe field")
    parser.add_argument("--kd", action="append", default=[], metavar="FIELD=VALUE", help="override an OutputKDSettings field")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="fedsa+ selection temperature")
    parser.add_argument("--top-k", type=int, help="fedsa+: select only among the k best-scored nodes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dp = DPSettings(**{"planned_rounds": args.rounds, **_overrides(DPSettings, args.dp)})
    recipe = AdaptRecipe(**_overrides(AdaptRecipe, args.adapt))
    plus = PlusSettings(args.temperature, args.top_k, OutputKDSettings(**_overrides(OutputKDSettings, args.kd)))
    print(f"dataset {args.dataset} budget {args.budget}; {dp}; {recipe}; {plus}", flush=True)
    t_start = time.perf_counter()
    results: list[dict] = []
    for s in args.seeds:
        for arm in args.methods:
            t0 = time.perf_counter()
            res = simulate(
                s, args.rounds, args.cohort, dp, method=arm.removesuffix("nodp"), dataset=args.dataset,
                probe_budget=args.budget, private=not arm.endswith("nodp"), plus=plus,
                teacher_cache=args.teacher_cache, recipe=recipe,
            )
            res["arm"] = arm
            results.append(res)
            eps = max(res["epsilon"].values()) if res["epsilon"] else float("nan")
            per_round = " ".join(f"{h['accuracy']:.3f}" for h in res["rounds"])
            print(
                f"seed {s} {arm:11s} scratch {res['scratch_accuracy']:.4f} final {res['final_accuracy']:.4f} "
                f"(+{100 * (res['final_accuracy'] - res['scratch_accuracy']):.1f}) eps {eps:.2f} "
                f"rounds [{per_round}] "
                f"picks {res['selection_counts']} {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    _summary(results, args.methods)
    print(f"wall time {time.perf_counter() - t_start:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _summary(results: list[dict], arms: list[str]) -> None:
    """Per-seed and mean accuracy table (Scratch and every arm), then selection frequency per node per arm."""
    seeds = sorted({r["seed"] for r in results})
    acc = {(r["seed"], r["arm"]): r["final_accuracy"] for r in results}
    scratch_acc = {r["seed"]: r["scratch_accuracy"] for r in results}
    print("seed  " + "  ".join(f"{a:>11s}" for a in ["scratch", *arms]))
    for s in seeds:
        print(f"{s:>4}  {scratch_acc[s]:11.4f}  " + "  ".join(f"{acc.get((s, a), float('nan')):11.4f}" for a in arms))
    print("mean  " + f"{np.mean(list(scratch_acc.values())):11.4f}  " + "  ".join(
        f"{np.mean([acc[(s, a)] for s in seeds]):11.4f}" for a in arms))
    for a in arms:
        diffs = [acc[(s, a)] - scratch_acc[s] for s in seeds]
        se = np.std(diffs, ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        counts = {n: sum(r["selection_counts"][n] for r in results if r["arm"] == a)
                  for n in next(r for r in results if r["arm"] == a)["selection_counts"]}
        slots = sum(counts.values())
        print(f"{a}: minus scratch {100 * np.mean(diffs):+.1f} +- {100 * se:.1f} (SE) points; slots "
              + " ".join(f"{n} {c / slots:.0%}" for n, c in counts.items()))


if __name__ == "__main__":
    main()
