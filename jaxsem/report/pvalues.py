"""p-values as a reader should see them: floors stated as bounds, Holm across a family.

An empirical null of ``M`` draws cannot give a p-value below ``1 / (M + 1)``; at that
floor the honest statement is ``p <= 1 / (M + 1)``, so ``format_p`` prints it that way.

``add_holm`` adjusts one family of tests in a summary dict for multiple comparisons.
A family is named by dotted paths to its ``*p_value`` fields, ``*`` standing for every
item of a list or every value of a dict, e.g. ``"results.*.p_value"`` (one test per
row) or ``"control.*.pair_null.p_value"``. Beside each ``<prefix>p_value`` it writes
``<prefix>p_adjusted`` and ``<prefix>p_adjusted_at_floor`` (true when the adjusted
value rests on p-values at their floor and is itself only an upper bound), and the
document gains ``multiple_comparisons: {family: {"method": "holm", "n_tests": m,
"fields": [...]}}``. Paths that lead nowhere are skipped, so a family can name fields
that only some runs write.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxsem.kernels import stats

# One family per null, per job. The structure and steer families name fields that some runs lack.
ALIGN_FAMILIES: Mapping[str, tuple[str, ...]] = {
    "random_directions": ("results.*.p_value",),
    "wordnet_pairs": ("results.*.pairs_p_value",),
}
STRUCTURE_FAMILIES: Mapping[str, tuple[str, ...]] = {
    "structure_nulls": ("pair_null.p_value", "epa_null.p_value",
                        "control.*.pair_null.p_value", "control.*.epa_null.p_value"),
}
STEER_FAMILIES: Mapping[str, tuple[str, ...]] = {
    "offtarget_shuffled_labels": ("offtarget.shuffled_labels.p_value",
                                  "offtarget_disjoint.shuffled_labels.p_value"),
}

_SUFFIX = "p_value"


def p_floor(n_null: int) -> float:
  """The smallest p-value ``(1 + 0) / (1 + n_null)`` an empirical null of ``n_null`` draws gives."""
  return 1.0 / (1.0 + int(n_null))


def is_at_floor(p: float | None, n_null: int | None) -> bool:
  """Whether ``p = (1 + k) / (1 + n_null)`` has ``k = 0`` (robust to float32 rounding of ``p``)."""
  if p is None or n_null is None or not math.isfinite(p):
    return False
  return p * (1.0 + int(n_null)) < 1.5


def _ceil_sig(x: float, digits: int = 2) -> float:
  """``x`` rounded up to ``digits`` significant figures, so that a bound stays a bound."""
  if x <= 0:
    return 0.0
  scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
  return math.ceil(x * scale - 1e-9) / scale


def format_p(p: float | None, n_null: int | None = None, at_floor: bool | None = None,
             name: str = "p") -> str:
  """A p-value for a digest: ``"p = 0.013"``, or ``"p ≤ 0.002"`` at the floor of its null.

  Args:
    p: the p-value (None or NaN when the test was not run).
    n_null: size of the null it came from; used to tell whether ``p`` is at its floor
      when ``at_floor`` is None.
    at_floor: whether ``p`` is a floor (or rests on one, for an adjusted p-value).
    name: what to call it, e.g. ``"Holm p"``.

  Returns:
    ``"<name> = x"`` with two significant figures, ``"<name> ≤ x"`` with ``x`` rounded
    up to two significant figures at the floor, or ``"<name> = n/a"``.
  """
  if p is None or not math.isfinite(float(p)):
    return f"{name} = n/a"
  p = float(p)
  if at_floor is None:
    at_floor = is_at_floor(p, n_null)
  if at_floor:
    return f"{name} ≤ {_ceil_sig(p):.2g}"
  return f"{name} = {p:.2g}"


def _keys(path: str | Sequence[str]) -> tuple[str, ...]:
  keys = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
  if not keys or not keys[-1].endswith(_SUFFIX):
    raise ValueError(f"a p-value path must end in a '*{_SUFFIX}' key, got {path!r}")
  return keys


def _locate(node: Any, keys: tuple[str, ...]) -> Iterator[dict]:
  """The dicts reached by ``keys[:-1]`` (``*``: every child) that hold the key ``keys[-1]``."""
  if not keys[:-1]:
    if isinstance(node, dict) and keys[-1] in node:
      yield node
    return
  head, rest = keys[0], keys[1:]
  if head == "*":
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
  elif isinstance(node, dict) and head in node:
    children = (node[head],)
  else:
    children = ()
  for child in children:
    yield from _locate(child, rest)


def _number(value: Any) -> float:
  if value is None:
    return math.nan
  return float(np.asarray(value))


def _floor_flag(holder: dict, prefix: str, p: float) -> bool:
  flag = holder.get(f"{prefix}p_at_floor")
  if flag is not None:
    return bool(np.asarray(flag))
  return is_at_floor(p, holder.get(f"{prefix}n_null"))


def add_holm(doc: dict[str, Any], family: str, paths: Sequence[str | Sequence[str]]) -> dict[str, Any]:
  """Holm-adjusts one family of p-values in a summary dict.

  Every ``<prefix>p_value`` reached by ``paths`` is one test; None or NaN ones are not
  counted. Whether a p-value sits at its floor is read from ``<prefix>p_at_floor``
  beside it, else from ``<prefix>n_null``.

  Args:
    doc: a JSON-like summary (dicts and lists); it is not modified.
    family: the family's name in ``multiple_comparisons``.
    paths: dotted paths (or key tuples) to the family's p-value fields; ``*`` matches
      every list item or dict value; paths that lead nowhere are skipped.

  Returns:
    A deep copy of ``doc`` with ``<prefix>p_adjusted`` (None where the test was not run)
    and ``<prefix>p_adjusted_at_floor`` beside each p-value, and
    ``multiple_comparisons[family] = {"method": "holm", "n_tests": m, "fields": [...]}``
    (the paths that found a p-value). Unchanged when the family has no test.
  """
  out = copy.deepcopy(doc)
  found: list[tuple[dict, str]] = []
  fields: list[str] = []
  for path in paths:
    keys = _keys(path)
    here = [(holder, keys[-1]) for holder in _locate(out, keys)]
    if any(math.isfinite(_number(h[k])) for h, k in here):
      fields.append(".".join(keys))
    found += here
  p = np.array([_number(h[k]) for h, k in found], np.float64)
  finite = np.isfinite(p)
  if not finite.any():
    return out
  floors = np.array([finite[i] and _floor_flag(h, k[:-len(_SUFFIX)], p[i]) for i, (h, k) in enumerate(found)])
  adjusted = stats.holm(p)
  bound = _rests_on_floor(p, floors)
  for i, (holder, key) in enumerate(found):
    prefix = key[:-len(_SUFFIX)]
    holder[f"{prefix}p_adjusted"] = float(adjusted[i]) if finite[i] else None
    holder[f"{prefix}p_adjusted_at_floor"] = bool(bound[i])
  out.setdefault("multiple_comparisons", {})[family] = {
      "method": "holm", "n_tests": int(finite.sum()), "fields": fields}
  return out


def _rests_on_floor(p: np.ndarray, floors: np.ndarray) -> np.ndarray:
  """Whether each Holm value is set by floored p-values alone (so it is an upper bound).

  The adjusted value of a test is the running maximum of ``min(1, (m - j + 1) p_(j))``
  over the sorted p-values up to it; it is exact when some p-value that is not at its
  floor reaches that maximum, and a bound otherwise (unless capped at 1).
  """
  ok = np.isfinite(p)
  q, f = p[ok], floors[ok]
  m = q.size
  order = np.argsort(q, kind="stable")
  steps = np.minimum(1.0, (m - np.arange(m)) * q[order])
  holm = np.maximum.accumulate(steps)
  exact = np.maximum.accumulate(np.where(f[order], -np.inf, steps))
  bound = np.zeros(m, bool)
  bound[order] = (exact < holm) & (holm < 1.0)
  out = np.zeros(p.shape, bool)
  out[ok] = bound
  return out


def add_families(doc: dict[str, Any],
                 families: Mapping[str, Sequence[str | Sequence[str]]]) -> dict[str, Any]:
  """``add_holm`` for each ``{family: paths}`` in turn; ``doc`` is not modified."""
  for family, paths in families.items():
    doc = add_holm(doc, family, paths)
  return doc
