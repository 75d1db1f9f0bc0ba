"""The whole federation in one process, for experiments and tuning: `simulate` one method on one seed's split.

It runs the aggregator's own round code (rounds.Federation) over an in-memory channel with real
nodes (node.Node: DP-SGD teacher and rounds, ledger, every secure-aggregation stage), so a
simulated run and a networked one differ in transport only. A method is a selection mode and
what the nodes run (`METHODS`): `fedsa` (faithful: Grad-CAM selection, FitNets features),
`fedsa+` (ours: LogME-gain selection with a temperature, output distillation; fedsa.select_plus,
fedsa.output_kd), and the baselines `fedavg+` (every node, every round) and `random` (a uniform
random cohort), both running the `fedsa+` objective so they differ from it only in selection.
Each trains with DP (default) or without (`--methods fedsa+nodp`); Scratch is always reported.
Run: `python -m fedsa_secure.experiment.simulation --dataset mnist5k --methods fedsa fedsa+ --seeds 0 1 2`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsa_secure.channel import Channel, InMemoryChannel, Traffic
from fedsa_secure.config import FederationSection, PrivacySection, SecAggConfig
from fedsa_secure.crypto import FixedRandomness, sha256
from fedsa_secure.data import FEDERATIONS, federation
from fedsa_secure.data.tasks import TARGET_TASKS
from fedsa_secure.fedsa.adapt import DIGIT_ONLY, Adapted, AdaptRecipe
from fedsa_secure.fedsa.distill import DPSettings
from fedsa_secure.fedsa.output_kd import OutputKDSettings
from fedsa_secure.fedsa.select_plus import TEMPERATURE
from fedsa_secure.fedsa.teacher import (
    DPTrainedTeacher,
    NonPrivateTeacher,
    TeacherPrivacy,
    TeacherSource,
    TrainedTeacher,
    load_or_train_teacher,
)
from fedsa_secure.models import STUDENT_ARCHS, HeadedBackbone, backbone_state, flatten_state, state_digest
from fedsa_secure.node import Node
from fedsa_secure.privacy.accounting import epsilon_of
from fedsa_secure.privacy.dpsgd import Mechanism
from fedsa_secure.rounds import SELECTIONS, Federation, Outcome, RoundSettings

METHODS: dict[str, tuple[str, str]] = {  # method -> (selection, what the nodes run)
    "fedsa": ("scores", "fedsa"),
    "fedsa+": ("scores", "fedsa+"),
    "fedavg+": ("uniform", "fedsa+"),  # every node, every round
    "random": ("random", "fedsa+"),  # a uniformly random cohort
}


@dataclass(frozen=True)
class PlusSettings:
    """`fedsa+` knobs: selection temperature / top-k and the local objective."""

    temperature: float = TEMPERATURE
    top_k: int | None = None
    kd: OutputKDSettings = field(default_factory=OutputKDSettings)


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


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


def _check_tasks(tasks: tuple[str, ...]) -> None:
    """The digit task comes first: the federation's released head serves it and `accuracy` reports it."""
    if not tasks or tasks[0] != "digit" or len(set(tasks)) != len(tasks):
        raise ValueError(f"target tasks must be distinct and start with 'digit', got {tasks}")
    for task in tasks:
        _check_choice("target task", task, tuple(TARGET_TASKS))


def _node_teacher(trained: TrainedTeacher, private: bool) -> TeacherSource | HeadedBackbone:
    """What a simulated node is given: a DP teacher with its mechanism, a non-private one it must accept, or a plain model."""
    if not private:
        return trained.model
    if trained.mechanism is None:
        return NonPrivateTeacher(trained.model)  # only the earlier, uncovered accounting (experiment --no-dp-teachers)
    return DPTrainedTeacher(trained.model, trained.mechanism)


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
    secagg: SecAggConfig | None = None,
    baseline: Adapted | None = None,
    eval_every: int = 1,
    arch: str = "cnn",
    target_tasks: tuple[str, ...] = DIGIT_ONLY,
    average_rounds: int = FederationSection.average_rounds,
    over: Transport | None = None,
) -> dict[str, Any]:
    """Run `rounds` rounds of `method` on one seed's split as an in-process federation (the aggregator's round code,
    nodes as objects, every secure-aggregation stage), and the Scratch baseline; node seeds derive from `seed`.

    `dp=None` means the default DPSettings with `planned_rounds=rounds`. With `private`, every node's
    teacher is trained with DP-SGD spending `teacher_share` of the budget and each node's ledger
    charges it before its rounds, so the reported epsilon covers the teacher and the rounds
    together; without, nodes train without DP and keep no ledger (the experiments' plaintext arm).
    `teachers` are this seed's `federation_teachers` if already loaded (else trained or read from
    `teacher_cache`); a private run given teachers without a DP mechanism declares them non-private
    (the accounting before 2026-12-06; the report says their records are not protected).
    `selection` overrides the method's (`uniform`: every node, every round; `random`). `secagg`
    sets the clip and level bits (default SecAggConfig, as the deployed aggregator). `baseline` is
    this seed's Scratch model if already trained, of the same `arch` and `target_tasks`. The
    student is adapted and evaluated every `eval_every` rounds and after the last (accuracy None in
    between), and before every Grad-CAM selection.
    """
    _check_choice("method", method, tuple(METHODS))
    selection = selection or METHODS[method][0]
    _check_choice("selection", selection, SELECTIONS)
    _check_choice("arch", arch, tuple(STUDENT_ARCHS))
    target_tasks = tuple(target_tasks)
    _check_tasks(target_tasks)
    if eval_every < 1:
        raise ValueError(f"eval_every must be a positive number of rounds, got {eval_every}")
    dp = dp or DPSettings(planned_rounds=rounds)
    plus = plus or PlusSettings()
    secagg = secagg or SecAggConfig()
    fed = federation(dataset)
    probe, test = fed.aggregator(seed, probe_budget)
    names = list(fed.nodes)
    if selection != "uniform" and not 0 < cohort_size <= len(names):
        raise ValueError(f"cohort size must be between 1 and {len(names)}, got {cohort_size}")
    settings = RoundSettings(
        method=METHODS[method][1], rounds=rounds, cohort_size=cohort_size, adapt_every=eval_every,
        average_rounds=average_rounds, seed=seed, clip=secagg.clip, level_bits=secagg.level_bits, selection=selection,
        temperature=plus.temperature, top_k=plus.top_k, arch=arch, tasks=target_tasks, recipe=recipe or AdaptRecipe(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        if teachers is None:
            teachers = federation_teachers(dataset, seed, Path(teacher_cache or tmp),
                                           teacher_privacy(dp, teacher_share) if private else None)
        nodes = [
            Node(name, teachers[name].data, dp, seed=teacher_seed(seed, i), state_dir=Path(tmp) / "nodes" / name,
                 teacher=_node_teacher(teachers[name], private), accept_non_private_teacher=True, dp=private,
                 kd=plus.kd, mechanism_seed=seed * 1000 + i, randomness=FixedRandomness(sha256(f"{seed}/{name}".encode())))
            for i, name in enumerate(names)
        ]
        with (over or in_memory)(nodes) as channel:
            outcome = Federation(settings, probe, test, channel, names, baseline=baseline, report=lambda line: None).run(set(names))
    traffic = channel.traffic if isinstance(channel, InMemoryChannel) else None
    return _result(outcome, traffic, settings, dataset, probe_budget, private, dp, teachers, method)


Transport = Callable[[list[Node]], AbstractContextManager[Channel]]  # the nodes -> a channel to them, open while in use


@contextmanager
def in_memory(nodes: list[Node]) -> Iterator[InMemoryChannel]:
    """The simulation's default transport: the nodes' `respond` called directly, the traffic counted."""
    yield InMemoryChannel({node.name: node for node in nodes})


def _result(outcome: Outcome, traffic: Traffic | None, settings: RoundSettings, dataset: str, probe_budget: float | None,
            private: bool, dp: DPSettings, teachers: dict[str, TrainedTeacher], method: str) -> dict[str, Any]:
    """The run as the experiment grid records it."""
    scratch_tasks = outcome.scratch_task_accuracy
    history: list[dict[str, Any]] = [{"round": 0, "accuracy": scratch_tasks["digit"], "task_accuracy": scratch_tasks}]
    history += [{"round": r.round, "probabilities": r.probabilities, "cohort": r.cohort, "survivors": r.survivors,
                 "accuracy": r.accuracy, "task_accuracy": r.task_accuracy, "epsilon": r.epsilon if private else None,
                 "adapt_seconds": r.adapt_seconds, "aborted": r.aborted} for r in outcome.rounds]
    return {
        "method": method,
        "selection": settings.selection,
        "dataset": dataset,
        "arch": settings.arch,
        "target_tasks": list(settings.tasks),
        "probe_budget": probe_budget,
        "private": private,
        "seed": settings.seed,
        "dp": vars(dp),
        "secagg": {"clip": settings.clip, "level_bits": settings.level_bits},
        "average_rounds": settings.average_rounds,
        "vector_length": int(flatten_state(backbone_state(outcome.student, outcome.parts)).size),
        "student_sha256": state_digest(outcome.student.state_dict()).hex(),  # the amalgamated student, before adaptation
        "rounds": history,
        "final_accuracy": outcome.accuracy,
        "scratch_accuracy": scratch_tasks["digit"],
        "task_accuracy": outcome.task_accuracy,
        "scratch_task_accuracy": scratch_tasks,
        "epsilon": {n: r.epsilon for n, r in outcome.nodes.items()} if private else None,
        "teacher_epsilon": {n: _teacher_epsilon(t.mechanism) for n, t in teachers.items()} if private else None,
        "selection_counts": {n: sum(n in r.cohort for r in outcome.rounds) for n in outcome.nodes},
        # counted in memory only (None over another transport)
        "bytes_up": traffic and traffic.up_masked,
        "bytes_down": traffic and traffic.down,
        "protocol_bytes_up": traffic and traffic.up_protocol,
        "node_seconds": traffic and traffic.node_seconds,
    }


def _teacher_epsilon(mechanism: Mechanism | None) -> float | None:
    """What a teacher's DP training spent on its own (None: trained without DP, not accounted)."""
    if mechanism is None:
        return None
    return epsilon_of([(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)], mechanism.delta, mechanism.accountant)


def _overrides(cls: type, items: list[str]) -> dict:
    """Parse FIELD=VALUE strings into keyword arguments typed like `cls`'s defaults."""
    defaults = cls()
    out: dict[str, Any] = {}
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
                teacher_cache=args.teacher_cache, recipe=recipe, average_rounds=args.average_rounds,
            )
            res["arm"] = arm
            results.append(res)
            eps = max(res["epsilon"].values()) if res["epsilon"] else float("nan")
            per_round = " ".join("-" if h["accuracy"] is None else f"{h['accuracy']:.3f}" for h in res["rounds"])
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
