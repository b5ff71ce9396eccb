"""Model families as data: each family file maps its checkpoints' metadata to a
``ModelConfig`` and declares its parameter leaves (rows of ``leaf_table.ALL``).

    family = families.get(config.family)
    for leaf in family.leaves(config): ...   # path, shape, axes, HF/GGUF names, converter

Adding a family: write ``families/<name>.py`` defining ``FAMILY`` (see ``qwen3.py``); every
module of this package that defines one is registered. Then add a tiny random Hugging Face
config to ``tests/hf_fixtures.py`` (the parity tests then cover it).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

import numpy as np

from jaxsem.errors import InputError
from jaxsem.models.config import ModelConfig
from jaxsem.models.families import gguf_config
from jaxsem.models.families.family import Family
from jaxsem.models.families.leaf_table import Leaf

__all__ = ["Family", "Leaf", "FAMILIES", "get", "leaves", "config_from_hf", "config_from_gguf",
           "SUPPORTED_MODEL_TYPES", "SUPPORTED_ARCHITECTURES"]

# Every module of this package; llama (the plain core the others vary) first, then by name.
_NAMES = sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda n: (n != "llama", n))
_MODULES = [importlib.import_module(f"{__name__}.{name}") for name in _NAMES]
FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES
                                if isinstance(getattr(m, "FAMILY", None), Family)}
_BY_HF_TYPE = {t: f for f in FAMILIES.values() for t in f.hf_model_types}
_BY_GGUF_ARCH = {a: f for f in FAMILIES.values() for a in f.gguf_architectures}
SUPPORTED_MODEL_TYPES = tuple(_BY_HF_TYPE)
SUPPORTED_ARCHITECTURES = tuple(_BY_GGUF_ARCH)


def get(name: str) -> Family:
  """The family called ``name`` (a ``ModelConfig.family`` value)."""
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
  return FAMILIES[name]


def leaves(config) -> tuple[Leaf, ...]:
  """The parameter leaves of ``config``, in ``params.param_shapes`` order."""
  return get(config.family).leaves(config)


def config_from_hf(config_json: dict[str, Any], path: str) -> ModelConfig:
  """Builds the ModelConfig described by a Hugging Face ``config.json``.

  Args:
    config_json: the parsed config.json.
    path: where it came from, for error messages.

  Returns:
    The ModelConfig; for gemma3 multimodal configs, that of the text model.

  Raises:
    InputError: unsupported ``model_type`` or architecture feature, a missing field, a
      size that is not a positive whole number, or sizes that contradict each other.
  """
  model_type = config_json.get("model_type")
  if model_type not in _BY_HF_TYPE:
    raise InputError(f"{path}: model_type {model_type!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
  try:
    return ModelConfig(**_BY_HF_TYPE[model_type].config_from_hf(config_json, path))
  except ValueError as e:  # ModelConfig's consistency checks, or float() of a non-number
    raise InputError(f"{path}: inconsistent architecture ({e}); fix config.json.") from None
  except (TypeError, AttributeError, KeyError) as e:  # a field of the wrong JSON type
    raise InputError(f"{path}: a field of config.json has the wrong type ({type(e).__name__}: {e}); "
                     "fix config.json.") from None


def config_from_gguf(metadata: Mapping[str, Any], path: str, tensors: Mapping[str, Any] | None = None,
                     rope_freqs: np.ndarray | None = None) -> ModelConfig:
  """Builds the ModelConfig a GGUF file describes.

  Args:
    metadata: ``GGUFFile.metadata``.
    path: the file, for error messages.
    tensors: ``GGUFFile.tensors``; decides tied embeddings (an ``output.weight`` is
      present or not), llama Q/K/V biases and the vocabulary size. Without it the model
      is taken as tied and bias-free and the vocabulary comes from the token list.
    rope_freqs: contents of a ``rope_freqs.weight`` tensor (Llama 3.1 RoPE scaling).

  Raises:
    InputError: unknown architecture, missing, malformed or unsupported metadata.
  """
  arch = metadata.get("general.architecture")
  if arch not in _BY_GGUF_ARCH:
    raise InputError(f"{path}: architecture {arch!r} is not supported; supported GGUF architectures"
                     f" are {', '.join(SUPPORTED_ARCHITECTURES)}.")
  meta = gguf_config.Meta(metadata, path, arch, tensors)
  try:
    fields = _BY_GGUF_ARCH[arch].config_from_gguf(meta, rope_freqs)
  except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
    raise InputError(f"{path}: malformed GGUF metadata ({type(e).__name__}: {str(e)[:160]}); the file is "
                     "corrupt.") from None
  try:
    return ModelConfig(**fields)
  except ValueError as e:
    raise InputError(f"{path}: inconsistent {arch} metadata: {e}.") from None
