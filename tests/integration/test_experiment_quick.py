"""`fedsa-secure experiment --quick` as a user runs it: a real process, then checks on what it wrote.

Slow (teachers are trained from scratch in the temporary directory, about 3 minutes on an idle
2-core machine): run with `pytest -m slow tests/integration/test_experiment_quick.py`.
"""

import json
import subprocess
import sys

import pytest

from fedsa_secure.experiment.spec import FEDERATED, QUICK, TARGET_EPSILON
from fedsa_secure.secagg.packing import packed_size
from fedsa_secure.secagg.quantize import required_modulus_bits

pytestmark = pytest.mark.slow

FIELDS = {"dataset", "method", "probe_budget", "seed", "secure", "dp_epsilon", "accuracy", "bytes_up", "bytes_down",
          "node_seconds", "accuracy_per_round", "selection_counts", "scratch_accuracy"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    done = subprocess.run([sys.executable, "-m", "fedsa_secure.cli", "experiment", "--quick", "--out", str(out), "--json"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    records = json.loads((out / "results.json").read_text())["records"]
    return out, lines, json.loads(lines[-1]), records


def test_every_run_is_recorded_with_the_schema_and_a_progress_line(quick):
    out, lines, summary, records = quick
    expected = QUICK.runs_per_seed() * len(QUICK.seeds)
    assert summary["runs"] == len(records) == expected
    assert sum(line.startswith("[") for line in lines) == expected  # one progress line per run
    for r in records:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["dataset"] == "mnist5k" and r["probe_budget"] == 0.01
    assert {(a["method"], a["secure"]) for a in summary["arms"]} == {(r["method"], r["secure"]) for r in records}
    for name in ("table.md", "accuracy_over_rounds.png", "selection.png"):
        assert (out / name).stat().st_size > 500, name


def test_seeds_are_paired_and_scratch_is_shared_by_every_method_of_a_seed(quick):
    *_, records = quick
    arms = {(r["method"], r["secure"]) for r in records}
    for arm in arms:
        assert sorted(r["seed"] for r in records if (r["method"], r["secure"]) == arm) == list(QUICK.seeds)
    scratch = {r["seed"]: r["accuracy"] for r in records if r["method"] == "scratch"}
    for r in records:
        assert r["scratch_accuracy"] == scratch[r["seed"]]
        if r["accuracy_per_round"]:
            assert r["accuracy_per_round"][0] == scratch[r["seed"]] and len(r["accuracy_per_round"]) == QUICK.rounds + 1


def test_every_arm_uploads_packed_masked_vectors_and_the_secure_one_stays_within_epsilon(quick):
    *_, records = quick
    federated = [r for r in records if r["method"] in FEDERATED]
    assert {r["secure"] for r in federated} == {False, True}
    for r in federated:
        m, cohorts = r["vector_length"], r["cohorts"]
        assert len(cohorts) == QUICK.rounds and sum(r["selection_counts"].values()) == sum(map(len, cohorts))
        bits = r["secagg"]["level_bits"]  # both arms run the one round: updates leave packed and masked
        assert r["bytes_up"] == sum(len(c) * packed_size(m, required_modulus_bits(len(c), bits)) for c in cohorts)
        if r["secure"]:
            assert 0 < r["dp_epsilon"] <= TARGET_EPSILON and r["dp_target_epsilon"] == TARGET_EPSILON
        else:
            assert r["dp_epsilon"] is None  # no DP: the plaintext arm measures what DP costs
        assert r["bytes_down"] >= 4 * m * sum(map(len, cohorts)) and r["node_seconds"] > 0
    for r in records:
        if r["method"] not in FEDERATED:
            assert r["bytes_up"] == 0 and r["dp_epsilon"] is None and not r["secure"]


def test_table_has_a_row_per_arm(quick):
    out, *_ = quick
    table = (out / "table.md").read_text()
    for label in ("| scratch |", "| transfer |", "| centralised-ka |", "| fedsa secure |", "| fedsa+ plain |"):
        assert label in table
