"""Student/teacher architectures, the node-local translator, and backbone state helpers."""

from fedsa_secure.models.cnn import ConvNet, make_student, make_teacher
from fedsa_secure.models.state import backbone_state, flatten_state, load_backbone_state, unflatten_like
from fedsa_secure.models.translator import Translator

__all__ = [
    "ConvNet",
    "Translator",
    "backbone_state",
    "flatten_state",
    "load_backbone_state",
    "make_student",
    "make_teacher",
    "unflatten_like",
]
