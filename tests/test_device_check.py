"""benchmarks/device_check.sh on the CPU: toy shapes, every route and dtype in the table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import device_check

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROW = re.compile(r"^\| (?P<route>[^|]+) \| (?P<shape>[^|]+) \| (?P<device>[^|]+) \| (?P<dtype>[^|]+) \| "
                  r"(?P<ours>[^|]*) \| (?P<peer>[^|]*) \| (?P<ratio>[^|]*) \|")


def test_device_check_sh_cpu_smoke(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ)  # with the suite's XLA_FLAGS: fast compiles
  env.update(PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--skip_parity", "--out", str(out),
                         "--shapes", "smollm2-135m", "--repeats", "1"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "toy shapes" in proc.stdout
  rows = [m.groupdict() for m in map(_ROW.match, proc.stdout.splitlines()) if m]
  got = {(r["route"].strip(), r["dtype"].strip()): r for r in rows}
  for dtype in device_check.DTYPES:
    assert ("matmul peak 1024^3", dtype) in got
    for route in device_check.ROUTES[:-1]:
      row = got.get((route, dtype))
      assert row is not None, f"no row for {route}, {dtype}:\n{proc.stdout}"
      assert row["shape"].strip() == "smollm2-135m (tiny)"
      assert re.fullmatch(r"\d+\.\d\dx", row["ratio"].strip()), f"{route}, {dtype}: {row}"
  # The covariance root is float64 on both sides whatever the rows' dtype: one row per shape.
  root = got.get((device_check.ROUTES[-1], "float64"))
  assert root is not None and re.fullmatch(r"\d+\.\d\dx", root["ratio"].strip()), proc.stdout
  assert sorted(os.listdir(out)) == ["device_check.json", "device_check.md"]
  figures = json.loads((out / "device_check.json").read_text())
  assert figures["accelerator"] is False
  ok = [r for r in figures["rows"] if r["status"] == "ok"]
  assert len(ok) == len(device_check.DTYPES) * len(device_check.ROUTES) + 1
  # The float32 routes agree with the transformers/torch peer to float32 rounding.
  for r in ok:
    if r["dtype"] == "float32" and "diff" in r:
      assert r["diff"] <= 1e-4 * max(1.0, r["scale"]), r
  assert "parity tests: skipped" in (out / "device_check.md").read_text()
