"""`fedsa-secure audit`: a tampered ledger fails with the first bad entry named; an intact run passes and is reported."""

import json
import re

import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedsa_secure.data import node_data
from fedsa_secure.errors import LedgerError
from fedsa_secure.privacy import accounting, crosscheck
from fedsa_secure.privacy.audit import _node_records, run_audit
from fedsa_secure.privacy.crosscheck import epsilon_by
from fedsa_secure.privacy.ledger import (
    GENESIS,
    Ledger,
    LedgerHead,
    entry_hash,
    head_path,
    read_entries,
    read_head,
    write_head,
)
from fedsa_secure.privacy.report import build_report

SIGMA, Q, STEPS = 0.86181640625, 1 / 6, 12  # the demo's mechanism: one round is 12 steps

# The fixture's report figures (node-1: 2 rounds, node-2: 1 round), computed by fresh library accountants
# for every evaluation, before the accountants shared per-mechanism work; sharing it must not move them.
PINNED_REPORT = {
    "node-1": {"figures": {"opacus_prv": 7.99829650167516, "opacus_rdp": 9.11464389492989,
                           "dp_accounting_pld": 7.987732477730037, "dp_accounting_rdp": 9.129898106946417},
               "curve": [11.641462438594164, 10.473586437990113, 9.262908702662777, 7.99829650167516,
                         6.662367609453825, 5.225088144163057]},
    "node-2": {"figures": {"opacus_prv": 6.0773551176075475, "opacus_rdp": 7.035342514651427,
                           "dp_accounting_pld": 6.066878696306928, "dp_accounting_rdp": 7.036027454480289},
               "curve": [9.178741485272443, 8.179766888692226, 7.148528957919951, 6.0773551176075475,
                         4.9544093572874, 3.7595358147001434]},
}


def epsilon_after(rounds: int) -> float:
    return epsilon_by("opacus_prv", [(SIGMA, Q, STEPS * rounds)], 1e-5)


@pytest.fixture
def run(tmp_path):
    """A run where node-1 trained its DP teacher and round 2, node-2 only its teacher, node-3 nothing.

    Every charge is the demo's round mechanism, so node-1's history is two rounds' and node-2's one round's.
    """
    run_dir = tmp_path / "run"
    trained = {"node-1": [("teacher", 0), ("distillation", 2)], "node-2": [("teacher", 0)], "node-3": []}
    heads = {}
    for name, charges in trained.items():
        ledger = Ledger(ledger_file(run_dir, name)) if charges else None
        for count, (kind, number) in enumerate(charges, start=1):
            ledger.append({"node": name, "kind": kind, "round": number, "noise_multiplier": SIGMA, "sample_rate": Q,
                           "steps": STEPS, "max_grad_norm": 1.0, "delta": 1e-5, "accountant": "prv",
                           "epsilon": epsilon_after(count), "target_epsilon": 8.0, "secret_note": "do-not-copy",
                           "record": {"shape": [1, 14, 14], "dtype": "float32", "labelled": True}, "records": 3000})
        heads[name] = ledger.head if ledger else LedgerHead(0, GENESIS)
    spent = {1: {"node-1": epsilon_after(1), "node-2": epsilon_after(1), "node-3": 0.0},
             2: {"node-1": epsilon_after(2), "node-2": epsilon_after(1), "node-3": 0.0}}
    summary = {
        "method": "fedsa", "student_accuracy": 0.8, "scratch_accuracy": 0.84, "rounds": 2, "probe_size": 50, "test_size": 359,
        "run_dir": str(run_dir), "seconds": 1.0,
        "nodes": [{"name": n, "epsilon": spent[2][n], "delta": 1e-5, "target_epsilon": 8.0,
                   "rounds_trained": sum(kind == "distillation" for kind, _ in c), "declines": 0,
                   "ledger_entries": heads[n].entries, "ledger_head": heads[n].head} for n, c in trained.items()],
        "history": [{"round": r, "cohort": ["node-1", "node-2"], "survivors": ["node-1", "node-2"],
                     "probabilities": {"node-1": 0.5, "node-2": 0.3, "node-3": 0.2}, "accuracy": 0.8, "seconds": 1.0,
                     "epsilon": spent[r], "aborted": None} for r in (1, 2)],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def ledger_file(run_dir, name):
    return run_dir / "nodes" / name / "0123456789abcdef" / "ledger.jsonl"


def node1(run_dir):
    return ledger_file(run_dir, "node-1")


def rewrite(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def audit_json(path, capsys, **kwargs) -> tuple[int, dict]:
    status = run_audit(path, json_output=True, empirical=False, out=kwargs.get("out"))
    return status, json.loads(capsys.readouterr().out)


def node_report(report, name="node-1"):
    return next(n for n in report["nodes"] if n["name"] == name)


def test_intact_run_passes_and_writes_both_reports(run, capsys):
    status, report = audit_json(run, capsys)
    assert status == 0 and report["verdict"] == {"ok": True, "problems": []}
    assert report["schema"] == "fedsa-secure/privacy-report" and report["schema_version"] == 2
    n1, n3 = node_report(report), node_report(report, "node-3")
    assert n1["rounds_trained"] == 1 and n1["epsilon"] == pytest.approx(7.9983, abs=1e-3)
    assert n1["teacher"]["entries"] == [0] and n1["teacher"]["epsilon_alone"] == pytest.approx(epsilon_after(1))
    assert n1["unit"] == "one record of its 3,000 records: a float32 array of shape 1x14x14 with its label"
    assert report["headline"]["holds"] and report["headline"]["nodes"][0].startswith(
        "node-1: epsilon 8.00 at delta 1e-05 for one record of its 3,000 records")
    assert [i["severity"] for i in report["not_covered"]] == ["amber"] * 4
    assert n1["remaining_epsilon"] == pytest.approx(8.0 - n1["epsilon"])
    assert n1["crosscheck"]["ok"] and n1["crosscheck"]["figures"]["dp_accounting_pld"] == pytest.approx(7.9877, abs=1e-3)
    assert [d for d, _ in n1["epsilon_delta_curve"]["points"]] == [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3]
    curve = [e for _, e in n1["epsilon_delta_curve"]["points"]]
    assert curve == sorted(curve, reverse=True) and curve[3] == pytest.approx(n1["epsilon"])
    assert n3["ledger"]["present"] is False and n3["ledger"]["ok"] and n3["epsilon"] == 0.0
    assert {a["source"] for a in n1["ledger"]["anchors"]} == {"sidecar ledger.head.json", "summary.json node status"}
    html = (run / "report.html").read_text()
    assert json.loads((run / "report.json").read_text())["nodes"] == report["nodes"]
    assert html.count("data:image/png;base64,") == 5 and not re.search(r"(src|href)=['\"]?(https?:|//)", html)
    for heading in ("Unit of privacy", "Adjacency", "Threat model", "Every release, and what covers it",
                    "Not covered, or resting on an assumption", "Accountant cross-check", "Ledger verification", "epsilon(delta)"):
        assert heading in html
    assert "torchcsprng" in html and "post-processing of the DP teacher" in html
    assert html.index("Every node&#x27;s releases are differentially private") < html.index("Ledger verification")


def test_report_figures_are_pinned_and_the_rdp_is_computed_once(run, monkeypatch):
    """Two nodes, 6 deltas, 4 accountants, every round re-checked: one mechanism, so one Opacus RDP vector."""
    for cached in (accounting._epsilon_cached, accounting._rdp_per_step, crosscheck._google_epsilon):
        cached.cache_clear()
    calls = []
    compute_rdp = opacus_rdp.compute_rdp

    def counted(**kwargs):
        calls.append(kwargs)
        return compute_rdp(**kwargs)

    monkeypatch.setattr(opacus_rdp, "compute_rdp", counted)
    report = build_report(run)
    for name, pinned in PINNED_REPORT.items():
        node = node_report(report, name)
        assert node["crosscheck"]["figures"] == pytest.approx(pinned["figures"], rel=1e-9)
        assert [eps for _, eps in node["epsilon_delta_curve"]["points"]] == pytest.approx(pinned["curve"], rel=1e-9)
    assert len(calls) == 1


def test_reports_copy_only_whitelisted_fields(run, capsys):
    audit_json(run, capsys)
    assert "do-not-copy" not in (run / "report.json").read_text()
    assert "do-not-copy" not in (run / "report.html").read_text()


def test_edited_entry_is_named(run, capsys):
    entries = read_entries(node1(run))
    entries[1]["epsilon"] = 5.0
    rewrite(node1(run), entries)
    status, report = audit_json(run, capsys)
    ledger = node_report(report)["ledger"]
    assert status == 1 and not ledger["ok"] and ledger["first_bad"] == 1 and "modified" in ledger["reason"]


def test_deleted_and_reordered_entries_are_named(run, capsys):
    entries = read_entries(node1(run))
    rewrite(node1(run), entries[1:])
    status, report = audit_json(run, capsys)
    assert status == 1 and node_report(report)["ledger"]["first_bad"] == 0
    rewrite(node1(run), entries[::-1])
    status, report = audit_json(run, capsys)
    assert status == 1 and node_report(report)["ledger"]["first_bad"] == 0 and "seq" in node_report(report)["ledger"]["reason"]


def test_cut_tail_is_caught_by_the_sidecar(run, capsys):
    rewrite(node1(run), read_entries(node1(run))[:1])
    status, report = audit_json(run, capsys)
    ledger = node_report(report)["ledger"]
    assert status == 1 and ledger["first_bad"] == 1 and "truncated: sidecar ledger.head.json saw 2" in ledger["reason"]


def test_cut_tail_without_sidecar_is_caught_by_the_summary(run, capsys):
    rewrite(node1(run), read_entries(node1(run))[:1])
    head_path(node1(run)).unlink()
    status, report = audit_json(run, capsys)
    ledger = node_report(report)["ledger"]
    assert status == 1 and ledger["first_bad"] == 1 and "summary.json node status saw 2" in ledger["reason"]


def forget_node_status_heads(run_dir):
    """A summary whose aggregator kept no ledger head of the nodes' last status (only counts and epsilons)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    for node in summary["nodes"]:
        del node["ledger_head"], node["ledger_entries"]
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_recomputed_chain_is_caught_by_the_aggregators_epsilon(run, capsys):
    """A forger who lowers an epsilon, recomputes every hash and rewrites the head file still contradicts the summary."""
    forget_node_status_heads(run)
    entries = read_entries(node1(run))
    entries[1]["epsilon"] = 6.5
    previous = GENESIS
    for entry in entries:
        entry["prev_hash"] = previous
        entry["hash"] = previous = entry_hash(entry)
    rewrite(node1(run), entries)
    with pytest.raises(LedgerError, match="rewritten: entries 0..1 differ from what sidecar"):
        Ledger(node1(run))  # the old head file catches the recomputed chain...
    write_head(head_path(node1(run)), LedgerHead(2, entries[-1]["hash"]))
    Ledger(node1(run))  # ...but the forger controls the node's disk and rewrites it too
    status, report = audit_json(run, capsys)
    problems = node_report(report)["problems"]
    assert status == 1 and node_report(report)["ledger"]["ok"]  # ...so only the witnesses can tell
    assert any("aggregator recorded epsilon 7.998297 after round 2" in p for p in problems)
    assert any("entry 1 (round 2) records epsilon 6.5000" in p for p in problems)  # and the cross-check


def test_summary_ledger_heads_name_the_rewritten_entry(run, capsys):
    """When the aggregator records each round's ledger head (node status), a recomputed chain is pinned to an entry."""
    forget_node_status_heads(run)
    entries = read_entries(node1(run))
    summary = json.loads((run / "summary.json").read_text())
    for i, record in enumerate(summary["history"]):
        record["ledger_heads"] = {"node-1": {"entries": i + 1, "head": entries[i]["hash"]}}
    (run / "summary.json").write_text(json.dumps(summary))
    entries[1]["max_grad_norm"] = 0.5
    entries[1]["hash"] = entry_hash(entries[1])
    rewrite(node1(run), entries)
    head_path(node1(run)).unlink()
    status, report = audit_json(run, capsys)
    ledger = node_report(report)["ledger"]
    assert status == 1 and ledger["first_bad"] == 1 and "entry 1 differ from what summary.json round 2" in ledger["reason"]


def test_one_ledger_file_is_audited_against_its_run(run, capsys, tmp_path):
    status, report = audit_json(node1(run), capsys)
    assert status == 0 and [n["name"] for n in report["nodes"]] == ["node-1"]
    assert not (run / "report.json").exists()  # a single-file audit writes nothing unless asked
    status, report = audit_json(node1(run), capsys, out=tmp_path / "out")
    assert (tmp_path / "out" / "report.html").exists()


def test_budget_overrun_fails(run, capsys):
    ledger = Ledger(node1(run))
    ledger.append({"node": "node-1", "kind": "distillation", "round": 3, "noise_multiplier": SIGMA, "sample_rate": Q, "steps": STEPS,
                   "max_grad_norm": 1.0, "delta": 1e-5, "accountant": "prv", "epsilon": epsilon_after(3), "target_epsilon": 8.0})
    status, report = audit_json(run, capsys)
    assert status == 1 and any("round 3" in p and "> budget 8.0" in p for p in report["verdict"]["problems"])
    assert read_head(head_path(node1(run))).entries == 3


def test_text_output_and_missing_path(run, capsys, tmp_path):
    assert run_audit(run, json_output=False, empirical=False, out=None) == 0
    text = capsys.readouterr().out
    assert "node-1: ledger ok (2 entries" in text and "verdict: OK" in text and "dp_accounting_pld 7.98" in text
    with pytest.raises(LedgerError, match="no such ledger"):
        run_audit(tmp_path / "nothing.jsonl", json_output=False, empirical=False, out=None)


def test_rounds_without_a_recorded_dp_teacher_are_reported_first_in_red(run, capsys):
    """A ledger of rounds alone: its teacher saw the records without DP, so the printed epsilon bounds nothing."""
    entries = read_entries(node1(run))
    entries[0]["kind"] = "distillation"  # as if the teacher's training had never been charged
    previous = GENESIS
    for entry in entries:
        entry["prev_hash"] = previous
        entry["hash"] = previous = entry_hash(entry)
    rewrite(node1(run), entries)
    write_head(head_path(node1(run)), LedgerHead(2, entries[-1]["hash"]))
    summary = json.loads((run / "summary.json").read_text())
    summary["nodes"][0]["ledger_head"] = entries[-1]["hash"]
    (run / "summary.json").write_text(json.dumps(summary))
    status, report = audit_json(run, capsys)
    red = [i["text"] for i in report["not_covered"] if i["severity"] == "red"]
    assert status == 1 and not report["headline"]["holds"] and len(red) == 1 and red[0].startswith("node-1: its ledger records no DP")
    assert report["not_covered"][0]["severity"] == "red" and "does NOT hold" in report["headline"]["text"]
    assert run_audit(run, json_output=False, empirical=False, out=None) == 1
    assert capsys.readouterr().out.splitlines()[0].startswith("The guarantee does NOT hold")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, None])
def test_a_non_finite_or_negative_figure_is_a_problem_not_a_crash(run, capsys, value):
    ledger = Ledger(node1(run))
    ledger.append({"node": "node-1", "kind": "distillation", "round": 3, "noise_multiplier": SIGMA, "sample_rate": Q,
                   "steps": STEPS, "max_grad_norm": 1.0, "delta": 1e-5, "accountant": "prv", "epsilon": value,
                   "target_epsilon": 8.0})
    status, report = audit_json(run, capsys, out=run / "audit")
    problems = node_report(report)["problems"]
    assert status == 1 and any(f"entry 2 records epsilon = {value!r}," in p for p in problems), problems
    assert (run / "audit" / "report.html").exists() and node_report(report)["epsilon"] is None


def test_a_charge_whose_update_the_student_never_used_is_reported(run, capsys):
    """A round abandoned by a restarted aggregator (or aborted) still counts in epsilon; the report names it."""
    status, report = audit_json(run, capsys)
    assert node_report(report)["charged_not_used"] == []
    summary = json.loads((run / "summary.json").read_text())
    summary["history"][1]["aborted"] = "the aggregator restarted"
    (run / "summary.json").write_text(json.dumps(summary))
    status, report = audit_json(run, capsys)
    assert status == 0 and node_report(report)["charged_not_used"] == [2]  # charged, not used: still within budget
    assert "<td>1 (2)</td>" in (run / "report.html").read_text()


def test_the_canary_audit_finds_a_node_config_in_a_federation_directory(tmp_path):
    """`fedsa-secure new DIR` keeps node configs beside the run directory (DIR/run): the audit finds them there too."""

    (tmp_path / "node-2.toml").write_text('[node]\nname = "node-2"\naggregator = "127.0.0.1:1"\nstate_dir = "state/node-2"\n'
                                          '[data]\ndataset = "digits"\n[tls]\nca_cert = "k/ca.pem"\ncert = "k/n.pem"\n'
                                          'key = "k/n.key"\n')
    found = _node_records(tmp_path / "run", "node-2")
    assert found.name == "node-2" and (found.train.x == node_data("node-2", 0).train.x).all()
    with pytest.raises(LedgerError, match="finds no config of node-3"):
        _node_records(tmp_path / "run", "node-3")
