"""Invariants of the pure forward pass on tiny random models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem.models import interventions as iv_lib
from jaxsem.models.forward import forward_jit, rms_norm, unembed
from tests import toy

B, T = 3, 12


def _batch(vocab=250, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, vocab, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, 9:] = 0
  mask[2, 5:] = 0
  ids[mask == 0] = 0
  return ids, mask


@pytest.fixture(params=toy.family_params())
def model(request):
  cfg = toy.CONFIGS[request.param]()
  return cfg, toy.params_for(cfg)


def test_last_and_positions_agree_with_all(model):
  cfg, params = model
  ids, mask = _batch()
  full = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all").logits)
  last = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="last").logits)
  lengths = mask.sum(1)
  np.testing.assert_allclose(last, full[np.arange(B), lengths - 1], atol=1e-5)
  pos = np.stack([np.zeros(B, np.int32), lengths - 1], axis=1)
  two = np.asarray(forward_jit(params, cfg, ids, mask, logit_positions=pos).logits)
  assert two.shape == (B, 2, cfg.vocab_size)
  np.testing.assert_allclose(two[:, 1], last, atol=1e-5)
  np.testing.assert_allclose(two[:, 0], full[:, 0], atol=1e-5)
  assert forward_jit(params, cfg, ids, mask, logits_at="none").logits is None


def test_padding_and_batch_composition_do_not_change_results(model):
  cfg, params = model
  ids, mask = _batch()
  full = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all").logits)
  n = int(mask[2].sum())
  alone = np.asarray(forward_jit(params, cfg, ids[2:3, :n], mask[2:3, :n], logits_at="all").logits)
  np.testing.assert_allclose(alone[0], full[2, :n], atol=2e-5)
  # Garbage in padded slots must not leak into real positions.
  noisy = ids.copy()
  noisy[mask == 0] = 7
  again = np.asarray(forward_jit(params, cfg, noisy, mask, logits_at="all").logits)
  np.testing.assert_allclose(again[mask == 1], full[mask == 1], atol=1e-6)


def test_capture_sites_are_consistent(model):
  cfg, params = model
  ids, mask = _batch()
  out = forward_jit(params, cfg, ids, mask, logits_at="all",
                    capture=("embed", "resid_pre", "resid_post", "resid_post.1", "resid_pre.2", "final"))
  c = {k: np.asarray(v) for k, v in out.captured.items()}
  L = cfg.n_layers
  assert c["resid_pre"].shape == (L, B, T, cfg.d_model)
  np.testing.assert_array_equal(c["embed"], c["resid_pre"][0])
  np.testing.assert_array_equal(c["resid_post"][:-1], c["resid_pre"][1:])
  np.testing.assert_array_equal(c["resid_post.1"], c["resid_post"][1])
  np.testing.assert_array_equal(c["resid_pre.2"], c["resid_pre"][2])
  final = rms_norm(jnp.asarray(c["resid_post"][-1]), params["final_norm"], cfg.norm_eps)
  np.testing.assert_allclose(c["final"], np.asarray(final), atol=1e-6)
  np.testing.assert_allclose(np.asarray(unembed(params, cfg, c["final"])), np.asarray(out.logits), atol=1e-4)
  emb = np.asarray(params["embed"])[ids] * np.float32(cfg.embed_scale)
  np.testing.assert_allclose(c["embed"], emb, rtol=1e-6)


def test_capture_bad_layer_raises(model):
  cfg, params = model
  ids, mask = _batch()
  with pytest.raises(ValueError, match="out of range"):
    forward_jit(params, cfg, ids, mask, capture=(f"resid_post.{cfg.n_layers}",))


def _iv(cfg, site, strength, vector=None, op="add", seed=1):
  v = np.random.RandomState(seed).randn(cfg.d_model).astype(np.float32) if vector is None else vector
  return iv_lib.make(site, np.array([[2], [3], [1]]), v, strength, op, seq_len=T)


@pytest.mark.parametrize("site", ["embed", "resid_pre.1", "resid_post.0", "resid_post.2"])
def test_zero_strength_is_exact_identity(model, site):
  cfg, params = model
  ids, mask = _batch()
  base = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all").logits)
  out = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all",
                               interventions=(_iv(cfg, site, 0.0),)).logits)
  np.testing.assert_array_equal(out, base)
  moved = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all",
                                 interventions=(_iv(cfg, site, 4.0),)).logits)
  assert np.abs(moved - base).max() > 1e-3


def test_double_negation_and_site_aliases(model):
  cfg, params = model
  ids, mask = _batch()
  v = np.random.RandomState(3).randn(cfg.d_model).astype(np.float32)
  run = lambda *ivs: np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all", interventions=ivs).logits)
  a = run(_iv(cfg, "resid_post.1", 2.0, v))
  b = run(_iv(cfg, "resid_post.1", 2.0, -(-v)))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(run(_iv(cfg, "embed", 2.0, v)), run(_iv(cfg, "resid_pre.0", 2.0, v)))
  # Adding at the output of block l equals adding at the input of block l+1.
  np.testing.assert_allclose(run(_iv(cfg, "resid_post.0", 2.0, v)), run(_iv(cfg, "resid_pre.1", 2.0, v)),
                             atol=1e-5)


def test_add_is_linear_at_the_embedding_site(model):
  cfg, params = model
  ids, mask = _batch()
  v = np.random.RandomState(5).randn(cfg.d_model).astype(np.float32)
  cap = lambda a: np.asarray(forward_jit(params, cfg, ids, mask, logits_at="none", capture=("embed",),
                                         interventions=(_iv(cfg, "embed", a, v),)).captured["embed"])
  base, one, three = cap(0.0), cap(1.0), cap(3.0)
  np.testing.assert_allclose(three - base, 3 * (one - base), atol=1e-4)
  delta = one - base
  np.testing.assert_allclose(delta[0, 2], v, atol=1e-5)  # only the target position moves
  delta[0, 2] = 0
  delta[1, 3] = 0
  delta[2, 1] = 0
  assert np.abs(delta).max() == 0


def test_ablate_removes_the_component_and_ablate_add_sets_it(model):
  cfg, params = model
  ids, mask = _batch()
  v = np.random.RandomState(6).randn(cfg.d_model).astype(np.float32)
  u = v / np.linalg.norm(v)

  def cap(op, a):
    out = forward_jit(params, cfg, ids, mask, logits_at="none", capture=("resid_post.1",),
                      interventions=(_iv(cfg, "resid_post.1", a, v, op),))
    return np.asarray(out.captured["resid_post.1"])

  ablated = cap("ablate", 0.0)
  assert abs(ablated[0, 2] @ u) < 1e-4
  assert abs(ablated[0, 4] @ u) > 1e-3  # other positions untouched
  replaced = cap("ablate_add", 2.5)
  np.testing.assert_allclose(replaced[0, 2] @ u, 2.5 * np.linalg.norm(v), rtol=1e-4)


def test_bfloat16_tracks_float32(model):
  cfg, params = model
  ids, mask = _batch()
  ref = np.asarray(forward_jit(params, cfg, ids, mask).logits)
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  out = forward_jit(p16, cfg, ids, mask)
  assert out.logits.dtype == jnp.float32
  corr = np.corrcoef(np.asarray(out.logits).ravel(), ref.ravel())[0, 1]
  assert corr > 0.99


def test_restricted_last_block_matches_full_pass(model):
  """'last' runs the last block for the read positions only; captures that need the
  whole last block switch that off. Both must give the same logits."""
  cfg, params = model
  ids, mask = _batch()
  fast = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="last").logits)
  full = forward_jit(params, cfg, ids, mask, logits_at="last", capture=("final", "resid_pre"))
  np.testing.assert_allclose(fast, np.asarray(full.logits), atol=2e-5)
  assert full.captured["final"].shape == (B, T, cfg.d_model)
  assert full.captured["resid_pre"].shape[0] == cfg.n_layers
  pre = forward_jit(params, cfg, ids, mask, logits_at="last", capture=("resid_pre",))
  np.testing.assert_array_equal(np.asarray(pre.captured["resid_pre"]), np.asarray(full.captured["resid_pre"]))
  np.testing.assert_allclose(np.asarray(pre.logits), fast, atol=2e-5)
