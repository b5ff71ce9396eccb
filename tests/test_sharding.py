"""Mesh flags, the logical-axis table, and sharded == unsharded."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.models.forward import forward_jit
from tests import toy


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("spec,expected", [
    ("data:2,model:4", {"data": 2, "model": 4}),
    ("model:8", {"data": 1, "model": 8}),
    ("data:-1", {"data": 8, "model": 1}),
    ("data:2,model:-1", {"data": 2, "model": 4}),
    (None, {"data": 1, "model": 8}),
])
def test_parse_mesh(spec, expected):
  assert sharding.parse_mesh(spec, 8) == expected


@pytest.mark.parametrize("spec", ["data:3,model:4", "data=2", "batch:8", "data:x", "data:-1,model:-1",
                                  "data:0,model:8", "data:2,data:4"])
def test_bad_mesh_is_one_clear_line(spec):
  with pytest.raises(InputError) as e:
    sharding.parse_mesh(spec, 8)
  msg = str(e.value)
  assert "--mesh" in msg and "\n" not in msg


def test_rules_replicate_what_does_not_divide():
  mesh = sharding.make_mesh("data:2,model:4")
  assert sharding.logical_to_spec(("vocab", "embed"), (256, 32), mesh) == P("model", None)
  assert sharding.logical_to_spec(("layers", "embed", "heads", "head_dim"), (2, 32, 9, 8), mesh) == P(
      None, None, None, None)
  assert sharding.logical_to_spec(("batch", "seq"), (4, 16), mesh) == P("data", None)
  assert sharding.pad_vocab(np.ones((250, 3)), 4).shape == (252, 3)


@pytest.mark.parametrize("family", sorted(toy.CONFIGS))
@pytest.mark.parametrize("spec", ["data:2,model:4", "data:1,model:8", "data:8,model:1"])
def test_sharded_equals_unsharded(family, spec):
  cfg = toy.CONFIGS[family]()
  params = toy.params_for(cfg)
  rng = np.random.RandomState(0)
  ids = rng.randint(2, cfg.vocab_size, (8, 16)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[3, 10:] = 0
  ref = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all").logits)
  mesh = sharding.make_mesh(spec)
  sharded = sharding.shard_params(jax.tree.map(np.asarray, params), mesh)
  if mesh.shape["model"] > 1:
    assert sharded["embed"].sharding.spec == P("model", None)
    assert sharded["embed"].shape[0] % mesh.shape["model"] == 0
  ids_s = jax.device_put(ids, sharding.batch_sharding(mesh))
  mask_s = jax.device_put(mask, sharding.batch_sharding(mesh))
  out = np.asarray(forward_jit(sharded, cfg, ids_s, mask_s, logits_at="all").logits)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-5)
