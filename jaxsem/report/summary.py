"""summary.json writing: every result carries its provenance."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io.cache import atomic_write_text

_PACKAGES = ("jaxsem", "jax", "jaxlib", "flax", "numpy", "gguf", "tokenizers", "safetensors")


def package_versions() -> dict[str, str | None]:
  """Versions of jaxsem and the libraries whose numbers it depends on."""
  out: dict[str, str | None] = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def provenance(model=None, **extra: Any) -> dict[str, Any]:
  """Provenance block: model (file, quantization, matrices), versions, and ``extra``."""
  import jax

  prov: dict[str, Any] = {"versions": package_versions(),
                          "devices": {"platform": jax.default_backend(), "count": jax.device_count(),
                                      "processes": jax.process_count()}}
  if model is not None:
    prov["model"] = model.provenance
  prov.update(extra)
  return prov


def _default(obj):
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, Path):
    return str(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write(out_dir: str | os.PathLike, result: dict[str, Any], *, model=None, **provenance_extra) -> Path:
  """Writes ``out_dir/summary.json`` atomically with a ``provenance`` block added."""
  out = Path(out_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise InputError(f"--out_dir={out}: cannot create it ({e.strerror}); choose a writable directory.") from None
  doc = dict(result)
  doc["provenance"] = provenance(model, **provenance_extra)
  try:
    return atomic_write_text(out / "summary.json", json.dumps(doc, indent=2, default=_default) + "\n")
  except OSError as e:
    raise InputError(f"--out_dir={out}: cannot write summary.json ({e.strerror}).") from None
