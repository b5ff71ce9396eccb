"""Direction construction: planted axes, numpy agreement, bad input."""

import jax
import numpy as np
import pytest

from jaxsem.errors import InputError
from jaxsem.kernels import directions as dr


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _planted_axis(seed=0, v=2000, d=32, strength=3.0):
  rng = np.random.default_rng(seed)
  u = _unit(rng.normal(size=d))
  t = rng.normal(size=v) * strength
  vectors = (rng.normal(size=(v, d)) + t[:, None] * u).astype(np.float32)
  order = np.argsort(t)
  return vectors, u, order[-100:], order[:100]


def test_pole_mean_difference_recovers_planted_axis():
  vectors, u, pos, neg = _planted_axis()
  direction = np.asarray(dr.pole_mean_difference(vectors[pos], vectors[neg]))
  cos = direction @ u / np.linalg.norm(direction)
  assert cos > 0.99  # positive minus negative: points towards the positive pole
  np.testing.assert_allclose(direction, vectors[pos].mean(0) - vectors[neg].mean(0), atol=1e-5)
  # Unequal pole sizes are fine, and unit-normalising the words still recovers the axis.
  direction = np.asarray(dr.pole_mean_difference(vectors[pos[:40]], vectors[neg], normalize_words=True))
  assert direction @ u / np.linalg.norm(direction) > 0.98


def test_mean_pair_difference_matches_numpy():
  vectors, u, pos, neg = _planted_axis(seed=1)
  a, b = vectors[pos[:30]], vectors[neg[:30]]
  np.testing.assert_allclose(dr.mean_pair_difference(a, b), dr.pole_mean_difference(a, b), atol=1e-5)
  ref = _unit(a.astype(np.float64) - b).mean(0)
  got = np.asarray(dr.mean_pair_difference(a, b, normalize_pairs=True))
  np.testing.assert_allclose(got, ref, atol=1e-6)
  assert got @ u / np.linalg.norm(got) > 0.99
  with pytest.raises(InputError, match="as many positive as negative"):
    dr.mean_pair_difference(a, b[:29])
  with pytest.raises(InputError, match="zero norm"):
    dr.mean_pair_difference(a[:3], a[:3], normalize_pairs=True)


def test_directions_trace_under_jit():
  vectors, _, pos, neg = _planted_axis(seed=2)
  eager = dr.pole_mean_difference(vectors[pos], vectors[neg])
  jitted = jax.jit(dr.pole_mean_difference)(vectors[pos], vectors[neg])
  np.testing.assert_allclose(jitted, eager, atol=1e-6)


def test_semaxis_expand_finds_the_pole_cluster():
  rng = np.random.default_rng(3)
  d, per = 24, 12
  centres = _unit(rng.normal(size=(3, d))) * 4
  vocab = np.concatenate([c + rng.normal(size=(per, d)) * 0.5 for c in centres] + [rng.normal(size=(40, d))])
  vocab = np.concatenate([vocab, np.zeros((8, d))]).astype(np.float32)  # trailing zero rows = padding
  seeds = np.arange(3)  # three words of cluster 0
  other = np.arange(per, per + 3)  # seeds of the opposite pole, cluster 1
  exclude = np.concatenate([seeds, other])
  out = dr.semaxis_expand(vocab[seeds], vocab, k=per - 3, exclude=exclude)
  assert sorted(np.asarray(out.indices).tolist()) == list(range(3, per))
  # numpy reference: cosine to the raw centroid, excluded rows removed, descending.
  centroid = vocab[seeds].astype(np.float64).mean(0)
  norms = np.linalg.norm(vocab, axis=1)
  cos = np.where(norms > 0, vocab @ centroid / np.maximum(norms, 1e-30) / np.linalg.norm(centroid), -np.inf)
  cos[exclude] = -np.inf
  ref = np.argsort(-cos)[:per - 3]
  np.testing.assert_array_equal(out.indices, ref)
  np.testing.assert_allclose(out.cosines, cos[ref], atol=1e-5)
  np.testing.assert_array_equal(out.vectors, np.concatenate([vocab[seeds], vocab[ref]]))
  # Excluded rows and zero rows are never chosen even when k takes every eligible row.
  everything = dr.semaxis_expand(vocab[seeds], vocab, k=len(vocab) - len(exclude) - 8, exclude=exclude)
  chosen = set(np.asarray(everything.indices).tolist())
  assert not chosen & set(exclude.tolist()) and not chosen & set(range(len(vocab) - 8, len(vocab)))
  with pytest.raises(InputError, match="k=999"):
    dr.semaxis_expand(vocab[seeds], vocab, k=999, exclude=exclude)


def test_normalise_and_cosines_match_numpy():
  x = np.random.default_rng(4).normal(size=(7, 5)).astype(np.float32) * 3
  np.testing.assert_allclose(dr.normalise(x), _unit(x.astype(np.float64)), atol=1e-6)
  unit = _unit(x.astype(np.float64))
  np.testing.assert_allclose(dr.direction_cosines(x), unit @ unit.T, atol=1e-6)
  np.testing.assert_allclose(np.diag(dr.direction_cosines(x)), 1.0, atol=1e-6)


def test_random_directions_are_unit_and_isotropic():
  dirs = np.asarray(dr.random_directions(jax.random.key(0), 20000, 8), np.float64)
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-5)
  assert np.abs(dirs.mean(0)).max() < 0.02
  np.testing.assert_allclose(dirs.T @ dirs / len(dirs), np.eye(8) / 8, atol=0.01)
  other = np.asarray(dr.random_directions(jax.random.key(1), 20000, 8))
  assert not np.allclose(other, dirs)


def test_bad_inputs_raise_one_sentence():
  x = np.ones((4, 3), np.float32)
  bad = x.copy()
  bad[2, 1] = np.nan
  with pytest.raises(InputError, match="row 2") as e:
    dr.pole_mean_difference(bad, x)
  assert "\n" not in str(e.value)
  with pytest.raises(InputError, match="zero norm"):
    dr.pole_mean_difference(x, x)
  with pytest.raises(InputError, match="Row 1 .* zero norm"):
    dr.direction_cosines(np.array([[1.0, 0, 0], [0, 0, 0]]))
  with pytest.raises(InputError, match="empty"):
    dr.pole_mean_difference(np.zeros((0, 3)), x)
  with pytest.raises(InputError, match="inf"):
    dr.normalise(np.array([[np.inf, 1.0]]))


def test_nonzero_rows_check_on_device_agrees_with_the_host_and_names_the_row(monkeypatch):
  """A device array is checked where it lives; a bad row still gets the host's message."""
  from jaxsem import sharding

  x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
  x[3] = [1e-30, 0, 0, 0, 0]  # tiny but not zero: its float32 square underflows, its norm does not
  mesh = sharding.make_mesh("data:2,model:4")
  on_mesh = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model", None)))
  host_norms = []
  real_norm = np.linalg.norm
  monkeypatch.setattr(np.linalg, "norm", lambda *a, **k: host_norms.append(1) or real_norm(*a, **k))
  for arr in (jax.numpy.asarray(x), on_mesh):
    dr.check_nonzero_rows(arr, "rows")
  assert not host_norms  # good device arrays never reach the host path
  dr.check_nonzero_rows(x, "rows")  # host arrays take it, as before
  assert host_norms
  for row, value in ((5, 0.0), (6, np.nan)):
    bad = x.copy()
    bad[row] = value
    for arr in (bad, jax.numpy.asarray(bad),
                jax.device_put(bad, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model", None)))):
      with pytest.raises(InputError, match=f"Row {row} of the rows has zero norm"):
        dr.check_nonzero_rows(arr, "rows")
