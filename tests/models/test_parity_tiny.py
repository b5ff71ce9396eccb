"""Logits parity with transformers on tiny random models loaded from HF snapshots.

Slow: transformers (and torch) compute the reference logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from jaxsem import sharding  # noqa: E402
from jaxsem.models import hf_load as hc  # noqa: E402
from jaxsem.models.forward import forward  # noqa: E402
from tests import hf_fixtures as fx  # noqa: E402

pytestmark = pytest.mark.slow

SEQ_LEN = 12  # longer than every sliding window in the fixtures (4 and 5)
LENGTHS = [12, 7, 3, 10]  # right padding, different lengths


@pytest.fixture(scope="module")
def case(tmp_path_factory):
  """name -> (config, numpy params, token_ids, mask, reference logits [B, T, V])."""
  cache = {}

  def get(name):
    if name not in cache:
      model = fx.build(name, seed=1)
      d = fx.save(model, str(tmp_path_factory.mktemp(name)))
      config, params, _ = hc.load_hf(d)
      ids, mask = fx.batch(LENGTHS, SEQ_LEN, seed=2)
      cache[name] = (config, params, ids, mask, fx.hf_logits(model, ids, mask))
    return cache[name]

  return get


def _run(params, config, ids, mask, logits_at):
  fn = jax.jit(forward, static_argnames=("config", "logits_at"))
  return np.asarray(fn(params, config, jnp.asarray(ids), jnp.asarray(mask), logits_at=logits_at).logits)


@pytest.mark.parametrize("name", sorted(fx.CONFIGS))
def test_logits_match_transformers(case, name):
  config, params, ids, mask, ref = case(name)
  got = _run(params, config, ids, mask, "all")
  assert got.shape == ref.shape == (len(LENGTHS), SEQ_LEN, config.vocab_size)
  valid = mask.astype(bool)
  err = np.abs(got[valid] - ref[valid]).max()
  assert err < 1e-4, f"{name}: max abs diff {err:.3g} over valid positions"
  assert np.abs(ref[valid]).max() > 1.0  # the reference logits are not trivially small

  last = _run(params, config, ids, mask, "last")
  rows = np.arange(len(LENGTHS))
  want_last = ref[rows, np.asarray(LENGTHS) - 1]
  assert last.shape == want_last.shape
  np.testing.assert_allclose(last, want_last, rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name, change", [
    ("gemma3", {"sliding_window": SEQ_LEN}),
    ("mistral_window", {"sliding_window": SEQ_LEN}),
    ("gemma3", {"rope_scaling": None}),
    ("llama3_rope", {"rope_scaling": None}),
    ("gemma3", {"rope_local_theta": 1_000_000.0}),
    ("qwen2_bias", {"qkv_bias": False}),
    ("qwen3_qk_norm", {"qk_norm": False}),
])
def test_fixture_features_matter(case, name, change):
  """The parity above is meaningful: each feature changes the logits of this batch."""
  config, params, ids, mask, ref = case(name)
  got = _run(params, dataclasses.replace(config, **change), ids, mask, "all")
  valid = mask.astype(bool)
  assert np.abs(got[valid] - ref[valid]).max() > 1e-3


def test_gemma3_attn_softcap_in_config_is_ignored_like_the_reference(tmp_path):
  model = fx.build(fx.gemma3_config(attn_logit_softcapping=1.0, final_logit_softcapping=3.0), seed=5)
  d = fx.save(model, str(tmp_path / "snap"))
  with pytest.warns(UserWarning, match="attn_logit_softcapping"):
    config, params, _ = hc.load_hf(d)
  ids, mask = fx.batch(LENGTHS, SEQ_LEN, seed=6)
  ref = fx.hf_logits(model, ids, mask)
  valid = mask.astype(bool)
  assert np.abs(_run(params, config, ids, mask, "all")[valid] - ref[valid]).max() < 1e-4
  capped = _run(params, dataclasses.replace(config, attn_softcap=1.0), ids, mask, "all")
  assert np.abs(capped[valid] - ref[valid]).max() > 1e-3


@pytest.mark.parametrize("name", ["gemma3_softcap_untied", "qwen2_bias", "qwen3_qk_norm"])
def test_sharded_equals_unsharded(case, name):
  config, params, ids, mask, _ = case(name)
  mesh = sharding.make_mesh("data:2,model:4")
  placed = sharding.shard_params(params, mesh)
  assert placed["blocks"]["q"].sharding.spec[2] == "model"  # heads really are split
  batch_sharding = sharding.batch_sharding(mesh)
  ids_s = jax.device_put(jnp.asarray(ids), batch_sharding)
  mask_s = jax.device_put(jnp.asarray(mask), batch_sharding)
  want = _run(params, config, ids, mask, "all")
  got = _run(placed, config, ids_s, mask_s, "all")
  # Splitting the head and MLP sums over devices reorders float32 additions; the
  # difference stays at rounding level relative to the logit scale.
  err = np.abs(got - want).max()
  assert err <= 1e-5 * np.abs(want).max(), f"{name}: max abs diff {err:.3g}"


def test_sharded_load_via_place(tmp_path):
  """Loading straight onto the mesh (a ``Placer``) gives the same logits as loading to host."""
  model = fx.build("llama_gqa", seed=3)
  d = fx.save(model, str(tmp_path / "snap"), max_shard_size="40KB")
  mesh = sharding.make_mesh("data:2,model:4")
  config, placed, _ = hc.load_hf(d, placer=sharding.make_placer(mesh))
  assert len(placed["embed"].sharding.device_set) == 8
  ids, mask = fx.batch(LENGTHS, SEQ_LEN, seed=4)
  got = _run(placed, config, ids, mask, "all")
  ref = fx.hf_logits(model, ids, mask)
  valid = mask.astype(bool)
  assert np.abs(got[valid] - ref[valid]).max() < 1e-4
