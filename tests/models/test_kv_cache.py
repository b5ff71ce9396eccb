"""A cached prefix plus suffixes gives what the concatenated prompts give."""

import jax
import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.models import interventions as iv_lib
from jaxsem.models.forward import forward_jit
from jaxsem.models.kv_cache import PrefixCache, prefix_cache
from tests import toy

P, T = 5, 6
LENGTHS = (6, 4, 1, 5)  # suffix lengths: right padding of different lengths
ATOL = 1e-5
# The toy Gemma window (4) is shorter than prefix + suffix, so the window cuts into the prefix.
CONFIGS = {**toy.CONFIGS, "qwen2": lambda: toy.llama_config(qkv_bias=True)}


@pytest.fixture(params=toy.family_params(CONFIGS), scope="module")
def model(request):
  cfg = CONFIGS[request.param]()
  assert cfg.sliding_window is None or cfg.sliding_window < P + T
  return cfg, toy.params_for(cfg)


def _inputs(cfg, seed=0):
  """prefix [P]; suffix ids, mask [B, T]; the concatenated ids, mask [B, P + T]."""
  rng = np.random.RandomState(seed)
  prefix = rng.randint(2, cfg.vocab_size, P).astype(np.int32)
  ids = rng.randint(2, cfg.vocab_size, (len(LENGTHS), T)).astype(np.int32)
  mask = (np.arange(T)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int32)
  ids[mask == 0] = 0
  full_ids = np.concatenate([np.broadcast_to(prefix, (len(LENGTHS), P)), ids], axis=1)
  full_mask = np.concatenate([np.ones((len(LENGTHS), P), np.int32), mask], axis=1)
  return prefix, ids, mask, full_ids, full_mask


_prefix_cache_jit = jax.jit(prefix_cache, static_argnames="config")


def test_cache_shapes_and_jit(model):
  cfg, params = model
  prefix = _inputs(cfg)[0]
  cache = prefix_cache(params, cfg, prefix)
  assert isinstance(cache, PrefixCache) and cache.length == P
  assert cache.k.shape == cache.v.shape == (cfg.n_layers, P, cfg.n_kv_heads, cfg.head_dim)
  jitted = _prefix_cache_jit(params, cfg, prefix)
  assert jitted.length == P
  np.testing.assert_allclose(np.asarray(jitted.k), np.asarray(cache.k), atol=1e-6)
  assert jax.tree.leaves(cache) == [cache.k, cache.v]  # the length is static
  with pytest.raises(ValueError, match="prefix_ids"):
    prefix_cache(params, cfg, prefix[None])


def test_all_positions_and_captures_match_the_full_prompt(model):
  cfg, params = model
  prefix, ids, mask, full_ids, full_mask = _inputs(cfg)
  sites = ("resid_post", "resid_post.1", "final", "keys")
  ref = forward_jit(params, cfg, full_ids, full_mask, logits_at="all", capture=sites)
  out = forward_jit(params, cfg, ids, mask, logits_at="all", capture=sites,
                    prefix=_prefix_cache_jit(params, cfg, prefix))
  real = mask == 1
  np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(ref.logits)[:, P:][real], atol=ATOL)
  for site in ("resid_post.1", "final"):
    np.testing.assert_allclose(np.asarray(out.captured[site])[real],
                               np.asarray(ref.captured[site])[:, P:][real], atol=ATOL)
  for site in ("resid_post", "keys"):
    assert out.captured[site].shape[:3] == (cfg.n_layers, len(LENGTHS), T)
    np.testing.assert_allclose(np.asarray(out.captured[site])[:, real],
                               np.asarray(ref.captured[site])[:, :, P:][:, real], atol=ATOL)


def test_last_and_logit_positions_match(model):
  """"last" takes the restricted last block; positions index the suffix."""
  cfg, params = model
  prefix, ids, mask, full_ids, full_mask = _inputs(cfg)
  cache = _prefix_cache_jit(params, cfg, prefix)
  ref = np.asarray(forward_jit(params, cfg, full_ids, full_mask, logits_at="last").logits)
  out = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="last", prefix=cache).logits)
  np.testing.assert_allclose(out, ref, atol=ATOL)
  pos = np.stack([np.zeros(len(LENGTHS), np.int32), np.array(LENGTHS) - 1], axis=1)
  ref = np.asarray(forward_jit(params, cfg, full_ids, full_mask, logit_positions=pos + P).logits)
  out = np.asarray(forward_jit(params, cfg, ids, mask, logit_positions=pos, prefix=cache).logits)
  assert out.shape == (len(LENGTHS), 2, cfg.vocab_size)
  np.testing.assert_allclose(out, ref, atol=ATOL)


def test_interventions_on_suffix_positions_match(model):
  cfg, params = model
  prefix, ids, mask, full_ids, full_mask = _inputs(cfg)
  targets = np.array([[2, 4], [0, 3], [0, -1], [1, -1]])  # suffix positions, -1 = unused
  vectors = np.random.RandomState(1).randn(2, cfg.d_model).astype(np.float32)

  def ivs(offset, seq_len):
    shifted = np.where(targets >= 0, targets + offset, -1)
    return tuple(iv_lib.make(site, shifted, v, 3.0, seq_len=seq_len)
                 for site, v in zip(("embed", "resid_post.1"), vectors))

  ref = forward_jit(params, cfg, full_ids, full_mask, logits_at="all", capture=("resid_post.2",),
                    interventions=ivs(P, P + T))
  out = forward_jit(params, cfg, ids, mask, logits_at="all", capture=("resid_post.2",),
                    interventions=ivs(0, T), prefix=_prefix_cache_jit(params, cfg, prefix))
  real = mask == 1
  np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(ref.logits)[:, P:][real], atol=ATOL)
  np.testing.assert_allclose(np.asarray(out.captured["resid_post.2"])[real],
                             np.asarray(ref.captured["resid_post.2"])[:, P:][real], atol=ATOL)
  base = forward_jit(params, cfg, ids, mask, logits_at="all", prefix=_prefix_cache_jit(params, cfg, prefix))
  assert np.abs(np.asarray(base.logits) - np.asarray(out.logits))[real].max() > 1e-3


def test_intervention_inside_the_prefix(model):
  cfg, params = model
  prefix, ids, mask, full_ids, full_mask = _inputs(cfg)
  v = np.random.RandomState(2).randn(cfg.d_model).astype(np.float32)
  iv_prefix = iv_lib.make("resid_pre.1", np.array([[1]]), v, 2.0, seq_len=P)
  iv_full = iv_lib.make("resid_pre.1", np.full((len(LENGTHS), 1), 1), v, 2.0, seq_len=P + T)
  cache = prefix_cache(params, cfg, prefix, interventions=(iv_prefix,))
  ref = np.asarray(forward_jit(params, cfg, full_ids, full_mask, interventions=(iv_full,)).logits)
  out = np.asarray(forward_jit(params, cfg, ids, mask, prefix=cache).logits)
  np.testing.assert_allclose(out, ref, atol=ATOL)


@pytest.mark.parametrize("spec", ["data:2,model:4", "data:1,model:8"])
def test_sharded_equals_unsharded(model, spec):
  cfg, params = model
  prefix, ids, mask, _, _ = _inputs(cfg)
  ref = forward_jit(params, cfg, ids, mask, logits_at="all", capture=("final",),
                    prefix=_prefix_cache_jit(params, cfg, prefix))
  mesh = sharding.make_mesh(spec)
  sharded = sharding.shard_params(jax.tree.map(np.asarray, params), mesh)
  cache = _prefix_cache_jit(sharded, cfg, prefix)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))
  out = forward_jit(sharded, cfg, put(ids), put(mask), logits_at="all", capture=("final",), prefix=cache)
  real = mask == 1
  assert out.logits.shape == ref.logits.shape
  np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(ref.logits)[real], atol=ATOL)
  np.testing.assert_allclose(np.asarray(out.captured["final"])[real], np.asarray(ref.captured["final"])[real],
                             atol=ATOL)
