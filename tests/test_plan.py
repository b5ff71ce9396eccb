"""Memory planning: shipped architectures, abstract sharded params, compiled programs, the launcher."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxsem import planning
from jaxsem.errors import InputError
from jaxsem.models.config import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Published sizes; Gemma 3 27B's is its text model's (27.4B with the vision tower).
PUBLISHED = {"llama-3-8b": 8.0e9, "llama-3-70b": 70.6e9, "qwen2.5-72b": 72.7e9, "gemma-3-27b": 27.0e9}

TINY = ModelConfig(family="llama", vocab_size=1001, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2,
                   head_dim=16, d_ff=128, tie_embeddings=False)
SMALL_OPTS = planning.PlanOptions(directions=100, chunk_rows=512, batch=8)


def _run(*args, env_extra=None):
  env = dict(os.environ)  # the suite's fast-compile flags, but the launcher asks for its own devices
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  env.update(JAX_PLATFORMS="cpu", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "launch.plan", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def _assert_one_line_error(proc, *needles):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


def _shard_bytes(leaf, mesh) -> int:
  """Bytes of one device's shard, from the PartitionSpec alone."""
  shape = list(leaf.shape)
  for dim, axes in enumerate(leaf.sharding.spec):
    if axes is None:
      continue
    n = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
    assert shape[dim] % n == 0
    shape[dim] //= n
  return int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize


# ----------------------------------------------------------------------------- (a) the shipped configs


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_configs_have_published_sizes(name):
  assert name in planning.model_config_names()
  config, source = planning.load_model_config(name)
  assert config.n_params == pytest.approx(PUBLISHED[name], rel=0.02)
  assert source["hf_name"] and source["config_file"].endswith(f"{name}.json")
  again, _ = planning.load_model_config(source["config_file"])  # the same file by path
  assert again == config


def test_shipped_configs_keep_family_features():
  gemma, _ = planning.load_model_config("gemma-3-27b")
  assert gemma.family == "gemma3" and gemma.tie_embeddings and gemma.n_layers == 62
  assert sum(gemma.local_layers) == 52 and gemma.sliding_window == 1024  # every 6th layer global
  qwen, _ = planning.load_model_config("qwen2.5-72b")
  assert qwen.qkv_bias and not qwen.tie_embeddings and not any(qwen.local_layers)
  llama, _ = planning.load_model_config("llama-3-70b")
  assert (llama.n_layers, llama.n_heads, llama.n_kv_heads, llama.d_ff) == (80, 64, 8, 28672)


def test_embedded_model_names_give_their_gguf_architecture():
  config, source = planning.load_model_config("smollm2-135m-instruct")
  assert source["embedded_model"] == "smollm2-135m-instruct"
  assert config.family == "llama" and config.n_params == pytest.approx(135e6, rel=0.05)


# ----------------------------------------------------------------------------- (b) a tiny plan in-process


def test_abstract_params_count_and_shard_bytes():
  mesh = planning.plan_mesh("data:2,model:4")
  params = planning.abstract_params(TINY, mesh, np.float32)
  leaves = jax.tree.leaves(params)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert params["embed"].shape == (1004, 64)  # vocabulary padded to the model axis
  padding = 2 * 3 * 64  # embed and unembed rows added
  assert sum(math.prod(x.shape) for x in leaves) - padding == TINY.n_params
  assert params["blocks"]["q"].sharding.spec[2] == "model"  # 8 heads split 4 ways
  assert params["blocks"]["k"].sharding.spec[2] is None  # 2 kv heads do not: replicated
  assert planning.bytes_per_device(params) == sum(_shard_bytes(x, mesh) for x in leaves)


def test_tiny_plan_compiles_with_positive_memory():
  mesh = planning.plan_mesh("data:2,model:4")
  plan = planning.make_plan(TINY, mesh, SMALL_OPTS)
  params = planning.abstract_params(TINY, mesh, np.dtype("bfloat16"))
  assert plan.params_per_device == sum(_shard_bytes(x, mesh) for x in jax.tree.leaves(params))
  assert [p.name for p in plan.programs] == ["projection", "sweep moments", "steering", "hidden sweep"]
  for p in plan.programs:
    assert p.argument > 0 and p.output > 0 and p.total > 0 and p.peak >= p.total
  steering, hidden = plan.programs[2:]
  unembed = _shard_bytes(params["unembed"], mesh)  # no logits: XLA drops the unembedding from the arguments
  assert hidden.argument > plan.params_per_device - unembed  # params, the directions of 3 sites, the block
  # The block's scores [3 sites, 1024, 100] and moments [3, 64, 64] in float32, split over the 8 devices.
  assert hidden.output >= (3 * 1024 * 100 + 3 * 64 * 64) * 4 // 8
  assert steering.argument > plan.params_per_device  # params, prefix cache and the batch
  assert plan.programs[0].resident > plan.params_per_device  # params + the float32 vocabulary
  doc = json.loads(json.dumps(plan.to_json()))
  assert doc["params"]["bytes_per_device"] == plan.params_per_device
  assert doc["provenance"]["mesh"] == {"data": 2, "model": 4} and doc["provenance"]["dtype"] == "bfloat16"
  assert doc["over_budget"] == [] and "steering" in planning.table(plan)


def test_params_per_device_fall_as_the_model_axis_grows():
  wide = planning.make_plan(TINY, planning.plan_mesh("data:8,model:1"), SMALL_OPTS)
  deep = planning.make_plan(TINY, planning.plan_mesh("data:1,model:8"), SMALL_OPTS)
  assert deep.params_per_device < wide.params_per_device / 2
  assert wide.params_per_device == wide.params_total  # nothing split over data


def test_a_mesh_smaller_than_the_devices_uses_the_first_ones():
  mesh = planning.plan_mesh("data:1,model:2")
  assert mesh.devices.size == 2 and dict(mesh.shape) == {"data": 1, "model": 2}


# ----------------------------------------------------------------------------- (c) 70B on 8 x 8


def test_llama_70b_plan_on_an_8x8_mesh(tmp_path):
  out = tmp_path / "plan.json"
  proc = _run("--model_config=llama-3-70b", "--mesh=data:8,model:8", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = 70.553706496e9 * 2 / 8  # bfloat16 weights split over the model axis only
  shown = float(re.search(r"params per device: ([\d.]+) GiB", proc.stdout).group(1)) * 2**30
  assert shown == pytest.approx(expected, rel=0.01)
  doc = json.loads(out.read_text())
  assert doc["provenance"]["devices"] == 64 and doc["mesh"] == {"data": 8, "model": 8}
  assert doc["params"]["bytes_per_device"] == pytest.approx(expected, rel=0.01)
  programs = {p["name"]: p for p in doc["programs"]}
  assert programs["steering"]["argument"] >= doc["params"]["bytes_per_device"]
  assert programs["sweep moments"]["output"] >= 8192 * 8192 * 4  # the [D, D] covariance
  # The hidden sweep: embedding + 80 blocks; each device holds 1/8 of the [81, D, D] block moments.
  assert programs["hidden sweep"]["output"] >= 81 * 8192 * 8192 * 4 // 8
  assert programs["hidden sweep"]["argument"] >= doc["params"]["bytes_per_device"]
  assert "steering" in doc["over_budget"]  # 16.4 GiB of params alone on a 16 GiB device
  assert "warning:" in proc.stdout


def test_config_file_and_overrides_set_the_plan(tmp_path):
  """The model, the mesh (its devices made before JAX starts) and the sizes from a --config file,
  a dotted override and a short flag, in that order of precedence."""
  config = tmp_path / "plan_config.py"
  config.write_text("from configs.experiments import plan\n\n\ndef get_config():\n"
                    "  config = plan.get_config()\n  config.model_config = 'llama-3-8b'\n"
                    "  config.mesh = 'data:2,model:4'\n  config.plan.batch = 16\n  config.plan.directions = 50\n"
                    "  return config\n")
  out = tmp_path / "plan.json"
  proc = _run(f"--config={config}", "--config.plan.directions=100", "--batch=24", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads(out.read_text())
  assert doc["mesh"] == {"data": 2, "model": 4} and doc["provenance"]["devices"] == 8
  assert "on 100 directions" in proc.stdout and "steering: 24 rows" in proc.stdout
  printed = _run(f"--config={config}", "--config_print")
  assert printed.returncode == 0 and json.loads(printed.stdout)["plan"]["batch"] == 16


# ----------------------------------------------------------------------------- (d) bad input


def test_unknown_config_name():
  _assert_one_line_error(_run("--model_config=llama-9-9b", "--mesh=data:1,model:1"), "llama-9-9b",
                         "llama-3-70b")


def test_malformed_json(tmp_path):
  bad = tmp_path / "config.json"
  bad.write_text('{"model_type": "llama",')
  _assert_one_line_error(_run(f"--model_config={bad}", "--mesh=data:1,model:1"), str(bad), "JSON")


def test_mesh_that_does_not_match_the_devices():
  proc = _run("--model_config=llama-3-8b", "--mesh=data:-1,model:3",
              env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  _assert_one_line_error(proc, "--mesh")


def test_in_process_errors_name_the_flag():
  with pytest.raises(InputError, match="--mesh.*16 devices"):
    planning.plan_mesh("data:4,model:4")
  with pytest.raises(InputError, match="--mesh"):
    planning.plan_mesh("data:two")
  mesh = planning.plan_mesh("data:2,model:4")
  with pytest.raises(InputError, match="--chunk_rows=510"):
    planning.make_plan(TINY, mesh, planning.PlanOptions(chunk_rows=510, directions=10))
  with pytest.raises(InputError, match="--site"):
    planning.make_plan(TINY, mesh, planning.PlanOptions(site="resid_post.9", directions=10, chunk_rows=512))
  with pytest.raises(InputError, match="--model_config"):
    planning.load_model_config("/no/such/config.json")
