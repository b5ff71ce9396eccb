"""First loads that read only each process's shards: peak memory of 1 process x 8 devices against
2 processes x 4 devices on ``--mesh=model:8``, and their logits.

    .venv/bin/python -m benchmarks.bench_shard_load            # ~2 GB Llama-style checkpoint
    .venv/bin/python -m benchmarks.bench_shard_load --size=tiny   # seconds; what the tests run

Writes a synthetic Llama-style checkpoint (random float32 weights) twice: as Hugging Face
safetensors in 4 shards with an index file, and as a GGUF whose 2-D weights are Q8_0. Each is
then loaded (params cache off: a first load) in fresh processes, on the same 8 CPU devices:

* 1 process with 8 fake devices;
* 2 processes with 4 fake devices each, joined through ``jax.distributed`` (gloo).

Each process reports its peak RSS (``VmHWM``, taken right after the load), its RSS before the
load (the JAX runtime), the load's wall time, how many weights it read and a hash of every shard it
holds (the two runs' shards must be the same bytes); process 0 gathers the logits of a fixed batch
(equal to the single-process logits up to the order in which gloo sums across processes). On
``model:8`` every leaf is sharded over the vocabulary, heads or MLP units, so each of 2 processes
holds about half of the model. Each load runs in float32 and in bfloat16 (``--dtypes``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

from benchmarks import common

_SIZE = flags.DEFINE_enum("size", "2gb", ["2gb", "tiny"], "Checkpoint size.")
_DIR = flags.DEFINE_string("dir", None, "Where to write the checkpoints (default: a temporary directory, "
                           "removed after).")
_CHILD = flags.DEFINE_string("child", None, "Internal: load this checkpoint and report (one process).")
_PROCESSES = flags.DEFINE_integer("processes", 1, "Internal: processes of the child run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Internal: this child's process id.")
_PORT = flags.DEFINE_integer("port", 0, "Internal: the coordinator's port.")
_OUT = flags.DEFINE_string("out", None, "Internal: where process 0 writes the logits (.npy).")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Dtypes the params are loaded in (bfloat16 "
                            "straight from the file, without a float32 copy).")

# Llama-style shapes: 2gb is about 493M float32 weights (1.97 GB), tiny a few thousand.
SIZES = {
    "2gb": dict(vocab_size=32000, d_model=2048, n_layers=8, n_heads=16, n_kv_heads=8, head_dim=128,
                d_ff=5632),
    "tiny": dict(vocab_size=256, d_model=64, n_layers=2, n_heads=8, n_kv_heads=8, head_dim=16, d_ff=128),
}
MESH = "model:8"


def config_of(size: str):
  from jaxsem.models.config import ModelConfig

  return ModelConfig(family="llama", norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=False,
                     max_position=4096, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0, **SIZES[size])


def hf_config_json(config) -> dict:
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
          "hidden_size": config.d_model, "intermediate_size": config.d_ff,
          "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
          "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
          "rms_norm_eps": config.norm_eps,
          "rope_theta": config.rope_theta, "max_position_embeddings": config.max_position,
          "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}


def write_checkpoints(directory: str, size: str) -> tuple[str, str]:
  """``(safetensors directory, GGUF path)`` of the same random weights."""
  import safetensors.numpy

  from jaxsem.models import families
  from jaxsem.models import params as params_lib
  from tests import gguf_fixtures
  from tests import word_model

  config = config_of(size)
  rng = np.random.default_rng(0)

  leaves = {}
  for leaf in families.leaves(config):
    shape = leaf.shape(config)
    if leaf.norm:
      leaves[leaf.path] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      leaves[leaf.path] = (rng.standard_normal(shape, dtype=np.float32) * (1.0 / np.sqrt(shape[-1]))).astype(
          np.float32)
  hf_dir = os.path.join(directory, "hf")
  os.makedirs(hf_dir, exist_ok=True)
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf_config_json(config), f)
  tensors = word_model.checkpoint_tensors(config, leaves, hf=True)
  names = list(tensors)
  shards = [names[i::4] for i in range(4)]
  weight_map = {}
  for i, part in enumerate(shards):
    file = f"model-{i + 1:05d}-of-00004.safetensors"
    safetensors.numpy.save_file({n: tensors[n] for n in part}, os.path.join(hf_dir, file))
    weight_map.update({n: file for n in part})
  with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
               "weight_map": weight_map}, f)
  del tensors
  gguf = os.path.join(directory, "model-q8_0.gguf")
  gguf_fixtures.write_gguf(gguf, config, params_lib.unflatten(leaves), types="Q8_0")
  return hf_dir, gguf


def _status_mb(field: str) -> float:
  """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process, in MiB. Not ``ru_maxrss``: across fork and
  exec that keeps the parent's peak (here the checkpoint writer's)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str) -> None:
  """One process of a load: reports its figures as one JSON line."""
  import jax
  import ml_dtypes

  from jaxsem import distributed
  from jaxsem import sharding
  from jaxsem.io import gguf_file
  from jaxsem.io import hf_checkpoint
  from jaxsem.models import families
  from jaxsem.models import gguf_load
  from jaxsem.models import hf_load
  from jaxsem.models import params as params_lib
  from jaxsem.models.forward import forward_jit

  if _PROCESSES.value > 1:
    distributed.initialize(distributed.Settings(f"127.0.0.1:{_PORT.value}", _PROCESSES.value,
                                                _PROCESS_ID.value, timeout_s=300))
  mesh = sharding.make_mesh(MESH)
  jax.numpy.zeros(1).block_until_ready()
  before = _status_mb("VmRSS")
  totals = []
  placer = sharding.Placer(mesh, ml_dtypes.bfloat16 if _DTYPES.value == ["bfloat16"] else np.float32)
  start = time.perf_counter()
  if path.endswith(".gguf"):
    with gguf_file.GGUFFile(path) as f:
      config = gguf_load.read_config(f)
      params = gguf_load.load_gguf_params(f, config, placer=placer, progress=lambda d, t: totals.append(t))
  else:
    config = families.config_from_hf(hf_checkpoint.read_hf_dir(path)[0], path)
    params = hf_load.load_hf_params(path, config, placer=placer, progress=lambda d, t: totals.append(t))
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  peak = _status_mb("VmHWM")
  # What this process holds, shard by shard: the same bytes as the single-process load's shards?
  shards = {}
  for path, leaf in params_lib.flatten(params).items():
    for shard in leaf.addressable_shards:
      key = f"{path}{[(s.start, s.stop) for s in shard.index]}"
      shards[key] = hashlib.sha256(np.ascontiguousarray(np.asarray(shard.data)).tobytes()).hexdigest()
  ids = (np.arange(4 * 8, dtype=np.int32).reshape(4, 8) * 7919) % config.vocab_size
  batch = sharding.batch_sharding(mesh)
  out = forward_jit(params, config, jax.device_put(ids, batch), jax.device_put(np.ones_like(ids), batch))
  from jax.experimental import multihost_utils

  logits = np.asarray(multihost_utils.process_allgather(out.logits, tiled=True))
  if _PROCESS_ID.value == 0 and _OUT.value:
    np.save(_OUT.value, logits)
  print("@@RESULT@@" + json.dumps({"process": _PROCESS_ID.value, "peak_rss_mb": peak, "rss_before_mb": before,
                                   "load_s": seconds, "weights_read": totals[-1] if totals else 0,
                                   "n_params": config.n_params, "shards": shards}), flush=True)


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSEM_PARAMS_CACHE="0")
  flags_ = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env["XLA_FLAGS"] = " ".join([*flags_, f"--xla_force_host_platform_device_count={devices}"])
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_load(path: str, processes: int, out: str, dtype: str, timeout: float = 1800) -> list[dict]:
  """Loads ``path`` in ``dtype`` in ``processes`` fresh processes (8 devices in all); their reports."""
  port = _free_port()
  procs = []
  for pid in range(processes):
    cmd = [sys.executable, "-m", "benchmarks.bench_shard_load", f"--child={path}", f"--processes={processes}",
           f"--process_id={pid}", f"--port={port}", f"--out={out}", f"--dtypes={dtype}"]
    procs.append(subprocess.Popen(cmd, cwd=common.REPO, env=_env(8 // processes), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  reports = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=timeout)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("@@RESULT@@")]
    if p.returncode or not lines:
      raise RuntimeError(f"load of {path} failed (exit {p.returncode}):\n{stderr[-3000:]}")
    reports.append(json.loads(lines[0][len("@@RESULT@@"):]))
  return reports


def compare(path: str, scratch: str, dtype: str) -> dict:
  """The single-process and two-process loads of ``path`` in ``dtype``, side by side."""
  one = run_load(path, 1, os.path.join(scratch, "one.npy"), dtype)
  two = run_load(path, 2, os.path.join(scratch, "two.npy"), dtype)
  a, b = np.load(os.path.join(scratch, "one.npy")), np.load(os.path.join(scratch, "two.npy"))
  held = {}
  for r in two:
    held.update(r.pop("shards"))
  whole = one[0].pop("shards")
  return {"one": one, "two": two, "params_identical": held == whole, "shards_compared": len(whole),
          "logits_identical": bool(np.array_equal(a, b)),
          "logits_max_abs_diff": float(np.max(np.abs(a - b))), "logits_shape": list(a.shape),
          "peak_ratio": max(r["peak_rss_mb"] for r in two) / one[0]["peak_rss_mb"]}


def main(argv):
  del argv
  if _CHILD.value:
    child(_CHILD.value)
    return
  directory = _DIR.value or tempfile.mkdtemp(prefix="jaxsem-shard-load-")
  try:
    t0 = time.perf_counter()
    hf_dir, gguf = write_checkpoints(directory, _SIZE.value)
    written = time.perf_counter() - t0
    print(f"machine: {common.machine()}")
    print(f"checkpoint: {_SIZE.value}, {config_of(_SIZE.value).n_params / 1e6:.1f}M weights, written in "
          f"{written:.0f} s; mesh {MESH}, 8 CPU devices in all, params cache off (first loads)")
    print(f"{'format':<32} {'processes':>9} {'peak RSS MB':>12} {'before load':>12} {'load s':>7} "
          f"{'weights read':>13}")
    results = {}
    for dtype in _DTYPES.value:
      for fmt, path in (("safetensors (4 shards)", hf_dir), ("GGUF Q8_0", gguf)):
        name = f"{fmt}, {dtype}"
        results[name] = r = compare(path, directory, dtype)
        _print(name, r)
    print("@@RESULT@@" + json.dumps(results))
  finally:
    if not _DIR.value:
      shutil.rmtree(directory, ignore_errors=True)


def _print(name: str, r: dict) -> None:
  for label, reports in (("1", r["one"]), ("2", r["two"])):
    for rep in reports:
      print(f"{name:<32} {label + ' (pid ' + str(rep['process']) + ')':>9} {rep['peak_rss_mb']:>12.0f} "
            f"{rep['rss_before_mb']:>12.0f} {rep['load_s']:>7.1f} {rep['weights_read'] / 1e6:>12.1f}M")
  why = "" if r["logits_identical"] else ": the two processes sum across gloo in another order"
  print(f"{name:<32} peak ratio (2-process max / 1-process) {r['peak_ratio']:.2f}; params identical "
        f"(every shard's bytes): {r['params_identical']}; logits identical: {r['logits_identical']} (max abs "
        f"diff {r['logits_max_abs_diff']:.3g}{why})")


if __name__ == "__main__":
  app.run(main)
