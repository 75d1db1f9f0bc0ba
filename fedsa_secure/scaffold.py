"""`fedsa-secure new DIR`: a federation directory to edit, one commented TOML per party and a module of the user's code.

The same files run on one machine (`fedsa-secure launch DIR`) and, copied with their keys, on
separate machines (`fedsa-secure aggregator|node --config FILE`). `demo` writes one with the
built-in student and the run directory's layout, and launches it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsa_secure.config import DemoOptions
from fedsa_secure.data.federations import federation
from fedsa_secure.errors import ConfigError
from fedsa_secure.files import atomic_write

AGGREGATOR = "aggregator"
CODE = "federation"  # the module `new` writes (federation.py)
DEFAULT_PORT = 50051


@dataclass(frozen=True)
class Layout:
    """Where the parts of a federation directory live, relative to its configs."""

    run_dir: str = "run"
    state: str = "state"  # each node's state_dir is <state>/<name>
    keys: str = "keys"
    student: str = f"{CODE}:student"  # the student the aggregator names: the user's code, or a built-in one


def toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, (Path, str)):
        return json.dumps(str(value))
    return repr(value)


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """A TOML file of plain tables (values None are left out)."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_federation(directory: Path, options: DemoOptions, layout: Layout = Layout()) -> list[Path]:
    """Write the configs (and, when the student is the user's code, federation.py) into `directory`; returns them.

    Refuses to overwrite a config that exists: a federation directory holds a party's settings and keys.
    """
    directory.mkdir(parents=True, exist_ok=True)
    names = list(federation(options.dataset).nodes)
    files = {directory / "aggregator.toml": _aligned(_aggregator(names, options, layout))}
    files |= {directory / f"{name}.toml": _aligned(_node(name, options, layout)) for name in names}
    if ":" in layout.student:
        files[directory / f"{CODE}.py"] = CODE_TEMPLATE.replace("DATASET", options.dataset)
    if existing := [str(path) for path in files if path.exists()]:
        raise ConfigError(f"{directory} already holds {', '.join(existing)}; choose a new directory (or delete them)")
    for path, text in files.items():
        atomic_write(path, text)
    return list(files)


COMMENT_COLUMN = 36


def _aligned(text: str) -> str:
    """Each `value   # comment` line with its comment at COMMENT_COLUMN (or one space after a longer value)."""
    lines = []
    for line in text.splitlines():
        code, marker, comment = line.partition("   # ")
        lines.append(f"{code.rstrip():<{COMMENT_COLUMN - 1}} # {comment.strip()}" if marker and code.strip() else line)
    return "\n".join(lines) + "\n"


def _tls(name: str, layout: Layout) -> str:
    return (f'[tls]\nca_cert = "{layout.keys}/ca.pem"   # launch creates {layout.keys}/ (a CA and a certificate per party) '
            f'if it is missing\ncert = "{layout.keys}/{name}.pem"\nkey = "{layout.keys}/{name}.key"\n')


def _testing(options: DemoOptions) -> str:
    return "" if options.dump_dir is None else f"\n[testing]\ndump_dir = {toml_value(options.dump_dir.resolve())}\n"


def _aggregator(names: list[str], options: DemoOptions, layout: Layout) -> str:
    student = f"{toml_value(layout.student)}" + ("   # your student (federation.py), or a built-in one: cnn, resnet, mlp"
                                                   if ":" in layout.student else "")
    return f"""# The student owner (aggregator): the student, its probe and test sets, selection and the secure sum.
# Paths are relative to this file. One machine: `fedsa-secure launch <this directory>`; separate machines:
# `fedsa-secure aggregator --config aggregator.toml`, each node with its own file and keys.
[aggregator]
listen = "0.0.0.0:{DEFAULT_PORT}"       # where nodes reach it (launch listens on a free local port instead)
run_dir = "{layout.run_dir}"                    # student.pt, summary.json, progress.png, report.html

[federation]
nodes = {toml_value(names)}   # the certificate names allowed to join
method = {toml_value(options.method)}                # fedsa+: LogME selection, output distillation; fedsa: the paper's (images only)
student = {student}
dataset = {toml_value(options.dataset)}             # the built-in data of the probe and test sets...
# probe = "probe.npz"              # ...or your own: x (records of the nodes' shape), y (labels 0..K-1 of the target task)
# test = "test.npz"                # (both or neither; or a function of your code, called with "probe" / "test")
seed = {options.seed}
rounds = {options.rounds}
cohort_size = 3                    # nodes drawn per round (at least 3: a secure sum of fewer reveals too much)

{_tls(AGGREGATOR, layout)}{_testing(options)}"""


def _node(name: str, options: DemoOptions, layout: Layout) -> str:
    student = (f'student = "{layout.student}"   # the student of your code this node builds when the aggregator names it\n'
               if ":" in layout.student else "")
    return f"""# Node {name}: its records, its teacher and its privacy budget. Paths are relative to this file.
[node]
name = "{name}"                    # the name on its certificate
aggregator = "localhost:{DEFAULT_PORT}"   # the aggregator's address (launch passes the local one)
server_name = "{AGGREGATOR}"          # the name on the aggregator's certificate
state_dir = "{layout.state}/{name}"        # its ledger and DP teacher: keep it across runs (a new one is a new budget)
{student}
[data]
dataset = {toml_value(options.dataset)}             # its share of a built-in dataset...
seed = {options.seed}
# records = "{name}.npz"           # ...or its own records: x (float, one record per row), y (labels 0..K-1)
# records = "{CODE}:records"   # ...or your loader in {CODE}.py, called with the node's name

# [teacher]                        # without this table the node trains its teacher here, with DP-SGD, on its records
# file = "{name}-teacher.pt"       # or its own model: TorchScript (.pt) or torch.export (.pt2), logits of its labels
# provenance = "public"            # public | dp (then noise_multiplier, sample_rate, steps, max_grad_norm) | non-private

[privacy]
target_epsilon = {options.target_epsilon!r}             # everything trained on its records, its teacher included, within this
delta = {options.delta!r}
teacher_share = {options.teacher_share!r}              # the share of target_epsilon its DP teacher spends on its own
planned_rounds = {options.planned_rounds or options.rounds}               # rounds its noise is calibrated for
local_epochs = {options.local_epochs}

{_tls(name, layout)}{_testing(options)}"""


CODE_TEMPLATE = '''"""This federation's own code. Each party imports only what its own config names from here; names and digests travel.

- `student`: the model the federation trains (aggregator: federation.student, nodes: node.student).
- `records`: a node's records, when its config says `records = "federation:records"`.
"""

import numpy as np
from torch import nn

from fedsa_secure.data import federation
from fedsa_secure.models import ConvNet


def student(num_classes: int) -> nn.Module:
    """The student, for `num_classes` target classes: a `features` module and a linear `head` (a fedsa_secure.Student).

    This is the built-in convolutional student, for grey images [1, H, W]. For records that are vectors [D], say:
        fedsa_secure.Student(nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()), 64, num_classes)
    """
    return ConvNet(16, num_classes)


def records(node: str) -> tuple[np.ndarray, np.ndarray]:
    """Node `node`'s records (x: float, one record per row; y: labels 0..K-1). Replace with reading your own data;
    this returns the node's share of the built-in DATASET federation."""
    data = federation("DATASET").node(node, seed=0)
    return data.train.x, data.train.y
'''
