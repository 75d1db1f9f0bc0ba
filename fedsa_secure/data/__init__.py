"""Offline datasets and their partitioning into node tasks."""

from fedsa_secure.data.digits import (
    DEMO_NODES,
    TASK_CLASSES,
    LabelledSet,
    NodeData,
    aggregator_data,
    node_data,
    task_input,
)

__all__ = [
    "DEMO_NODES",
    "TASK_CLASSES",
    "LabelledSet",
    "NodeData",
    "aggregator_data",
    "node_data",
    "task_input",
]
