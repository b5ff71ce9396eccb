"""PNG figures beside each summary.json (matplotlib, no display needed).

Every function takes plain arrays and labels, writes one PNG atomically and returns
its path. The figure title carries the provenance a reader needs (model, space).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxsem.io.cache import atomic_path

FACTOR_COLOURS = {"E": "#1b9e77", "P": "#d95f02", "A": "#7570b3", None: "#999999"}


@functools.cache
def pyplot():
  """matplotlib's pyplot on the Agg backend (files only; never a window), imported at the first figure, so
  that a launcher stopped by a flag error or ``--help`` does not pay the 0.4 s import."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot

  return matplotlib.pyplot


def save(fig, path: str | os.PathLike) -> Path:
  """Writes ``fig`` to ``path`` atomically and closes it.

  Raises:
    OSError: when the file cannot be written (full disk, no permission); no temporary
      file is left behind and ``path`` keeps its earlier contents. Launchers report it
      as one line against their ``--out_dir`` (``jaxsem.io.out_dir.claim``).
  """
  path = Path(path)
  try:
    with atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=130, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
  finally:
    pyplot().close(fig)
  return path


def correlation_bars(path, labels: Sequence[str], r: np.ndarray, ci: np.ndarray,
                     null_p95: np.ndarray | None = None, probe_r: np.ndarray | None = None,
                     title: str = "", xlabel: str = "Pearson r with human ratings") -> Path:
  """Horizontal bars of r with 95% CIs, the null's 95th percentile as a grey band.

  Args:
    path: output PNG.
    labels: one per bar (e.g. "good-bad · warriner:valence").
    r: ``[n]`` correlations.
    ci: ``[n, 2]`` CI bounds.
    null_p95: optional ``[n]`` 95th percentile of |r| under the null, drawn as ±band.
    probe_r: optional ``[n]`` supervised ceiling, drawn as a tick.
  """
  n = len(labels)
  r = np.asarray(r, float)
  ci = np.asarray(ci, float).reshape(n, 2)
  fig, ax = pyplot().subplots(figsize=(7.5, 0.32 * n + 1.4))
  y = np.arange(n)[::-1]
  if null_p95 is not None:
    band = np.asarray(null_p95, float)
    for yi, b in zip(y, band):
      ax.fill_betweenx([yi - 0.45, yi + 0.45], -b, b, color="#dddddd", zorder=0, linewidth=0)
  colours = ["#2c7bb6" if v >= 0 else "#d7191c" for v in r]
  ax.barh(y, r, color=colours, height=0.7, zorder=2)
  ax.errorbar(r, y, xerr=np.abs(np.stack([r - ci[:, 0], ci[:, 1] - r])), fmt="none", ecolor="black",
              elinewidth=1, capsize=2, zorder=3)
  if probe_r is not None:
    ax.scatter(np.asarray(probe_r, float), y, marker="|", s=160, color="black", zorder=4,
               label="probe ceiling (CV r)")
    ax.legend(loc="lower right", fontsize=8)
  ax.axvline(0, color="black", linewidth=0.8)
  ax.set_yticks(y)
  ax.set_yticklabels(labels, fontsize=8)
  ax.set_xlim(-1, 1)
  ax.set_xlabel(xlabel + ("  (grey: null 95th percentile)" if null_p95 is not None else ""))
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def heatmap(path, matrix: np.ndarray, labels: Sequence[str], title: str = "",
            vmin: float = -1.0, vmax: float = 1.0, cbar_label: str = "cosine",
            row_labels: Sequence[str] | None = None) -> Path:
  """Heatmap (e.g. direction cosines) with labelled axes; ``labels`` name the columns and,
  unless ``row_labels`` are given, the rows too."""
  m = np.asarray(matrix, float)
  rows = list(labels if row_labels is None else row_labels)
  n = max(m.shape)
  size = min(14.0, 2.5 + 0.28 * n)
  fig, ax = pyplot().subplots(figsize=(size, size * 0.9 * max(m.shape[0], 4) / max(m.shape[1], 4)))
  im = ax.imshow(m, cmap="RdBu_r", vmin=vmin, vmax=vmax)
  if n <= 60:
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_yticklabels(rows, fontsize=7)
  fig.colorbar(im, ax=ax, shrink=0.8, label=cbar_label)
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def scree(path, curves: dict[str, np.ndarray], title: str = "", max_components: int = 15,
          band: dict | None = None) -> Path:
  """Explained-variance ratio per component (bars for the first curve, lines for all)
  with the cumulative share on a second axis.

  Args:
    band: optional null band on the cumulative axis for the first components:
      ``{"lo": [k], "hi": [k], "mean": [k], "label": str}`` (e.g. the 5-95% percentiles
      and mean of random antonym-pair sets), drawn as a shaded band and a dotted mean.
  """
  fig, ax = pyplot().subplots(figsize=(6.5, 4))
  ax2 = ax.twinx()
  for i, (name, evr) in enumerate(curves.items()):
    evr = np.asarray(evr, float)[:max_components]
    k = np.arange(1, len(evr) + 1)
    if i == 0:
      ax.bar(k, evr, color="#bbbbbb", label=f"{name} (per component)")
    (line,) = ax.plot(k, evr, marker="o", markersize=3, label=name)
    ax2.plot(k, np.cumsum(evr), linestyle="--", linewidth=1, color=line.get_color())
  if band is not None:
    lo, hi, mean = (np.asarray(band[f], float)[:max_components] for f in ("lo", "hi", "mean"))
    k = np.arange(1, len(mean) + 1)
    label = band.get("label", "null")
    ax2.fill_between(k, lo, hi, color="#c2a5cf", alpha=0.5, linewidth=0, label=f"{label}, 5-95% (cumulative)")
    ax2.plot(k, mean, linestyle=":", color="#762a83", linewidth=1.5, label=f"{label}, mean (cumulative)")
  ax.set_xlabel("component")
  ax.set_ylabel("explained variance ratio")
  ax2.set_ylabel("cumulative (dashed)")
  ax2.set_ylim(0, 1.02)
  handles, labels = ax.get_legend_handles_labels()
  handles2, labels2 = ax2.get_legend_handles_labels()
  # Below the axes, so that it hides neither the curves nor the band.
  ax.legend(handles + handles2, labels + labels2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14),
            ncol=2)
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def loadings(path, matrix: np.ndarray, labels: Sequence[str], factors: Sequence[str | None],
             title: str = "", components: Sequence[str] = ("PC1", "PC2", "PC3")) -> Path:
  """One panel per component: loading of each scale, coloured by hypothesised factor."""
  m = np.asarray(matrix, float)
  k = min(m.shape[1], len(components))
  n = m.shape[0]
  fig, axes = pyplot().subplots(1, k, figsize=(3.2 * k, 0.25 * n + 1.5), sharey=True)
  axes = np.atleast_1d(axes)
  y = np.arange(n)[::-1]
  colours = [FACTOR_COLOURS.get(f, FACTOR_COLOURS[None]) for f in factors]
  for j in range(k):
    ax = axes[j]
    ax.barh(y, m[:, j], color=colours)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_title(components[j], fontsize=9)
    ax.set_xlim(-1.05, 1.05)
  axes[0].set_yticks(y)
  axes[0].set_yticklabels(labels, fontsize=7)
  handles = [pyplot().Rectangle((0, 0), 1, 1, color=c) for f, c in FACTOR_COLOURS.items() if f in set(factors)]
  names = [("untagged" if f is None else f) for f in FACTOR_COLOURS if f in set(factors)]
  if handles:
    fig.legend(handles, names, loc="lower center", ncol=len(handles), fontsize=8)
  fig.suptitle(title, fontsize=9)
  return save(fig, path)


def cumulative_curves(path, curves: dict[str, np.ndarray], title: str = "",
                      thresholds: Sequence[float] = (0.5, 0.8, 0.9), max_components: int = 100) -> Path:
  """Cumulative explained variance against the number of components, one line per set,
  with the thresholds drawn and each curve's crossing marked."""
  fig, ax = pyplot().subplots(figsize=(6.5, 4))
  for name, cum in curves.items():
    cum = np.asarray(cum, float)[:max_components]
    k = np.arange(1, len(cum) + 1)
    (line,) = ax.plot(k, cum, label=name)
    for t in thresholds:
      hit = np.flatnonzero(cum >= t - 1e-6)
      if hit.size:
        ax.plot(k[hit[0]], cum[hit[0]], "o", markersize=4, color=line.get_color())
  for t in thresholds:
    ax.axhline(t, color="#999999", linewidth=0.7, linestyle=":")
  ax.set_xscale("log")
  ax.set_xlabel("components")
  ax.set_ylabel("cumulative explained variance")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def offtarget_scatter(path, cos: np.ndarray, d: np.ndarray, slope: float, intercept: float, r: float,
                      title: str = "") -> Path:
  """Off-target effect ``D`` against the cosine of the two scales, one dot per pair, with the fit.

  Args:
    path: output PNG.
    cos: ``[n]`` cosine of the steering direction with the readout direction.
    d: ``[n]`` off-target change per unit on-target change.
    slope: fitted slope of ``d`` on ``cos``.
    intercept: fitted intercept.
    r: Pearson r of the pairs, shown in the legend.
  """
  cos = np.asarray(cos, float)
  d = np.asarray(d, float)
  fig, ax = pyplot().subplots(figsize=(5.5, 4.5))
  ax.scatter(cos, d, s=12, color="#2c7bb6", alpha=0.7, edgecolors="none", label=f"pairs (n={cos.size})")
  lo, hi = (float(cos.min()), float(cos.max())) if cos.size else (-1.0, 1.0)
  xs = np.linspace(min(lo, 0.0), max(hi, 0.0), 50)
  ax.plot(xs, slope * xs + intercept, color="black", linewidth=1.2,
          label=f"fit: D = {slope:.2f} cos {intercept:+.2f}  (r = {r:.2f})")
  ax.plot(xs, xs, color="#999999", linewidth=0.8, linestyle=":", label="D = cos")
  ax.axhline(0, color="#cccccc", linewidth=0.6, zorder=0)
  ax.axvline(0, color="#cccccc", linewidth=0.6, zorder=0)
  ax.set_xlabel("cosine of steering and readout directions")
  ax.set_ylabel("off-target change per unit on-target change (D)")
  ax.legend(fontsize=8, loc="upper left")
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def dose_response(path, alphas: np.ndarray, on_target: np.ndarray, off_target_abs: np.ndarray,
                  labels: Sequence[str], title: str = "") -> Path:
  """Rating change against steering strength: on-target per steered scale, their mean, |off-target|.

  Args:
    path: output PNG.
    alphas: ``[A]`` strengths (any order; drawn sorted).
    on_target: ``[S, A]`` mean on-target change of each steered scale.
    off_target_abs: ``[A]`` mean |off-target change|.
    labels: ``[S]`` steered-scale names (labelled directly when there are at most 8).
  """
  alphas = np.asarray(alphas, float)
  order = np.argsort(alphas)
  a = alphas[order]
  on = np.asarray(on_target, float).reshape(len(labels), -1)[:, order]
  off = np.asarray(off_target_abs, float)[order]
  fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
  few = len(labels) <= 8
  for label, curve in zip(labels, on):
    ax.plot(a, curve, linewidth=0.8, alpha=0.6 if few else 0.35, label=label if few else None)
  ax.plot(a, on.mean(axis=0), color="black", linewidth=2.4, marker="o", markersize=3,
          label="on-target, mean over scales")
  ax.plot(a, off, color="#d7191c", linewidth=1.8, linestyle="--", marker="o", markersize=3,
          label="|off-target|, mean")
  ax.axhline(0, color="#cccccc", linewidth=0.6, zorder=0)
  ax.axvline(0, color="#cccccc", linewidth=0.6, zorder=0)
  ax.set_xlabel("steering strength (alpha)")
  ax.set_ylabel("rating change (steered - unsteered)")
  ax.legend(fontsize=7, loc="best")
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def method_bars(path, names: Sequence[str], values: np.ndarray, ci: np.ndarray, title: str = "",
                ylabel: str = "mean |off-target| per unit on-target") -> Path:
  """One bar per steering method with its 95% CI (``ci [n, 2]``)."""
  v = np.asarray(values, float)
  c = np.asarray(ci, float)
  fig, ax = pyplot().subplots(figsize=(1.4 * len(v) + 2.5, 3.6))
  x = np.arange(len(v))
  ax.bar(x, v, color=["#999999"] + ["#1b9e77"] * (len(v) - 1))
  ax.errorbar(x, v, yerr=np.abs(np.stack([v - c[:, 0], c[:, 1] - v])), fmt="none", ecolor="black", capsize=4)
  ax.set_xticks(x)
  ax.set_xticklabels(names)
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, None)
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def layer_curves(path, sites: Sequence[str], curves: dict[str, np.ndarray], *, bands: dict | None = None,
                 ceilings: dict | None = None, ylabel: str = "", title: str = "",
                 ylim: tuple[float, float] | None = None, dotted: dict | None = None) -> Path:
  """One line per quantity against depth (input embedding -> output embedding), one point per site.

  Args:
    path: output PNG.
    sites: ``[n]`` tick labels in depth order (e.g. ``input_embedding``, ``embed``, ``0``, ..., ``final``).
    curves: label -> ``[n]`` values (NaN where missing), drawn as solid lines with markers.
    bands: optional label -> ``[n, 2]`` interval of that curve, shaded in its colour.
    ceilings: optional label -> ``[n]`` ceiling of that curve (e.g. the probe's r), dashed in its colour.
    ylabel: the y axis's label.
    title: the figure's title.
    ylim: optional y limits.
    dotted: optional label -> ``[n]`` reference lines (e.g. a random baseline), dotted grey.
  """
  n = len(sites)
  x = np.arange(n)
  fig, ax = pyplot().subplots(figsize=(max(6.5, 0.32 * n + 2.5), 4.2))
  for name, values in curves.items():
    (line,) = ax.plot(x, np.asarray(values, float), marker="o", markersize=3, linewidth=1.6, label=name)
    colour = line.get_color()
    if bands and name in bands:
      band = np.asarray(bands[name], float).reshape(n, 2)
      ax.fill_between(x, band[:, 0], band[:, 1], color=colour, alpha=0.18, linewidth=0)
    if ceilings and name in ceilings:
      ax.plot(x, np.asarray(ceilings[name], float), linestyle="--", linewidth=1, color=colour,
              label=f"{name}: probe ceiling")
  for name, values in (dotted or {}).items():
    ax.plot(x, np.asarray(values, float), linestyle=":", linewidth=1.2, color="#777777", label=name)
  ax.axhline(0, color="#cccccc", linewidth=0.6, zorder=0)
  ax.set_xticks(x)
  ax.set_xticklabels(list(sites), rotation=60, ha="right", fontsize=7)
  ax.set_xlabel("site (input embedding -> output embedding)")
  ax.set_ylabel(ylabel)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: hides no point
  ax.set_title(title, fontsize=9)
  return save(fig, path)
