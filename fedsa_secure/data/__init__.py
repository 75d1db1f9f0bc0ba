"""Offline datasets and their partitioning into node tasks."""

from fedsa_secure.data.digits import DEMO_NODES, LabelledSet, NodeData, aggregator_data, node_data
from fedsa_secure.data.federations import FEDERATIONS, Federation, federation
from fedsa_secure.data.mnist5k import MNIST_NODES, PROBE_BUDGETS, mnist_aggregator_data, mnist_node_data
from fedsa_secure.data.tasks import NUM_DIGITS, TASK_CLASSES, task_input, task_labels

__all__ = [
    "DEMO_NODES",
    "FEDERATIONS",
    "MNIST_NODES",
    "NUM_DIGITS",
    "PROBE_BUDGETS",
    "TASK_CLASSES",
    "Federation",
    "LabelledSet",
    "NodeData",
    "aggregator_data",
    "federation",
    "mnist_aggregator_data",
    "mnist_node_data",
    "node_data",
    "task_input",
    "task_labels",
]
