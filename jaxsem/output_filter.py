"""Dropping some lines from what a process writes to a file descriptor, as it is written.

gloo (JAX's CPU collectives) writes ``[Gloo] Rank 0 is connected to 1 peer ranks. ...`` straight to
file descriptor 1 from C++ when a multi-process run connects; ``jaxsem.distributed`` points that
descriptor through an ``OutputFilter`` so the user never sees those lines.
"""

from __future__ import annotations

import os
import sys
import threading

# Seconds to wait, at exit, for the output filter to copy what is left.
_DRAIN_S = 5.0


class LineDropper:
  """Drops, from a stream of bytes, every run from ``prefix`` through the next newline; passes every other
  byte unchanged.

  A run is dropped wherever it starts, not only at the start of a line: another thread (gloo's) may write
  its whole line between a Python ``print``'s text and its newline when output is unbuffered, and
  ``"before 0" + "[Gloo] Rank 0 ...\\n" + "\\n"`` must come out as ``"before 0\\n"``. Bytes are passed on
  as soon as they cannot begin a dropped run (a line redrawn in place with ``"\\r"`` and no newline comes
  out at once); only a tail that matches the start of ``prefix`` waits for the decision.

  Args:
    prefix: the start of the runs to drop.
  """

  def __init__(self, prefix: bytes):
    self.prefix = bytes(prefix)
    self._held = b""  # the stream's last bytes, while they still match the start of the prefix
    self._dropping = False  # inside a dropped run, until its newline

  def feed(self, data: bytes) -> bytes:
    """The bytes of ``data`` (and of earlier calls, held back undecided) to pass on now."""
    data, out = self._held + bytes(data), bytearray()
    self._held, i = b"", 0
    while i < len(data):
      if self._dropping:
        end = data.find(b"\n", i)
        if end < 0:
          return bytes(out)
        i, self._dropping = end + 1, False
        continue
      start = data.find(self.prefix, i)
      if start >= 0:
        out += data[i:start]
        i, self._dropping = start + len(self.prefix), True
        continue
      keep = len(data)
      for n in range(min(len(self.prefix) - 1, len(data) - i), 0, -1):
        if data.endswith(self.prefix[:n]):
          keep = len(data) - n
          break
      out += data[i:keep]
      self._held = data[keep:]
      break
    return bytes(out)

  def flush(self) -> bytes:
    """What is still held back (the start of an unfinished run), at the end of the stream."""
    held, self._held = self._held, b""
    return held


class OutputFilter:
  """Drops the runs from ``prefix`` through the next newline (``LineDropper``) from everything this process
  writes to file descriptor ``fd``.

  ``fd`` is pointed at a pipe (a pseudo-terminal when it was a terminal, so that ``isatty`` keeps its
  answer), and a daemon thread copies every other byte, as it arrives, to where ``fd`` pointed before.
  Python's ``sys.stdout``/``sys.stderr`` and C++ code write to ``fd`` as before and go through it.
  ``close`` points ``fd`` back and waits until what was written before is copied.

  Args:
    fd: the file descriptor to filter (1 or 2).
    prefix: the start of the lines to drop.
  """

  def __init__(self, fd: int, prefix: bytes):
    self.fd, self.dropper = fd, LineDropper(prefix)
    self.target = os.dup(fd)  # the original destination (not inherited by child processes)
    if os.isatty(fd):
      import fcntl
      import termios
      import tty

      source, sink = os.openpty()
      tty.setraw(sink)  # no newline translation: bytes pass unchanged
      try:
        fcntl.ioctl(sink, termios.TIOCSWINSZ, fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
      except OSError:
        pass
    else:
      source, sink = os.pipe()
    os.dup2(sink, fd)
    os.close(sink)
    self._source = source
    self._lock = threading.Lock()
    self._closed = False
    self._thread = threading.Thread(target=self._pump, name="jaxsem-output-filter", daemon=True)
    self._thread.start()

  def _write(self, data: bytes) -> None:
    view = memoryview(data)
    while view:
      try:
        view = view[os.write(self.target, view):]
      except InterruptedError:
        continue
      except OSError:
        return  # the destination is gone (a closed terminal): nothing can be shown any more

  def _pump(self) -> None:
    while True:
      try:
        data = os.read(self._source, 1 << 16)
      except InterruptedError:
        continue
      except OSError:  # EIO: every writer of the pseudo-terminal closed it
        data = b""
      if not data:
        break
      self._write(self.dropper.feed(data))
    self._write(self.dropper.flush())
    os.close(self._source)

  def close(self, timeout_s: float = _DRAIN_S) -> None:
    """Points ``fd`` back at its destination and copies what is left (child processes that still hold the
    pipe are waited for ``timeout_s`` at most)."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # noqa: BLE001 - a broken stream must not stop the others
        pass
    os.dup2(self.target, self.fd)  # this process's last write end of the pipe closes
    self._thread.join(timeout_s)
