"""Architecture-only model configs: ``--model_config`` (a shipped name, a config.json, a
GGUF file or an embedded model) as a ``ModelConfig``, with no weights loaded.

    config, source = load_model_config("llama-3-70b")

``jaxsem.io.model_configs`` finds and reads the file; the model families map it.
"""

from __future__ import annotations

import os
from typing import Any

from jaxsem.io import gguf_file
from jaxsem.io import model_configs as files
from jaxsem.models import families
from jaxsem.models import gguf_load
from jaxsem.models.config import ModelConfig

model_config_names = files.model_config_names


def load_model_config(name_or_path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
  """The architecture behind ``--model_config``, and where it came from.

  Args:
    name_or_path: a name from ``model_config_names()`` (``"llama-3-70b"``), an
      embedded model's name (``"gemma3-270m"``: its GGUF metadata), or a path to a
      ``config.json``, a directory holding one, or a ``.gguf`` file.

  Returns:
    ``(config, source)``; ``source`` names the file (and the Hugging Face repository
    the config states, if any, or the embedded model).

  Raises:
    InputError: unknown name, missing or malformed file, unsupported architecture.
  """
  path, kind, name = files.find_model_config(name_or_path)
  if kind == "gguf":
    with gguf_file.GGUFFile(path) as f:
      config = gguf_load.read_config(f)
    return config, {"config_file": str(path), "embedded_model": name}
  data = files.read_config_json(path)
  # config_from_hf turns every inconsistency (3 kv heads for 4 query heads ...) into one InputError.
  config = families.config_from_hf(data, f"--model_config={path}")
  return config, {"config_file": str(path), "hf_name": data.get("_name_or_path")}
