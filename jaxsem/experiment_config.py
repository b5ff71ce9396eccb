"""Experiment configs (``configs/experiments/*.py``): finding them, and option defaults from them.

Every default is written once, in ``configs/experiments/base.py``; the experiment files
(``quick``, ``paper``, ``align``, ``structure``, ``steer``, ``sweep``) build on its
sections, and the library's option dataclasses take their field defaults from the same
sections through ``config_defaults``. A config file is Python with a ``get_config()``
returning an ``ml_collections.ConfigDict``, the convention of flax examples and big_vision.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path
from typing import Any

from jaxsem.errors import InputError

_PACKAGE = "configs.experiments"


def directory() -> Path:
  """The folder holding the shipped experiment configs."""
  return Path(importlib.import_module(_PACKAGE).__file__).parent


def names() -> list[str]:
  """The shipped experiment configs, by name (``quick``, ``paper``, ...)."""
  return sorted(p.stem for p in directory().glob("*.py") if not p.stem.startswith("_") and p.stem != "base")


def path_of(name: str) -> str:
  """The file of the shipped experiment config ``name``."""
  path = directory() / f"{name}.py"
  if not path.is_file():
    raise InputError(f"no experiment config {name!r}; the shipped ones are {', '.join(names())}.")
  return str(path)


def get_config(name: str):
  """The ``ConfigDict`` of the shipped experiment config ``name``."""
  return importlib.import_module(f"{_PACKAGE}.{name}").get_config()


@functools.cache
def _section(name: str) -> dict[str, Any]:
  base = importlib.import_module(f"{_PACKAGE}.base")
  return getattr(base, name)().to_dict()


def plain(value: Any) -> Any:
  """A config value as the option dataclasses hold it: lists become tuples, recursively."""
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def config_defaults(section: str):
  """Class decorator: each annotated field's default is ``base.<section>()``'s value of that name.

  Put it under ``@dataclasses.dataclass``. Every field must have a value in the section
  and every value of the section a field: a field added on one side only fails at import.
  """

  def decorate(cls):
    values = _section(section)
    fields = [name for name in cls.__dict__.get("__annotations__", {}) if not name.startswith("_")]
    missing = sorted(set(fields) - set(values))
    extra = sorted(set(values) - set(fields))
    if missing or extra:
      raise TypeError(f"{cls.__name__} and configs/experiments/base.py {section}() disagree: fields without "
                      f"a default {missing}, defaults without a field {extra}")
    for name in fields:
      setattr(cls, name, plain(values[name]))
    return cls

  return decorate


def options(cls, section) -> Any:
  """An option dataclass from a config section (a ``ConfigDict`` or mapping)."""
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise InputError(f"--config: {cls.__name__} has no option {unknown[0]!r}; use one of "
                     f"{', '.join(sorted(known))}.")
  return cls(**{k: plain(v) for k, v in values.items()})
