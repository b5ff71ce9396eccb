"""The jaxsem cache directory and crash-safe file writes.

Everything jaxsem derives from an installed package (a GGUF file joined from parts, a
verification record) lives under ``cache_dir()``. Files there are only ever written
through ``atomic_write``: the bytes go to a temporary file in the same directory, are
flushed to disk, and the temporary file is then renamed over the final name. A reader
therefore sees either the old complete file or the new complete file, never a
half-written one, even if the writer is killed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from jaxsem.errors import InputError

CACHE_ENV = "JAXSEM_CACHE"
TEMP_SUFFIX = ".tmp"


def cache_dir(create: bool = True) -> Path:
  """Returns the jaxsem cache directory.

  Args:
    create: Create the directory (and its parents) if it does not exist yet.

  Returns:
    ``$JAXSEM_CACHE`` if that variable is set and non-empty, else ``~/.cache/jaxsem``.

  Raises:
    InputError: If the directory cannot be created.
  """
  configured = os.environ.get(CACHE_ENV, "").strip()
  path = Path(configured).expanduser() if configured else Path.home() / ".cache" / "jaxsem"
  if create:
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise InputError(
          f"Cannot create the jaxsem cache directory {path} ({e.strerror}); "
          f"set {CACHE_ENV} to a writable directory."
      ) from e
  return path


def temp_prefix(path: Path) -> str:
  """Returns the name prefix of the temporary files ``atomic_write`` makes for ``path``."""
  return f".{path.name}."


def _fsync_dir(directory: Path) -> None:
  """Flushes a directory entry (a rename) to disk where the platform allows it."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def _replace_on_success(path: str | os.PathLike[str], file_mode: int, suffix: str) -> Iterator[Path]:
  """Yields an empty temporary file beside ``path``; renames it over ``path`` if the block succeeds.

  The caller's block writes (and fsyncs) the file. On success it gets ``file_mode`` and is
  renamed over ``path``, then the directory is fsynced; on any failure it is removed and
  the exception propagates, ``path`` untouched.
  """
  target = Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=suffix)
  os.close(fd)
  try:
    yield Path(temp_name)
    os.chmod(temp_name, file_mode)
    os.replace(temp_name, target)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temp_name)
    raise
  _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", file_mode: int = 0o644) -> Iterator[IO]:
  """Writes a file so that its final name only ever holds complete contents.

  Usage::

    with atomic_write(target) as f:
      f.write(data)

  The context yields a file object for a temporary file in the same directory as
  ``path``. When the block exits normally the file is flushed, fsynced, given
  ``file_mode`` and renamed over ``path`` with ``os.replace``. When the block raises,
  the temporary file is removed, ``path`` is left untouched and the exception
  propagates.

  Args:
    path: The final file name. Its directory is created if needed.
    mode: ``"wb"`` for bytes or ``"w"`` for text (UTF-8).
    file_mode: Permission bits of the finished file.

  Yields:
    The open temporary file.
  """
  if mode not in ("wb", "w"):
    raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
  encoding = None if "b" in mode else "utf-8"
  # Temporary names end in TEMP_SUFFIX here, so stale ones can be found by that suffix.
  with _replace_on_success(path, file_mode, suffix=TEMP_SUFFIX) as temp_name:
    with open(temp_name, mode, encoding=encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], file_mode: int = 0o644) -> Iterator[Path]:
  """Like ``atomic_write``, for writers that take a file name rather than a file object.

  Usage::

    with atomic_path("out/figure.png") as tmp:
      fig.savefig(tmp)

  Yields a temporary name in the same directory that keeps ``path``'s extension (so that
  writers choosing a format by extension, such as matplotlib's ``savefig``, still do).
  When the block exits normally the file is fsynced, given ``file_mode`` and renamed
  over ``path``; when the block (or the rename) fails, the temporary file is removed,
  ``path`` is left untouched and the exception propagates.

  Args:
    path: The final file name. Its directory is created if needed.
    file_mode: Permission bits of the finished file.

  Yields:
    The temporary file's path (the file exists and is empty).
  """
  with _replace_on_success(path, file_mode, suffix=TEMP_SUFFIX + Path(path).suffix) as temp_name:
    yield temp_name
    fd = os.open(temp_name, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
  """Atomically replaces ``path`` with ``data``; returns the path."""
  with atomic_write(path, "wb") as f:
    f.write(data)
  return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
  """Atomically replaces ``path`` with ``text`` encoded as UTF-8; returns the path."""
  with atomic_write(path, "w") as f:
    f.write(text)
  return Path(path)
