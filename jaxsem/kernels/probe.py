"""Supervised ceiling: a cross-validated ridge probe from word vectors to a human norm.

A semantic direction uses one fixed axis of the embedding space; the probe asks how
much of a norm ``y [N]`` any linear read-out of the same vectors ``X [N, D]`` can
predict on held-out words. Its out-of-fold correlation is the ceiling the direction's
correlation is compared with.

Ridge objective, on ``X`` and ``y`` standardized with the training words' mean and
standard deviation (so ``l2`` means the same for any embedding scale or training-set
size; a constant feature is left at zero)::

    mean_i (ys_i - b - xs_i . w)^2 + l2 * ||w||^2        (intercept b not penalised)

i.e. scikit-learn's ``Ridge(alpha=n_train * l2)`` on standardized data. Fitted
weights are returned in the raw space: ``prediction = X @ w + b``.

* ``fit_ridge_optax``: minimises the objective with ``optax.lbfgs`` (zoom line
  search) until the gradient norm is below ``tol``, or with ``optax.adam`` for a fixed
  number of steps when a learning rate is given.
* ``fit_ridge_closed``: the exact solution (eigendecomposition of the smaller Gram
  matrix, so every ``l2`` of a grid costs one decomposition); validates the optax fit.
* ``cv_probe_r``: nested cross-validation (below).

Cross-validation scheme of ``cv_probe_r``: words are split into ``k`` outer folds. For
each outer fold, ``l2`` is chosen by an inner ``inner_k``-fold CV *on that fold's
training words only* (lowest pooled inner out-of-fold squared error; ties go to the
smaller ``l2``), the probe is refitted on all training words with that ``l2`` and
predicts the held-out words. Standardization statistics also come from training
words only, so no held-out rating or vector influences its own prediction. The
reported ``r`` is the Pearson correlation of the *pooled* out-of-fold predictions with
``y`` over all ``N`` words, directly comparable to a direction's correlation over the
same words; per-fold correlations are returned too. With no signal the pooled r is
slightly negative on average (each fold's training mean is pulled away from its test
words), so it is a conservative ceiling, never an inflated one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.scipy.linalg  # noqa: F401  (cho_factor / cho_solve)
import jax.numpy as jnp
import numpy as np
import optax

from jaxsem.errors import InputError
from jaxsem.kernels.stats import _is_concrete, _pearson_columns

Array = jax.Array
SOLVERS = ("optax", "closed")
DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
_HIGHEST = jax.lax.Precision.HIGHEST


class ProbeResult(NamedTuple):
  """Result of ``cv_probe_r``.

  Attributes:
    r: scalar Pearson r of the pooled out-of-fold predictions with ``y`` (all words).
    r_per_fold: ``[k]`` Pearson r within each outer test fold.
    best_l2: ``[k]`` the ``l2`` chosen by the inner CV of each outer fold.
    n: number of words.
    predictions: ``[N]`` out-of-fold prediction of each word.
  """
  r: Array
  r_per_fold: Array
  best_l2: Array
  n: int
  predictions: Array


@functools.partial(jax.jit, static_argnames=("n", "k"))
def kfold_indices(key: Array, n: int, k: int) -> Array:
  """Random assignment of ``n`` items to ``k`` folds whose sizes differ by at most one.

  Args:
    key: ``jax.random`` key.
    n: number of items.
    k: number of folds.

  Returns:
    ``[n]`` int32 fold id in ``[0, k)`` of each item.
  """
  perm = jax.random.permutation(key, n)
  return jnp.zeros((n,), jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32) % k)


def _subfolds(key: Array, member: Array, k: int) -> Array:
  """``[N]`` fold ids in ``[0, k)`` over the items where ``member`` is true (-1 elsewhere)."""
  perm = jax.random.permutation(key, member.shape[0])
  inside = member[perm]
  ids = jnp.where(inside, (jnp.cumsum(inside) - 1) % k, -1).astype(jnp.int32)
  return jnp.zeros_like(ids).at[perm].set(ids)


@functools.partial(jax.jit, static_argnames=("n", "k", "inner_k"))
def nested_kfold_indices(key: Array, n: int, k: int, inner_k: int) -> tuple[Array, Array]:
  """The outer and inner fold assignments ``cv_probe_r`` uses for ``key``.

  Args:
    key: ``jax.random`` key (the one passed to ``cv_probe_r``).
    n: number of words.
    k: number of outer folds.
    inner_k: number of inner folds.

  Returns:
    ``(outer [n], inner [k, n])`` int32: ``outer[i]`` is word ``i``'s outer fold;
    ``inner[f, i]`` its inner fold within the training words of outer fold ``f``
    (``-1`` for the words of fold ``f`` itself). Inner fold sizes differ by at most one.
  """
  key_outer, key_inner = jax.random.split(key)
  outer = kfold_indices(key_outer, n, k)
  train = outer[None, :] != jnp.arange(k)[:, None]
  inner = jax.vmap(_subfolds, in_axes=(0, 0, None))(jax.random.split(key_inner, k), train, inner_k)
  return outer, inner


def _standardizer(X: Array, y: Array, mask: Array):
  """Training-word mean and sd of the features and the target.

  A feature (or target) constant over the training words gets mean = that value and
  sd = 1, so it standardizes to exactly zero (a rounded mean would leave noise).
  """
  n = jnp.sum(mask)
  inside = mask[:, None] > 0

  def moments(a, on):
    const = jnp.max(jnp.where(on, a, -jnp.inf), axis=0) == jnp.min(jnp.where(on, a, jnp.inf), axis=0)
    mean = jnp.matmul(mask, a, precision=_HIGHEST) / n
    mean = jnp.where(const, jnp.max(jnp.where(on, a, -jnp.inf), axis=0), mean)
    sd = jnp.sqrt(jnp.matmul(mask, jnp.square(a - mean), precision=_HIGHEST) / n)
    return mean, jnp.where(const | (sd == 0), 1.0, sd)

  mu, sd = moments(X, inside)
  my, sy = moments(y[:, None], inside)
  return n, mu, sd, my[0], sy[0]


def _closed_path(Xs: Array, ys: Array, n: Array, grid: Array) -> tuple[Array, Array]:
  """Exact standardized ridge weights ``[L, D]`` (and zero intercepts) for every l2.

  One Cholesky solve per l2 of the smaller Gram system. (An eigendecomposition would
  serve the whole grid at once, but CPU ``eigh`` slows down sharply on the badly
  conditioned Gram matrices of real embeddings, while ``G + n l2 I`` is well posed.)
  """
  N, D = Xs.shape
  dual = D > N  # w = Xs^T (Xs Xs^T + n l2 I)^-1 ys; masked rows of Xs and ys are zero
  gram = jnp.matmul(Xs, Xs.T, precision=_HIGHEST) if dual else jnp.matmul(Xs.T, Xs, precision=_HIGHEST)
  rhs = ys if dual else jnp.matmul(ys, Xs, precision=_HIGHEST)
  eye = jnp.eye(gram.shape[0], dtype=gram.dtype)

  def solve(l2):
    factor = jax.scipy.linalg.cho_factor(gram + n * l2 * eye)
    return jax.scipy.linalg.cho_solve(factor, rhs)

  sol = jax.vmap(solve)(grid)  # [L, N] (dual) or [L, D]
  W = jnp.matmul(sol, Xs, precision=_HIGHEST) if dual else sol
  return W, jnp.zeros(grid.shape, Xs.dtype)


def _optax_fit(Xs: Array, ys: Array, mask: Array, n: Array, l2: Array, steps: int, lr: float | None,
               tol: float) -> tuple[Array, Array]:
  """Standardized ridge ``(w [D], b)`` for one l2, minimised with optax."""

  def loss(params):
    w, b = params
    resid = mask * (jnp.matmul(Xs, w, precision=_HIGHEST) + b - ys)
    return jnp.sum(jnp.square(resid)) / n + l2 * jnp.sum(jnp.square(w))

  init = (jnp.zeros(Xs.shape[1], Xs.dtype), jnp.zeros((), Xs.dtype))
  if lr is not None:
    opt = optax.adam(lr)

    def adam_step(carry, _):
      params, state = carry
      updates, state = opt.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(adam_step, (init, opt.init(init)), None, length=steps)
    return params

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  def running(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < steps) & (grad_norm >= tol))

  params, _ = jax.lax.while_loop(running, step, (init, opt.init(init)))
  return params


def _fit_path(X: Array, y: Array, mask: Array, grid: Array, solver: str, steps: int, lr: float | None,
              tol: float) -> tuple[Array, Array]:
  """Raw-space ridge ``(W [L, D], b [L])`` on the words where ``mask`` is 1, per l2 in ``grid``."""
  n, mu, sd, my, sy = _standardizer(X, y, mask)
  Xs = (X - mu) / sd * mask[:, None]
  ys = (y - my) / sy * mask
  if solver == "closed":
    W, b = _closed_path(Xs, ys, n, grid)
  else:
    W, b = jax.vmap(lambda l2: _optax_fit(Xs, ys, mask, n, l2, steps, lr, tol))(grid)
  W = W * sy / sd
  return W, my + sy * b - jnp.matmul(W, mu, precision=_HIGHEST)


_SOLVER_ARGS = ("solver", "steps", "lr", "tol")


@functools.partial(jax.jit, static_argnames=_SOLVER_ARGS)
def _fit_full(X, y, l2, solver, steps, lr, tol):
  X = jnp.asarray(X, jnp.float32)
  W, b = _fit_path(X, jnp.asarray(y, jnp.float32), jnp.ones(X.shape[0], jnp.float32),
                   jnp.reshape(jnp.asarray(l2, jnp.float32), (1,)), solver, steps, lr, tol)
  return W[0], b[0]


def _check_xy(X, y, what: str) -> None:
  if np.ndim(X) != 2 or np.ndim(y) != 1 or np.shape(X)[0] != np.shape(y)[0]:
    raise InputError(f"{what} needs vectors [N, D] and ratings [N] for the same words, got shapes"
                     f" {np.shape(X)} and {np.shape(y)}.")
  if _is_concrete(X, y):
    for name, a in (("vectors", np.asarray(X)), ("ratings", np.asarray(y))):
      finite = np.isfinite(a).reshape(a.shape[0], -1).all(axis=1)
      if not finite.all():
        raise InputError(f"The {name} contain NaN or inf at word {int(np.flatnonzero(~finite)[0])};"
                         " drop words without a value first.")


def _check_l2(values) -> None:
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0 or not (np.isfinite(values).all() and (values > 0).all()):
    raise InputError(f"Ridge l2 penalties must be positive and finite, got {values.tolist()}.")


def _check_fit(X, y, l2) -> None:
  _check_xy(X, y, "A ridge probe")
  _check_l2(l2)
  if np.shape(y)[0] < 2:
    raise InputError(f"A ridge probe needs at least 2 words, got {np.shape(y)[0]}.")


def fit_ridge_optax(X: Array, y: Array, l2: float, steps: int = 500, lr: float | None = None,
                    tol: float = 1e-6) -> tuple[Array, Array]:
  """Ridge probe fitted with optax on standardized features (see module docstring).

  Args:
    X: ``[N, D]`` word vectors.
    y: ``[N]`` ratings.
    l2: penalty on the standardized weights (> 0).
    steps: iteration cap (L-BFGS) or number of steps (Adam).
    lr: ``None`` for L-BFGS with a zoom line search (recommended, converges to the
      exact solution); a float runs Adam with this learning rate for ``steps`` steps.
    tol: L-BFGS stops once the gradient norm of the standardized objective is below it.

  Returns:
    ``(w [D], b)`` with predictions ``X @ w + b``.

  Raises:
    InputError: for mismatched shapes, NaN/inf, fewer than 2 words or ``l2 <= 0``.
  """
  _check_fit(X, y, l2)
  return _fit_full(X, y, l2, "optax", int(steps), None if lr is None else float(lr), float(tol))


def fit_ridge_closed(X: Array, y: Array, l2: float) -> tuple[Array, Array]:
  """Exact ridge solution of the same objective as ``fit_ridge_optax``.

  Args:
    X: ``[N, D]`` word vectors.
    y: ``[N]`` ratings.
    l2: penalty on the standardized weights (> 0).

  Returns:
    ``(w [D], b)`` with predictions ``X @ w + b``.

  Raises:
    InputError: for mismatched shapes, NaN/inf, fewer than 2 words or ``l2 <= 0``.
  """
  _check_fit(X, y, l2)
  return _fit_full(X, y, l2, "closed", 0, None, 0.0)


def _masked_pearson(a: Array, b: Array, mask: Array) -> Array:
  """Pearson r of ``a`` and ``b`` over the items where ``mask`` is 1."""
  n = jnp.sum(mask)
  ac = (a - jnp.sum(mask * a) / n) * mask
  bc = (b - jnp.sum(mask * b) / n) * mask
  return jnp.sum(ac * bc) / jnp.sqrt(jnp.sum(ac * ac) * jnp.sum(bc * bc))


@functools.partial(jax.jit, static_argnames=("n", "k", "inner_k"))
def _cv_masks(key, n, k, inner_k):
  """``(outer [N], inner [k, N], masks [k * (inner_k + 1), N])``: the folds, and the training
  words of every fit (the inner fits of outer fold 0, ..., then the ``k`` outer fits)."""
  outer, inner = nested_kfold_indices(key, n, k, inner_k)  # [N], [k, N]
  train = outer[None, :] != jnp.arange(k)[:, None]  # [k, N]
  folds = jnp.arange(inner_k)[None, :, None]
  inner_train = train[:, None, :] & (inner[:, None, :] != folds)  # [k, inner_k, N]
  masks = jnp.concatenate([inner_train.reshape(k * inner_k, n), train], axis=0).astype(jnp.float32)
  return outer, inner, masks


@functools.partial(jax.jit, static_argnames=_SOLVER_ARGS)
def _cv_fits(X, y, masks, grid, solver, steps, lr, tol):
  """``(W [F, L, D], b [F, L])``: the ridge path of every mask, one fit after another."""
  fit = functools.partial(_fit_path, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32), grid=grid,
                          solver=solver, steps=steps, lr=lr, tol=tol)
  return jax.lax.map(lambda m: fit(mask=m), masks)


@functools.partial(jax.jit, static_argnames=("k", "inner_k"))
def _cv_score(X, y, outer, inner, W, b, grid, k, inner_k):
  """Chooses each outer fold's l2 on its inner folds and scores the pooled out-of-fold predictions."""
  X = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  n = X.shape[0]
  train = outer[None, :] != jnp.arange(k)[:, None]  # [k, N]
  inner_val = inner[:, None, :] == jnp.arange(inner_k)[None, :, None]  # [k, inner_k, N]
  preds = jnp.einsum("nd,fld->fln", X, W, precision=_HIGHEST) + b[..., None]  # [F, L, N]
  inner_preds = preds[:k * inner_k].reshape(k, inner_k, -1, n)  # [k, inner_k, L, N]
  sq_err = jnp.sum(inner_val[:, :, None, :] * jnp.square(inner_preds - y), axis=(1, 3))  # [k, L]
  best = jnp.argmin(sq_err, axis=1)  # first (smallest l2) on ties
  outer_preds = jnp.take_along_axis(preds[k * inner_k:], best[:, None, None], axis=1)[:, 0]  # [k, N]
  test = ~train
  oof = jnp.sum(jnp.where(test, outer_preds, 0.0), axis=0)
  r = _pearson_columns(oof[:, None], y)[0]
  r_per_fold = jax.vmap(_masked_pearson, in_axes=(0, None, 0))(outer_preds, y, test.astype(jnp.float32))
  return r, r_per_fold, grid[best], oof


def _cv_core(X, y, key, grid, k, inner_k, solver, steps, lr, tol, progress=None):
  """The nested CV: ``k * (inner_k + 1)`` fits, run ``inner_k + 1`` per compiled call (one call's
  worth between two ``progress(fits_done, fits_total)`` reports), then the scoring."""
  outer, inner, masks = _cv_masks(key, int(np.shape(y)[0]), k, inner_k)
  total, size = masks.shape[0], inner_k + 1
  W, b = [], []
  for start in range(0, total, size):
    w_, b_ = _cv_fits(X, y, masks[start:start + size], grid, solver, steps, lr, tol)
    W.append(w_)
    b.append(b_)
    if progress is not None:
      jax.block_until_ready(w_)  # report fits done, not fits dispatched
      progress(min(start + size, total), total)
  return _cv_score(X, y, outer, inner, jnp.concatenate(W), jnp.concatenate(b), grid, k, inner_k)


def cv_probe_r(X: Array, y: Array, key: Array, k: int = 5, l2_grid=DEFAULT_L2_GRID,
               inner_k: int | None = None, solver: str = "optax", steps: int = 500,
               lr: float | None = None, tol: float = 1e-6,
               progress: Callable[[int, int], None] | None = None) -> ProbeResult:
  """Nested cross-validated ridge probe: how well ``X`` predicts ``y`` on held-out words.

  See the module docstring for the scheme (``l2`` chosen on training words only; ``r``
  from pooled out-of-fold predictions).

  Args:
    X: ``[N, D]`` word vectors.
    y: ``[N]`` ratings.
    key: ``jax.random`` key for the outer and inner fold assignments (reproduced by
      ``nested_kfold_indices(key, N, k, inner_k)``).
    k: number of outer folds (>= 2).
    l2_grid: candidate penalties (each > 0), see the module docstring.
    inner_k: number of inner folds for choosing ``l2``; defaults to ``k``.
    solver: ``"optax"`` (``fit_ridge_optax``) or ``"closed"`` (``fit_ridge_closed``;
      exact, one eigendecomposition per fold for the whole grid).
    steps: iteration cap for the optax solver.
    lr: ``None`` for L-BFGS; a float for Adam (see ``fit_ridge_optax``).
    tol: gradient-norm tolerance of L-BFGS.
    progress: ``progress(fits_done, fits_total)`` after each outer fold's ``inner_k + 1``
      fits (``k * (inner_k + 1)`` in all); the result does not depend on it.

  Returns:
    A ``ProbeResult``.

  Raises:
    InputError: for mismatched shapes, NaN/inf, constant ratings, an unknown solver,
      bad penalties or too few words for the folds.
  """
  inner_k = k if inner_k is None else inner_k
  _check_xy(X, y, "A ridge probe")
  _check_l2(l2_grid)
  if solver not in SOLVERS:
    raise InputError(f"Unknown probe solver {solver!r}; use one of {SOLVERS}.")
  if k < 2 or inner_k < 2:
    raise InputError(f"Cross-validation needs at least 2 folds, got k={k} and inner_k={inner_k}.")
  n = int(np.shape(y)[0])
  min_train = n - -(-n // k)
  if n < 3 * k or min_train < 2 * inner_k:
    raise InputError(f"{n} words are too few for {k} outer x {inner_k} inner folds; need at least 3 words"
                     f" per outer test fold and 2 per inner fold, so use fewer folds or more words.")
  if _is_concrete(y) and np.ptp(np.asarray(y)) == 0:
    raise InputError(f"The ratings are constant over all {n} words, so a probe has nothing to predict.")
  grid = jnp.asarray(np.sort(np.asarray(l2_grid, np.float32).reshape(-1)))
  r, r_per_fold, best_l2, oof = _cv_core(X, y, key, grid, k, inner_k, solver, int(steps),
                                         None if lr is None else float(lr), float(tol), progress)
  return ProbeResult(r=r, r_per_fold=r_per_fold, best_l2=best_l2, n=n, predictions=oof)
