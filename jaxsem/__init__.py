"""jaxsem: semantic structure of language-model embeddings, and steering, in JAX."""

import os

# OpenBLAS (behind numpy.linalg and JAX's CPU LAPACK calls: Cholesky, LU, eigh) spins its
# worker threads while it waits for them. jaxsem's decompositions are small (D x D), and
# with other work on the cores a 640 x 640 Cholesky measured 1.1 s with the default
# threads against 3 ms with one, so one thread is the default here ($OPENBLAS_NUM_THREADS
# set by the user wins). It takes effect when jaxsem is imported before numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
