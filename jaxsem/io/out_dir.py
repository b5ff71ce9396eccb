"""An output directory owned by one run at a time, and one-line errors for unwritable ones.

    with out_dir.claim("out/sweep", job="sweep", inputs={"scales": "wordnet", ...}):
      ...  # load the model, compute and write

``claim`` creates the directory, checks that it can be written, and takes an exclusive
``flock`` on ``out_dir/.jaxsem.lock``. A second run on the same directory is refused at
once with the first run's pid and host. The kernel drops the lock when its holder
exits, however it exits (``kill -9`` included), so a killed run never leaves a stale
lock behind. If the run fails before anything else was written into a directory that
``claim`` created, the directory is removed again: a user error leaves nothing behind.

Launchers claim their directory before they load a model, naming their ``job`` and
``inputs`` (the flag values that decide the outputs). These are kept in
``out_dir/.jaxsem-run.json``, and a directory that holds *another run's* outputs is
refused unless ``overwrite`` is given. Another run is one whose record names another
job or other inputs; a directory without a record but with a ``summary.json`` (written
by an older jaxsem, or copied there) is another run's when that summary names another
job. The same job with the same inputs is the same run: it resumes (the sweep's
committed chunks, the steering checkpoint) or writes its outputs again. With
``overwrite`` the record is replaced and the earlier ``summary.json`` removed at once,
so that the directory never pairs one run's record with another run's summary;
checkpoints of the earlier run are replaced where their fingerprints differ.

Inside the block, a write that fails (full disk, no permission) is reported as one
line naming the directory the user gave, not the inner file, and it says "rerun to
resume" only for a resumable run that has committed work there.

Under multi-process runs only process 0 claims the directory (the others write
nothing); its verdict is shared with every process so that all stop together.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxsem import distributed
from jaxsem.errors import InputError
from jaxsem.io.cache import atomic_write_text

LOCK_NAME = ".jaxsem.lock"
RECORD_NAME = ".jaxsem-run.json"
SUMMARY_NAME = "summary.json"


class WriteError(InputError):
  """A file under an output directory could not be written; ``oserror`` is the cause."""

  def __init__(self, message: str, oserror: OSError):
    super().__init__(message)
    self.oserror = oserror


def write_error(path: str | os.PathLike, e: OSError, what: str = "--out_dir",
                committed: bool = True) -> WriteError:
  """One-line error for an ``OSError`` while writing under ``path`` (full disk, no permission).

  Args:
    path: the directory to name (the one the user gave).
    e: the error.
    what: the flag that gave ``path``.
    committed: whether work already committed there lets the same command resume.
  """
  reason = e.strerror or str(e)
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    fix = "free some space or choose another directory"
  elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    fix = "choose a directory you can write to"
  else:
    fix = "check the directory"
  resume = " Work already committed there is kept: rerun the same command to resume." if committed else ""
  return WriteError(f"{what}={path}: cannot write there ({reason}); {fix}.{resume}", e)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
_WRITE_ERRNOS = {os.strerror(code): code for code in (*_DISK_FULL, errno.EACCES, errno.EPERM, errno.EIO)}
# "--out_dir=<dir>: cannot ... (<reason>)...": how this module, summary.json's writer and
# the zarr writer word a failed write (possibly relayed as text from process 0).
_INNER = re.compile(r"^--out_dir=(?P<dir>.+?): cannot [^()]*\((?P<reason>[^()]*)\)")


def _inside(inner: str, path: Path) -> bool:
  return Path(inner).resolve().is_relative_to(path.resolve())


def _write_cause(e: BaseException, path: Path) -> OSError | None:
  """The ``OSError`` behind a failed write under ``path``, or None for any other error.

  That is ``e`` itself (a full or read-only disk, or any error on a file under
  ``path``), a ``WriteError``'s cause, or, for a one-line error a writer already made
  about a directory under ``path`` (``--out_dir=<inner dir>: cannot ... (<reason>)``),
  the error its reason names.
  """
  if isinstance(e, OSError):
    inside = isinstance(e.filename, str) and _inside(e.filename, path)
    return e if e.errno in _DISK_FULL or inside else None
  match = _INNER.match(str(e)) if isinstance(e, InputError) else None
  if not match or not _inside(match["dir"], path):
    return None
  if isinstance(e, WriteError):
    return e.oserror
  code = _WRITE_ERRNOS.get(match["reason"])
  return None if code is None else OSError(code, match["reason"])


def _has_committed(path: Path) -> bool:
  """Whether ``path`` holds anything besides the claim's own files and temporary files."""
  try:
    return any(p.name not in (LOCK_NAME, RECORD_NAME) and not p.name.startswith(".") for p in path.iterdir())
  except OSError:
    return False


def _holder(lock_path: Path) -> str:
  try:
    info = json.loads(lock_path.read_text() or "{}")
  except (OSError, ValueError):
    return "another jaxsem run"
  return f"jaxsem run pid {info.get('pid')} on {info.get('host')} (started {info.get('started')})"


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError, RecursionError):
    return {}  # unreadable: counts as another run's


def _other_job(doc: Any, name: str) -> str:
  other = doc.get("job") if isinstance(doc, dict) else None
  return f"another run (job {other!r})" if isinstance(other, str) else f"another run (unreadable {name})"


def _other_run(path: Path, job: str, inputs: dict[str, Any]) -> str | None:
  """What makes ``path`` another run's (see the module docstring), or None when it is not."""
  record = _read_json(path / RECORD_NAME)
  if record is None:
    summary = _read_json(path / SUMMARY_NAME)
    if summary is None or (isinstance(summary, dict) and summary.get("job") == job):
      return None
    return _other_job(summary, SUMMARY_NAME)
  if not isinstance(record, dict) or record.get("job") != job:
    return _other_job(record, RECORD_NAME)
  old = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
  changed = sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))
  if not changed:
    return None
  named = ", ".join(f"--{k}" for k in changed[:3]) + (", ..." if len(changed) > 3 else "")
  return f"another run with other inputs ({named} differ{'s' if len(changed) == 1 else ''})"


def _take_over(path: Path, job: str, inputs: dict[str, Any], overwrite: bool) -> str | None:
  """Checks that ``path`` is not another run's (or, with ``overwrite``, replaces it) and
  records this run; returns an error message or None."""
  other = _other_run(path, job, inputs)
  if other is not None and not overwrite:
    return (f"--out_dir={path} holds the outputs of {other}; pass --overwrite to replace them, or choose "
            f"another --out_dir.")
  if other is not None:
    (path / SUMMARY_NAME).unlink(missing_ok=True)
  atomic_write_text(path / RECORD_NAME, json.dumps({"job": job, "inputs": inputs}, indent=1, sort_keys=True))
  return None


def _try_claim(path: Path, job: str | None, inputs: dict[str, Any], overwrite: bool
               ) -> tuple[int | None, bool, str | None]:
  """(lock fd, created the directory, error message) on this process."""
  if path.exists() and not path.is_dir():
    return None, False, f"--out_dir={path} is a file, not a directory; choose another --out_dir."
  created = not path.exists()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    return None, False, str(write_error(path, e, committed=False))
  lock_path = path / LOCK_NAME
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    _cleanup(path, None, created)
    return None, False, str(write_error(path, e, committed=False))
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None, False, (f"--out_dir={path} is in use by {_holder(lock_path)}; wait for it to finish or "
                         f"choose another --out_dir.")
  try:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    error = None if job is None else _take_over(path, job, inputs, overwrite)
  except OSError as e:
    _cleanup(path, fd, created)
    return None, False, str(write_error(path, e, committed=False))
  if error is not None:
    _cleanup(path, fd, created)
    return None, False, error
  return fd, created, None


def _cleanup(path: Path, fd: int | None, created: bool) -> None:
  """Removes the claim's files and, if this run created ``path`` and left nothing else, ``path``."""
  if created:
    for name in (RECORD_NAME, LOCK_NAME):
      with contextlib.suppress(OSError):
        (path / name).unlink()
    with contextlib.suppress(OSError):
      path.rmdir()  # only succeeds when nothing else was written
  if fd is not None:
    with contextlib.suppress(OSError):
      os.close(fd)


@contextlib.contextmanager
def claim(out_dir: str | os.PathLike, *, job: str | None = None, inputs: dict[str, Any] | None = None,
          overwrite: bool = False, resumable: bool = False) -> Iterator[Path]:
  """Holds ``out_dir`` for this run (see the module docstring).

  Args:
    out_dir: the directory, as the user gave it.
    job: the launcher's job (``"align"``, ``"sweep"``, ...); None claims the directory
      without checking or recording whose outputs it holds.
    inputs: JSON-able flag values that decide the outputs (compared with the record).
    overwrite: replace another run's outputs instead of refusing.
    resumable: the run resumes from work committed in ``out_dir`` (the sweep, steering),
      so a failed write may tell the user to rerun.

  Raises:
    InputError: on every process, when process 0 cannot create or write ``out_dir``,
      another run holds it, or it holds another run's outputs (without ``overwrite``);
      and when a write inside the block fails, naming ``out_dir``.
  """
  path = Path(out_dir)
  inputs = json.loads(json.dumps(inputs or {}, sort_keys=True))  # compare as stored
  fd, created, error = (None, False, None)
  if distributed.is_main():
    fd, created, error = _try_claim(path, job, inputs, overwrite)
  distributed.agree(error)
  ok = False
  try:
    yield path
    ok = True
  except (OSError, InputError) as e:
    cause = _write_cause(e, path)
    if cause is None:
      raise
    raise write_error(out_dir, cause, committed=resumable and _has_committed(path)) from None
  finally:
    if distributed.is_main():
      if ok:
        with contextlib.suppress(OSError):
          os.close(fd)
      else:
        _cleanup(path, fd, created)
