"""simulate() with the experiment's knobs (selection, secure aggregation, student architecture, target tasks) on digits."""

import pytest
import torch

from fedsa_secure.data import DEMO_NODES, aggregator_data
from fedsa_secure.experiment.grid import run_grid
from fedsa_secure.experiment.report import format_table
from fedsa_secure.experiment.simulation import simulate
from fedsa_secure.experiment.spec import FEDERATED, Grid
from fedsa_secure.fedsa.adapt import adapt, evaluate, evaluate_tasks, scratch
from fedsa_secure.models import backbone_state, flatten_state, make_student
from fedsa_secure.secagg.packing import packed_size
from fedsa_secure.secagg.quantize import required_modulus_bits

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


def run(teachers, private=False, **kwargs):
    return simulate(0, 1, method="fedsa+", dataset="digits", private=private, teacher_cache=teachers, **kwargs)


def test_a_run_is_the_real_protocol_and_reproducible_from_its_seed(teachers):
    """Every arm sums through secure aggregation in memory: the traffic is the protocol's messages, and a seed
    fixes the DP noise, the secure-aggregation keys and the draws, so the same run gives the same student."""
    first, again = run(teachers, private=True), run(teachers, private=True)
    def untimed(result):
        return [{k: v for k, v in h.items() if k != "adapt_seconds"} for h in result["rounds"]]

    assert untimed(first) == untimed(again) and first["final_accuracy"] == again["final_accuracy"]
    m, cohort = first["vector_length"], len(first["rounds"][1]["cohort"])
    assert first["bytes_up"] == cohort * packed_size(m, required_modulus_bits(cohort, 16))  # masked, bit-packed
    assert first["bytes_down"] > cohort * 4 * m  # the student to every cohort node, plus the probe and protocol messages
    assert first["protocol_bytes_up"] > 0 and first["secagg"] == {"clip": 1.0, "level_bits": 16}
    plain = run(teachers, private=False)
    assert plain["epsilon"] is None and plain["rounds"][1]["cohort"] == first["rounds"][1]["cohort"]  # same draw
    assert plain["scratch_accuracy"] == first["scratch_accuracy"]


def test_uniform_selection_trains_every_node(teachers):
    every = run(teachers, selection="uniform")
    assert sorted(every["rounds"][1]["cohort"]) == sorted(DEMO_NODES)
    assert every["rounds"][1]["probabilities"] == pytest.approx(dict.fromkeys(DEMO_NODES, 0.25))


def test_unknown_modes_are_refused_by_name(teachers):
    with pytest.raises(ValueError, match="selection must be one of"):
        run(teachers, selection="best")


def test_default_student_is_the_single_task_cnn(teachers):
    default = run(teachers)
    explicit = run(teachers, arch="cnn", target_tasks=("digit",))
    assert default["arch"] == "cnn" and default["target_tasks"] == ["digit"]
    assert [h["accuracy"] for h in default["rounds"]] == [h["accuracy"] for h in explicit["rounds"]]
    assert default["task_accuracy"] == {"digit": default["final_accuracy"]}
    assert default["vector_length"] == released_size(make_student(10, 0))
    probe, test = aggregator_data(0)
    assert default["scratch_accuracy"] == evaluate(adapt(make_student(10, 0), probe, 0), test)  # the single-task recipe


def released_size(student):
    return flatten_state(backbone_state(student, ("features", "head"))).size


@pytest.mark.parametrize(("arch", "method"), [("mlp", "fedsa"), ("resnet", "fedsa+")])
def test_other_architectures_train_and_adapt_the_same_student_as_scratch(teachers, arch, method):
    result = simulate(0, 1, method=method, dataset="digits", private=False, teacher_cache=teachers, arch=arch)
    student = make_student(10, 0, arch)
    # fedsa releases the backbone, fedsa+ the target head too: either way the update has this architecture's shape
    released = ("features",) if method == "fedsa" else ("features", "head")
    assert result["arch"] == arch and result["vector_length"] == flatten_state(backbone_state(student, released)).size
    probe, test = aggregator_data(0)
    assert result["scratch_accuracy"] == evaluate(scratch(probe, 0, arch=arch), test)  # Scratch is of that architecture too
    assert 0.5 < result["final_accuracy"] <= 1.0 and result["task_accuracy"] == {"digit": result["final_accuracy"]}


def test_multitask_run_reports_every_task_and_scratch_has_the_same_heads(teachers):
    tasks = ("digit", "parity")
    result = run(teachers, target_tasks=tasks)
    assert list(result["task_accuracy"]) == list(tasks) == result["target_tasks"]
    assert all(0.0 <= a <= 1.0 for a in result["task_accuracy"].values())
    assert result["task_accuracy"]["digit"] == result["final_accuracy"] == result["rounds"][-1]["accuracy"]
    assert result["task_accuracy"]["parity"] > 0.6  # chance 0.5; measured 0.96
    probe, test = aggregator_data(0)
    assert result["scratch_task_accuracy"] == evaluate_tasks(scratch(probe, 0, tasks=tasks), test)
    assert result["scratch_accuracy"] == result["scratch_task_accuracy"]["digit"] == result["rounds"][0]["accuracy"]


def test_unknown_architecture_and_tasks_without_the_digit_first_are_refused(teachers):
    with pytest.raises(ValueError, match="arch must be one of"):
        run(teachers, arch="vit")
    with pytest.raises(ValueError, match="start with 'digit'"):
        run(teachers, target_tasks=("parity", "digit"))
    with pytest.raises(ValueError, match="target task must be one of"):
        run(teachers, target_tasks=("digit", "colour"))


def test_grid_records_carry_arch_and_task_accuracy_and_the_table_splits_them(teachers, tmp_path):
    grid = Grid(datasets=("digits",), methods=("scratch", "transfer", "fedsa+"), seeds=(0,), rounds=1, eval_every=1,
                arms=(False,), archs=("cnn", "mlp"), tasks=("digit", "parity"))
    records = run_grid(grid, tmp_path, teachers, lambda line: None)
    assert [(r["arch"], r["method"]) for r in records] == [
        (a, m) for a in ("cnn", "mlp") for m in ("scratch", "transfer", "fedsa+")]
    for r in records:
        assert list(r["task_accuracy"]) == ["digit", "parity"] and r["accuracy"] == r["task_accuracy"]["digit"]
        assert r["scratch_accuracy"] == r["scratch_task_accuracy"]["digit"]
    by = {(r["arch"], r["method"]): r for r in records}
    assert by[("cnn", "transfer")]["task_accuracy"] == by[("mlp", "transfer")]["task_accuracy"]  # the teacher, not a student
    assert by[("cnn", "scratch")]["task_accuracy"] != by[("mlp", "scratch")]["task_accuracy"]
    table = format_table(records, set(FEDERATED))
    assert "| arch | method | task | seeds |" in table and "| mlp | fedsa+ plain | parity | 1 |" in table
    assert "| arch | method | budget | mean bytes up |" in table


def test_tail_averaging_changes_only_what_adaptation_starts_from(teachers):
    """Same seed, same updates: round 1 has one state to average either way; by round 2 the mean of
    two states gives another adapted student, and each result says how it was made."""
    runs = {n: simulate(0, 2, method="fedsa+", dataset="digits", private=False, teacher_cache=teachers,
                        average_rounds=n, selection="uniform") for n in (1, 2)}
    assert [r["average_rounds"] for r in runs.values()] == [1, 2]
    assert runs[1]["rounds"][1]["accuracy"] == runs[2]["rounds"][1]["accuracy"]
    assert runs[1]["rounds"][2]["cohort"] == runs[2]["rounds"][2]["cohort"]
    assert runs[1]["rounds"][2]["accuracy"] != runs[2]["rounds"][2]["accuracy"]
