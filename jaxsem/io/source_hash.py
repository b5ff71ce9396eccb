"""Checksums of model source files, computed once per file version.

Hashing a 500 MB GGUF file takes seconds; the params cache needs its sha256 on every
load. ``file_sha256`` hashes a file once and keeps a JSON record of the result beside
the file's size, mtime, ctime, inode and device; while none of those change the record
vouches for the hash, and any change (a rewritten or replaced file) hashes it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from jaxsem.io.packages import sha256_file
from jaxsem.io.cache import atomic_write_text, cache_dir


def _stamp(path: Path) -> dict[str, Any]:
  st = path.stat()
  return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
          "inode": st.st_ino, "device": st.st_dev}


def file_sha256(path: str | os.PathLike, records: Path | None = None) -> str:
  """The sha256 of a file, hashed once and then vouched for by a JSON record of its stat.

  Args:
    path: The file.
    records: Directory of the records (default ``cache_dir()/params/sources``); a record is
      trusted only while the file's size, mtime, ctime, inode and device are unchanged.
      If it cannot be written the file is simply hashed again next time.

  Returns:
    The hex sha256 of the file's bytes.
  """
  path = Path(path).resolve()
  stamp = _stamp(path)
  record_path = None
  with contextlib.suppress(OSError, ValueError):  # no record yet, or an unreadable one: hash
    records = records if records is not None else cache_dir() / "params" / "sources"
    record_path = records / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if isinstance(record, dict) and {k: record.get(k) for k in stamp} == stamp and record.get("sha256"):
      return str(record["sha256"])
  sha = sha256_file(path)
  if record_path is not None and _stamp(path) == stamp:  # unchanged while it was hashed
    with contextlib.suppress(OSError):
      atomic_write_text(record_path, json.dumps({**stamp, "sha256": sha}, indent=2) + "\n")
  return sha


def source_files(path: str | os.PathLike) -> list[Path]:
  """The files whose bytes decide a model's params: the GGUF file, or a snapshot's
  ``config.json``, ``model.safetensors.index.json`` and ``*.safetensors`` files."""
  path = Path(path)
  if path.is_file():
    return [path]
  names = ["config.json", "model.safetensors.index.json"]
  files = [path / n for n in names if (path / n).is_file()]
  return files + sorted(p for p in path.glob("*.safetensors") if p.is_file())


def source_sha256(path: str | os.PathLike) -> str:
  """The sha256 of a GGUF file, or of a snapshot directory's file list and file hashes."""
  files = source_files(path)
  if len(files) == 1 and files[0] == Path(path):
    return file_sha256(files[0])
  listing = "".join(f"{file_sha256(f)}  {f.name}\n" for f in files)
  return hashlib.sha256(listing.encode()).hexdigest()
