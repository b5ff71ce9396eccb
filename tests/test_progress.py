"""Progress lines: rate, ETA, throttling, and silence when disabled."""

import io

from jaxsem.progress import Progress


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
