"""Architecture-only model configs: ``configs/models/*.json`` and any Hugging Face config.json.

    config, source = load_model_config("llama-3-70b")

The shipped files hold the public architecture numbers of models too large to run here
(no weights); ``launch.plan`` plans memory for them. An embedded model's name or a
``.gguf`` file gives the architecture from the GGUF metadata instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jaxsem.errors import InputError
from jaxsem.io import assets
from jaxsem.io import gguf_file
from jaxsem.io import gguf_params
from jaxsem.io import hf_checkpoint
from jaxsem.io import safe_json
from jaxsem.models.config import ModelConfig

# configs/ sits beside the jaxsem package both in the repository and in an installed wheel.
MODELS_DIR = Path(__file__).parents[2] / "configs" / "models"



def model_config_names() -> tuple[str, ...]:
  """Names of the architecture files shipped in ``configs/models/`` (``"llama-3-70b"`` ...)."""
  return tuple(sorted(p.stem for p in MODELS_DIR.glob("*.json")))


def _from_json(path: Path) -> tuple[ModelConfig, dict[str, Any]]:
  where = f"--model_config={path}"
  data = safe_json.read_object(path, where=where, fix="pass a config.json")
  # config_from_hf turns every inconsistency (3 kv heads for 4 query heads ...) into one InputError.
  config = hf_checkpoint.config_from_hf(data, where)
  return config, {"config_file": str(path), "hf_name": data.get("_name_or_path")}


def _from_gguf(path: Path, name: str | None = None) -> tuple[ModelConfig, dict[str, Any]]:
  with gguf_file.GGUFFile(path) as f:
    config = gguf_params.read_config(f)
  return config, {"config_file": str(path), "embedded_model": name}


def load_model_config(name_or_path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
  """The architecture behind ``--model_config``, and where it came from.

  Args:
    name_or_path: a name from ``model_config_names()`` (``"llama-3-70b"``), an
      embedded model's name (``"gemma3-270m"``: its GGUF metadata), or a path to a
      ``config.json``, a directory holding one, or a ``.gguf`` file.

  Returns:
    ``(config, source)``; ``source`` names the file (and the Hugging Face repository
    the config states, if any).

  Raises:
    InputError: unknown name, missing or malformed file, unsupported architecture.
  """
  text = os.fspath(name_or_path)
  if text in model_config_names():
    return _from_json(MODELS_DIR / f"{text}.json")
  if text in assets.MODEL_NAMES:
    return _from_gguf(assets.resolve_model(text).path, text)
  path = Path(text).expanduser()
  if path.is_dir():
    if not (path / "config.json").is_file():
      raise InputError(f"--model_config={text}: the directory has no config.json; pass a config.json file.")
    return _from_json(path / "config.json")
  if path.is_file():
    return _from_gguf(path) if path.suffix == ".gguf" else _from_json(path)
  if os.sep in text or text.endswith((".json", ".gguf")):
    raise InputError(f"--model_config={text}: no such file; pass an existing config.json.")
  raise InputError(f"--model_config={text!r} is not a known architecture; use one of "
                   f"{', '.join(model_config_names() + assets.MODEL_NAMES)}, or a path to a config.json.")
