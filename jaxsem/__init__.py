"""jaxsem: semantic structure of language-model embeddings, and steering, in JAX."""

from jaxsem.errors import InputError
from jaxsem.models.config import ModelConfig
from jaxsem.models.forward import ForwardOutput, forward, forward_jit
from jaxsem.models.interventions import Intervention
from jaxsem.models.load import load
from jaxsem.models.model import Model

__version__ = "0.1.0"

__all__ = [
    "ForwardOutput",
    "InputError",
    "Intervention",
    "Model",
    "ModelConfig",
    "forward",
    "forward_jit",
    "load",
]
