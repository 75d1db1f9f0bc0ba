"""report.html: the report document rendered for a privacy officer, one self-contained file.

Plots are embedded as base64 PNG and the style is inline, so the file can be mailed or archived
and opened offline. Every value is HTML-escaped: ledger fields are data, never markup.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterable
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; nodes and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3} .ok{color:#17692b;font-weight:600} .bad{color:#b00020;font-weight:600}
.verdict{padding:.7em 1em;border-radius:6px;margin:1em 0} .verdict.ok{background:#e7f5ea} .verdict.bad{background:#fde8ea}
.box{padding:.7em 1em;border-radius:6px;margin:1em 0;border-left:6px solid} .red{background:#fde8ea;border-color:#b00020}
.amber{background:#fff4e0;border-color:#d98b00} .guarantee{background:#e7f5ea;border-color:#17692b}
img{max-width:100%} .muted{color:#666;font-size:.9em} code{background:#f3f3f3;padding:0 .2em}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page."""
    subject = report["subject"]["name"] or "ledgers"
    body = [
        f"<h1>Privacy audit: {escape(subject)}</h1>",
        f"<p class='muted'>Schema {escape(report['schema'])} v{report['schema_version']}, generated "
        f"{escape(report['generated_at'])} by fedsa-secure {escape(report['generator']['fedsa_secure'])}.</p>",
        _headline(report["headline"]),
        _not_covered(report["not_covered"]),
        _verdict(report["verdict"]),
        _budget_table(report["nodes"]),
        _plots(report),
        _statement(report),
        _accounting(report),
        _ledgers(report["nodes"]),
        _mechanisms(report["nodes"]),
        _crosscheck(report),
        _curves(report["nodes"]),
        _empirical(report.get("empirical")),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Privacy audit: {escape(subject)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(body) + "</body></html>\n"
    )


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, _Markup):
        return value.html
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}"
    return escape(str(value))


class _Markup:
    """A table cell that is already safe HTML (built from escaped parts)."""

    def __init__(self, html: str) -> None:
        self.html = html


def _status(ok: bool, text: str) -> _Markup:
    return _Markup(f"<span class='{'ok' if ok else 'bad'}'>{escape(text)}</span>")


def _headline(headline: dict[str, Any]) -> str:
    """The guarantee as it is, per node: the first thing on the page."""
    items = "".join(f"<li>{escape(line)}</li>" for line in headline["nodes"])
    return f"<div class='box {'guarantee' if headline['holds'] else 'red'}'><b>{escape(headline['text'])}</b><ul>{items}</ul></div>"


def _not_covered(items: list[dict[str, str]]) -> str:
    """What the guarantee does not cover, before anything else: red where it does not hold, amber where it assumes."""
    parts = []
    for severity, title in (("red", "Not covered: the guarantee does not hold here"),
                            ("amber", "Not covered, or resting on an assumption")):
        chosen = "".join(f"<li>{escape(i['text'])}</li>" for i in items if i["severity"] == severity)
        if chosen:
            parts.append(f"<div class='box {severity}'><b>{title}</b><ul>{chosen}</ul></div>")
    return "".join(parts)


def _verdict(verdict: dict[str, Any]) -> str:
    if verdict["ok"]:
        return ("<div class='verdict ok'>Ledger verification: every ledger verifies, every recorded epsilon is "
                "reproduced, no budget is exceeded.</div>")
    items = "".join(f"<li>{escape(p)}</li>" for p in verdict["problems"])
    return f"<div class='verdict bad'><b>The audit found problems:</b><ul>{items}</ul></div>"


def _unused(rounds: list[int] | None) -> str:
    """Rounds charged whose update the student never used (aborted, abandoned by a restarted aggregator, dropped)."""
    if rounds is None:
        return "unknown (no run summary)"
    return f"{len(rounds)} ({', '.join(map(str, rounds))})" if rounds else "0"


def _budget_table(nodes: list[dict[str, Any]]) -> str:
    rows = [
        (n["name"], n["epsilon"], (n["teacher"] or {}).get("epsilon_alone"), n["target_epsilon"], n["remaining_epsilon"],
         n["delta"], n["rounds_trained"], _unused(n["charged_not_used"]), n["declines"],
         _status(n["ledger"]["ok"], "verified" if n["ledger"]["ok"] else "FAILED"))
        for n in nodes
    ]
    header = ("node", "epsilon spent (all)", "of which the teacher alone", "budget", "remaining", "delta", "rounds trained",
              "of which charged, not used (round)", "declines", "ledger")
    return ("<h2>Privacy spent per node</h2><p>Each node's epsilon covers its teacher's DP training and every round it "
            "trained, composed in one accountant (the teacher's own figure is shown for the split; epsilons do not add up "
            "linearly).</p>" + _table(header, rows))


def _plots(report: dict[str, Any]) -> str:
    nodes, rounds, run = report["nodes"], report["rounds"], report["run"]
    figures: list[tuple[str, Callable[[], Figure]]] = [
        ("Cumulative epsilon per node over rounds, with the budget", lambda: _epsilon_figure(nodes, rounds)),
        ("Remaining budget per node", lambda: _remaining_figure(nodes)),
    ]
    if run is not None and rounds:
        figures.append(("Adapted-student accuracy over rounds, against Scratch", lambda: _accuracy_figure(rounds, run)))
        figures.append(("Selection probabilities over rounds", lambda: _selection_figure(rounds)))
    parts = [f"<figure><img alt='{escape(title)}' src='data:image/png;base64,{_png(make())}'>"
             f"<figcaption>{escape(title)}</figcaption></figure>"
             for title, make in figures]
    return "<h2>Over the run</h2>" + "".join(parts)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _epsilon_figure(nodes: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> Figure:
    """Epsilon held flat through rounds a node did not train in, so every node spans the whole run."""
    figure, axis = plt.subplots(figsize=(7, 3.6))
    last = max([r["round"] for r in rounds] + [m["round"] for n in nodes for m in n["mechanism"]], default=0)
    for node in nodes:
        spent = {m["round"]: m["epsilon"] for m in node["mechanism"]}
        ys, current = [], 0.0
        for number in range(last + 1):
            current = spent.get(number, current)
            ys.append(math.nan if current is None else current)  # None: unbounded (no noise)
        axis.plot(range(last + 1), ys, marker="o", label=node["name"])
    for budget in sorted({n["target_epsilon"] for n in nodes if n["target_epsilon"] is not None}):
        axis.axhline(budget, color="red", linestyle=":", label=f"budget {budget:g}")
    axis.set(xlabel="round", ylabel="cumulative epsilon")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize="small", loc="upper left")
    return figure


def _remaining_figure(nodes: list[dict[str, Any]]) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 0.5 + 0.5 * max(len(nodes), 1)))
    names = [n["name"] for n in nodes]
    spent = [n["epsilon"] or 0.0 for n in nodes]
    remaining = [max(n["remaining_epsilon"] or 0.0, 0.0) for n in nodes]
    axis.barh(names, spent, color="#c44e52", label="spent")
    axis.barh(names, remaining, left=spent, color="#8fbc8f", label="remaining")
    axis.set(xlabel="epsilon")
    axis.invert_yaxis()
    axis.legend(fontsize="small", loc="lower right")
    return figure


def _accuracy_figure(rounds: list[dict[str, Any]], run: dict[str, Any]) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 3.4))
    measured = [(r["round"], r["accuracy"]) for r in rounds if r["accuracy"] is not None]
    if measured:
        axis.plot(*zip(*measured), marker="o", label=f"student ({run['method']}, DP + SecAgg)")
    if run.get("scratch_accuracy") is not None:
        axis.axhline(run["scratch_accuracy"], color="grey", linestyle="--", label="Scratch (probe only)")
    axis.set(xlabel="round", ylabel="test accuracy")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize="small", loc="best")
    return figure


def _selection_figure(rounds: list[dict[str, Any]]) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 3.4))
    names = sorted({name for r in rounds for name in (r["probabilities"] or {})})
    for name in names:
        shares = [(r["probabilities"] or {}).get(name, math.nan) for r in rounds]
        axis.plot([r["round"] for r in rounds], shares, marker="o", label=name)
    axis.set(xlabel="round", ylabel="selection probability", ylim=(0, 1))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize="small", loc="upper left")
    return figure


def _curve_figure(nodes: list[dict[str, Any]]) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for node in nodes:
        points = [(d, e) for d, e in node["epsilon_delta_curve"]["points"] if e is not None]
        axis.plot(*zip(*points), marker="o", label=node["name"])
        axis.plot([node["delta"]], [node["epsilon"]], marker="*", markersize=12, color="black")
    axis.set_xscale("log")
    axis.set(xlabel="delta", ylabel="epsilon (whole run)")
    axis.legend(fontsize="small", title="star: the recorded (delta, epsilon)", title_fontsize="small")
    return figure


def _statement(report: dict[str, Any]) -> str:
    s = report["statement"]
    units = "".join(f"<li>{escape(name)}: {escape(unit)}</li>" for name, unit in s["unit_of_privacy"].items())
    accesses = "".join(f"<li>{escape(x)}</li>" for x in s["data_accesses"])
    assumptions = "".join(f"<li>{escape(x)}</li>" for x in s["accounting_assumptions"])
    releases = _table(("what a node releases", "to whom", "what covers it"),
                      [(r["release"], r["to"], r["covered_by"]) for r in s["releases"]])
    return (
        "<h2>What the guarantee means</h2>"
        f"<h3>Setting</h3><p>{escape(s['dp_setting'])}</p>"
        f"<h3>Unit of privacy</h3><ul>{units}</ul>"
        f"<h3>Adjacency</h3><p>{escape(s['adjacency'])}</p>"
        f"<h3>Threat model</h3><p>{escape(s['threat_model'])}</p>"
        f"<h3>Every use of the records</h3><ul>{accesses}</ul>"
        f"<h3>Every release, and what covers it</h3>{releases}"
        f"<h3>Accounting assumptions</h3><ul>{assumptions}</ul>"
    )


def _accounting(report: dict[str, Any]) -> str:
    acc, libs = report["accounting"], report["generator"]["libraries"]
    versions = _table(("library", "version"), sorted(libs.items()))
    recorded = sorted({f"{k} {v}" for n in report["nodes"] for k, v in (n["versions"] or {}).items()})
    return (
        "<h2>Accountant and versions</h2>"
        f"<p>Mechanism: {escape(acc['mechanism'])}. Accountant used by the nodes: "
        f"<code>{escape(', '.join(acc['accountants']) or 'none')}</code> (Opacus; PRV is its tightest). "
        f"The audit recomputes with {escape(', '.join(acc['crosscheck_accountants']))}; the nodes' own accountant must "
        f"reproduce every recorded epsilon within {acc['recompute_tolerance']}.</p>"
        f"<p>Opacus secure_mode available: {'yes' if report['secure_mode']['available'] else 'no'}. "
        f"{escape(report['secure_mode']['reason'])}</p>"
        f"<p>Libraries of this audit:</p>{versions}"
        + (f"<p class='muted'>Libraries recorded in the ledgers: {escape('; '.join(recorded))}</p>" if recorded else "")
    )


def _ledgers(nodes: list[dict[str, Any]]) -> str:
    rows = [
        (n["name"], n["ledger"]["file"], n["ledger"]["entries"], _status(n["ledger"]["ok"], n["ledger"]["reason"]),
         n["ledger"]["first_bad"], "; ".join(f"{a['source']}: {a['entries']}" for a in n["ledger"]["anchors"]) or None)
        for n in nodes
    ]
    return (
        "<h2>Ledger verification</h2><p>Each entry carries the hash of the one before, so an edited, removed or "
        "reordered entry breaks the chain. Anchors (the ledger's head file and what the node reported to the "
        "aggregator) catch a removed tail and a chain recomputed after an edit.</p>"
        + _table(("node", "file", "entries", "result", "first bad entry", "anchors (entries witnessed)"), rows)
    )


def _mechanisms(nodes: list[dict[str, Any]]) -> str:
    header = ("node", "entry", "kind", "round", "noise multiplier", "sample rate", "steps", "clipping norm", "delta",
              "accountant", "cumulative epsilon")
    rows = [(n["name"], m["seq"], m["kind"], m["round"], m["noise_multiplier"], m["sample_rate"], m["steps"],
             m["max_grad_norm"], m["delta"], m["accountant"], m["epsilon"]) for n in nodes for m in n["mechanism"]]
    return "<h2>Mechanism parameters per charge</h2>" + _table(header, rows)


def _crosscheck(report: dict[str, Any]) -> str:
    names = report["accounting"]["crosscheck_accountants"]
    rows = []
    for n in report["nodes"]:
        c = n["crosscheck"]
        if c is None:
            continue
        rows.append((n["name"], c["recorded"], *(c["figures"].get(a) for a in names), c["largest_disagreement"],
                     c["largest_disagreement_with"], _status(c["ok"], "consistent" if c["ok"] else "; ".join(c["problems"]))))
    return (
        "<h2>Accountant cross-check</h2><p>Each node's cumulative epsilon at its delta, recomputed from the recorded "
        "parameters alone. PRV and PLD are tight numerical accountants; RDP is a looser upper bound by design.</p>"
        + _table(("node", "recorded", *names, "largest disagreement", "with", "result"), rows)
    )


def _curves(nodes: list[dict[str, Any]]) -> str:
    with_curve = [n for n in nodes if n["epsilon_delta_curve"]]
    if not with_curve:
        return "<h2>epsilon(delta)</h2><p>No node has a verified, non-empty ledger.</p>"
    deltas = [d for d, _ in with_curve[0]["epsilon_delta_curve"]["points"]]
    rows = [(n["name"], *(e for _, e in n["epsilon_delta_curve"]["points"])) for n in with_curve]
    return (
        "<h2>epsilon(delta) for the whole run</h2><p>The same recorded history read at other deltas: a smaller "
        "delta (a smaller chance that the epsilon bound fails) costs a larger epsilon.</p>"
        f"<figure><img alt='epsilon against delta' src='data:image/png;base64,{_png(_curve_figure(with_curve))}'></figure>"
        + _table(("node", *(f"{d:g}" for d in deltas)), rows)
    )


def _empirical(empirical: dict[str, Any] | None) -> str:
    if empirical is None:
        return ("<h2>Empirical audit</h2><p>Not run. <code>fedsa-secure audit RUN_DIR --empirical</code> adds a canary "
                "audit (Steinke, Nasr and Jagielski 2023) of one node's DP training.</p>")
    e = empirical
    rows = [
        ("node", e["node"]), ("canaries (each included with probability 1/2)", e["canaries"]),
        ("guesses / correct", f"{e['guesses']} / {e['correct']}"), ("confidence", e["confidence"]),
        ("empirical epsilon lower bound", e["epsilon_lower_bound"]), ("accounted epsilon (same mechanism)", e["accounted_epsilon"]),
        ("delta", e["delta"]), ("noise multiplier / sample rate / steps / clipping norm",
                                f"{e['noise_multiplier']} / {e['sample_rate']:.4f} / {e['steps']} / {e['max_grad_norm']}"),
    ]
    verdict = _status(e["consistent"], "lower bound is below the accounted epsilon" if e["consistent"]
                      else "lower bound EXCEEDS the accounted epsilon")
    return (
        "<h2>Empirical audit</h2>"
        f"<p>{escape(e['method'])}</p>" + _table(("", ""), rows) + f"<p>{verdict.html}</p>"
        "<p class='muted'>A lower bound, not an estimate: it says the mechanism is at least this leaky with the stated "
        "confidence. It is far below the accounted epsilon even for a tight accountant because one run with a few "
        "thousand canaries cannot certify large epsilons.</p>"
    )
