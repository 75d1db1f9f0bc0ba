"""Student/teacher architectures, the node-local translator, multi-task heads, and backbone state helpers."""

from fedsa_secure.models.cnn import ConvNet, HeadedBackbone
from fedsa_secure.models.mlp import MLP
from fedsa_secure.models.multitask import MultiTaskModel
from fedsa_secure.models.resnet import ResNet
from fedsa_secure.models.state import backbone_state, flatten_state, load_backbone_state, state_digest, unflatten_like
from fedsa_secure.models.students import (
    STUDENT_ARCHS,
    Student,
    architecture_digest,
    check_student,
    make_student,
    make_teacher,
    register_student,
    round_context,
    student_names,
    use_student,
)
from fedsa_secure.models.translator import Translator

__all__ = [
    "MLP",
    "STUDENT_ARCHS",
    "ConvNet",
    "HeadedBackbone",
    "MultiTaskModel",
    "ResNet",
    "Student",
    "Translator",
    "architecture_digest",
    "backbone_state",
    "check_student",
    "flatten_state",
    "load_backbone_state",
    "make_student",
    "make_teacher",
    "register_student",
    "round_context",
    "state_digest",
    "student_names",
    "use_student",
    "unflatten_like",
]
