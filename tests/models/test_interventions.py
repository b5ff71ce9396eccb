"""Intervention ops, direction arithmetic and strengths in units of a site's norm."""

import jax
import numpy as np
import pytest

from jaxsem.models import interventions as iv_lib
from jaxsem.models.forward import forward_jit
from jaxsem.models.site_norms import site_norm
from tests import toy

B, T = 3, 12
TARGETS = np.array([[2], [3], [1]])


@pytest.fixture(params=toy.family_params(), scope="module")
def model(request):
  cfg = toy.CONFIGS[request.param]()
  rng = np.random.RandomState(0)
  ids = rng.randint(2, cfg.vocab_size, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, 9:] = 0
  mask[2, 5:] = 0
  ids[mask == 0] = 0
  return cfg, toy.params_for(cfg), ids, mask


def _vectors(cfg, n, seed):
  return np.random.RandomState(seed).randn(n, cfg.d_model).astype(np.float32)


def _logits(model, *ivs):
  cfg, params, ids, mask = model
  return np.asarray(forward_jit(params, cfg, ids, mask, logits_at="all", interventions=ivs).logits)


def _iv(site, vector, strength, op="add", basis=None):
  return iv_lib.make(site, TARGETS, vector, strength, op, seq_len=T, basis=basis)


@pytest.mark.parametrize("op", ["add", "orth_add"])
@pytest.mark.parametrize("site", ["embed", "resid_post.1"])
def test_zero_strength_is_bitwise_identity(model, op, site):
  cfg = model[0]
  v, *basis = _vectors(cfg, 3, seed=1)
  basis = np.stack(basis) if op == "orth_add" else None
  base = _logits(model)
  np.testing.assert_array_equal(_logits(model, _iv(site, v, 0.0, op, basis)), base)
  assert np.abs(_logits(model, _iv(site, v, 4.0, op, basis)) - base).max() > 1e-3


def test_orth_add_equals_add_of_the_orthogonalized_vector(model):
  cfg = model[0]
  v, b0, b1 = _vectors(cfg, 3, seed=2)
  basis = np.stack([b0, b1, b0 - 2 * b1])  # rank-deficient on purpose
  v = v + 3 * b0  # a large component inside the subspace
  w = np.asarray(iv_lib.orthogonalize(v, basis))
  assert np.linalg.norm(w) < np.linalg.norm(v)
  for site in ("embed", "resid_post.1"):
    np.testing.assert_allclose(_logits(model, _iv(site, v, 2.5, "orth_add", basis)),
                               _logits(model, _iv(site, w, 2.5)), atol=1e-5)


def test_orthogonalize_removes_the_span_and_nothing_else():
  rng = np.random.RandomState(3)
  d = 16
  basis = rng.randn(4, d).astype(np.float32) * np.array([[1.0], [100.0], [0.01], [1.0]], np.float32)
  basis[3] = basis[0] + basis[1]  # dependent row
  vectors = rng.randn(5, 2, d).astype(np.float32)  # any leading shape
  out = np.asarray(iv_lib.orthogonalize(vectors, basis))
  assert out.shape == vectors.shape
  unit_rows = basis / np.linalg.norm(basis, axis=1, keepdims=True)
  assert np.abs(out @ unit_rows.T).max() < 1e-5
  # What is removed lies in the span: projecting again changes nothing.
  np.testing.assert_allclose(np.asarray(iv_lib.orthogonalize(out, basis)), out, atol=1e-5)
  # A vector already orthogonal to the basis comes back unchanged.
  q, _ = np.linalg.qr(rng.randn(d, d))
  ortho = q[:, 3] * 5
  np.testing.assert_allclose(np.asarray(iv_lib.orthogonalize(ortho, q[:, :3].T)), ortho, atol=1e-5)
  # A vector inside the span vanishes; a zero basis removes nothing.
  inside = 2 * basis[0] - basis[2]
  assert np.linalg.norm(np.asarray(iv_lib.orthogonalize(inside, basis))) < 1e-4 * np.linalg.norm(inside)
  np.testing.assert_array_equal(np.asarray(iv_lib.orthogonalize(ortho, np.zeros((2, d)))),
                                ortho.astype(np.float32))
  with pytest.raises(ValueError, match="basis must be"):
    iv_lib.orthogonalize(ortho, basis[:, :3])


def test_combine_is_a_weighted_sum():
  vectors = np.random.RandomState(4).randn(3, 8).astype(np.float32)
  weights = np.array([0.5, -2.0, 1.0], np.float32)
  np.testing.assert_allclose(np.asarray(iv_lib.combine(vectors, weights)), weights @ vectors, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(iv_lib.combine(vectors, -weights)),
                                -np.asarray(iv_lib.combine(vectors, weights)))


@pytest.mark.parametrize("op", ["add", "ablate_add", "orth_add"])
def test_double_negation_gives_identical_logits(model, op):
  cfg = model[0]
  v, b = _vectors(cfg, 2, seed=5)
  basis = b[None] if op == "orth_add" else None
  np.testing.assert_array_equal(_logits(model, _iv("resid_post.1", v, 2.0, op, basis)),
                                _logits(model, _iv("resid_post.1", -(-v), 2.0, op, basis)))


@pytest.mark.parametrize("site", ["embed", "resid_post.1"])
def test_ablate_leaves_no_component_along_the_direction(model, site):
  cfg, params, ids, mask = model
  (v,) = _vectors(cfg, 1, seed=6)
  u = v / np.linalg.norm(v)
  out = forward_jit(params, cfg, ids, mask, logits_at="none", capture=(site,),
                    interventions=(_iv(site, v, 1.0, "ablate"),))
  h = np.asarray(out.captured[site])
  along = h[np.arange(B), TARGETS[:, 0]] @ u
  assert np.abs(along).max() < 1e-4
  assert np.abs(h[0, 4] @ u) > 1e-3  # other positions untouched


def test_make_checks_the_basis(model):
  cfg = model[0]
  v, b = _vectors(cfg, 2, seed=7)
  with pytest.raises(ValueError, match="basis"):
    _iv("embed", v, 1.0, "orth_add")
  with pytest.raises(ValueError, match="basis"):
    _iv("embed", v, 1.0, "add", b[None])


_site_norm_jit = jax.jit(site_norm, static_argnames=("config", "site"))


@pytest.mark.parametrize("site", ["embed", "resid_pre.1", "resid_post.2", "final"])
def test_site_norm_is_the_median_over_real_tokens(model, site):
  cfg, params, ids, mask = model
  states = np.asarray(forward_jit(params, cfg, ids, mask, logits_at="none", capture=(site,)).captured[site])
  expected = np.median(np.linalg.norm(states, axis=-1)[mask == 1])
  np.testing.assert_allclose(float(site_norm(params, cfg, ids, mask, site)), expected, rtol=1e-5)
  np.testing.assert_allclose(float(_site_norm_jit(params, cfg, ids, mask, site)), expected, rtol=1e-5)


def test_strength_in_site_units(model):
  """A unit vector at strength k * site_norm moves the target residual by k typical norms."""
  cfg, params, ids, mask = model
  (v,) = _vectors(cfg, 1, seed=8)
  u = v / np.linalg.norm(v)
  scale = float(site_norm(params, cfg, ids, mask, "embed"))
  cap = lambda a: np.asarray(forward_jit(params, cfg, ids, mask, logits_at="none", capture=("embed",),
                                         interventions=(_iv("embed", u, a),)).captured["embed"])
  moved = cap(2.0 * scale) - cap(0.0)
  np.testing.assert_allclose(np.linalg.norm(moved[0, 2]), 2.0 * scale, rtol=1e-5)


def test_site_norm_rejects_unknown_sites(model):
  cfg, params, ids, mask = model
  with pytest.raises(ValueError, match="unknown site"):
    site_norm(params, cfg, ids, mask, "resid_post")
