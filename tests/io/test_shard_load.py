"""First loads on 2 processes x 4 CPU devices read only each process's shards
(``benchmarks/bench_shard_load.py --size=tiny``: a Llama-style checkpoint as 4 safetensors shards and as
a Q8_0 GGUF, loaded on ``--mesh=model:8`` by one process and by two)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # four launches of JAX processes joined through jax.distributed
def test_two_processes_read_half_and_hold_the_same_shards(tmp_path):
  joined = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  env = {k: v for k, v in os.environ.items() if k not in joined}
  proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_shard_load", "--size=tiny",
                         "--dtypes=float32,bfloat16", f"--dir={tmp_path}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@"))
  results = json.loads(line[len("@@RESULT@@"):])
  assert set(results) == {f"{fmt}, {dtype}" for fmt in ("safetensors (4 shards)", "GGUF Q8_0")
                          for dtype in ("float32", "bfloat16")}
  for name, r in results.items():
    (one,), two = r["one"], r["two"]
    assert [p["process"] for p in two] == [0, 1]
    # Every shard of the model, byte for byte, is where the single-process load put it.
    assert r["params_identical"] and r["shards_compared"] > 20, name
    # Each process reads about half the weights (the norms, replicated, are read by both).
    assert one["weights_read"] == one["n_params"], name
    for p in two:
      assert 0.5 * one["n_params"] <= p["weights_read"] <= 0.52 * one["n_params"], (name, p)
    # The logits differ from one process's only by the order in which gloo sums across processes.
    tol = 1e-4 if name.endswith("float32") else 0.05
    assert r["logits_shape"] == [4, 256] and r["logits_max_abs_diff"] < tol, (name, r["logits_max_abs_diff"])
