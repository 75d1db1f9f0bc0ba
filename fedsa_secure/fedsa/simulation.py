"""The whole FedSA algorithm in one process, with a plaintext weighted sum in place of secure aggregation.

For experiments and tuning; the federation runs the same steps across processes over gRPC.
Run: `python -m fedsa_secure.fedsa.simulation --seeds 0 1 2 --rounds 5`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedsa_secure.data import DEMO_NODES, aggregator_data, node_data, task_input
from fedsa_secure.errors import BudgetExhausted
from fedsa_secure.fedsa.adapt import AdaptRecipe, adapt, evaluate, scratch
from fedsa_secure.fedsa.amalgamate import apply_update
from fedsa_secure.fedsa.distill import DPDistiller, DPSettings
from fedsa_secure.fedsa.saliency import draw_cohort, gradcam_maps, selection_probabilities, transferability
from fedsa_secure.fedsa.teacher import load_or_train_teacher
from fedsa_secure.models import backbone_state, make_student


def simulate(
    seed: int,
    rounds: int,
    cohort_size: int = 3,
    dp: DPSettings | None = None,
    *,
    teacher_cache: Path | None = None,
    recipe: AdaptRecipe | None = None,
) -> dict:
    """Run `rounds` FedSA rounds on the digits demo (method `fedsa`) and the Scratch baseline.

    `dp=None` means the default DPSettings with `planned_rounds=rounds`. Every cohort node
    trains with real Opacus DP-SGD; node seeds are derived from `seed`.
    """
    dp = dp or DPSettings(planned_rounds=rounds)
    probe, test = aggregator_data(seed)
    names = list(DEMO_NODES)
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(teacher_cache or tmp)
        nodes = {}
        for i, name in enumerate(names):
            data = node_data(name, seed)
            teacher = load_or_train_teacher(data, cache_dir / f"{name}-seed{seed}.pt", seed=seed * 10 + i)
            distiller = DPDistiller(teacher, data, dp, seed=seed, mechanism_seed=seed * 1000 + i)
            nodes[name] = (data, teacher, distiller)

    rng = np.random.default_rng(seed)
    student = make_student(probe.num_classes, seed)
    t0 = time.perf_counter()
    baseline = scratch(probe, seed, recipe)
    scratch_accuracy = evaluate(baseline, test)
    adapted = baseline  # adapting the untrained student is exactly Scratch: same seed, same recipe
    history = [{"round": 0, "accuracy": scratch_accuracy, "adapt_seconds": time.perf_counter() - t0}]

    for r in range(1, rounds + 1):
        student_maps = gradcam_maps(adapted, probe.x)
        scores = {
            name: transferability(student_maps, gradcam_maps(teacher, task_input(data.task, probe.x)))
            for name, (data, teacher, _) in nodes.items()
        }
        probs = selection_probabilities([scores[n] for n in names])
        cohort = draw_cohort(names, probs, cohort_size, rng)

        state = backbone_state(student)
        updates, train_seconds, declined = [], {}, []
        for name in cohort:
            t0 = time.perf_counter()
            try:
                updates.append(nodes[name][2].train_round(state).update)
            except BudgetExhausted:
                declined.append(name)
            train_seconds[name] = time.perf_counter() - t0
        max_weighted = 0.0
        if updates:
            weighted = [u / len(updates) for u in updates]  # uniform weights over the nodes that trained
            max_weighted = float(max(np.abs(w).max() for w in weighted))
            apply_update(student, np.sum(weighted, axis=0))

        t0 = time.perf_counter()
        adapted = adapt(student, probe, seed, recipe)
        adapt_seconds = time.perf_counter() - t0
        history.append(
            {
                "round": r,
                "transferability": scores,
                "probabilities": dict(zip(names, probs.tolist())),
                "cohort": cohort,
                "declined": declined,
                "accuracy": evaluate(adapted, test),
                "epsilon": {n: nodes[n][2].epsilon for n in names},
                "train_seconds": train_seconds,
                "max_abs_weighted_update": max_weighted,
                "adapt_seconds": adapt_seconds,
            }
        )
    return {
        "method": "fedsa",
        "seed": seed,
        "dp": vars(dp),
        "rounds": history,
        "final_accuracy": history[-1]["accuracy"],
        "scratch_accuracy": scratch_accuracy,
        "epsilon": {n: nodes[n][2].epsilon for n in names},
        "noise_multiplier": {n: nodes[n][2].noise_multiplier for n in names},
        "max_abs_weighted_update": max(r["max_abs_weighted_update"] for r in history[1:]) if rounds else 0.0,
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
        out[key] = None if value == "None" else type(current)(value) if current is not None else int(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cohort", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the full per-round results here")
    parser.add_argument("--teacher-cache", type=Path, help="directory to cache teachers in (default: a temporary one)")
    parser.add_argument(
        "--dp", action="append", default=[], metavar="FIELD=VALUE",
        help="override a DPSettings field, e.g. --dp learning_rate=0.5 --dp optimizer=sgd (planned_rounds defaults to --rounds)",
    )
    parser.add_argument("--adapt", action="append", default=[], metavar="FIELD=VALUE", help="override an AdaptRecipe field")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dp = DPSettings(**{"planned_rounds": args.rounds, **_overrides(DPSettings, args.dp)})
    recipe = AdaptRecipe(**_overrides(AdaptRecipe, args.adapt))
    print(f"method fedsa; {dp}; {recipe}", flush=True)
    results = []
    for s in args.seeds:
        results.append(simulate(s, args.rounds, args.cohort, dp, teacher_cache=args.teacher_cache, recipe=recipe))
        r = results[-1]
        print(f"seed {s}: per round " + " ".join(f"{h['accuracy']:.3f}" for h in r["rounds"]), flush=True)
    print("seed  scratch  fedsa(DP)  max_eps  max|w*delta|  train_s/node-round  adapt_s")
    for res in results:
        train = [t for r in res["rounds"][1:] for t in r["train_seconds"].values()]
        adapt_s = [r["adapt_seconds"] for r in res["rounds"][1:]]
        print(
            f"{res['seed']:>4}  {res['scratch_accuracy']:.4f}   {res['final_accuracy']:.4f}"
            f"     {max(res['epsilon'].values()):.3f}    {res['max_abs_weighted_update']:.4f}"
            f"        {np.mean(train):.2f}               {np.mean(adapt_s):.2f}"
        )
    print(
        f"mean  {np.mean([r['scratch_accuracy'] for r in results]):.4f}   "
        f"{np.mean([r['final_accuracy'] for r in results]):.4f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
