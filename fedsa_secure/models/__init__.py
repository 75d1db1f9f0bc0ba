"""Student/teacher architectures, the node-local translator, multi-task heads, and backbone state helpers."""

from fedsa_secure.models.cnn import ConvNet, HeadedBackbone, make_teacher
from fedsa_secure.models.mlp import MLP
from fedsa_secure.models.multitask import MultiTaskModel
from fedsa_secure.models.resnet import ResNet
from fedsa_secure.models.state import backbone_state, flatten_state, load_backbone_state, state_digest, unflatten_like
from fedsa_secure.models.students import STUDENT_ARCHS, make_student
from fedsa_secure.models.translator import Translator

__all__ = [
    "MLP",
    "STUDENT_ARCHS",
    "ConvNet",
    "HeadedBackbone",
    "MultiTaskModel",
    "ResNet",
    "Translator",
    "backbone_state",
    "flatten_state",
    "load_backbone_state",
    "make_student",
    "make_teacher",
    "state_digest",
    "unflatten_like",
]
