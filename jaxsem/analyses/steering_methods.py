"""Steering that keeps off-target effects small, and its comparison with plain steering.

* ``orthogonal_directions``: the steering direction with the other scales' directions
  (or their top-3 principal axes) projected out.
* ``fit_vectors`` / ``fitted_vectors``: a vector fitted with optax on the training words'
  Jacobians to reach the plain vector's on-target change while keeping the other scales
  still, then refined against the real model (a chord method).
* ``compare``: all methods on held-out words at equal on-target effect, with paired
  bootstrap CIs (``steering_compare.compare_methods``), on the run's readout and on readouts
  the fit never saw: other rating columns (``Columns``) and another template (``HeldOut``).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import steering_compare
from jaxsem.errors import InputError
from jaxsem.models import interventions as iv_lib
from jaxsem.progress import Progress

ORTH_BASES = ("others", "top3")


def unit_rows(x: np.ndarray) -> np.ndarray:
  """Rows of ``x`` scaled to unit norm."""
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


_unit = unit_rows


def orthogonal_directions(directions: np.ndarray, steered_index: Sequence[int], basis: str = "others",
                          k: int = 3) -> np.ndarray:
  """``[S, D]`` unit steering directions with a subspace projected out.

  Args:
    directions: ``[J, D]`` readout scales' directions.
    steered_index: ``[S]`` the steered scales' rows.
    basis: ``"others"`` (every other readout scale's direction) or ``"top3"`` (the top
      ``k`` principal axes of the readout directions, i.e. the shared E/P/A-like
      subspace, which every scale's direction loads on).
    k: axes removed with ``"top3"``.
  """
  if basis not in ORTH_BASES:
    raise InputError(f"--orth_basis={basis!r} is not known; use one of {', '.join(ORTH_BASES)}.")
  top = None
  if basis == "top3":
    _, _, vt = np.linalg.svd(_unit(directions), full_matrices=False)
    top = vt[:k]
  out = []
  for s, j in enumerate(steered_index):
    others = np.delete(directions, j, axis=0) if top is None else top
    out.append(np.asarray(iv_lib.orthogonalize(jnp.asarray(directions[j], jnp.float32),
                                               jnp.asarray(others, jnp.float32)), np.float64))
  out = np.stack(out)
  # Relative to each direction's own norm: float32 rounding leaves ~1e-7 of a direction that
  # lies in the others' span, which must not be normalised into a "direction" of noise.
  own = np.linalg.norm(directions[np.asarray(steered_index)], axis=1)
  if np.any(np.linalg.norm(out, axis=1) < 1e-4 * own):
    raise InputError("A steered direction lies in the span of the other scales' directions, so it has"
                     " no orthogonal part; steer fewer scales or read out fewer.")
  return _unit(out)


def fit_vectors(jac: np.ndarray, plain: np.ndarray, steered_index: Sequence[int], *, steps: int,
                off_weight: float, ridge: float, learning_rate: float = 0.05,
                offset: np.ndarray | None = None, target: np.ndarray | None = None,
                init: np.ndarray | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
  """Steering vectors that reach the plain vectors' on-target change with less off-target change.

  Args:
    jac: ``[W, J, D]`` Jacobians of the training words' ratings.
    plain: ``[S, D]`` the plain steering vectors (strength included).
    steered_index: ``[S]`` readout index of each steered scale.
    steps: optax (adam) steps.
    off_weight: weight of the off-target term.
    ridge: weight of ``|v - plain|^2 / |plain|^2``: the fit changes the plain vector
      only as much as the training words ask, which keeps it near the strengths where
      the linear response was measured and helps it carry over to held-out words.
    learning_rate: adam step size, relative to the plain vectors' norm.
    offset: ``[W, S, J]`` added to the linear prediction ``G . v`` (the measured
      nonlinear remainder, for the chord refinement in ``fitted_vectors``).
    target: ``[S]`` on-target change to reach (default: the linear prediction of ``plain``).
    init: ``[S, D]`` starting vectors (default ``plain``).
    progress: ``progress(steps_done, steps)`` after each step.

  Returns:
    ``([S, D] fitted vectors, fit report)``. Loss per scale (normalised by the target
    ``t = mean_w G_wi . plain``): ``((mean_w G_wi . v - t) / t)^2 + off_weight *
    mean_{w, j != i} (G_wj . v / t)^2 + ridge |v - plain|^2 / |plain|^2``.
  """
  g = jnp.asarray(jac, jnp.float32)
  p = jnp.asarray(plain, jnp.float32)
  idx = jnp.asarray(steered_index)
  n_j = g.shape[1]
  scale = jnp.linalg.norm(p, axis=1, keepdims=True)  # [S, 1]
  if target is None:
    target = jnp.einsum("wsd,sd->s", g[:, idx], p) / g.shape[0]  # [S]
  target = jnp.asarray(target, jnp.float32)
  off_mask = 1.0 - jax.nn.one_hot(idx, n_j)  # [S, J]
  shift = 0.0 if offset is None else jnp.asarray(offset, jnp.float32)

  def loss_fn(z):  # z = v / scale, so steps are relative to the plain vectors' norm
    v = z * scale
    e = jnp.einsum("wjd,sd->wsj", g, v) + shift  # [W, S, J]
    on = jnp.take_along_axis(e, idx[None, :, None], axis=2)[..., 0].mean(0)
    t = jnp.where(jnp.abs(target) > 0, target, 1.0)
    off = jnp.sum(jnp.square(e / t[None, :, None]) * off_mask, axis=2).mean(0) / (n_j - 1)
    pull = jnp.sum(jnp.square(z - z0), axis=1)
    per = jnp.square((on - target) / t) + off_weight * off + ridge * pull
    return jnp.sum(per), per

  opt = optax.adam(learning_rate)
  z0 = p / scale
  z = z0 if init is None else jnp.asarray(init, jnp.float32) / scale
  state = opt.init(z)

  @jax.jit
  def step(z, state):
    (_, per), grads = jax.value_and_grad(loss_fn, has_aux=True)(z)
    updates, state = opt.update(grads, state, z)
    return optax.apply_updates(z, updates), state, per

  _, first = loss_fn(z)
  for i in range(steps):
    z, state, per = step(z, state)
    if progress is not None:
      jax.block_until_ready(z)  # report steps done, not steps dispatched
      progress(i + 1, steps)
  _, last = loss_fn(z)
  v = np.asarray(z * scale, np.float64)
  return v, {"steps": steps, "optimizer": f"optax.adam({learning_rate})", "off_weight": off_weight,
             "ridge": ridge,
             "loss_start": np.asarray(first).tolist(), "loss_end": np.asarray(last).tolist()}


def calibrate(vectors: np.ndarray, jac: np.ndarray, plain: np.ndarray, steered_index) -> np.ndarray:
  """Rescales each vector so its predicted on-target change equals the plain vector's."""
  idx = np.asarray(steered_index)
  g_on = jac[:, idx]  # [W, S, D]
  want = np.einsum("wsd,sd->s", g_on, plain) / len(jac)
  have = np.einsum("wsd,sd->s", g_on, vectors) / len(jac)
  ratio = np.where(np.abs(have) > 1e-12 * np.abs(want).max(), want / np.where(have == 0, 1, have), 0.0)
  return vectors * ratio[:, None]


# ----------------------------------------------------------------------------- the run


def fitted_vectors(jac: np.ndarray, plain: np.ndarray, steered_index, measure, opts, progress: bool = False):
  """``fit_vectors`` refined against the real model on the training words (a chord method).

  The linear model ``E = G . v`` is exact only for small vectors. After each fit the
  training words are run with the fitted vectors; the difference between the measured
  and the linearly predicted effects is kept as an offset and the fit is repeated with
  it (the Jacobian stays fixed), ``opts.refine`` times. The on-target target is the
  plain vectors' measured on-target change. ``progress`` prints each fit's progress lines
  (optax steps, rate, ETA).

  Returns:
    ``([S, D] vectors, report)``.
  """
  idx = np.asarray(steered_index)
  measured_plain = measure(plain)
  target = np.take_along_axis(measured_plain, idx[None, :, None], axis=2)[..., 0].mean(0)
  offset, v, history = None, plain, []
  for r in range(opts.refine + 1):
    bar = Progress.maybe(progress, f"steer fit {r + 1}/{opts.refine + 1}", opts.fit_steps, unit="steps")
    v, fit = fit_vectors(jac, plain, idx, steps=opts.fit_steps, off_weight=opts.off_weight,
                         ridge=opts.fit_ridge, offset=offset, target=target, init=v, progress=bar)
    bar.close()
    e = measure(v)
    on = np.take_along_axis(e, idx[None, :, None], axis=2)[..., 0].mean(0)
    off = float(np.abs(e)[:, np.arange(e.shape[2])[None, :] != idx[:, None]].mean())
    history.append({"train_on_target": float(on.mean()), "train_mean_abs_off_target": off})
    offset = e - np.einsum("wjd,sd->wsj", jac, v)
  fit["refinements"] = history
  fit["train_plain_on_target"] = float(target.mean())
  return v, fit


@dataclasses.dataclass(frozen=True)
class Columns:
  """Which ratings an analysis reads: some of the steered scales, on some rating columns.

  Attributes:
    rows: ``[S']`` indices into the steered scales.
    cols: ``[J']`` columns of the ratings read.
    on: ``[S']`` index into ``cols`` of each row's on-target column.
  """

  rows: np.ndarray
  cols: np.ndarray
  on: np.ndarray

  def view(self, effects: np.ndarray) -> np.ndarray:
    """``[W, S, ..., J]`` -> ``[W, S', ..., J']``."""
    return np.asarray(effects)[:, self.rows][..., self.cols]


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """A readout that played no part in fitting: another template, read on its own grid.

  Attributes:
    grid: the ``Grid`` of the other template (same model, words and site).
    columns: what its ratings are read on.
    words: ``"disjoint"`` or ``"shared"``: which pole words its readout reads.
  """

  grid: Any
  columns: Columns
  words: str


def _evaluate(grid, words: np.ndarray, vectors: np.ndarray, what: str, checkpoint_dir, progress: bool = True):
  bar = Progress.maybe(progress, f"steer {what}", len(words), unit="prompts")
  bar.update(0)
  out = grid.evaluate(words, vectors, progress=bar, checkpoint_dir=checkpoint_dir, name=what)
  bar.close()
  return out


def compare(grid, opts, units: np.ndarray, steered_index, unit: float, base, w: int,
            checkpoint_dir=None, *, n_shared: int | None = None, disjoint: Columns | None = None,
            heldout: HeldOut | None = None, progress: bool = True) -> dict[str, Any]:
  """Plain vs orthogonalised vs fitted steering on held-out words at equal on-target effect.

  The fitted vectors see only the first ``n_shared`` pole log-odds (the shared readout):
  its Jacobian and its refinements read those columns alone. The held-out words are then
  read on the run's readout, and (free: the same pass) on the ``disjoint`` columns, and on
  the ``heldout`` template's readout (its unsteered baseline plus one pass per method).

  Args:
    grid: the ``Grid`` of the run.
    opts: ``steer.SteerOptions``.
    units: ``[J, D]`` unit directions of the readout scales.
    steered_index: ``[S]`` readout index of each steered scale.
    unit: the site norm (strength unit).
    base: ``[W, J]`` unsteered ratings, or ``(ratings [W, J], logodds [W, J + J'])`` when the
      readout's ratings are not the grid's pole log-odds.
    w: number of words.
    checkpoint_dir: where the held-out evaluations keep their finished batches.
    n_shared: the fitted-on pole log-odds columns (default: all).
    disjoint: columns of the pole log-odds compared as ``disjoint_readout``.
    heldout: the other template, compared as ``heldout_readout``.
    progress: print every stage's progress lines (the Jacobian, the fit, the evaluations).

  Returns:
    ``steering_compare.compare_methods``'s output on the run's readout plus the fit's report, and
    ``disjoint_readout`` / ``heldout_readout`` (``{"template", "words", ...}``) when asked.
  """
  base, base_logodds = base if isinstance(base, tuple) else (base, base)
  n_shared = base_logodds.shape[1] if n_shared is None else int(n_shared)
  rng = np.random.default_rng(opts.seed + 1)
  order = rng.permutation(w)
  n_fit = max(2, int(round(opts.fit_share * w)))
  train, test = np.sort(order[:n_fit]), np.sort(order[n_fit:])
  if len(test) < 2:
    raise InputError(f"--fit_share={opts.fit_share} leaves {len(test)} held-out words; use more words.")
  plain = units[steered_index] * unit * opts.compare_alpha  # [S, D]
  t0 = time.perf_counter()
  bar = Progress.maybe(progress, "steer jacobian", len(train) * n_shared, unit="gradients")
  bar.update(0)
  jac = grid_lib.jacobian(grid, train, checkpoint_dir=checkpoint_dir, columns=n_shared,
                          progress=bar)  # [Wtr, J, D]
  bar.close()
  vectors = {"plain": plain}
  report: dict[str, Any] = {"train_words": len(train), "test_words": len(test),
                            "strength": opts.compare_alpha, "fitted_on": f"the first {n_shared} pole log-odds"
                            " (the shared readout)",
                            "jacobian_seconds": round(time.perf_counter() - t0, 2)}
  if "orthogonal" in opts.methods:
    orth = orthogonal_directions(units, steered_index, opts.orth_basis)
    vectors["orthogonal"] = calibrate(orth, jac, plain, steered_index)
    report["orth_basis"] = opts.orth_basis
  s = len(steered_index)

  calls = itertools.count()

  def measure(words, v):  # real (nonlinear) effects [len(words), S, J] of vectors v [S, D]
    r, _ = _evaluate(grid, np.repeat(words, s), np.tile(v, (len(words), 1)), f"fit_measure_{next(calls)}",
                     checkpoint_dir, progress)
    return r.reshape(len(words), s, -1)[..., :n_shared] - base_logodds[words][:, None, :n_shared]

  if "fitted" in opts.methods:
    vectors["fitted"], report["fit"] = fitted_vectors(jac, plain, steered_index, lambda v: measure(train, v),
                                                      opts, progress=progress)
  effects, effects_disjoint, effects_heldout = {}, {}, {}
  wi = np.repeat(test, s)
  if heldout is not None:
    h_base = heldout.grid.readout.ratings(_evaluate(heldout.grid, test, np.zeros((len(test), plain.shape[1]),
                                                                                   np.float32),
                                                    "heldout_baseline", checkpoint_dir, progress))
  for name, v in vectors.items():
    vec = np.tile(v, (len(test), 1))
    out = _evaluate(grid, wi, vec, f"method_{name}", checkpoint_dir, progress)
    ratings = grid.readout.ratings(out)[:, :base.shape[1]]  # the run's readout; disjoint columns below
    effects[name] = ratings.reshape(len(test), s, -1) - base[test][:, None, :]
    if disjoint is not None:
      e = out[0].reshape(len(test), s, -1) - base_logodds[test][:, None, :]
      effects_disjoint[name] = disjoint.view(e)
    if heldout is not None:
      out = _evaluate(heldout.grid, wi, vec, f"heldout_method_{name}", checkpoint_dir, progress)
      r = heldout.grid.readout.ratings(out)
      effects_heldout[name] = heldout.columns.view(r.reshape(len(test), s, -1) - h_base[:, None, :])
    report.setdefault("vector_norms", {})[name] = np.linalg.norm(v, axis=1).tolist()
    report.setdefault("cos_with_plain", {})[name] = np.sum(_unit(v) * _unit(plain), axis=1).tolist()
  report.update(steering_compare.compare_methods(effects, steered_index, seed=opts.seed, n_boot=opts.n_boot))
  if disjoint is not None:
    report["disjoint_readout"] = steering_compare.compare_methods(effects_disjoint, disjoint.on,
                                                                  seed=opts.seed, n_boot=opts.n_boot)
  if heldout is not None:
    report["heldout_readout"] = {
        "template": heldout.grid.prompts.template, "words": heldout.words,
        **steering_compare.compare_methods(effects_heldout, heldout.columns.on, seed=opts.seed,
                                           n_boot=opts.n_boot)}
  return report
