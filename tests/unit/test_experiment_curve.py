"""The privacy-utility curve from grids run at several budgets: paired with Scratch, covered and uncovered kept apart."""

import json

import pytest

from fedsa_secure.cli import main
from fedsa_secure.experiment.curve import COVERED, UNCOVERED, curve_points, format_curve


def record(method, seed, accuracy, epsilon=None, covered=True):
    return {"method": method, "seed": seed, "accuracy": accuracy, "secure": epsilon is not None,
            "dp_target_epsilon": epsilon, "teacher_covered": covered if epsilon is not None else False}


SCRATCH = [record("scratch", s, 0.30 + 0.01 * s) for s in range(3)]
GRIDS = {
    "eps1": SCRATCH + [record("fedsa+", s, 0.40 + 0.01 * s, 1.0) for s in range(3)],
    "eps8": SCRATCH + [record("fedsa+", s, 0.55 + 0.02 * s, 8.0) for s in range(3)]
    + [record("fedavg+", s, 0.45, 8.0) for s in range(3)],
    "old8": SCRATCH + [record("fedsa+", s, 0.60, 8.0, covered=False) for s in range(2)],
}


def test_points_pair_each_secure_run_with_scratch_of_its_seed():
    points, scratch = curve_points([r for grid in GRIDS.values() for r in grid])
    by_key = {(p.method, p.accounting, p.epsilon): p for p in points}
    assert scratch == {0: 0.30, 1: 0.31, 2: 0.32}
    assert by_key[("fedsa+", COVERED, 1.0)].gain == pytest.approx(0.10)
    eight = by_key[("fedsa+", COVERED, 8.0)]
    assert (eight.seeds, eight.accuracy, eight.gain) == (3, pytest.approx(0.57), pytest.approx(0.26))
    assert eight.gain_se == pytest.approx(0.01 / 3**0.5)  # differences 0.25, 0.26, 0.27
    assert by_key[("fedsa+", UNCOVERED, 8.0)].seeds == 2 and len(points) == 4
    table = format_curve(points, scratch)
    assert "| teacher covered | fedsa+ secure | 0.410 (+10.0 ± 0.0; 3 seeds) | 0.570 (+26.0 ± 0.6; 3 seeds) |" in table
    assert f"| {UNCOVERED} | fedsa+ secure | – | 0.600" in table


def test_records_from_before_the_coverage_flag_are_told_apart_by_their_teacher_epsilon():
    older = [{k: v for k, v in r.items() if k != "teacher_covered"} for r in GRIDS["eps8"] if r["method"] == "fedsa+"]
    dp_teachers = [{**r, "teacher_epsilon": 4.0} for r in older]
    points, _ = curve_points(SCRATCH + dp_teachers + older)
    assert sorted((p.accounting, p.seeds) for p in points) == [(COVERED, 3), (UNCOVERED, 3)]


def test_the_command_writes_the_table_and_the_plot(tmp_path, capsys):
    dirs = []
    for name, records in GRIDS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"grid": {}, "records": records}))
        dirs.append(str(tmp_path / name))
    assert main(["experiment", "--curve", *dirs, "--out", str(tmp_path / "curve")]) == 0
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    assert "epsilon 1 | epsilon 8" in (tmp_path / "curve" / "curve.md").read_text()
    assert main(["experiment", "--curve", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "cannot read" in capsys.readouterr().err
