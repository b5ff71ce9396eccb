"""Architecture-only model config files: ``configs/models/*.json`` and any Hugging Face config.json.

    path, kind, name = find_model_config("llama-3-70b")

The shipped files hold the public architecture numbers of models too large to run here
(no weights); ``launch.plan`` plans memory for them. An embedded model's name or a
``.gguf`` file gives the architecture from the GGUF metadata instead. This module finds
and reads the files; ``jaxsem.models.model_configs`` turns them into a ``ModelConfig``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jaxsem.errors import InputError
from jaxsem.io import assets
from jaxsem.io import safe_json

# configs/ sits beside the jaxsem package both in the repository and in an installed wheel.
MODELS_DIR = Path(__file__).parents[2] / "configs" / "models"


def model_config_names() -> tuple[str, ...]:
  """Names of the architecture files shipped in ``configs/models/`` (``"llama-3-70b"`` ...)."""
  return tuple(sorted(p.stem for p in MODELS_DIR.glob("*.json")))


def find_model_config(name_or_path: str | os.PathLike) -> tuple[Path, str, str | None]:
  """The file behind ``--model_config``.

  Args:
    name_or_path: a name from ``model_config_names()`` (``"llama-3-70b"``), an
      embedded model's name (``"gemma3-270m"``: its GGUF file), or a path to a
      ``config.json``, a directory holding one, or a ``.gguf`` file.

  Returns:
    ``(path, kind, embedded name or None)``; ``kind`` is ``"gguf"`` or ``"json"``.

  Raises:
    InputError: unknown name, or a missing file.
  """
  text = os.fspath(name_or_path)
  if text in model_config_names():
    return MODELS_DIR / f"{text}.json", "json", None
  if text in assets.MODEL_NAMES:
    return Path(assets.resolve_model(text).path), "gguf", text
  path = Path(text).expanduser()
  if path.is_dir():
    if not (path / "config.json").is_file():
      raise InputError(f"--model_config={text}: the directory has no config.json; pass a config.json file.")
    return path / "config.json", "json", None
  if path.is_file():
    return path, "gguf" if path.suffix == ".gguf" else "json", None
  if os.sep in text or text.endswith((".json", ".gguf")):
    raise InputError(f"--model_config={text}: no such file; pass an existing config.json.")
  raise InputError(f"--model_config={text!r} is not a known architecture; use one of "
                   f"{', '.join(model_config_names() + assets.MODEL_NAMES)}, or a path to a config.json.")


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
  """A config.json as a JSON object (InputError naming ``--model_config`` if it is not one)."""
  return safe_json.read_object(path, where=f"--model_config={path}", fix="pass a config.json")
