"""fedsa-secure: a student trained from private teachers, with a differential-privacy guarantee per node.

The objects a program needs (the `fedsa-secure` command is a shell over them):

- `Node`: one institution's side. `Node.from_config` for a deployed node; `Node(name, data,
  settings, teacher=...)` for an in-process one. Every use of its records is DP-SGD charged to its
  ledger before anything derived leaves; it refuses rounds below its own `Defence`.
- Teacher provenances: `TrainTeacher` (the node trains it with DP-SGD), `DPTrainedTeacher`
  (trained elsewhere with DP on these records: its mechanism is charged), `PublicTeacher`
  (trained outside the protected records: declared, not charged), `NonPrivateTeacher` (trained on
  these records without DP: taken only when accepted, and the report says first that the records
  are not protected).
- `run_federation`: a whole federation in this process, over the same rounds (`Federation`,
  `RoundSettings`) as the networked `run_aggregator`.
- `DPSettings`: a node's budget and DP-SGD recipe.
- `Student`: a student from any `features` module and a linear head; `register_student(name, factory)` makes it
  buildable by name in this process (a config names it as `module:function`; only the name and a digest of the
  architecture travel, every party builds it from its own code).
- `load_records`: a node's own records from an `.npz` (arrays `x`, `y`), checked, as `NodeData`;
  `load_teacher_file`: an institution's own teacher (torch.export `.pt2` or TorchScript), tried on
  those records, to wrap in a provenance.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use, so that `import fedsa_secure.config` (and the commands that need no model)
# does not pull in torch, Opacus and grpc.
_WHERE = {
    "run_aggregator": "aggregator",
    "AggregatorConfig": "config", "NodeConfig": "config", "load_aggregator_config": "config", "load_node_config": "config",
    "LabelledSet": "data", "NodeData": "data", "load_records": "data.records",
    "FedsaError": "errors",
    "DPSettings": "fedsa.distill",
    "DPTrainedTeacher": "fedsa.teacher", "NonPrivateTeacher": "fedsa.teacher", "PublicTeacher": "fedsa.teacher",
    "TrainTeacher": "fedsa.teacher", "load_teacher_file": "fedsa.teacher",
    "run_federation": "inprocess",
    "Defence": "node", "Node": "node",
    "Student": "models", "register_student": "models",
    "Federation": "rounds", "Outcome": "rounds", "RoundSettings": "rounds",
}
__all__ = [
    "AggregatorConfig", "DPSettings", "DPTrainedTeacher", "Defence", "Federation", "FedsaError", "LabelledSet", "Node",
    "NodeConfig", "NodeData", "NonPrivateTeacher", "Outcome", "PublicTeacher", "RoundSettings", "Student", "TrainTeacher",
    "load_aggregator_config", "load_node_config", "load_records", "load_teacher_file", "register_student", "run_aggregator",
    "run_federation",
]

if TYPE_CHECKING:
    from fedsa_secure.aggregator import run_aggregator
    from fedsa_secure.config import AggregatorConfig, NodeConfig, load_aggregator_config, load_node_config
    from fedsa_secure.data import LabelledSet, NodeData
    from fedsa_secure.data.records import load_records
    from fedsa_secure.errors import FedsaError
    from fedsa_secure.fedsa.distill import DPSettings
    from fedsa_secure.fedsa.teacher import DPTrainedTeacher, NonPrivateTeacher, PublicTeacher, TrainTeacher, load_teacher_file
    from fedsa_secure.inprocess import run_federation
    from fedsa_secure.models import Student, register_student
    from fedsa_secure.node import Defence, Node
    from fedsa_secure.rounds import Federation, Outcome, RoundSettings


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fedsa_secure' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedsa_secure.{_WHERE[name]}"), name)
