"""summary.json writing: every result carries its provenance.

The provenance block names the code that produced a result: the jaxsem version and,
when jaxsem runs from a git checkout, the commit and whether the tree had changes
(``git status --porcelain``, untracked files included). Git is asked once per process;
without git, or outside a checkout, the package version alone is recorded.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from jaxsem.io import out_dir as out_dir_lib
from jaxsem.io.cache import atomic_write_text

_PACKAGES = ("jaxsem", "jax", "jaxlib", "flax", "numpy", "gguf", "tokenizers", "safetensors")
_GIT_TIMEOUT_S = 5.0


def package_versions() -> dict[str, str | None]:
  """Versions of jaxsem and the libraries whose numbers it depends on."""
  out: dict[str, str | None] = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def _package_root() -> Path:
  """The directory holding the ``jaxsem`` package (a checkout's root, or site-packages)."""
  return Path(__file__).resolve().parents[2]


def _jaxsem_version() -> str | None:
  try:
    return metadata.version("jaxsem")
  except metadata.PackageNotFoundError:
    import jaxsem

    return getattr(jaxsem, "__version__", None)


def _git(root: Path, *args: str) -> str | None:
  """``git -C root args`` stdout, or None if git is missing, fails or takes too long."""
  try:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=_GIT_TIMEOUT_S, check=False,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # read-only: no index refresh
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout if done.returncode == 0 else None


@functools.cache
def _code_state(root: Path) -> tuple[tuple[str, Any], ...]:
  version = _jaxsem_version()
  package = (("jaxsem_version", version), ("git_commit", None), ("git_dirty", None), ("source", "package"))
  # Only a checkout whose top level is the package's parent counts: an installed copy in a
  # virtual environment that happens to sit inside some repository must not report that commit.
  if not (root / ".git").exists():
    return package
  top = _git(root, "rev-parse", "--show-toplevel")
  head = _git(root, "rev-parse", "HEAD")
  status = _git(root, "status", "--porcelain")
  if top is None or head is None or status is None or Path(top.strip()).resolve() != root.resolve():
    return package
  return (("jaxsem_version", version), ("git_commit", head.strip()), ("git_dirty", bool(status.strip())),
          ("source", "checkout"))


def code_provenance() -> dict[str, Any]:
  """The code behind a result, asked of git once per process.

  Returns:
    ``{"jaxsem_version", "git_commit", "git_dirty", "source"}``: ``source`` is
    ``"checkout"`` when jaxsem runs from a git checkout (then ``git_commit`` is HEAD and
    ``git_dirty`` whether ``git status --porcelain`` lists anything), else ``"package"``
    with ``git_commit`` and ``git_dirty`` None.
  """
  return dict(_code_state(_package_root()))


def provenance(model=None, **extra: Any) -> dict[str, Any]:
  """Provenance block: the code, versions, devices, model (file, quantization, matrices) and ``extra``."""
  import jax

  prov: dict[str, Any] = {"code": code_provenance(), "versions": package_versions(),
                          "devices": {"platform": jax.default_backend(), "count": jax.device_count(),
                                      "processes": jax.process_count()},
                          "xla_flags": os.environ.get("XLA_FLAGS", "")}
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
  doc = dict(result)
  doc["provenance"] = provenance(model, **provenance_extra)
  text = json.dumps(doc, indent=2, default=_default) + "\n"
  try:
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "summary.json", text)
  except OSError as e:
    raise out_dir_lib.write_error(out, e) from None
