"""Sweep throughput on 1 device, 8 devices and 2 processes, and the cost of resuming.

    .venv/bin/python -m benchmarks.bench_scaleout [--model=gemma3-270m] [--scales=wordnet]

Every row runs the real launcher, ``python -m launch.sweep``, on the same work (every
vocabulary token x every direction of ``--scales``, cosine, centred input embedding,
streamed to zarr in ``--chunk_rows`` blocks) and reads the matrix stage's time from its
summary.json (model loading and the spectra are not counted):

* 1 process x 1 CPU device;
* 1 process x 8 fake CPU devices, ``--mesh``;
* 2 processes x 4 fake CPU devices each, the same ``--mesh``, joined through
  ``jax.distributed`` with gloo collectives on this one machine (process 0 gathers and
  writes each block);
* the peer: numpy (``np.matmul``) on the same normalised rows and directions, writing the
  same float32 zarr v3 chunks with tensorstore, one process.

Resuming: the same 1-device command again on the finished array (every chunk is skipped:
the time to check and skip finished chunks), and a run killed with ``kill -9`` once about
half of the chunks were committed, then resumed: its matrix time against the uninterrupted
run's share for the same chunks is the overhead of resuming.

``--repeats=N`` runs the 1-device row and the numpy peer N times each, alternating, each in a
fresh process, and reports the median and the spread; ``--rows`` picks the rows to run.

On a 2-core machine 8 fake devices and 2 processes share the same two cores, so these rows
measure the overhead of sharding and of the collectives, not a speed-up.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import common

_MODEL = flags.DEFINE_string("model", "gemma3-270m", "Embedded model whose vocabulary is swept.")
_SCALES = flags.DEFINE_string("scales", "wordnet", "Scale set whose directions are projected on.")
_CHUNK = flags.DEFINE_integer("chunk_rows", 8192, "Vocabulary rows per block and zarr chunk.")
_MESH = flags.DEFINE_string("mesh", "data:2,model:4", "Mesh of the 8-device and 2-process rows.")
_ROWS = flags.DEFINE_list("rows", ["one", "eight", "two", "resume"],
                          "Rows to run: one (1 device, with the numpy peer), eight, two, resume.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of the 1-device row and of the numpy peer, alternating.")

_NUMPY = """
import numpy as np, tensorstore as ts
v = np.load({v_path!r}); u = np.load({u_path!r})
def unit(x):
  n = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(n > 0, n, 1)
spec = {{"driver": "zarr3", "kvstore": {{"driver": "file", "path": {out!r}}},
        "metadata": {{"shape": [v.shape[0], u.shape[0]], "data_type": "float32", "fill_value": float("nan"),
                     "chunk_grid": {{"name": "regular", "configuration": {{"chunk_shape": [{chunk}, u.shape[0]]}}}}}},
        "create": True, "delete_existing": True}}
store = ts.open(spec).result()
t0 = time.perf_counter()
uu = unit(u).T.copy()
for start in range(0, v.shape[0], {chunk}):
  block = unit(v[start:start + {chunk}]) @ uu
  store[start:start + block.shape[0]].write(block.astype(np.float32)).result()
_report(seconds=time.perf_counter() - t0, n=int(v.shape[0]), s=int(u.shape[0]), version=np.__version__)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _sweep_args(out: str, *extra: str) -> list:
  return [sys.executable, "-m", "launch.sweep", f"--model={_MODEL.value}", f"--scales={_SCALES.value}",
          f"--chunk_rows={_CHUNK.value}", "--baselines=gaussian", f"--out_dir={out}", *extra]


def _matrix(out: str) -> dict:
  with open(os.path.join(out, "summary.json")) as f:
    return json.load(f)["zarr"]


def _run(out: str, devices: int = 1, processes: int = 1, mesh: str | None = None) -> dict:
  extra = [f"--mesh={mesh}"] if mesh else []
  if processes == 1:
    proc = subprocess.run(_sweep_args(out, *extra), env=_env(devices), capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode:
      raise RuntimeError(proc.stderr[-3000:])
    return _matrix(out)
  port = _free_port()
  procs = [subprocess.Popen(_sweep_args(out, *extra, f"--coordinator_address=127.0.0.1:{port}",
                                        f"--num_processes={processes}", f"--process_id={p}"),
                            env=_env(devices), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for p in range(processes)]
  errors = [p.communicate(timeout=3600)[1] for p in procs]
  if any(p.returncode for p in procs):
    raise RuntimeError(errors[0][-3000:])
  return _matrix(out)


def _killed_then_resumed(out: str, share: float = 0.5) -> tuple[int, int, dict]:
  """kill -9 once ``share`` of the chunks are committed; returns (committed, total, resumed run)."""
  state = os.path.join(out, "projections.zarr", ".state.json")
  proc = subprocess.Popen(_sweep_args(out), env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  total, committed = None, 0
  while proc.poll() is None:
    try:
      with open(state) as f:
        doc = json.load(f)
      total = -(-doc["shape"][0] // doc["chunk_rows"])
      committed = len(doc["done"])
    except (OSError, ValueError, KeyError):
      pass
    if total and committed >= share * total:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  proc.wait()
  with open(state) as f:
    committed = len(json.load(f)["done"])
  return committed, total, _run(out)


def _spread(values: list) -> str:
  return ", ".join(f"{v:.2f}" for v in values)


def main(argv):
  del argv
  print(f"machine: {common.machine()}")
  rows, ones, refs = [], [], []
  with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
    paths = dict(v_path=os.path.join(tmp, "v.npy"), u_path=os.path.join(tmp, "u.npy"))
    common.run_snippet(common.VOCAB_PREP.format(model=_MODEL.value, scales=_SCALES.value, rows="", policy="mean",
                                                **paths), env={"JAX_PLATFORMS": "cpu"})
    numpy_out = os.path.join(tmp, "numpy.zarr")
    for _ in range(_REPEATS.value):
      shutil.rmtree(os.path.join(tmp, "one"), ignore_errors=True)  # a fresh sweep, not a resumed one
      ones.append(_run(os.path.join(tmp, "one")))
      refs.append(common.run_snippet(_NUMPY.format(out=numpy_out, chunk=_CHUNK.value, **paths)))
      shutil.rmtree(numpy_out)
    one = sorted(ones, key=lambda z: z["seconds"])[len(ones) // 2]
    ref = sorted(refs, key=lambda r: r["seconds"])[len(refs) // 2]
    rows.append(("jaxsem, 1 process x 1 device", one))
    if "eight" in _ROWS.value:
      rows.append((f"jaxsem, 1 process x 8 devices ({_MESH.value})",
                   _run(os.path.join(tmp, "eight"), devices=8, mesh=_MESH.value)))
    if "two" in _ROWS.value:
      rows.append((f"jaxsem, 2 processes x 4 devices ({_MESH.value})",
                   _run(os.path.join(tmp, "two"), devices=4, processes=2, mesh=_MESH.value)))
    if "resume" in _ROWS.value:
      skip = _run(os.path.join(tmp, "one"))  # every chunk already committed
      committed, total, resumed = _killed_then_resumed(os.path.join(tmp, "killed"))

  n, s = one["shape"]
  print(f"work: {_MODEL.value} {n} tokens x {_SCALES.value} {s} directions, cosine, chunks of {_CHUNK.value} "
        f"rows, float32 zarr ({one['gigabytes']:.2f} GB); numpy {ref['version']}")
  print(f"{'':44s} {'matrix s':>9s} {'M scores/s':>11s} {'vs numpy':>9s}")
  numpy_rate = n * s / ref["seconds"]
  for name, z in rows:
    print(f"{name:44s} {z['seconds']:9.2f} {z['scores_per_second'] / 1e6:11.1f} "
          f"{z['scores_per_second'] / numpy_rate:8.2f}x")
  print(f"{'numpy + tensorstore, 1 process':44s} {ref['seconds']:9.2f} {numpy_rate / 1e6:11.1f} {1:8.2f}x")
  if _REPEATS.value > 1:
    print(f"1-device row and numpy: medians of {_REPEATS.value} alternating runs; jaxsem "
          f"{_spread([z['seconds'] for z in ones])} s, numpy {_spread([r['seconds'] for r in refs])} s")
  if "resume" in _ROWS.value:
    print(f"resume, all {skip['resumed']['chunks_skipped']} chunks finished: {skip['seconds']:.2f} s to check "
          f"and skip them")
    expected = one["seconds"] * resumed["resumed"]["chunks_computed"] / total
    print(f"resume after kill -9 with {committed}/{total} chunks committed: {resumed['seconds']:.2f} s for the "
          f"other {resumed['resumed']['chunks_computed']} (uninterrupted share {expected:.2f} s; overhead "
          f"{resumed['seconds'] - expected:+.2f} s)")


if __name__ == "__main__":
  app.run(main)
