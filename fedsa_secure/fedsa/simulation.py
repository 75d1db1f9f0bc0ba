"""The whole algorithm in one process: selection, local training, aggregation, amalgamation, adaptation.

For experiments and tuning; the federation runs the same steps across processes over gRPC.
A method is a selection mode and a local objective (`METHODS`): `fedsa` (faithful: Grad-CAM
selection, FitNets features), `fedsa+` (ours: LogME selection with a temperature, output + feature
distillation, see fedsa.select_plus and fedsa.output_kd), and the baselines `fedavg+` (every node,
every round) and `random` (a uniform random cohort), both with the `fedsa+` objective so they
differ from it only in selection. Each trains with DP-SGD (default) or without (`--no-dp`), and
aggregates with a plaintext mean or a real in-memory secure aggregation
(`aggregation="secure"`, see fedsa.secure_sum). Scratch is always reported.
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
from torch import nn

from fedsa_secure.config import FederationSection, PrivacySection, SecAggConfig
from fedsa_secure.data import FEDERATIONS, LabelledSet, NodeData, federation, task_input
from fedsa_secure.data.tasks import TARGET_TASKS
from fedsa_secure.errors import BudgetExhausted
from fedsa_secure.fedsa.adapt import DIGIT_ONLY, AdaptRecipe, adapt_tasks, scratch, task_accuracy
from fedsa_secure.fedsa.amalgamate import TailAverage, apply_update
from fedsa_secure.fedsa.distill import DPDistiller, DPSettings, FeatureObjective, Objective
from fedsa_secure.fedsa.nonprivate import PlainTrainer
from fedsa_secure.fedsa.output_kd import OutputKDSettings, OutputObjective, fit_output_map
from fedsa_secure.fedsa.saliency import draw_cohort, gradcam_maps, selection_probabilities, transferability
from fedsa_secure.fedsa.secure_sum import secure_sum
from fedsa_secure.fedsa.select_plus import TEMPERATURE, concentrated_probabilities, output_transferability
from fedsa_secure.fedsa.teacher import TeacherPrivacy, TrainedTeacher, load_or_train_teacher
from fedsa_secure.models import STUDENT_ARCHS, ConvNet, backbone_state, flatten_state, make_student, make_teacher
from fedsa_secure.privacy.accounting import epsilon_of
from fedsa_secure.privacy.dpsgd import Mechanism
from fedsa_secure.secagg.messages import QuantizationSpec

SELECTIONS = ("gradcam", "logme", "uniform", "random")  # uniform: every node every round (FedAvg+)
OBJECTIVES = ("features", "outputs")
AGGREGATIONS = ("plain", "secure")
METHODS: dict[str, tuple[str, str]] = {  # method -> (selection, objective)
    "fedsa": ("gradcam", "features"),
    "fedsa+": ("logme", "outputs"),
    "fedavg+": ("uniform", "outputs"),
    "random": ("random", "outputs"),
}
FLOAT_BYTES = 4  # a plaintext update or student state travels as float32


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


def teacher_path(cache_dir: Path, dataset: str, name: str, seed: int, privacy: TeacherPrivacy | None = None) -> Path:
    """Where a node's teacher for (dataset, seed) is cached; every method of a seed shares it (DP ones per budget)."""
    dp = "" if privacy is None else f"-dp{privacy.epsilon:g}-{privacy.delta:g}-{privacy.accountant}"
    return Path(cache_dir) / f"{dataset}-{name}-seed{seed}{dp}.pt"


def teacher_seed(seed: int, index: int) -> int:
    """The initialisation seed of the `index`-th node's teacher in a simulation of `seed` (public, like a node's)."""
    return seed * 10 + index


def federation_teachers(
    dataset: str, seed: int, cache_dir: Path, privacy: TeacherPrivacy | None = None
) -> dict[str, TrainedTeacher]:
    """Every node's private data and (cached) teacher for one seed, trained with DP-SGD if `privacy` is given.

    Node seeds derive from `seed`, and so do the DP teachers' mechanism seeds: a simulation may
    reproduce its noise, a deployed node never does.
    """
    fed = federation(dataset)
    out = {}
    for i, name in enumerate(fed.nodes):
        data = fed.node(name, seed)
        out[name] = load_or_train_teacher(
            data, teacher_path(cache_dir, dataset, name, seed, privacy), seed=teacher_seed(seed, i), privacy=privacy,
            mechanism_seed=None if privacy is None else seed * 1000 + 500 + i,
        )
    return out


def teacher_privacy(dp: DPSettings, teacher_share: float) -> TeacherPrivacy:
    """What each node's DP teacher spends on its own: `teacher_share` of the budget, under the budget's delta and accountant."""
    return TeacherPrivacy(teacher_share * dp.target_epsilon, dp.delta, dp.accountant)


def _objective(
    kind: str, teacher: ConvNet, data: NodeData, probe: LabelledSet, seed: int, plus: PlusSettings, arch: str
) -> Objective:
    if kind == "features":
        return FeatureObjective(teacher, data, seed, arch=arch)
    return OutputObjective(teacher, data, fit_output_map(teacher, data.task, probe), seed, plus.kd, arch=arch)


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


def _check_tasks(tasks: tuple[str, ...]) -> None:
    """The digit task comes first: the federation's released head serves it and `accuracy` reports it."""
    if not tasks or tasks[0] != "digit" or len(set(tasks)) != len(tasks):
        raise ValueError(f"target tasks must be distinct and start with 'digit', got {tasks}")
    for task in tasks:
        _check_choice("target task", task, tuple(TARGET_TASKS))


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
    teachers: dict[str, TrainedTeacher] | None = None,
    teacher_share: float = PrivacySection.teacher_share,
    selection: str | None = None,
    aggregation: str = "plain",
    secagg: SecAggConfig | None = None,
    baseline: nn.Module | None = None,
    eval_every: int = 1,
    arch: str = "cnn",
    target_tasks: tuple[str, ...] = DIGIT_ONLY,
    average_rounds: int = FederationSection.average_rounds,
) -> dict:
    """Run `rounds` rounds of `method` and the Scratch baseline on one seed's split; node seeds derive from `seed`.

    `dp=None` means the default DPSettings with `planned_rounds=rounds`; `private=False` trains the
    same objective without DP (PlainTrainer) and reports no epsilon. `selection` overrides the
    method's selection mode; `aggregation="secure"` sums the updates through SecAgg (then divides) with
    `secagg`'s clip and level bits (default SecAggConfig, as the deployed aggregator).
    With `private`, every node's teacher is trained with DP-SGD spending `teacher_share` of the
    budget and each node's accountant starts from that training, so the reported epsilon covers the
    teacher and the rounds together; without, teachers are trained without DP. `teachers` are this
    seed's `federation_teachers` if already loaded (else trained or read from `teacher_cache`);
    a private run given teachers without a DP mechanism reports epsilon for the rounds alone.
    `baseline` is this seed's Scratch model if already trained (it is the same for every method),
    of the same `arch` and `target_tasks`. The student is adapted and evaluated every `eval_every`
    rounds and after the last (accuracy None in between), except under Grad-CAM selection, which
    needs the adapted student every round. `arch` names the student architecture
    (models.STUDENT_ARCHS) of the proxies, the student and Scratch; `target_tasks` (digit first)
    gives the adapted student and Scratch one head per task, each task's accuracy reported in
    `task_accuracy` (`accuracy` stays the digit task's). Adaptation starts from the mean of the
    amalgamated student over its last `average_rounds` rounds (fedsa.amalgamate.TailAverage).
    """
    _check_choice("method", method, tuple(METHODS))
    selection = selection or METHODS[method][0]
    _check_choice("selection", selection, SELECTIONS)
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    _check_choice("arch", arch, tuple(STUDENT_ARCHS))
    target_tasks = tuple(target_tasks)
    _check_tasks(target_tasks)
    dp = dp or DPSettings(planned_rounds=rounds)
    plus = plus or PlusSettings()
    recipe = recipe or AdaptRecipe()
    secagg = secagg or SecAggConfig()
    spec = QuantizationSpec(secagg.clip, secagg.level_bits)
    fed = federation(dataset)
    probe, test = fed.aggregator(seed, probe_budget)
    names = list(fed.nodes)
    if selection != "uniform" and not 0 < cohort_size <= len(names):
        raise ValueError(f"cohort size must be between 1 and {len(names)}, got {cohort_size}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be a positive number of rounds, got {eval_every}")
    nodes: dict[str, _Node] = {}
    if teachers is None:
        with tempfile.TemporaryDirectory() as tmp:
            privacy = teacher_privacy(dp, teacher_share) if private else None
            teachers = federation_teachers(dataset, seed, Path(teacher_cache or tmp), privacy)
    for i, name in enumerate(names):
        data, teacher, mechanism = teachers[name]
        objective = _objective(METHODS[method][1], teacher, data, probe, seed, plus, arch)
        trainer: DPDistiller | PlainTrainer
        if private:
            prior = [] if mechanism is None else [(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)]
            trainer = DPDistiller(teacher, data, dp, seed=seed, mechanism_seed=seed * 1000 + i, objective=objective,
                                  ledger_history=prior, teacher_history=prior)
        else:
            trainer = PlainTrainer(objective, dp, seed=seed * 1000 + i)
        nodes[name] = _Node(data, teacher, trainer, objective)
    released = nodes[names[0]].objective.released
    adapt_recipe = replace(recipe, fresh_head="head" not in released)

    rng = np.random.default_rng(seed)
    student = make_student(probe.num_classes, seed, arch)
    tail = TailAverage(average_rounds, released)
    t0 = time.perf_counter()
    baseline = baseline or scratch(probe, seed, recipe, arch=arch, tasks=target_tasks)
    scratch_tasks = task_accuracy(baseline, test)
    adapted = baseline  # adapting the untrained student is exactly Scratch: same seed, same recipe
    history = [{"round": 0, "accuracy": scratch_tasks["digit"], "task_accuracy": scratch_tasks,
                "adapt_seconds": time.perf_counter() - t0}]
    node_seconds = dict.fromkeys(names, 0.0)
    probs = np.full(len(names), 1.0 / len(names))
    scores: dict[str, float] | None = None
    if selection == "logme":  # node side: one LogME scalar per node, independent of the student
        scores = {}
        for n in names:
            t0 = time.perf_counter()
            initial = make_teacher(nodes[n].data.train.num_classes, teacher_seed(seed, names.index(n)))
            scores[n] = output_transferability(nodes[n].teacher, nodes[n].data.task, probe, initial)
            node_seconds[n] += time.perf_counter() - t0
        probs = concentrated_probabilities([scores[n] for n in names], plus.temperature, plus.top_k)

    for r in range(1, rounds + 1):
        if selection == "gradcam":
            student_maps = gradcam_maps(adapted, probe.x)
            scores = {}
            for n in names:
                t0 = time.perf_counter()
                teacher_maps = gradcam_maps(nodes[n].teacher, task_input(nodes[n].data.task, probe.x))
                scores[n] = transferability(student_maps, teacher_maps)
                node_seconds[n] += time.perf_counter() - t0
            probs = selection_probabilities([scores[n] for n in names])
        cohort = list(names) if selection == "uniform" else draw_cohort(names, probs, cohort_size, rng)

        state = backbone_state(student, released)
        state_bytes = FLOAT_BYTES * flatten_state(state).size
        updates, train_seconds, declined = {}, {}, []
        for name in cohort:
            t0 = time.perf_counter()
            trainer = nodes[name].trainer
            try:
                updates[name] = trainer.train_round(state).update if private else trainer.train_round(state)
            except BudgetExhausted:
                declined.append(name)
            train_seconds[name] = time.perf_counter() - t0
            node_seconds[name] += train_seconds[name]
        traffic = {"bytes_down": state_bytes * len(cohort), "bytes_up": 0, "protocol_bytes_up": 0}
        max_update = 0.0
        if updates:
            max_update = float(max(np.abs(u).max() for u in updates.values()))
            if aggregation == "secure":  # each node adds its update unweighted; the mean is taken after unmasking
                summed = secure_sum(updates, r, spec)
                total = summed.total / len(updates)
                traffic["bytes_up"] = summed.upload_bytes
                traffic["protocol_bytes_up"] = summed.protocol_up_bytes
                traffic["bytes_down"] += summed.protocol_down_bytes
                for n, seconds in summed.node_seconds.items():
                    node_seconds[n] += seconds
            else:
                total = np.mean([u.astype(np.float64) for u in updates.values()], axis=0)
                traffic["bytes_up"] = sum(FLOAT_BYTES * u.size for u in updates.values())
            apply_update(student, total, released)
            tail.add(student)

        t0 = time.perf_counter()
        evaluated = r % eval_every == 0 or r == rounds or selection == "gradcam"
        if evaluated:
            adapted = adapt_tasks(tail.averaged(student), probe, seed, target_tasks, adapt_recipe)
        adapt_seconds = time.perf_counter() - t0
        accuracy = task_accuracy(adapted, test) if evaluated else None
        history.append(
            {
                "round": r,
                "transferability": scores,
                "probabilities": dict(zip(names, probs.tolist())),
                "cohort": cohort,
                "declined": declined,
                "accuracy": accuracy["digit"] if accuracy else None,
                "task_accuracy": accuracy,
                "epsilon": {n: nodes[n].trainer.epsilon for n in names} if private else None,
                "train_seconds": train_seconds,
                "max_abs_update": max_update,
                "adapt_seconds": adapt_seconds,
                **traffic,
            }
        )
    return {
        "method": method,
        "selection": selection,
        "aggregation": aggregation,
        "dataset": dataset,
        "arch": arch,
        "target_tasks": list(target_tasks),
        "probe_budget": probe_budget,
        "private": private,
        "seed": seed,
        "dp": vars(dp),
        "secagg": {"clip": spec.clip, "level_bits": spec.level_bits} if aggregation == "secure" else None,
        "average_rounds": average_rounds,
        "vector_length": int(flatten_state(backbone_state(student, released)).size),
        "rounds": history,
        "final_accuracy": history[-1]["accuracy"],
        "scratch_accuracy": scratch_tasks["digit"],
        "task_accuracy": history[-1]["task_accuracy"],
        "scratch_task_accuracy": scratch_tasks,
        "epsilon": {n: nodes[n].trainer.epsilon for n in names} if private else None,
        "teacher_epsilon": {n: _teacher_epsilon(t.mechanism) for n, t in teachers.items()} if private else None,
        "selection_counts": {n: sum(n in h["cohort"] for h in history[1:]) for n in names},
        "max_abs_update": max((h["max_abs_update"] for h in history[1:]), default=0.0),
        "bytes_up": sum(h["bytes_up"] for h in history[1:]),
        "bytes_down": sum(h["bytes_down"] for h in history[1:]),
        "protocol_bytes_up": sum(h["protocol_bytes_up"] for h in history[1:]),
        "node_seconds": node_seconds,
    }


def _teacher_epsilon(mechanism: Mechanism | None) -> float | None:
    """What a teacher's DP training spent on its own (None: trained without DP, not accounted)."""
    if mechanism is None:
        return None
    return epsilon_of([(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)], mechanism.delta, mechanism.accountant)


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
    parser.add_argument("--dataset", default="digits", choices=list(FEDERATIONS))
    parser.add_argument("--budget", type=float, help="probe budget (mnist5k: 0.01, 0.05, 0.10; default 0.01)")
    parser.add_argument("--methods", nargs="+", default=["fedsa"],
                        help=f"of {', '.join(METHODS)}, each optionally suffixed 'nodp' (e.g. fedsa+nodp)")
    parser.add_argument("--secure", action="store_true", help="aggregate through in-memory secure aggregation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cohort", type=int, default=3)
    parser.add_argument("--average-rounds", type=int, default=FederationSection.average_rounds,
                        help="adapt the mean student of this many last rounds (1: the last round's student)")
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
                teacher_cache=args.teacher_cache, recipe=recipe, aggregation="secure" if args.secure else "plain",
                average_rounds=args.average_rounds,
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
