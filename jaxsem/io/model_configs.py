"""Architecture-only model configs: ``configs/models/*.json`` and any Hugging Face config.json.

    config, source = load_model_config("llama-3-70b")

The shipped files hold the public architecture numbers of models too large to run here
(no weights); ``launch.plan`` plans memory for them. An embedded model's name or a
``.gguf`` file gives the architecture from the GGUF metadata instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jaxsem.errors import InputError
from jaxsem.io import assets
from jaxsem.io import gguf_file
from jaxsem.io import gguf_params
from jaxsem.io import hf_checkpoint
from jaxsem.models.config import ModelConfig

# configs/ sits beside the jaxsem package both in the repository and in an installed wheel.
MODELS_DIR = Path(__file__).parents[2] / "configs" / "models"



def model_config_names() -> tuple[str, ...]:
  """Names of the architecture files shipped in ``configs/models/`` (``"llama-3-70b"`` ...)."""
  return tuple(sorted(p.stem for p in MODELS_DIR.glob("*.json")))


def _read_json(path: Path) -> dict[str, Any]:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"--model_config={path}: cannot be read as JSON ({e}); fix the file.") from None
  if not isinstance(data, dict):
    raise InputError(f"--model_config={path}: expected a JSON object (a config.json) at the top level.")
  return data


def _from_json(path: Path) -> tuple[ModelConfig, dict[str, Any]]:
  data = _read_json(path)
  try:
    config = hf_checkpoint.config_from_hf(data, str(path))
  except ValueError as e:  # ModelConfig's own consistency checks
    raise InputError(f"--model_config={path}: inconsistent architecture ({e}); fix the file.") from None
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
