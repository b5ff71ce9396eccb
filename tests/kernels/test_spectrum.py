"""The projection spectrum from row moments equals PCA of the materialised projection matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.kernels import projection, spectrum, subspace


def _data(n=600, d=24, s=40, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.linspace(3, 0.2, d) + rng.normal(size=d)
  x[5] = 0.0  # a zero row: its cosine scores are 0
  return x.astype(np.float32), rng.normal(size=(s, d)).astype(np.float32)


def _numpy_ratios(p, standardize):
  """Independent: eigenvalues of the correlation (or covariance) matrix of the columns."""
  c = np.corrcoef(p, rowvar=False) if standardize else np.cov(p, rowvar=False)
  lam = np.sort(np.clip(np.linalg.eigvalsh(c), 0, None))[::-1]
  return lam / lam.sum()


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("shape", [(600, 24, 40), (600, 24, 10)], ids=["S>D", "S<D"])
def test_spectrum_matches_pca_of_the_matrix(metric, standardize, shape):
  x, u = _data(*shape)
  p = np.asarray(projection.project(x, u, metric), np.float64)
  spec = spectrum.projection_spectrum(spectrum.row_moments(x, metric), u, standardize)
  ref = _numpy_ratios(p, standardize)
  r = len(spec.explained_variance_ratio)
  assert r == min(shape[1], shape[2])
  np.testing.assert_allclose(spec.explained_variance_ratio, ref[:r], atol=2e-5)
  np.testing.assert_allclose(spec.cumulative[-1], 1.0, atol=1e-5)  # rank <= D: nothing beyond
  pca = subspace.pca(p, standardize=standardize, dtype="float64")
  np.testing.assert_allclose(spec.explained_variance_ratio, np.asarray(pca.explained_variance_ratio)[:r],
                             atol=2e-5)
  lam = np.asarray(pca.eigenvalues)[:r]
  np.testing.assert_allclose(spec.eigenvalues, lam, rtol=1e-4, atol=1e-6 * lam[0])
  want = subspace.n_components_for(np.cumsum(ref))
  assert spec.n_components == want
  assert spec.participation_ratio == pytest.approx(ref.sum() ** 2 / np.sum(ref ** 2), rel=1e-4)


def test_planted_low_dimensional_vocabulary_is_recovered():
  """Vectors varying in a 3-D subspace (plus tiny noise): 3 components explain > 99%."""
  rng = np.random.default_rng(1)
  basis, _ = np.linalg.qr(rng.normal(size=(32, 3)))
  x = rng.normal(size=(2000, 3)) * [3.0, 2.0, 1.0] @ basis.T + 1e-3 * rng.normal(size=(2000, 32))
  u = rng.normal(size=(200, 32))
  spec = spectrum.projection_spectrum(spectrum.row_moments(x, "dot"), u, standardize=False)
  assert spec.cumulative[2] > 0.99 and spec.n_components[0.9] <= 3
  iso = spectrum.projection_spectrum(spectrum.row_moments(rng.normal(size=(2000, 32)), "dot"), u, False)
  assert iso.n_components[0.9] > 10  # isotropic vectors: no such collapse


def test_padding_rows_and_sharding_do_not_change_moments():
  x, u = _data(n=500)
  ref = spectrum.row_moments(x, "cosine")
  padded = np.concatenate([x, np.full((12, x.shape[1]), 7.0, np.float32)])  # junk padding rows
  mesh = sharding.make_mesh("data:1,model:8")
  placed = jax.device_put(padded, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model", None)))
  got = spectrum.row_moments(placed, "cosine", n_rows=500)
  np.testing.assert_allclose(np.asarray(got.mean), np.asarray(ref.mean), atol=1e-6)
  np.testing.assert_allclose(np.asarray(got.cov), np.asarray(ref.cov), atol=1e-6)
  a = spectrum.projection_spectrum(got, u).explained_variance_ratio
  np.testing.assert_allclose(a, spectrum.projection_spectrum(ref, u).explained_variance_ratio, atol=1e-6)


def test_bad_input_is_named():
  x, u = _data()
  m = spectrum.row_moments(x, "dot")
  with pytest.raises(InputError, match="dimension 24"):
    spectrum.projection_spectrum(m, u[:, :10])
  with pytest.raises(InputError, match="Row 3 of the directions has zero norm"):
    spectrum.projection_spectrum(m, np.where(np.arange(len(u))[:, None] == 3, 0.0, u))
  flat = np.zeros((x.shape[0], x.shape[1]), np.float32)
  flat[:, 0] = np.arange(x.shape[0])  # only axis 0 varies; a direction along axis 1 does not
  e = np.eye(x.shape[1], dtype=np.float32)[:3]
  with pytest.raises(InputError, match="direction 1 do not vary"):
    spectrum.projection_spectrum(spectrum.row_moments(flat, "dot"), e)
  bad = x.copy()
  bad[7, 2] = np.nan
  with pytest.raises(InputError, match="row 7"):
    spectrum.row_moments(bad, "dot")
  with pytest.raises(InputError, match="metric"):
    spectrum.row_moments(x, "euclid")
  with pytest.raises(InputError, match="two rows"):
    spectrum.row_moments(x[:1], "dot")
  assert np.isfinite(np.asarray(jnp.asarray(m.cov))).all()
