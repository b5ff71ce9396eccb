"""jaxsem: semantic structure of language-model embeddings, and steering, in JAX."""

import os

# OpenBLAS (behind numpy.linalg and JAX's CPU LAPACK calls: Cholesky, LU, eigh) spins its
# worker threads while it waits for them. jaxsem's decompositions are small (D x D), and
# with other work on the cores a 640 x 640 Cholesky measured 1.1 s with the default
# threads against 3 ms with one, so one thread is the default here ($OPENBLAS_NUM_THREADS
# set by the user wins). It takes effect when jaxsem is imported before numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _cpu_compile_default() -> None:
  """XLA's elemental CPU emitter instead of its MLIR fusion emitters (``XLA_FLAGS``).

  jaxsem's analyses compile many small programs that run for milliseconds; on a 2-core CPU the
  fusion emitters took about 10% of the main job's wall time beyond the elemental emitter's, for
  the same programs (same HLO, answers equal up to float rounding) and the same forward-pass
  speed. Takes effect when jaxsem is imported before JAX starts its backends; an XLA_FLAGS that
  names the flag, or ``JAXSEM_XLA_DEFAULTS=0``, keeps XLA's choice. XLA aborts on a flag it does
  not know, so it is set only for the jaxlib releases it was checked with.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if os.environ.get("JAXSEM_XLA_DEFAULTS", "1") == "0" or "xla_cpu_use_fusion_emitters" in flags:
    return
  from importlib import metadata
  try:
    major, minor = (int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except (ValueError, metadata.PackageNotFoundError):
    return
  if (major, minor) in CHECKED_JAXLIB:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_use_fusion_emitters=false".strip()


CHECKED_JAXLIB = ((0, 10),)  # jaxlib releases checked to know --xla_cpu_use_fusion_emitters
_cpu_compile_default()

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
