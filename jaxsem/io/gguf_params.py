"""Moved: GGUF -> (ModelConfig, params) now lives in ``jaxsem.models.gguf_load`` (loader)
and ``jaxsem.models.families`` (metadata -> config, leaf table).

The format readers stay in ``jaxsem.io.gguf_file`` and ``jaxsem.io.dequant``. The old names
remain reachable here for existing callers, imported on first use only.
"""

from __future__ import annotations

import importlib
from typing import Any

_MOVED_TO = "jaxsem.models.gguf_load"


def __getattr__(name: str) -> Any:
  if name.startswith("__"):
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(_MOVED_TO), name)
