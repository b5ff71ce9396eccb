"""PCA, randomized SVD, varimax, congruence: numpy references and planted structure."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.kernels import subspace as ss


# ---------------------------------------------------------------- numpy references

def _sign_fix(cols):
  idx = np.argmax(np.abs(cols), axis=0)
  signs = np.sign(cols[idx, np.arange(cols.shape[1])])
  return np.where(signs == 0, 1.0, signs)


def _np_pca(x, standardize, k):
  x = np.asarray(x, np.float64)
  n = len(x)
  z = x - x.mean(0)
  if standardize:
    z = z / z.std(0, ddof=1)
  u, s, vt = np.linalg.svd(z, full_matrices=False)
  v = vt.T[:, :k] * _sign_fix(vt.T[:, :k])
  eig = s ** 2 / (n - 1)
  ratio = s ** 2 / np.sum(s ** 2)
  return dict(ratio=ratio[:k], cumulative=np.cumsum(ratio)[:k], components=v, loadings=v * np.sqrt(eig[:k]),
              scores=z @ v, eig=eig)


def _np_varimax(phi, gamma=1.0, max_iter=500, tol=1e-6, normalize=True):
  phi = np.asarray(phi, np.float64)
  p, k = phi.shape
  h = np.sqrt((phi ** 2).sum(1, keepdims=True))
  a = phi / h if normalize else phi
  rot = np.eye(k)
  for _ in range(max_iter):
    lam = a @ rot
    u, _, vt = np.linalg.svd(a.T @ (lam ** 3 - (gamma / p) * lam @ np.diag(np.diag(lam.T @ lam))))
    rot, old = u @ vt, rot
    if np.abs(rot - old).max() <= tol:
      break
  rotated = phi @ rot
  signs = _sign_fix(rotated)
  return rotated * signs, rot * signs


def _varimax_criterion(loadings):
  sq = loadings ** 2
  return np.sum(np.var(sq, axis=0))


# ---------------------------------------------------------------- planted data

def _planted_factors(n=600, per=8, noise=0.45, seed=0):
  """Words x scales from 3 equal-variance latent factors; each scale loads on one."""
  rng = np.random.default_rng(seed)
  k, s = 3, 3 * per
  assign = np.repeat(np.arange(k), per)
  weights = rng.uniform(0.7, 1.0, s) * rng.choice([-1, 1], s)
  pattern = np.zeros((s, k))
  pattern[np.arange(s), assign] = weights
  x = rng.normal(size=(n, k)) @ pattern.T + rng.normal(size=(n, s)) * noise
  planted_share = np.mean(weights ** 2 / (weights ** 2 + noise ** 2))
  return x.astype(np.float32), pattern, assign, planted_share


def _distinct_spectrum(n=300, s=12, seed=1):
  """Full-rank data with well-separated component variances (stable eigenvectors)."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(s, s)))
  x = rng.normal(size=(n, s)) * np.geomspace(5, 0.5, s) @ q.T + rng.normal(size=s) * 3
  return x.astype(np.float32)


# ---------------------------------------------------------------- PCA

@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("method", ["svd", "gram"])
def test_pca_matches_numpy(standardize, method):
  x = _distinct_spectrum()
  got = ss.pca(x, standardize=standardize, k=5, method=method)
  ref = _np_pca(x, standardize, 5)
  tol = 1e-5 if method == "svd" else 1e-4  # the cross-product squares the condition number
  np.testing.assert_allclose(got.explained_variance_ratio, ref["ratio"], atol=tol)
  np.testing.assert_allclose(got.cumulative, ref["cumulative"], atol=tol)
  np.testing.assert_allclose(got.components, ref["components"], atol=tol)
  np.testing.assert_allclose(got.loadings, ref["loadings"], rtol=tol,
                             atol=tol * np.abs(ref["loadings"]).max())
  np.testing.assert_allclose(got.scores, ref["scores"], atol=tol * np.abs(ref["scores"]).max())
  np.testing.assert_allclose(got.eigenvalues, ref["eig"], rtol=tol, atol=tol * ref["eig"].max())
  np.testing.assert_allclose(got.mean, x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-5)
  assert got.components.shape == (12, 5) and got.scores.shape == (300, 5) and got.eigenvalues.shape == (12,)
  if standardize:  # loadings are the correlations of scales with component scores
    corr = np.corrcoef(np.concatenate([x, np.asarray(got.scores)], axis=1).T)[:12, 12:]
    np.testing.assert_allclose(got.loadings, corr, atol=1e-4)


def test_pca_float64_option_is_tighter():
  x = _distinct_spectrum(seed=2)
  got = ss.pca(x, k=4, dtype="float64")
  ref = _np_pca(x, True, 4)
  assert got.loadings.dtype == np.float64
  np.testing.assert_allclose(got.loadings, ref["loadings"], atol=1e-10)
  np.testing.assert_allclose(got.scores, ref["scores"], atol=1e-9)


def test_pca_sharded_rows_equal_unsharded():
  x = _distinct_spectrum(n=296)
  mesh = sharding.make_mesh("data:2,model:4")
  spec = sharding.logical_to_spec(("words", "embed"), x.shape, mesh)
  assert spec == P("model", None)
  on_mesh = jax.device_put(x, NamedSharding(mesh, spec))
  for method in ("svd", "gram"):
    a, b = ss.pca(x, k=3, method=method), ss.pca(on_mesh, k=3, method=method)
    np.testing.assert_allclose(b.loadings, a.loadings, atol=1e-5)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)


def test_pca_sign_convention():
  res = ss.pca(_distinct_spectrum(seed=3), k=6)
  comps = np.asarray(res.components)
  assert (comps[np.argmax(np.abs(comps), axis=0), np.arange(6)] > 0).all()
  flipped = ss.pca(-_distinct_spectrum(seed=3), k=6)  # negating the data cannot flip components
  np.testing.assert_allclose(flipped.components, comps, atol=1e-5)


def test_planted_three_factors_recovered():
  x, pattern, assign, share = _planted_factors()
  res = ss.pca(x, k=3)
  assert abs(float(res.cumulative[2]) - share) < 0.03
  full = ss.pca(x)
  assert float(full.explained_variance_ratio[2]) > 4 * float(full.explained_variance_ratio[3])
  assert ss.n_components_for(full.cumulative, (share - 0.05,))[share - 0.05] == 3
  rotated, rotation = ss.varimax(res.loadings)
  cong = np.asarray(ss.tucker_congruence_matrix(pattern, rotated))
  cols, signs, values = ss.match_components(cong)
  assert sorted(cols.tolist()) == [0, 1, 2]
  assert (np.abs(values) > 0.95).all()
  # Every scale's strongest rotated factor is the one it was planted on.
  strongest = np.argmax(np.abs(np.asarray(rotated)), axis=1)
  np.testing.assert_array_equal(strongest, cols[assign])
  # Unrotated components of equal-variance factors mix them: varimax is what recovers them.
  _, _, raw = ss.match_components(np.asarray(ss.tucker_congruence_matrix(pattern, res.loadings)))
  assert np.abs(raw).min() < np.abs(values).min()


# ---------------------------------------------------------------- varimax

@pytest.mark.parametrize("gamma,normalize", [(1.0, True), (1.0, False), (0.0, True)])
def test_varimax_matches_numpy(gamma, normalize):
  x, *_ = _planted_factors(seed=4)
  loadings = np.asarray(ss.pca(x, k=3).loadings, np.float64)
  ref_rot, ref_r = _np_varimax(loadings, gamma, tol=1e-12, normalize=normalize)
  got, r = ss.varimax(loadings, gamma, normalize=normalize)  # float32, default tol
  np.testing.assert_allclose(got, ref_rot, atol=1e-5)
  np.testing.assert_allclose(r, ref_r, atol=1e-5)
  got64, r64 = ss.varimax(loadings, gamma, tol=1e-12, normalize=normalize, dtype="float64")
  np.testing.assert_allclose(got64, ref_rot, atol=1e-10)
  np.testing.assert_allclose(r64.T @ r64, np.eye(3), atol=1e-12)
  np.testing.assert_allclose(loadings @ r64, got64, atol=1e-12)
  np.testing.assert_allclose((got64 ** 2).sum(1), (loadings ** 2).sum(1), atol=1e-12)  # communalities kept
  if gamma == 1.0:
    assert _varimax_criterion(got64) > _varimax_criterion(loadings)


# ---------------------------------------------------------------- randomized SVD

def test_randomized_svd_on_low_rank_plus_noise():
  rng = np.random.default_rng(5)
  n, s, r = 504, 200, 10
  u0, _ = np.linalg.qr(rng.normal(size=(n, r)))
  v0, _ = np.linalg.qr(rng.normal(size=(s, r)))
  x = (u0 * np.geomspace(100, 10, r)) @ v0.T + rng.normal(size=(n, s)) * 0.01
  ref_u, ref_s, ref_vt = np.linalg.svd(x, full_matrices=False)
  best = (ref_u[:, :r] * ref_s[:r]) @ ref_vt[:r]  # optimal rank-r approximation
  u, sv, vt = ss.randomized_svd(x.astype(np.float32), r, key=jax.random.key(3))
  np.testing.assert_allclose(sv, ref_s[:r], rtol=1e-3)
  signed_vt = ref_vt[:r] * _sign_fix(ref_vt[:r].T)[:, None]
  np.testing.assert_allclose(np.abs(np.sum(np.asarray(vt) * signed_vt, axis=1)), 1.0, atol=1e-3)
  np.testing.assert_allclose(vt, signed_vt, atol=2e-3)  # same sign convention
  np.testing.assert_allclose(np.asarray(u).T @ np.asarray(u), np.eye(r), atol=1e-4)
  recon = (np.asarray(u) * np.asarray(sv)) @ np.asarray(vt)
  assert np.linalg.norm(recon - x) < np.linalg.norm(best - x) * (1 + 1e-3)
  assert np.linalg.norm(recon - best) / np.linalg.norm(best) < 1e-4
  mesh = sharding.make_mesh("data:1,model:8")
  sharded = jax.device_put(x.astype(np.float32), NamedSharding(mesh, P("model", None)))
  np.testing.assert_allclose(ss.randomized_svd(sharded, r, key=jax.random.key(3))[1], sv, rtol=1e-5)


# ---------------------------------------------------------------- congruence, dimensionality

def test_tucker_congruence_matches_numpy():
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 4))
  ref = (a.T @ b) / np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0))
  np.testing.assert_allclose(ss.tucker_congruence_matrix(a, b), ref, atol=1e-6)
  np.testing.assert_allclose(ss.tucker_congruence(a[:, 0], b[:, 1]), ref[0, 1], atol=1e-6)
  np.testing.assert_allclose(ss.tucker_congruence(a[:, 0], 3 * a[:, 0]), 1.0, atol=1e-6)
  np.testing.assert_allclose(ss.tucker_congruence(a[:, 0], -a[:, 0]), -1.0, atol=1e-6)
  np.testing.assert_allclose(jax.jit(ss.tucker_congruence_matrix)(a, b), ref, atol=1e-6)
  with pytest.raises(InputError, match="all-zero column"):
    ss.tucker_congruence_matrix(a, np.zeros((20, 2)))


def test_match_components_finds_permutation_and_signs():
  rng = np.random.default_rng(7)
  a = rng.normal(size=(30, 4))
  perm, signs = np.array([2, 0, 3, 1]), np.array([1, -1, -1, 1])
  b = np.zeros((30, 5))
  b[:, perm] = a * signs
  b[:, 4] = rng.normal(size=30)
  cols, got_signs, values = ss.match_components(ss.tucker_congruence_matrix(a, b))
  np.testing.assert_array_equal(cols, perm)
  np.testing.assert_array_equal(got_signs, signs)
  np.testing.assert_allclose(np.abs(values), 1.0, atol=1e-5)


def test_participation_ratio_and_n_components():
  lam = np.array([5.0, 3.0, 1.0, 0.5])
  np.testing.assert_allclose(ss.participation_ratio(lam), lam.sum() ** 2 / (lam ** 2).sum(), rtol=1e-6)
  np.testing.assert_allclose(ss.participation_ratio(np.ones(7)), 7.0, rtol=1e-6)
  np.testing.assert_allclose(ss.participation_ratio(np.array([2.0, 0, 0])), 1.0, rtol=1e-6)
  np.testing.assert_allclose(ss.participation_ratio(np.stack([lam, np.ones(4)])),
                             [lam.sum() ** 2 / (lam ** 2).sum(), 4], rtol=1e-6)
  cum = np.cumsum([0.45, 0.25, 0.2, 0.1]).astype(np.float32)  # 0.45, 0.7, 0.9 (rounded), 1.0
  assert ss.n_components_for(cum) == {0.5: 2, 0.8: 3, 0.9: 3}
  assert ss.n_components_for(cum[:2], (0.5, 0.95)) == {0.5: 2, 0.95: None}


# ---------------------------------------------------------------- bad input

def test_bad_inputs():
  x = _distinct_spectrum(n=40, s=6)
  bad = x.copy()
  bad[3, 2] = np.nan
  with pytest.raises(InputError, match="row 3"):
    ss.pca(bad)
  with pytest.raises(InputError, match="k=7"):
    ss.pca(x, k=7)
  low_rank = (np.random.default_rng(0).normal(size=(40, 2)) @ np.random.default_rng(1).normal(size=(2, 6)))
  with pytest.raises(InputError, match="rank 2"):
    ss.pca(low_rank.astype(np.float32), k=3, standardize=False)
  const = x.copy()
  const[:, 4] = 1.0
  with pytest.raises(InputError, match="Column 4 .* constant"):
    ss.pca(const)
  with pytest.raises(InputError, match="k=7"):
    ss.randomized_svd(x, 7)
  with pytest.raises(InputError, match="inf"):
    ss.varimax(np.array([[np.inf, 1.0], [0.5, 0.2]]))
  with pytest.raises(InputError, match="at least two rows"):
    ss.pca(x[:1])
