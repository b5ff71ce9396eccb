"""Shared launcher plumbing: common flags and one-line errors for user mistakes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from absl import app
from absl import flags

from jaxsem.errors import InputError


def define_model_flags() -> None:
  """--model, --mesh, --dtype: every launcher that loads a model takes these."""
  flags.DEFINE_string("model", "gemma3-270m",
                      "Embedded model name (gemma3-270m, smollm2-135m-instruct), a .gguf file, "
                      "or a Hugging Face snapshot directory.")
  flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2,model:4 (-1 = remaining devices). "
                      "Default: all devices on the model axis.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype.")


def fail(message: str, code: int = 2) -> None:
  """Prints one line to stderr and exits non-zero (no traceback)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def run(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run(main)``, with ``InputError`` turned into a one-line error."""

  def wrapped(argv):
    try:
      main(argv)
    except InputError as e:
      fail(str(e))
    except KeyboardInterrupt:
      fail("interrupted", code=130)

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # JAX logs its backend probing (e.g. no TPU on this host) at INFO; keep launches quiet.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  app.run(wrapped)
