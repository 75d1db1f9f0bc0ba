"""DP teacher cost benchmark: `python -m bench.dp_teacher [--json] [--repeats N] [--records N]`.

What a node pays, in CPU time, to train its teacher with DP-SGD rather than without DP, on the MNIST-1D
node shard the default demo uses (node-1: 3,000 records, digits 0-4, images [1, 14, 14]; `--records N`
keeps the first N). Goal: DP teacher training costs at most 2.5x non-private training.

Four arms, each timed as a whole training from freshly initialised weights (same seeds every time, so
every repeat does the same work):

- `dp_recipe`: the deployed DP teacher, `train_dp_teacher` under `teacher_mechanism(records,
  TeacherPrivacy(4, 1e-5, "prv"))` with TeacherRecipe's defaults (20 epochs of Poisson batches of 256
  expected, SGD lr 0.2 momentum 0.9, clipping 1.0) and a fixed mechanism seed. Timed from the call to
  the frozen model: Opacus's wrapping, the Poisson loader, clipping, noise, the accountant's bookkeeping.
- `plain_recipe`: the non-private teacher, `train_teacher` (Adam lr 3e-3, 12 epochs, batches of 32).
  `recipe_ratio` = dp_recipe / plain_recipe: what a node actually pays for DP, recipe against recipe.
- `dp_same_work`: the same DP-SGD through `fedsa_secure.privacy.dpsgd.DPSGD` (same model, SGD, epochs,
  expected batch and grad-sample mode as the recipe); only `DPSGD.train` is timed, building the model,
  optimiser and Opacus wrapper is not.
- `plain_same_work`: plain SGD (same model, lr and momentum, same epochs) on shuffled batches of 256 (as
  many steps per epoch as the Poisson loader, every record once per epoch), no clipping, no noise: a
  plain loop over a random permutation. `same_work_ratio` = dp_same_work / plain_same_work: the cost of
  per-sample gradients, clipping, noise and Poisson batching at equal work, apart from the two recipes'
  different optimisers, batch sizes and epochs.

The noise calibration (`teacher_mechanism`: a numerical PRV accountant searched for the noise that spends
epsilon 4) runs once per teacher but is a different kind of cost from training: it is excluded from the
ratios and timed on its own, once and cold (`calibration_s` wall, `calibration_cpu_s` CPU;
`recipe_ratio_with_calibration` adds it back to the DP recipe).

All arms run in one process, interleaved round-robin (one run of each arm per repeat), so that a busy
neighbour on the shared two-core machine slows them alike; medians over the repeats. The ratios that
count use process CPU time (`time.process_time`), which leaves out the moments the OS gave the cores to
other processes; `wall_ratio` has the wall-clock ratios. torch runs one thread, as the nodes do.

Before timing, every arm trains once (the warm-up) and each trained model's top-1 accuracy on its own
training records is reported; the benchmark refuses to time the recipes unless both teachers reach
twice chance accuracy, so it cannot report the cost of a training that does not learn.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from fedsa_secure.data import LabelledSet, NodeData, federation, task_input
from fedsa_secure.fedsa.supervised import accuracy
from fedsa_secure.fedsa.teacher import (
    TEACHER_BATCH,
    TEACHER_EPOCHS,
    TEACHER_LR,
    TeacherPrivacy,
    TeacherRecipe,
    teacher_mechanism,
    train_dp_teacher,
    train_teacher,
)
from fedsa_secure.models import make_teacher
from fedsa_secure.privacy.dpsgd import DPSGD, Mechanism, poisson_schedule

DATASET, NODE, SEED, MECHANISM_SEED = "mnist1d", "node-1", 0, 1
PRIVACY = TeacherPrivacy(4.0, 1e-5, "prv")  # the deployed teacher's own budget
GOAL = 2.5
LEARNS = 2.0  # a teacher "learns" if its training accuracy reaches this multiple of chance
ARMS = ("dp_recipe", "plain_recipe", "dp_same_work", "plain_same_work")
IGNORED = ("Full backward hook is firing", "Secure RNG turned off", "Optimal order is the largest alpha")

Run = Callable[[], nn.Module]  # one timed training; returns the trained model
Setup = Callable[[], Run]  # untimed preparation of one run


def node_shard(records: int | None = None) -> NodeData:
    """The demo's node-1 MNIST-1D shard, cut to its first `records` records (None: all) to run faster."""
    node = federation(DATASET).node(NODE, SEED)
    if records is None:
        return node
    train = node.train
    if not 1 <= records <= len(train):
        raise ValueError(f"--records must be in [1, {len(train)}], got {records}")
    return NodeData(node.name, node.task, LabelledSet(train.x[:records], train.y[:records], train.num_classes))


def _tensors(node: NodeData) -> tuple[torch.Tensor, torch.Tensor]:
    """The records as the teacher sees them, as train_dp_teacher builds them."""
    return torch.from_numpy(task_input(node.task, node.train.x)), torch.from_numpy(node.train.y)


def _per_sample_cross_entropy(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """The DP teacher's per-record loss (train_dp_teacher's), for DPSGD.train."""
    return F.cross_entropy(model(batch[0]), batch[1], reduction="none")


def _sgd(model: nn.Module, recipe: TeacherRecipe) -> torch.optim.Optimizer:
    """The DP recipe's optimiser, shared by both same-work arms so only DP itself differs."""
    return torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum)


def dp_recipe(node: NodeData, mechanism: Mechanism) -> Setup:
    """The deployed DP teacher: the whole of `train_dp_teacher` is timed."""
    return lambda: (lambda: train_dp_teacher(node, mechanism, SEED, mechanism_seed=MECHANISM_SEED))


def plain_recipe(node: NodeData) -> Setup:
    """The non-private teacher: the whole of `train_teacher` is timed."""
    return lambda: (lambda: train_teacher(node, SEED))


def dp_same_work(node: NodeData, mechanism: Mechanism, recipe: TeacherRecipe) -> Setup:
    """DP-SGD through DPSGD as the recipe sets it up; only `DPSGD.train` is timed (the loop, not the wrapping)."""
    tensors = _tensors(node)

    def setup() -> Run:
        model = make_teacher(node.train.num_classes, SEED)
        dp = DPSGD(
            model, tensors, _sgd(model, recipe), batch_size=recipe.batch_size,
            noise_multiplier=mechanism.noise_multiplier, max_grad_norm=mechanism.max_grad_norm,
            accountant=mechanism.accountant, mechanism_seed=MECHANISM_SEED,
        )

        def run() -> nn.Module:
            dp.train(recipe.epochs, _per_sample_cross_entropy)
            return model
        return run
    return setup


def plain_same_work(node: NodeData, recipe: TeacherRecipe) -> Setup:
    """Plain SGD, same model, optimiser and epochs, on shuffled batches of the DP recipe's expected size."""
    x, y = _tensors(node)

    def setup() -> Run:
        model = make_teacher(node.train.num_classes, SEED)
        optimizer = _sgd(model, recipe)
        generator = torch.Generator().manual_seed(MECHANISM_SEED)

        def run() -> nn.Module:
            model.train()
            for _ in range(recipe.epochs):
                order = torch.randperm(len(y), generator=generator)
                for start in range(0, len(y), recipe.batch_size):
                    idx = order[start : start + recipe.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x[idx]), y[idx]).backward()
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return model
        return run
    return setup


def _timed(run: Run) -> tuple[float, float, nn.Module]:
    """(wall seconds, process CPU seconds, model) of one run, after a garbage collection outside the timing."""
    gc.collect()
    started, started_cpu = time.perf_counter(), time.process_time()
    model = run()
    return time.perf_counter() - started, time.process_time() - started_cpu, model


def measure(repeats: int, records: int | None = None) -> dict[str, object]:
    """Calibrate once, warm up and check every arm learns, then time the arms round-robin `repeats` times."""
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    node = node_shard(records)
    n, classes = len(node.train), node.train.num_classes
    recipe = TeacherRecipe()
    x, y = task_input(node.task, node.train.x), node.train.y
    with warnings.catch_warnings():
        for message in IGNORED:
            warnings.filterwarnings("ignore", message=message)
        started, started_cpu = time.perf_counter(), time.process_time()
        mechanism = teacher_mechanism(n, PRIVACY, recipe)
        calibration_s, calibration_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
        arms: dict[str, Setup] = {
            "dp_recipe": dp_recipe(node, mechanism),
            "plain_recipe": plain_recipe(node),
            "dp_same_work": dp_same_work(node, mechanism, recipe),
            "plain_same_work": plain_same_work(node, recipe),
        }
        # Warm-up (first-call costs: Opacus's hooks, allocator, kernels) and the proof that each arm learns.
        train_accuracy = {name: accuracy(setup()(), x, y) for name, setup in arms.items()}
        chance = 1.0 / classes
        for name in ("dp_recipe", "plain_recipe"):
            if train_accuracy[name] < LEARNS * chance:
                raise RuntimeError(f"{name}'s teacher reaches {train_accuracy[name]:.3f} on its own training records "
                                   f"(chance {chance:.3f}): refusing to time a training that does not learn")
        wall: dict[str, list[float]] = {name: [] for name in arms}
        cpu: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(repeats):
            for name, setup in arms.items():
                seconds, cpu_seconds, _ = _timed(setup())
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
    median_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    median_wall = {name: statistics.median(t) for name, t in wall.items()}
    recipe_ratio = median_cpu["dp_recipe"] / median_cpu["plain_recipe"]
    same_work_ratio = median_cpu["dp_same_work"] / median_cpu["plain_same_work"]
    steps_per_epoch = poisson_schedule(n, recipe.batch_size)[1]  # Poisson steps = plain batches per epoch
    return {
        "dataset": DATASET,
        "node": NODE,
        "records": n,
        "num_classes": classes,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "dp_recipe": asdict(recipe),
        "mechanism": {**mechanism.fields(), "epsilon": PRIVACY.epsilon, "mechanism_seed": MECHANISM_SEED},
        "plain_recipe": {"optimizer": "adam", "epochs": TEACHER_EPOCHS, "batch_size": TEACHER_BATCH,
                         "learning_rate": TEACHER_LR},
        "same_work": {"optimizer": "sgd", "epochs": recipe.epochs, "batch_size": recipe.batch_size,
                      "learning_rate": recipe.learning_rate, "momentum": recipe.momentum,
                      "steps_per_epoch": steps_per_epoch},
        "dp_recipe_cpu_s": median_cpu["dp_recipe"],
        "plain_recipe_cpu_s": median_cpu["plain_recipe"],
        "recipe_ratio": recipe_ratio,  # median CPU seconds, DP over no DP
        "dp_same_work_cpu_s": median_cpu["dp_same_work"],
        "plain_same_work_cpu_s": median_cpu["plain_same_work"],
        "same_work_ratio": same_work_ratio,
        "wall_s": median_wall,
        "wall_ratio": {"recipe": median_wall["dp_recipe"] / median_wall["plain_recipe"],
                       "same_work": median_wall["dp_same_work"] / median_wall["plain_same_work"]},
        "cpu_s_per_repeat": cpu,
        # Not in the ratios: the node calibrates the teacher's noise once, before training it.
        "calibration_s": calibration_s,
        "calibration_cpu_s": calibration_cpu_s,
        "recipe_ratio_with_calibration": (median_cpu["dp_recipe"] + calibration_cpu_s) / median_cpu["plain_recipe"],
        "chance_accuracy": chance,
        "dp_train_accuracy": train_accuracy["dp_recipe"],
        "plain_train_accuracy": train_accuracy["plain_recipe"],
        "same_work_train_accuracy": {"dp": train_accuracy["dp_same_work"], "plain": train_accuracy["plain_same_work"]},
        "goal_ratio": GOAL,
        "meets_goal": recipe_ratio <= GOAL and same_work_ratio <= GOAL,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run on one torch thread, print JSON or a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per arm (default 3)")
    parser.add_argument("--records", type=int, default=None, help="use the shard's first N records (default all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; the nodes run one thread each too
    result = measure(args.repeats, args.records)
    if args.json:
        print(json.dumps(result))
        return
    mech = result["mechanism"]
    print(f"{result['records']} records; DP noise multiplier {mech['noise_multiplier']:.3f} for epsilon "
          f"{mech['epsilon']:g} ({mech['steps']} steps), calibrated in {result['calibration_cpu_s']:.2f} s CPU")
    print(f"training accuracy: DP {result['dp_train_accuracy']:.3f}, plain {result['plain_train_accuracy']:.3f} "
          f"(chance {result['chance_accuracy']:.3f})")
    print(f"recipes:   DP {result['dp_recipe_cpu_s']:.2f} s CPU, plain {result['plain_recipe_cpu_s']:.2f} s: "
          f"{result['recipe_ratio']:.2f}x (wall {result['wall_ratio']['recipe']:.2f}x; "
          f"with calibration {result['recipe_ratio_with_calibration']:.2f}x)")
    print(f"same work: DP {result['dp_same_work_cpu_s']:.2f} s CPU, plain {result['plain_same_work_cpu_s']:.2f} s: "
          f"{result['same_work_ratio']:.2f}x (wall {result['wall_ratio']['same_work']:.2f}x)")
    print(f"goal <= {GOAL}x: {'met' if result['meets_goal'] else 'NOT met'}")


if __name__ == "__main__":
    main()
