"""Vocabulary sweep: every vocabulary row projected on every WordNet direction, then PCA.

    .venv/bin/python -m benchmarks.bench_sweep [--rows=N] [--repeats=3]

The inputs are prepared once in their own process and saved as float32 ``.npy`` files,
so both sides read identical arrays and loading the model is not timed:

* ``V [N, D]``: the centred input-embedding row of every vocabulary token (Gemma 3 270M:
  ``[262144, 640]``); ``--rows`` keeps only the first rows, for a quick check.
* ``U [S, D]``: one direction per WordNet antonym pair (``--policy=mean``, the sweep's
  default, keeps all 3,627; ``--policy=single`` about a third).

The work, the same on both sides: the cosine projection
``P = normalize_rows(V) @ normalize_rows(U).T`` (``[N, S]`` float32, a zero row scores 0),
then PCA of ``P`` with standardized columns through the ``[S, S]`` Gram matrix (column
means, centred Gram, correlation matrix, symmetric eigendecomposition, explained-variance
ratios, scores of the first ``K`` components).

* jaxsem: ``kernels.projection.project(V, U, "cosine")`` then
  ``kernels.subspace.pca(P, standardize=True, k=K, method="gram")`` on one CPU device,
  after a warm-up call of the same shapes; compilation is reported on its own.
* numpy: the same math in float32 numpy (``np.matmul``); the eigendecomposition is
  ``scipy.linalg.eigh(driver="evd")`` in float32, the LAPACK routine (``ssyevd``) jax
  uses on CPU. numpy evaluates ``P.T @ P`` as a symmetric rank-k update (``ssyrk``),
  i.e. half the multiply-adds of the general matmul jaxsem runs.

A second row times the sweep's own route to the same spectrum (``launch.sweep``):
the projection, then the PCA spectrum from the ``[D, D]`` moments of the normalised
rows (``kernels.spectrum``: ``Cov(P) = U Cov(W) U^T``, exact), against the same
factorisation in numpy; its FLOPs are counted as ``2 N D S + 2 N D^2``.

Each side runs in its own fresh process; the figure is the median of ``--repeats``.
The matmul peak is the float32 rate of a large square matmul measured in the same
process (jitted ``jnp.matmul`` for jaxsem, ``np.matmul`` for numpy). jaxsem's achieved
rate counts only the dominant matmul FLOPs, ``2 N D S`` (projection) + ``2 N S^2``
(Gram), over its whole time (elementwise passes and the eigendecomposition included).
Both sides must give the same first ``K`` explained-variance ratios (1e-3 relative)
and the same number of components for 50/80/90% of the variance.
"""

import os
import tempfile

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_MODEL = flags.DEFINE_string("model", "gemma3-270m", "Embedded model whose vocabulary is swept.")
_SCALES = flags.DEFINE_string("scales", "wordnet", "Scale set whose directions are projected on.")
_POLICY = flags.DEFINE_enum("policy", "mean", ["mean", "single"], "Word -> token policy of pole words.")
_ROWS = flags.DEFINE_integer("rows", None, "Keep only the first ROWS vocabulary rows (default: all).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up).")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 4096, "Side of the square matmul that measures the peak.")
_K = 10  # components whose ratios and scores are computed and compared
_FRACTIONS = (0.5, 0.8, 0.9)
_RTOL = 1e-3

_PREP = common.VOCAB_PREP

_JAXSEM = """
import jax, jax.numpy as jnp, numpy as np
from jaxsem.kernels import projection, subspace
compile_s = [0.0]
def _on_duration(event, duration, **kw):
  if event.startswith("/jax/core/compile/"):
    compile_s[0] += duration
jax.monitoring.register_event_duration_secs_listener(_on_duration)

n = {peak_size}
ka, kb = jax.random.split(jax.random.key(0))
a = jax.random.normal(ka, (n, n), jnp.float32)
b = jax.random.normal(kb, (n, n), jnp.float32)
mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
jax.block_until_ready(mm(a, b))
times = []
for _ in range(5):
  t0 = time.perf_counter()
  jax.block_until_ready(mm(a, b))
  times.append(time.perf_counter() - t0)
peak = 2 * n**3 / float(np.median(times)) / 1e9
del a, b

v = jnp.asarray(np.load({v_path!r}))
u = jnp.asarray(np.load({u_path!r}))
jax.block_until_ready((v, u))

def work():
  t0 = time.perf_counter()
  p = projection.project(v, u, "cosine")
  jax.block_until_ready(p)
  t1 = time.perf_counter()
  res = subspace.pca(p, standardize=True, k={k}, method="gram")
  jax.block_until_ready(res)
  return (t1 - t0, time.perf_counter() - t1), res

def moments_route():
  from jaxsem.kernels import spectrum
  def run():
    t0 = time.perf_counter()
    jax.block_until_ready(projection.project(v, u, "cosine"))
    t1 = time.perf_counter()
    spec = spectrum.projection_spectrum(spectrum.row_moments(v, "cosine"), u)
    return (t1 - t0, time.perf_counter() - t1), spec
  run()
  parts = []
  for _ in range({repeats}):
    split, spec = run()
    parts.append(split)
  parts = np.asarray(parts)
  return dict(seconds=float(np.median(parts.sum(axis=1))), project_s=float(np.median(parts[:, 0])),
              pca_s=float(np.median(parts[:, 1])), ratios=spec.explained_variance_ratio[:{k}].tolist(),
              cumulative=spec.cumulative.tolist())

compile_s[0] = 0.0
t0 = time.perf_counter()
_, res = work()
first = time.perf_counter() - t0
compiled = compile_s[0]
del res
parts = []
for _ in range({repeats}):
  split, res = work()
  parts.append(split)
parts = np.asarray(parts)
totals = parts.sum(axis=1)
eig = np.asarray(res.eigenvalues, np.float64)
_report(seconds=float(np.median(totals)), project_s=float(np.median(parts[:, 0])),
        pca_s=float(np.median(parts[:, 1])), first_s=first, compile_s=compiled, peak_gflops=peak,
        ratios=np.asarray(res.explained_variance_ratio, np.float64).tolist(),
        cumulative=(np.cumsum(eig) / eig.sum()).tolist(), rss_mb=_peak_rss_mb(), version=jax.__version__,
        moments=moments_route())
"""

_NUMPY = """
import numpy as np, scipy, scipy.linalg
n = {peak_size}
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
np.matmul(a, b)
times = []
for _ in range(5):
  t0 = time.perf_counter()
  np.matmul(a, b)
  times.append(time.perf_counter() - t0)
peak = 2 * n**3 / float(np.median(times)) / 1e9
del a, b

v = np.load({v_path!r})
u = np.load({u_path!r})

def inv_norms(x):
  sq = np.einsum("nd,nd->n", x, x)
  return np.where(sq > 0, 1 / np.sqrt(np.where(sq > 0, sq, 1)), 0).astype(np.float32)

def work():
  t0 = time.perf_counter()
  units = u * inv_norms(u)[:, None]
  p = np.matmul(v, units.T)
  p *= inv_norms(v)[:, None]
  np.clip(p, -1, 1, out=p)
  t1 = time.perf_counter()
  rows = p.shape[0]
  p -= p.mean(axis=0, dtype=np.float64).astype(np.float32)
  gram = np.matmul(p.T, p)
  norms = np.sqrt(np.diag(gram))
  corr = gram / np.outer(norms, norms)
  w, vec = scipy.linalg.eigh(corr, driver="evd", overwrite_a=True, check_finite=False)
  w = np.clip(w[::-1].astype(np.float64), 0, None)
  vec = vec[:, ::-1][:, :{k}]
  scores = np.matmul(p, vec * (np.sqrt(rows - 1) / norms)[:, None])
  return (t1 - t0, time.perf_counter() - t1), w / w.sum(), scores

def moments_route():
  def run():
    t0 = time.perf_counter()
    units = u * inv_norms(u)[:, None]
    p = np.matmul(v, units.T)
    p *= inv_norms(v)[:, None]
    np.clip(p, -1, 1, out=p)
    t1 = time.perf_counter()
    w = v * inv_norms(v)[:, None]
    w -= w.mean(axis=0, dtype=np.float64).astype(np.float32)
    cov = np.matmul(w.T, w).astype(np.float64) / (w.shape[0] - 1)
    lam, vec = np.linalg.eigh(cov)
    m = units.astype(np.float64) @ (vec * np.sqrt(np.clip(lam, 0, None)))
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    e = np.clip(np.linalg.eigvalsh(m.T @ m)[::-1], 0, None)
    return (t1 - t0, time.perf_counter() - t1), e / e.sum()
  run()
  parts = []
  for _ in range({repeats}):
    split, ratio = run()
    parts.append(split)
  parts = np.asarray(parts)
  return dict(seconds=float(np.median(parts.sum(axis=1))), project_s=float(np.median(parts[:, 0])),
              pca_s=float(np.median(parts[:, 1])), ratios=ratio[:{k}].tolist(),
              cumulative=np.cumsum(ratio).tolist())

work()
parts = []
for _ in range({repeats}):
  split, ratio, _ = work()
  parts.append(split)
parts = np.asarray(parts)
totals = parts.sum(axis=1)
_report(seconds=float(np.median(totals)), project_s=float(np.median(parts[:, 0])),
        pca_s=float(np.median(parts[:, 1])), peak_gflops=peak, ratios=ratio[:{k}].tolist(),
        cumulative=np.cumsum(ratio).tolist(), rss_mb=_peak_rss_mb(),
        version=f"numpy {{np.__version__}}, scipy {{scipy.__version__}}", moments=moments_route())
"""


def n_components(cumulative: list[float]) -> dict[float, int | None]:
  """Fewest components reaching each of ``_FRACTIONS`` of the variance (1e-6 slack)."""
  cum = np.asarray(cumulative)
  out = {}
  for f in _FRACTIONS:
    hits = np.flatnonzero(cum >= f - 1e-6)
    out[f] = int(hits[0]) + 1 if hits.size else None
  return out


def main(argv):
  del argv
  print(f"machine: {common.machine()}")
  cpu = {"JAX_PLATFORMS": "cpu"}
  with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
    paths = dict(v_path=os.path.join(tmp, "v.npy"), u_path=os.path.join(tmp, "u.npy"))
    rows = "" if _ROWS.value is None else _ROWS.value
    prep = common.run_snippet(_PREP.format(model=_MODEL.value, scales=_SCALES.value, rows=rows, policy=_POLICY.value,
                                           **paths),
                              env=cpu)
    kw = dict(repeats=_REPEATS.value, peak_size=_PEAK_SIZE.value, k=_K, **paths)
    ours = common.run_snippet(_JAXSEM.format(**kw), env=cpu)
    ref = common.run_snippet(_NUMPY.format(**kw))

  (n, d), (s, _) = prep["v_shape"], prep["u_shape"]
  flops = 2 * n * d * s + 2 * n * s * s
  gflops = flops / ours["seconds"] / 1e9
  ours_n, ref_n = n_components(ours["cumulative"]), n_components(ref["cumulative"])
  a, b = np.asarray(ours["ratios"]), np.asarray(ref["ratios"])
  agree = ours_n == ref_n and bool(np.all(np.abs(a - b) <= _RTOL * np.abs(b)))

  print(f"inputs: {_MODEL.value} input_embedding (centred), {n} of {prep['vocab']} rows x {d}; "
        f"{_SCALES.value}: {s} directions ({prep['dropped']} of {prep['asked']} scales dropped); "
        f"prepared in {prep['seconds']:.1f} s")
  print(f"versions: jax {ours['version']}; {ref['version']}")
  print(f"{'rows x directions':>18s} {'jaxsem s':>9s} {'numpy s':>8s} {'speedup':>8s} "
        f"{'jaxsem GFLOP/s':>15s} {'peak GFLOP/s':>13s} {'share of peak':>14s} {'agree':>6s}")
  print(f"{f'{n} x {s}':>18s} {ours['seconds']:9.3f} {ref['seconds']:8.3f} "
        f"{ref['seconds'] / ours['seconds']:7.2f}x {gflops:15.1f} {ours['peak_gflops']:13.1f} "
        f"{gflops / ours['peak_gflops']:13.1%} {'yes' if agree else 'no':>6s}")
  mo, mr = ours["moments"], ref["moments"]
  m_flops = 2 * n * d * s + 2 * n * d * d
  m_gflops = m_flops / mo["seconds"] / 1e9
  m_agree = (n_components(mo["cumulative"]) == n_components(mr["cumulative"]) == ours_n
             and bool(np.all(np.abs(np.asarray(mo["ratios"]) - b) <= _RTOL * np.abs(b))))
  print(f"{'(moments route)':>18s} {mo['seconds']:9.3f} {mr['seconds']:8.3f} "
        f"{mr['seconds'] / mo['seconds']:7.2f}x {m_gflops:15.1f} {ours['peak_gflops']:13.1f} "
        f"{m_gflops / ours['peak_gflops']:13.1%} {'yes' if m_agree else 'no':>6s}")
  print(f"  moments route: jaxsem projection {mo['project_s']:.3f} s + spectrum {mo['pca_s']:.3f} s; "
        f"numpy {mr['project_s']:.3f} s + {mr['pca_s']:.3f} s")
  agree = agree and m_agree
  print(f"  matmul FLOPs counted: 2*N*D*S + 2*N*S*S = {flops / 1e9:.1f} GFLOP "
        f"(projection + Gram; elementwise passes, eigh and scores not counted)")
  print(f"  jaxsem: projection {ours['project_s']:.3f} s + PCA {ours['pca_s']:.3f} s; first call "
        f"{ours['first_s']:.2f} s, of which compilation {ours['compile_s']:.2f} s; "
        f"peak RSS {ours['rss_mb']:.0f} MB")
  print(f"  numpy:  projection {ref['project_s']:.3f} s + PCA {ref['pca_s']:.3f} s; "
        f"peak RSS {ref['rss_mb']:.0f} MB; matmul peak {ref['peak_gflops']:.1f} GFLOP/s; "
        f"Gram via ssyrk, eigh scipy float32 'evd'")
  counts = "/".join(f"{f:.0%}" for f in _FRACTIONS)
  print(f"  components for {counts}: jaxsem {'/'.join(map(str, ours_n.values()))}, "
        f"numpy {'/'.join(map(str, ref_n.values()))}")
  fmt = dict(precision=5, max_line_width=200)
  print(f"  first {_K} ratios: jaxsem {np.array2string(a, **fmt)}")
  print(f"  {'':16s}numpy  {np.array2string(b, **fmt)}")
  assert agree, "jaxsem and numpy disagree on the explained-variance ratios or component counts"


if __name__ == "__main__":
  app.run(main)
