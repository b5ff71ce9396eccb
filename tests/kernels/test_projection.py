"""Projection: numpy agreement, sharded == unsharded, chunked streaming, zarr round trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.kernels import projection as pr
from jaxsem.kernels import zarr_out


def _data(n=1003, s=13, d=16, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(s, d)).astype(np.float32) * 2


def _ref(v, d, metric):
  v, d = v.astype(np.float64), d.astype(np.float64)
  d = d / np.linalg.norm(d, axis=1, keepdims=True)
  if metric == "cosine":
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.where(norms > 0, v / np.where(norms > 0, norms, 1), 0)
  return v @ d.T


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_project_matches_numpy(metric):
  v, d = _data()
  v[5] = 0  # a zero word vector has cosine 0 with everything
  got = pr.project(v, d, metric)
  assert got.dtype == np.float32 and got.shape == (1003, 13)
  np.testing.assert_allclose(got, _ref(v, d, metric), atol=1e-5 if metric == "dot" else 1e-6)
  np.testing.assert_array_equal(np.asarray(got)[5], 0)
  # Scaling a direction changes nothing; scaling a word only changes "dot".
  np.testing.assert_allclose(pr.project(v, d * 7, metric), got, atol=1e-5)
  scaled = np.asarray(pr.project(v * 3, d, metric))
  np.testing.assert_allclose(scaled, got if metric == "cosine" else 3 * np.asarray(got), rtol=1e-5, atol=1e-5)


def test_planted_axis_orders_words():
  rng = np.random.default_rng(1)
  u = rng.normal(size=32)
  t = np.linspace(-3, 3, 200)
  v = (rng.normal(size=(200, 32)) * 0.05 + t[:, None] * u).astype(np.float32)
  scores = np.asarray(pr.project(v, u[None].astype(np.float32), "dot"))[:, 0]
  np.testing.assert_allclose(scores, t * np.linalg.norm(u), atol=0.25)  # noise along u has std 0.05
  assert np.corrcoef(scores, t)[0, 1] > 0.999


def test_project_inside_jit():
  v, d = _data(n=64)
  np.testing.assert_allclose(jax.jit(pr.project, static_argnums=2)(v, d, "dot"), pr.project(v, d, "dot"),
                             atol=1e-6)


@pytest.mark.parametrize("spec", ["data:1,model:8", "data:2,model:4"])
@pytest.mark.parametrize("n,s", [(1003, 13), (1024, 16)])
@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_sharded_equals_unsharded(spec, n, s, metric):
  mesh = sharding.make_mesh(spec)
  v, d = _data(n, s)
  ref = np.asarray(pr.project(v, d, metric))
  got = pr.project_sharded(v, d, mesh, metric)
  assert got.shape == (n, s)
  np.testing.assert_allclose(got, ref, atol=1e-6)
  if n % mesh.shape["model"] == 0:
    assert got.sharding.spec[0] == "model"  # rows stay sharded over the vocab axis
  padded = pr.project_sharded(v, d, mesh, metric, keep_padding=True)
  assert padded.shape[0] % mesh.shape["model"] == 0 and padded.shape[1] % mesh.shape["data"] == 0
  assert padded.sharding.is_equivalent_to(NamedSharding(mesh, P("model", "data")), 2)
  assert len({sh.data.shape for sh in padded.addressable_shards}) == 1
  host = np.asarray(padded)
  np.testing.assert_allclose(host[:n, :s], ref, atol=1e-6)
  np.testing.assert_array_equal(host[n:], 0)
  np.testing.assert_allclose(host[:n, s:], np.repeat(ref[:, :1], host.shape[1] - s, axis=1), atol=1e-6)


def test_sharded_accepts_device_arrays_and_replicated_directions():
  mesh = sharding.make_mesh("data:2,model:4")
  v, d = _data(1000, 6)
  on_device = jax.device_put(v, NamedSharding(mesh, P("data", None)))  # some other layout
  got = pr.project_sharded(on_device, d, mesh, "cosine", directions_axis=None, rows_axis="words")
  assert got.sharding.spec == P("model", None)
  np.testing.assert_allclose(got, pr.project(v, d), atol=1e-6)


class _Collect:

  def __init__(self, shape):
    self.out = np.full(shape, np.nan, np.float32)
    self.calls = []

  def __call__(self, start, block):
    assert isinstance(block, np.ndarray) and block.dtype == np.float32
    self.calls.append((start, block.shape[0]))
    self.out[start:start + block.shape[0]] = block


@pytest.mark.parametrize("spec", [None, "data:2,model:4"])
def test_chunked_streams_fixed_shape_blocks(spec):
  mesh = sharding.make_mesh(spec) if spec else None
  v, d = _data(1003, 13)
  sink, seen = _Collect((1003, 13)), []
  before = pr._project_core._cache_size()
  pr.project_chunked(v, d, 96, "cosine", sink, mesh=mesh,
                     progress=lambda done, total: seen.append((done, total)))
  assert pr._project_core._cache_size() - before <= 1  # one compiled shape for every block
  assert sink.calls == [(s, min(96, 1003 - s)) for s in range(0, 1003, 96)]
  assert seen[-1] == (1003, 1003) and [x for x, _ in seen] == sorted(x for x, _ in seen)
  np.testing.assert_allclose(sink.out, pr.project(v, d), atol=1e-6)


def test_chunked_reports_bad_rows_and_chunking():
  v, d = _data(300, 4)
  v[250, 3] = np.inf
  sink = _Collect((300, 4))
  with pytest.raises(InputError, match="row 250"):
    pr.project_chunked(v, d, 64, sink=sink)
  assert [s for s, _ in sink.calls] == [0, 64, 128]  # the bad block never reaches the sink
  with pytest.raises(InputError, match="multiple of 8"):
    pr.project_chunked(v, d, 100, mesh=sharding.make_mesh("data:1,model:8"))


def test_bad_inputs():
  v, d = _data(50, 4)
  bad = v.copy()
  bad[17, 0] = np.nan
  with pytest.raises(InputError, match="row 17"):
    pr.project(bad, d)
  with pytest.raises(InputError, match="row 17"):
    pr.project_sharded(bad, d, sharding.make_mesh("data:2,model:4"))
  zero = d.copy()
  zero[2] = 0
  with pytest.raises(InputError, match="Row 2 of the directions has zero norm"):
    pr.project(v, zero)
  with pytest.raises(InputError, match="same embedding space"):
    pr.project(v, d[:, :3])
  with pytest.raises(InputError, match="metric"):
    pr.project(v, d, "euclid")


def test_zarr_round_trip(tmp_path):
  v, d = _data(1003, 13)
  path = tmp_path / "proj.zarr"
  writer = zarr_out.create(path, (1003, 13), chunk_rows=128, attributes={"scales": ["kind-cruel"]})
  pr.project_chunked(v, d, 128, "cosine", writer, mesh=sharding.make_mesh("data:2,model:4"))
  meta = json.loads((path / "zarr.json").read_text())
  assert meta["zarr_format"] == 3 and meta["chunk_grid"]["configuration"]["chunk_shape"] == [128, 13]
  with pytest.raises(InputError, match="unfinished"):
    zarr_out.open_for_read(path)
  writer.finalize()
  assert zarr_out.is_complete(path)
  stored = zarr_out.open_for_read(path).read().result()
  in_memory = _Collect((1003, 13))
  pr.project_chunked(v, d, 128, "cosine", in_memory, mesh=sharding.make_mesh("data:2,model:4"))
  np.testing.assert_array_equal(stored, in_memory.out)  # lossless
  np.testing.assert_allclose(stored, pr.project(v, d), atol=1e-6)
  assert zarr_out.attributes(path) == {"scales": ["kind-cruel"]}


def test_zarr_refuses_incomplete_and_misaligned(tmp_path):
  path = tmp_path / "a.zarr"
  writer = zarr_out.create(path, (100, 3), chunk_rows=32)
  writer.write(0, np.ones((32, 3)))
  with pytest.raises(InputError, match="does not fill one chunk"):
    writer.write(16, np.ones((32, 3)))
  with pytest.raises(InputError, match="does not fill one chunk"):
    writer.write(96, np.ones((32, 3)))  # the last chunk has 4 rows
  with pytest.raises(InputError, match="3 row blocks were not written"):
    writer.finalize()
  assert not zarr_out.is_complete(path) and writer.missing() == [32, 64, 96]
  partial = zarr_out.open_for_read(path, require_complete=False).read().result()
  assert (partial[:32] == 1).all() and np.isnan(partial[32:]).all()
  with pytest.raises(InputError, match="overwrite=True"):
    zarr_out.create(path, (100, 3), chunk_rows=32)
  writer = zarr_out.create(path, (100, 3), chunk_rows=32, overwrite=True)
  assert writer.missing() == [0, 32, 64, 96]
  other = tmp_path / "notes"
  other.mkdir()
  (other / "keep.txt").write_text("x")
  with pytest.raises(InputError, match="choose another path"):
    zarr_out.create(other, (10, 3), chunk_rows=5, overwrite=True)
  assert (other / "keep.txt").exists()


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_row_blocks_on_cpu_one_matmul_elsewhere_same_scores(metric, monkeypatch):
  """On a CPU a tall input walks row blocks (a loop in the program); elsewhere one matmul.
  Both give the plain-numpy scores, the padded last block included."""
  monkeypatch.setattr(pr, "_BLOCK_ROWS", 16)  # read when traced; these shapes are traced here only
  rng = np.random.default_rng(5)
  v, d = rng.normal(size=(53, 7)).astype(np.float32), rng.normal(size=(6, 7)).astype(np.float32)
  v[4] = 0  # a zero row scores 0 under cosine
  want = _ref(v, d, metric)
  texts = {}
  for blocked in (True, False):
    got, _ = pr._project_core(jnp.asarray(v), jnp.asarray(d), metric, "highest", None, blocked)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    texts[blocked] = pr._project_core.lower(jnp.asarray(v), jnp.asarray(d), metric, "highest", None,
                                            blocked).as_text()
  assert "while" in texts[True] and "while" not in texts[False]
  assert pr._row_blocks(jnp.asarray(v)) and pr._row_blocks(v)  # CPU arrays, and host ones on a CPU backend
  cpu_array = jnp.asarray(v)

  class _Accelerator:
    platform = "gpu"

  monkeypatch.setattr(type(cpu_array), "devices", lambda self: {_Accelerator()})
  assert not pr._row_blocks(cpu_array)
