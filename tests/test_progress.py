"""Progress lines: rate, ETA, throttling, and silence when disabled."""

import io

import pytest

from jaxsem.progress import Progress
from jaxsem.progress import chunks


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_lines_carry_rate_and_eta_and_are_throttled():
  clock, out = _Clock(), io.StringIO()
  p = Progress("sweep", 1000, unit="tokens", every=2.0, stream=out, enabled=True, clock=clock)
  clock.t = 1.0
  p.update(100)  # first update always prints
  clock.t = 1.5
  p.update(150)  # within 2 s of the last line: silent
  clock.t = 4.0
  p.update(400)
  clock.t = 10.0
  p.update(1000)  # the end always prints
  p.close()  # already reported: no duplicate
  lines = out.getvalue().splitlines()
  assert len(lines) == 3 and lines == p.lines
  assert lines[0] == "sweep: 100/1000 tokens (10.0%) 100.0 tokens/s, 1.0 s elapsed, ETA 9.0 s"
  assert lines[1].startswith("sweep: 400/1000 tokens (40.0%) 100.0 tokens/s") and "ETA 6.0 s" in lines[1]
  assert lines[2] == "sweep: 1000/1000 tokens (100.0%) 100.0 tokens/s, 10.0 s elapsed"


def test_disabled_progress_prints_nothing_but_keeps_lines():
  out = io.StringIO()
  p = Progress("grid", 10, stream=out, enabled=False, clock=_Clock())
  p(5)
  p.close()
  assert out.getvalue() == "" and len(p.lines) == 2 and "5/10 items" in p.lines[-1]


def test_long_durations_and_large_rates_are_readable():
  clock, out = _Clock(), io.StringIO()
  p = Progress("load", 10_000_000, unit="rows", stream=out, enabled=True, clock=clock)
  clock.t = 100.0
  p.update(2_500_000)
  assert "25.0k rows/s" in p.lines[0] and "1m40s elapsed" in p.lines[0] and "ETA 5m00s" in p.lines[0]


def test_resumed_work_counts_as_done_but_not_in_the_rate():
  clock, out = _Clock(), io.StringIO()
  p = Progress("sweep", 1000, unit="tokens", stream=out, enabled=True, clock=clock)
  p.resume(600)  # finished by a killed run
  clock.t = 2.0
  p.update(700)  # 100 tokens in 2 s: 50/s, 300 left -> 6 s
  assert p.lines[-1] == ("sweep: 700/1000 tokens (70.0%) 50.0 tokens/s, 2.0 s elapsed, 600 resumed, "
                         "ETA 6.0 s")


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_a_terminal_gets_one_redrawn_line_ended_by_a_newline():
  clock, out = _Clock(), _Tty()
  p = Progress("probe", 10, unit="folds", every=0.0, stream=out, enabled=True, clock=clock)
  for done in (2, 5, 10):
    clock.t += 1.0
    p.update(done)
  p.close()
  text = out.getvalue()
  assert p.redraw and text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
  assert text.split("\r")[-1].startswith("probe: 10/10 folds (100.0%)")
  assert "\x1b[K" in text  # a shorter line clears what a longer one left


def test_a_terminal_line_closed_early_still_ends_with_a_newline():
  clock, out = _Clock(), _Tty()
  p = Progress("fit", 100, unit="steps", stream=out, enabled=True, clock=clock)
  clock.t = 1.0
  p.update(40)
  assert not out.getvalue().endswith("\n")
  p.close()
  assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_a_redirected_stream_gets_a_line_per_update():
  clock, out = _Clock(), io.StringIO()
  p = Progress("probe", 10, unit="folds", every=0.0, stream=out, enabled=True, clock=clock)
  for done in (2, 5, 10):
    clock.t += 1.0
    p.update(done)
  assert not p.redraw and "\r" not in out.getvalue()
  assert out.getvalue().splitlines() == p.lines and len(p.lines) == 3


def test_maybe_is_quiet_unless_asked():
  out = io.StringIO()
  quiet = Progress.maybe(False, "nulls", 4, unit="draws", stream=out)
  quiet.update(4)
  assert out.getvalue() == "" and quiet.lines and "4/4 draws" in quiet.lines[-1]
  loud = Progress.maybe(True, "nulls", 4, unit="draws", stream=out)
  loud.update(4)
  assert "nulls: 4/4 draws" in out.getvalue()


def test_chunks_cover_the_range_once():
  assert list(chunks(7, 3)) == [(0, 3), (3, 6), (6, 7)]
  assert list(chunks(0, 3)) == []
  with pytest.raises(ValueError):
    list(chunks(5, 0))
