"""The default mesh is every device on the model axis, and provenance and summary name the mesh used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxsem
from jaxsem import sharding
from tests import gguf_fixtures as gf

REPO = Path(__file__).resolve().parent.parent
PROMPT = "<t5><t6>"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
  config = gf.tiny_gemma3_config(vocab_size=99, n_layers=1)  # 99 rows: padded to 104 on model:8
  return gf.write_gguf(tmp_path_factory.mktemp("toy") / "toy.gguf", config, gf.random_params(config))


def test_default_mesh_is_every_device_on_the_model_axis():
  assert sharding.parse_mesh(None, 8) == {"data": 1, "model": 8}
  assert sharding.parse_mesh(None, 1) == {"data": 1, "model": 1}
  assert dict(sharding.make_mesh(None).shape) == {"data": 1, "model": 8}


def test_provenance_and_summary_name_the_mesh_used(toy):
  default = jaxsem.load(toy, mesh=sharding.DEFAULT_MESH)
  assert default.provenance["mesh"] == {"data": 1, "model": 8}
  assert default.params["embed"].sharding.spec == P("model", None)
  assert default.params["embed"].shape[0] == 104 and len(default.params["embed"].sharding.device_set) == 8
  assert "mesh=data:1,model:8" in default.summary()
  explicit = jaxsem.load(toy, mesh="data:2,model:4")
  assert explicit.provenance["mesh"] == {"data": 2, "model": 4}
  assert "mesh=data:2,model:4" in explicit.summary()
  single = jaxsem.load(toy)  # the library's own default: no mesh, one device
  assert single.mesh is None and single.provenance["mesh"] is None
  assert "mesh=single device" in single.summary()
  want = single.next_token_logits([PROMPT])
  np.testing.assert_allclose(default.next_token_logits([PROMPT]), want, atol=1e-4)
  np.testing.assert_allclose(explicit.next_token_logits([PROMPT]), want, atol=1e-4)


def test_generate_mesh_flag_default_and_every_device(toy):
  """Without --mesh a launcher runs on one device (as --help and the README say); model:-1 takes all."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSEM_PARAMS_CACHE="0",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  base = [sys.executable, "-m", "launch.generate", f"--model={toy}", f"--prompt={PROMPT}", "--max_new_tokens=1"]
  outs = {}
  for extra in ((), ("--mesh=model:-1",)):
    proc = subprocess.run([*base, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs[extra] = proc.stdout
  assert "single device" in outs[()] and "mesh=data:1,model:8" not in outs[()]
  assert "mesh=data:1,model:8" in outs[("--mesh=model:-1",)]
