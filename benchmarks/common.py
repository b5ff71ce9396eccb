"""Shared benchmark plumbing: run a snippet in a fresh process, read its time and peak RSS.

Each measurement runs in its own Python process so imports, caches and peak memory of
one library never colour the other's figures.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRELUDE = """
import json, os, resource, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def _report(**kw):
  print("@@RESULT@@" + json.dumps(kw))
"""


def run_snippet(code: str, env: dict | None = None, timeout: int = 1800) -> dict:
  """Runs ``code`` in a fresh interpreter; it must call ``_report(...)`` once."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)], cwd=REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)
  for line in proc.stdout.splitlines():
    if line.startswith("@@RESULT@@"):
      return json.loads(line[len("@@RESULT@@"):])
  raise RuntimeError(f"benchmark snippet failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def machine() -> str:
  """A one-line description of this machine for the figures."""
  try:
    import psutil

    mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
  except ImportError:
    mem = "RAM unknown"
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem}, {platform.system()}"


def gguf_path(name: str) -> str:
  from jaxsem.io import assets

  return str(assets.resolve_model(name).path)
