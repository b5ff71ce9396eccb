"""Progress lines with rate and ETA for long work (sweeps, grids, loading).

    progress = Progress("sweep wordnet", total=262144, unit="tokens")
    for done in ...:
      progress.update(done)
    progress.close()

prints, at most every ``every`` seconds and once at the end, lines such as

    sweep wordnet: 131072/262144 tokens (50.0%) 41.2k tokens/s, 3.2 s elapsed, ETA 3.2 s

to stderr. Under multi-process runs only process 0 prints. On an interactive terminal
(``stream.isatty()``) the line is redrawn in place (``"\\r"``) and ends with a newline once
the work is done; otherwise (CI, a redirected stream) every update is a line of its own.

Library functions take ``progress: bool`` (default quiet, as ``jaxsem.load``) and build
their reporter with ``Progress.maybe``; kernels take an optional ``progress(done, total)``
callback (as ``Grid.evaluate``), called from a Python loop between compiled calls, and
``chunks`` splits a count into the pieces such a loop runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

# Items (draws, permutations, ...) per piece of ``chunks`` by default: a fraction of a second
# of work each, so a loop that reports after every piece is never silent for long.
DEFAULT_CHUNK = 100
# What kernels accept: ``progress(done, total)`` after each piece of work (a ``Progress`` is one).
Callback = Callable[[int, int], None]


def _si(x: float) -> str:
  for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= div:
      return f"{x / div:.1f}{suffix}"
  return f"{x:.1f}"


def _duration(seconds: float) -> str:
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes, s = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes}m{s:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


def _is_main_process() -> bool:
  try:
    import jax

    return jax.process_index() == 0
  except Exception:  # noqa: BLE001 - progress must never break the work it reports on
    return True


def _is_tty(stream) -> bool:
  try:
    return bool(stream.isatty())
  except Exception:  # noqa: BLE001 - a stream without isatty is not a terminal
    return False


def chunks(total: int, size: int = DEFAULT_CHUNK) -> Iterator[tuple[int, int]]:
  """``(start, stop)`` of consecutive pieces of ``range(total)`` of at most ``size`` items.

  Raises:
    ValueError: ``size < 1``.
  """
  if size < 1:
    raise ValueError(f"A chunk holds at least one item, got size={size}.")
  for start in range(0, int(total), int(size)):
    yield start, min(start + int(size), int(total))


class Progress:
  """Reports ``done / total`` with rate and ETA.

  Attributes:
    what: label at the start of each line.
    total: amount of work.
    unit: name of one unit of work.
    every: least seconds between two printed lines.
    enabled: print at all (default: only on process 0).
    resumed: units finished by an earlier run (see ``resume``).
    redraw: redraw one line in place (default: when the stream is a terminal).
  """

  def __init__(self, what: str, total: int, unit: str = "items", every: float = 2.0,
               stream: TextIO | None = None, enabled: bool | None = None,
               clock=time.perf_counter, redraw: bool | None = None):
    self.what, self.total, self.unit, self.every = what, int(total), unit, float(every)
    self.resumed = 0
    self.stream = stream if stream is not None else sys.stderr
    self.enabled = _is_main_process() if enabled is None else enabled
    self.redraw = _is_tty(self.stream) if redraw is None else bool(redraw)
    self._clock = clock
    self._start = clock()
    self._last_print = None
    self.done = 0
    self.lines: list[str] = []

  @classmethod
  def maybe(cls, show: bool, what: str, total: int, unit: str = "items", **kwargs) -> Progress:
    """A ``Progress`` that prints (on process 0) only when ``show``; it keeps its lines either way."""
    return cls(what, total, unit, enabled=None if show else False, **kwargs)

  def line(self) -> str:
    """The current progress line."""
    elapsed = max(self._clock() - self._start, 1e-9)
    rate = (self.done - self.resumed) / elapsed
    pct = 100.0 * self.done / self.total if self.total else 100.0
    text = (f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.1f}%) "
            f"{_si(rate)} {self.unit}/s, {_duration(elapsed)} elapsed")
    if self.resumed:
      text += f", {self.resumed} resumed"
    if 0 < self.done < self.total and rate > 0:
      text += f", ETA {_duration((self.total - self.done) / rate)}"
    return text

  def resume(self, done: int) -> None:
    """Marks ``done`` units as finished by an earlier run: they count as done but not
    towards the rate, so the ETA reflects the work left."""
    self.resumed = self.done = int(done)

  def update(self, done: int, total: int | None = None) -> None:
    """Records ``done`` units finished (absolute) and prints when due."""
    self.done = int(done)
    if total is not None:
      self.total = int(total)
    now = self._clock()
    if self.done >= self.total or self._last_print is None or now - self._last_print >= self.every:
      self._emit(now)

  def close(self) -> None:
    """Prints the final line unless the last update already did (and ends a redrawn line)."""
    if self._last_print is None or self.done < self.total:
      self._emit(self._clock(), final=True)

  def _emit(self, now: float, final: bool = False) -> None:
    self._last_print = now
    text = self.line()
    self.lines.append(text)
    if not self.enabled:
      return
    if not self.redraw:
      print(text, file=self.stream, flush=True)
      return
    end = "\n" if final or self.done >= self.total else ""
    # "\r" back to the line's start, then the text, then clear what a longer line left.
    self.stream.write(f"\r{text}\x1b[K{end}")
    self.stream.flush()

  def __call__(self, done: int, total: int | None = None) -> None:
    self.update(done, total)
