"""Statistics, table and grid options of `fedsa-secure experiment`, on hand-made records with known answers."""

import argparse
import json
import math

import pytest

from fedsa_secure.data import PROBE_BUDGETS
from fedsa_secure.data.tasks import TARGET_TASKS
from fedsa_secure.errors import ConfigError
from fedsa_secure.experiment.command import add_parser, grid_from_args
from fedsa_secure.experiment.report import format_table
from fedsa_secure.experiment.simulation import METHODS
from fedsa_secure.experiment.spec import ARCHS, FEDERATED, QUICK, TASKS, Grid
from fedsa_secure.experiment.stats import (
    mean_std,
    paired_difference,
    selection_frequency,
    summarise,
    versus,
)
from fedsa_secure.models import STUDENT_ARCHS


def record(method, seed, accuracy, scratch, secure=False, counts=None, epsilon=None, bytes_up=0, arch="cnn", parity=None):
    """A grid record; `parity` = (accuracy, Scratch accuracy) on a second target task."""
    tasks, scratch_tasks = {"digit": accuracy}, {"digit": scratch}
    if parity:
        tasks["parity"], scratch_tasks["parity"] = parity
    return {"dataset": "mnist5k", "probe_budget": 0.01, "arch": arch, "method": method, "seed": seed, "secure": secure,
            "dp_epsilon": epsilon, "accuracy": accuracy, "scratch_accuracy": scratch, "task_accuracy": tasks,
            "scratch_task_accuracy": scratch_tasks, "bytes_up": bytes_up,
            "bytes_down": 0, "node_seconds": 1.0, "accuracy_per_round": None, "selection_counts": counts}


SCRATCH = {0: 0.80, 1: 0.70, 2: 0.90}
FEDSA_PLUS = {0: 0.85, 1: 0.76, 2: 0.94}  # differences 0.05, 0.06, 0.04


def grid_records():
    out = [record("scratch", s, a, a) for s, a in SCRATCH.items()]
    out += [record("fedsa+", s, a, SCRATCH[s], secure=True, epsilon=7.5 + s / 10, bytes_up=100 * (s + 1),
                   counts={"node-1": 2, "node-4": 0, "node-6": 1}) for s, a in FEDSA_PLUS.items()]
    return out


def test_mean_std_is_the_sample_standard_deviation():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))
    assert math.isnan(mean_std([0.3])[1])
    with pytest.raises(ValueError):
        mean_std([])


def test_paired_difference_removes_the_shared_seed_variation():
    diff, se = paired_difference(FEDSA_PLUS, SCRATCH)
    assert diff == pytest.approx(0.05)
    assert se == pytest.approx(0.01 / math.sqrt(3))  # std of (0.05, 0.06, 0.04) is 0.01
    unpaired_se = math.sqrt(mean_std(list(FEDSA_PLUS.values()))[1] ** 2 / 3 + mean_std(list(SCRATCH.values()))[1] ** 2 / 3)
    assert se < unpaired_se / 10


def test_paired_difference_refuses_unpaired_seeds():
    with pytest.raises(ValueError, match="seeds \\[7\\]"):
        paired_difference({7: 0.9}, SCRATCH)


def test_summarise_gives_one_row_per_arm_with_paired_statistics():
    rows = {(r.method, r.secure): r for r in summarise(grid_records())}
    assert set(rows) == {("scratch", False), ("fedsa+", True)}
    plus = rows[("fedsa+", True)]
    assert plus.seeds == 3 and plus.mean == pytest.approx(0.85) and plus.std == pytest.approx(0.09)
    assert plus.diff == pytest.approx(0.05) and plus.diff_se == pytest.approx(0.01 / math.sqrt(3))
    assert plus.max_epsilon == pytest.approx(7.7) and plus.mean_bytes_up == pytest.approx(200)
    assert rows[("scratch", False)].diff == 0.0 and rows[("scratch", False)].max_epsilon is None


def test_summarise_refuses_a_seed_twice():
    with pytest.raises(ValueError, match="duplicate seeds"):
        summarise([record("scratch", 0, 0.8, 0.8), record("scratch", 0, 0.8, 0.8)])


def test_selection_frequency_pools_seeds_and_rounds():
    shares = selection_frequency(grid_records())[("mnist5k", 0.01, "cnn", "fedsa+", True)]
    assert shares == pytest.approx({"node-1": 6 / 9, "node-4": 0.0, "node-6": 3 / 9})


def test_table_shows_mean_std_and_paired_difference_in_points():
    table = format_table(grid_records(), set(FEDERATED))
    assert "| fedsa+ secure | 3 | 0.850 ± 0.090 | 5.0 ± 0.6 |" in table
    assert "| scratch | 3 | 0.800 ± 0.100 | 0.0 ± 0.0 |" in table
    assert "node-4 (unrelated)" in table and "| fedsa+ secure | 0.01 | 67% | 0% | 33% |" in table
    assert "| fedsa+ secure | 0.01 | 200 | 1.0 | 7.70 |" in table


def test_experiment_axes_match_the_simulation_and_data():
    assert set(FEDERATED) == set(METHODS)
    assert ARCHS == tuple(STUDENT_ARCHS) and TASKS == tuple(TARGET_TASKS)
    assert Grid().budgets == PROBE_BUDGETS


def test_grid_refuses_bad_options_with_a_clear_error():
    with pytest.raises(ConfigError, match="unknown or no methods \\['fedprox'\\]"):
        Grid(methods=("fedprox",))
    with pytest.raises(ConfigError, match="probe budget 0.5"):
        Grid(budgets=(0.5,))
    with pytest.raises(ConfigError, match="positive rounds"):
        Grid(rounds=0)
    with pytest.raises(ConfigError, match="unknown or no archs \\['vit'\\]"):
        Grid(archs=("vit",))
    with pytest.raises(ConfigError, match="start with digit"):
        Grid(tasks=("parity", "digit"))
    with pytest.raises(ConfigError, match="distinct"):
        Grid(tasks=("digit", "parity", "parity"))


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return grid_from_args(parser.parse_args(["experiment", *argv]))


def test_quick_is_a_small_grid_and_options_override_it():
    assert parse("--quick") == QUICK
    assert len(QUICK.cells()) * len(QUICK.seeds) * QUICK.runs_per_seed() <= 16
    grid = parse("--quick", "--seeds", "3", "4", "5", "--arms", "secure", "--adapt-batch", "0")
    assert grid.seeds == (3, 4, 5) and grid.arms == (True,) and grid.adapt_batch == 0 and grid.rounds == QUICK.rounds
    full = parse()
    assert full.cells() == [("mnist5k", 0.01), ("mnist5k", 0.05), ("mnist5k", 0.1), ("digits", None)]
    assert len(full.seeds) >= 5 and full.runs_per_seed() == 3 + 2 * 4


def test_archs_and_tasks_take_commas_or_spaces_and_default_to_the_single_task_cnn():
    assert parse().archs == ("cnn",) and parse().tasks == ("digit",)
    grid = parse("--quick", "--archs", "cnn,resnet", "mlp", "--tasks", "digit,parity")
    assert grid.archs == ("cnn", "resnet", "mlp") and grid.tasks == ("digit", "parity")
    assert grid.runs_per_seed() == 3 * QUICK.runs_per_seed()
    with pytest.raises(SystemExit):
        parse("--archs", "cnn,vit")


def test_several_archs_and_tasks_get_their_own_rows_paired_per_task():
    records = [record("scratch", s, a, a, arch=arch, parity=(p, p))
               for arch, p in (("cnn", 0.9), ("mlp", 0.8)) for s, a in SCRATCH.items()]
    records += [record("fedsa+", s, a, SCRATCH[s], secure=True, bytes_up=10, arch="mlp", parity=(0.9, 0.8),
                       counts={"node-1": 1}) for s, a in FEDSA_PLUS.items()]
    rows = {(r.arch, r.method, r.task): r for r in summarise(records)}
    assert len(rows) == 6
    assert rows[("mlp", "fedsa+", "parity")].mean == pytest.approx(0.9)
    assert rows[("mlp", "fedsa+", "parity")].diff == pytest.approx(0.1)  # against Scratch's parity, not its digit accuracy
    assert rows[("mlp", "fedsa+", "digit")].diff == pytest.approx(0.05)
    table = format_table(records, set(FEDERATED))
    assert "| arch | method | task | seeds | 0.01: accuracy | 0.01: Δ Scratch (pts) |" in table
    assert "| mlp | fedsa+ secure | parity | 3 | 0.900 ± 0.000 | 10.0 ± 0.0 |" in table
    assert "| cnn | scratch | digit | 3 | 0.800 ± 0.100 | 0.0 ± 0.0 |" in table
    assert table.count("| mlp | fedsa+ secure | 0.01 | 10 |") == 1  # costs once per arm, not once per task
    assert "| mlp | fedsa+ secure | 0.01 | 100% |" in table


def test_experiment_datasets_are_the_federations_and_budgeted_ones_have_budgets():
    from fedsa_secure.data import FEDERATIONS
    from fedsa_secure.experiment.spec import BUDGETED, DATASETS, DEFAULT_DATASETS, PROBE_BUDGETS

    assert set(DATASETS) == set(FEDERATIONS) and set(DEFAULT_DATASETS) <= set(DATASETS)
    assert BUDGETED == tuple(n for n, f in FEDERATIONS.items() if f.probe_budgets)
    assert all(FEDERATIONS[n].probe_budgets == PROBE_BUDGETS for n in BUDGETED)
    assert Grid(datasets=("mnist5k-skew", "digits"), budgets=(0.01,)).cells() == [("mnist5k-skew", 0.01), ("digits", None)]



def _write_grid(directory, seeds, records, rounds=3, **fields):
    from fedsa_secure.files import write_json_atomic

    directory.mkdir()
    grid = {"seeds": seeds, "rounds": rounds, **fields}
    write_json_atomic(directory / "results.json", {"grid": grid, "records": records})
    return directory


def test_merge_joins_grids_run_apart_and_reports_them_as_one(tmp_path, capsys):
    from fedsa_secure.cli import main

    records = grid_records()
    first = _write_grid(tmp_path / "a", [0, 1], [r for r in records if r["seed"] < 2])
    second = _write_grid(tmp_path / "b", [2], [r for r in records if r["seed"] == 2])
    out = tmp_path / "merged"
    assert main(["experiment", "--merge", str(first), str(second), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["runs"] == 6 and summary["grid"] == {"seeds": [0, 1, 2], "rounds": 3}
    assert json.loads((out / "results.json").read_text())["records"] == [r for r in records if r["seed"] < 2] + [
        r for r in records if r["seed"] == 2]
    assert (out / "table.md").read_text() == format_table(records, set(FEDERATED)) + "\n"  # the same as one run's table
    assert (out / "selection.png").stat().st_size > 0


def test_merge_adds_methods_and_arms_run_later_to_a_grid(tmp_path):
    from fedsa_secure.experiment.command import merge_results

    records = grid_records()
    scratch_only = [r for r in records if r["method"] == "scratch"]
    first = _write_grid(tmp_path / "a", [0, 1, 2], scratch_only, methods=["scratch"], arms=[False])
    later = _write_grid(tmp_path / "b", [0, 1, 2], records[len(scratch_only):], methods=["fedsa+"], arms=[True])
    grid, merged = merge_results([first, later])
    assert grid == {"seeds": [0, 1, 2], "rounds": 3, "methods": ["scratch", "fedsa+"], "arms": [False, True]}
    assert merged == records and len(scratch_only) == 3


def test_merge_refuses_other_settings_a_run_twice_and_a_missing_file(tmp_path):
    from fedsa_secure.experiment.command import merge_results

    records = grid_records()
    first = _write_grid(tmp_path / "a", [0, 1], [r for r in records if r["seed"] < 2])
    other_rounds = _write_grid(tmp_path / "b", [2], [r for r in records if r["seed"] == 2], rounds=20)
    with pytest.raises(ConfigError, match="other rounds than"):
        merge_results([first, other_rounds])
    again = _write_grid(tmp_path / "c", [1], [r for r in records if r["seed"] == 1])
    with pytest.raises(ConfigError, match="appears twice"):
        merge_results([first, again])
    with pytest.raises(ConfigError, match="cannot read the records of .*nowhere"):
        merge_results([first, tmp_path / "nowhere"])


def test_fedsa_plus_is_compared_with_each_other_method_seed_by_seed():
    fedavg = {0: 0.82, 1: 0.74, 2: 0.93}  # fedsa+ leads by 3, 2 and 1 points: mean 2, SE 1/sqrt(3)
    random_cohort = {0: 0.86, 1: 0.70, 2: 0.94}  # -1, +6, 0: mean 1.67, SE 2.19
    records = grid_records()
    records += [record("fedavg+", s, a, SCRATCH[s], secure=True) for s, a in fedavg.items()]
    records += [record("random", s, a, SCRATCH[s], secure=True) for s, a in random_cohort.items()]
    records += [record("fedavg+", 0, 0.5, SCRATCH[0])]  # plain arm: nothing to pair with
    rows = {v.other: v for v in versus(records, "fedsa+", ["fedavg+", "random", "fedsa"])}
    assert set(rows) == {"fedavg+", "random"} and rows["fedavg+"].seeds == 3 and rows["fedavg+"].secure
    assert rows["fedavg+"].diff == pytest.approx(0.02) and rows["fedavg+"].diff_se == pytest.approx(0.01 / math.sqrt(3))
    assert rows["fedavg+"].clear and not rows["random"].clear
    table = format_table(records, set(FEDERATED))
    assert "| secure | 0.01 | fedavg+ | 3 | 2.0 ± 0.6 | yes |" in table
    assert "| secure | 0.01 | random | 3 | 1.7 ± 2.2 | no |" in table
