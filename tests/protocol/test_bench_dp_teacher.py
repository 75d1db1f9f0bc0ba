"""`python -m bench.dp_teacher --json` times the deployed DP teacher against the plain one, and reports it coherently.

On 600 of node-1's records and one repeat (about 40 s), so that the timings' values can be checked, not
only that the benchmark runs. No wall-clock limits: the machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.dp_teacher import node_shard
from fedsa_secure.data import federation
from fedsa_secure.fedsa.teacher import (
    TEACHER_BATCH,
    TEACHER_EPOCHS,
    TEACHER_LR,
    TeacherPrivacy,
    TeacherRecipe,
    teacher_mechanism,
)

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 600
ARMS = {"dp_recipe", "plain_recipe", "dp_same_work", "plain_same_work"}


@pytest.fixture(scope="module")
def result() -> dict:
    """One run of the benchmark, shared by the assertions below (it is the slow part)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.dp_teacher", "--json", "--repeats", "1", "--records", str(RECORDS)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=600,
    )
    return json.loads(done.stdout)


def test_times_the_deployed_recipes_on_the_requested_records(result: dict) -> None:
    """The DP arm is TeacherRecipe's defaults under the deployed mechanism; the plain arm is train_teacher's recipe."""
    recipe = TeacherRecipe()
    assert result["records"] == RECORDS and result["repeats"] == 1 and result["torch_threads"] == 1
    assert result["dp_recipe"] == asdict(recipe)
    assert result["plain_recipe"] == {"optimizer": "adam", "epochs": TEACHER_EPOCHS, "batch_size": TEACHER_BATCH,
                                      "learning_rate": TEACHER_LR}
    mechanism = teacher_mechanism(RECORDS, TeacherPrivacy(4.0, 1e-5, "prv"))  # deterministic
    assert result["mechanism"] == {**mechanism.fields(), "epsilon": 4.0, "mechanism_seed": 1}
    assert mechanism.steps == recipe.epochs * 3  # 600 records, expected batch 256: 3 Poisson steps per epoch
    assert result["same_work"] == {"optimizer": "sgd", "epochs": recipe.epochs, "batch_size": recipe.batch_size,
                                   "learning_rate": recipe.learning_rate, "momentum": recipe.momentum,
                                   "steps_per_epoch": 3}


def test_ratios_are_the_reported_medians(result: dict) -> None:
    """Positive CPU times, ratios DP / plain of them (one repeat: the medians are the single runs)."""
    for arm in ARMS:
        assert result[f"{arm}_cpu_s"] > 0 and result["wall_s"][arm] > 0
        assert result["cpu_s_per_repeat"][arm] == [result[f"{arm}_cpu_s"]]
    assert result["recipe_ratio"] == pytest.approx(result["dp_recipe_cpu_s"] / result["plain_recipe_cpu_s"])
    assert result["same_work_ratio"] == pytest.approx(result["dp_same_work_cpu_s"] / result["plain_same_work_cpu_s"])
    wall = result["wall_s"]
    assert result["wall_ratio"] == pytest.approx({"recipe": wall["dp_recipe"] / wall["plain_recipe"],
                                                  "same_work": wall["dp_same_work"] / wall["plain_same_work"]})
    # Per-sample gradients, clipping and noise cost something at equal work, whoever else uses the machine.
    assert result["same_work_ratio"] > 1
    assert result["calibration_s"] > 0 and result["calibration_cpu_s"] > 0
    assert result["recipe_ratio_with_calibration"] == pytest.approx(
        (result["dp_recipe_cpu_s"] + result["calibration_cpu_s"]) / result["plain_recipe_cpu_s"])
    assert result["goal_ratio"] == 2.5
    assert result["meets_goal"] == (result["recipe_ratio"] <= 2.5 and result["same_work_ratio"] <= 2.5)


def test_both_timed_teachers_learn(result: dict) -> None:
    """The timed trainings are working ones: well above chance (5 classes) on their own training records."""
    assert result["num_classes"] == 5 and result["chance_accuracy"] == pytest.approx(0.2)
    assert result["dp_train_accuracy"] >= 0.4 and result["plain_train_accuracy"] >= 0.4
    assert result["plain_train_accuracy"] > result["dp_train_accuracy"]  # DP at epsilon 4 on 600 records costs accuracy


def test_records_are_the_shards_first_ones() -> None:
    """`--records N` keeps the first N records of the demo's node-1 MNIST-1D shard, which holds 3,000."""
    full = federation("mnist1d").node("node-1", 0)
    cut = node_shard(RECORDS)
    assert len(full.train) == 3000 and len(node_shard().train) == 3000
    assert (cut.name, cut.task, cut.train.num_classes) == (full.name, full.task, full.train.num_classes)
    assert (cut.train.x == full.train.x[:RECORDS]).all() and (cut.train.y == full.train.y[:RECORDS]).all()
    with pytest.raises(ValueError):
        node_shard(3001)
