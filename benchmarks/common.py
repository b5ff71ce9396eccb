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


# Saves V [N, D] (centred input-embedding rows, the first ROWS) and U [S, D] (one direction per
# scale of SCALES) as .npy files, so that jaxsem and its peer read identical arrays.
VOCAB_PREP = """
import numpy as np
import jaxsem
from jaxsem.analyses import scale_directions, spaces
from jaxsem.io.scales import load_scales
t0 = time.perf_counter()
model = jaxsem.load({model!r})
space = spaces.make_space(model, "input_embedding", centre=True)
v = np.asarray(spaces.apply(space.transform, spaces.vocab_matrix(model, "input_embedding")), np.float32)
vocab = v.shape[0]
v = np.ascontiguousarray(v[:{rows}])
d = scale_directions.build(model, space, list(load_scales({scales!r})), policy={policy!r}, missing="drop")
u = np.asarray(d.vectors, np.float32)
np.save({v_path!r}, v)
np.save({u_path!r}, u)
_report(seconds=time.perf_counter() - t0, vocab=vocab, v_shape=list(v.shape), u_shape=list(u.shape),
        asked=d.asked, dropped=len(d.dropped))
"""
