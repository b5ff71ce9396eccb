"""An output directory owned by one run at a time, and one-line errors for unwritable ones.

    with out_dir.claim("out/sweep"):
      ...  # compute and write

``claim`` creates the directory, checks that it can be written, and takes an exclusive
``flock`` on ``out_dir/.jaxsem.lock``. A second run on the same directory is refused at
once with the first run's pid and host. The kernel drops the lock when its holder
exits, however it exits (``kill -9`` included), so a killed run never leaves a stale
lock behind. If the run fails before anything else was written into a directory that
``claim`` created, the directory is removed again: a user error leaves nothing behind.

Under multi-process runs only process 0 claims the directory (the others write
nothing); its verdict is shared with every process so that all stop together.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from jaxsem import distributed
from jaxsem.errors import InputError

LOCK_NAME = ".jaxsem.lock"


def write_error(path: str | os.PathLike, e: OSError, what: str = "--out_dir") -> InputError:
  """One-line error for an ``OSError`` while writing under ``path`` (full disk, no permission)."""
  reason = e.strerror or str(e)
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    fix = "free some space or choose another directory"
  elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    fix = "choose a directory you can write to"
  else:
    fix = "check the directory"
  return InputError(f"{what}={path}: cannot write there ({reason}); {fix}. Work already committed there is "
                    f"kept: rerun the same command to resume.")


def _holder(lock_path: Path) -> str:
  try:
    info = json.loads(lock_path.read_text() or "{}")
  except (OSError, ValueError):
    return "another jaxsem run"
  return f"jaxsem run pid {info.get('pid')} on {info.get('host')} (started {info.get('started')})"


def _try_claim(path: Path) -> tuple[int | None, bool, str | None]:
  """(lock fd, created the directory, error message) on this process."""
  if path.exists() and not path.is_dir():
    return None, False, f"--out_dir={path} is a file, not a directory; choose another --out_dir."
  created = not path.exists()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    return None, False, str(write_error(path, e))
  lock_path = path / LOCK_NAME
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    _cleanup(path, None, created)
    return None, False, str(write_error(path, e))
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
  except OSError as e:
    _cleanup(path, fd, created)
    return None, False, str(write_error(path, e))
  return fd, created, None


def _cleanup(path: Path, fd: int | None, created: bool) -> None:
  """Removes the lock file and, if this run created ``path`` and left nothing else, ``path``."""
  if created:
    with contextlib.suppress(OSError):
      (path / LOCK_NAME).unlink()
    with contextlib.suppress(OSError):
      path.rmdir()  # only succeeds when nothing else was written
  if fd is not None:
    with contextlib.suppress(OSError):
      os.close(fd)


@contextlib.contextmanager
def claim(out_dir: str | os.PathLike) -> Iterator[Path]:
  """Holds ``out_dir`` for this run (see the module docstring).

  Raises:
    InputError: on every process, when process 0 cannot create or write ``out_dir``
      or another run holds it.
  """
  path = Path(out_dir)
  fd, created, error = (None, False, None)
  if distributed.is_main():
    fd, created, error = _try_claim(path)
  distributed.agree(error)
  ok = False
  try:
    yield path
    ok = True
  finally:
    if distributed.is_main():
      if ok:
        with contextlib.suppress(OSError):
          os.close(fd)
      else:
        _cleanup(path, fd, created)
