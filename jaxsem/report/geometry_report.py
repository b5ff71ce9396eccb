"""Writing a geometry run (``analyses.geometry.run_geometry``): summary.json, two figures and a digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxsem.io import norms
from jaxsem.report import figures
from jaxsem.report import summary
from jaxsem.report import writers

FIGURES = ("geometry_scatter.png", "geometry_matrices.png")
_MODEL_SIDES = (("cosine", "axis cosine"), ("projection", "projection r (words on the two axes)"))


def _title(model, result: dict[str, Any]) -> str:
  s = result["space"]
  bits = [model.provenance.get("name", "?"), s.get("site") or s.get("name", "?")]
  if s.get("layer") is not None:
    bits.append(f"layer {s['layer']}")
  bits.append("centred" if s.get("centred") else "uncentred")
  if s.get("whitened"):
    bits.append("whitened")
  return " · ".join(bits)


def _rel_text(rel: dict[str, Any]) -> str:
  lo, hi = rel["ci"]
  return (f"r = {rel['r']:+.2f} [{lo:+.2f}, {hi:+.2f}], slope {rel['slope']:+.2f}, Mantel p = "
          f"{rel['mantel_p']:.3g}, {rel['n_pairs']} pairs")


def scatter(path, block: dict[str, Any], title: str) -> Path:
  """Human r against the axis cosine (left) and against the projection r (right), each pair named."""
  pairs = block["pairs"]
  human = np.array([p["human_r"] for p in pairs], float)
  labels = [f"{p['a']}–{p['b']}" for p in pairs]
  fig, axes = figures.pyplot().subplots(1, 2, figsize=(12, 5.5), layout="constrained")
  for ax, (side, xlabel) in zip(axes, _MODEL_SIDES):
    x = np.array([p["cosine" if side == "cosine" else "projection_r"] for p in pairs], float)
    rel = block["relation"][side]
    ax.scatter(x, human, s=14, color="#2c7bb6", edgecolors="none")
    small = 7 if len(pairs) <= 21 else 5
    for xi, yi, label in zip(x, human, labels):
      if np.isfinite(xi) and np.isfinite(yi):
        ax.annotate(label, (xi, yi), fontsize=small, xytext=(2, 2), textcoords="offset points",
                    color="#444444")
    ok = np.isfinite(x)
    if ok.any() and np.isfinite(rel["slope"]):
      xs = np.linspace(np.nanmin(x), np.nanmax(x), 50)
      ax.plot(xs, rel["intercept"] + rel["slope"] * xs, color="black", linewidth=1.0)
    ax.axhline(0, color="#cccccc", linewidth=0.6, zorder=0)
    ax.axvline(0, color="#cccccc", linewidth=0.6, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("human inter-scale r")
    ax.set_title(_rel_text(rel), fontsize=8)
  fig.suptitle(title, fontsize=9)
  return figures.save(fig, path)


def matrices(path, block: dict[str, Any], title: str) -> Path:
  """Human r and axis cosine heatmaps side by side, in the same scale order."""
  names = block["scales"]
  s = len(names)
  size = max(4.0, 0.45 * s + 2.0)
  fig, axes = figures.pyplot().subplots(1, 2, figsize=(2 * size + 2.5, size), layout="constrained")
  for ax, (key, label) in zip(axes, (("human_r", "human inter-scale r"), ("cosines", "model axis cosine"))):
    m = np.array(block[key]["matrix"], float)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(s), names, rotation=90, fontsize=7)
    ax.set_yticks(range(s), names, fontsize=7)
    if s <= 10:
      for i in range(s):
        for j in range(s):
          if np.isfinite(m[i, j]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(label, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.suptitle(title, fontsize=9)
  return figures.save(fig, path)


def write(out_dir, result: dict[str, Any], model, opts, config: dict | None = None) -> Path:
  """``out_dir/summary.json`` (job ``geometry``) plus ``FIGURES``; returns the summary's path."""
  out = Path(out_dir)
  title = f"{_title(model, result)} · {opts.scales}"
  scatter(out / FIGURES[0], result, title)
  matrices(out / FIGURES[1], result, title)
  doc = {"job": "geometry", **{k: v for k, v in result.items() if k not in ("coverage", "directions")}}
  space = result["space"]
  prov = {"space": space, "site": space.get("site"), "layer": space.get("layer"),
          "centred": space.get("centred"),
          "whitened": space.get("whitened"), "policy": opts.policy, "method": opts.method,
          "coverage": result["coverage"], "directions": result["directions"],
          "scales_file": result["scales_file"], "scales_sha256": writers.file_sha256(result["scales_file"]),
          "norms_files": [norms.norms_provenance(t) for t in result["tables"] if t in norms.NORMS],
          "seed": opts.seed, "options": opts.provenance()}
  if config is not None:
    prov["config"] = config
  return summary.write(out, doc, model=model, **prov)


def _line(rel: dict[str, Any], what: str) -> str:
  lo, hi = rel["ci"]
  return f"r({what}, human r) = {rel['r']:+.2f} [{lo:+.2f}, {hi:+.2f}], Mantel p = {rel['mantel_p']:.3g}"


def digest(result: dict[str, Any]) -> list[str]:
  """One line: pairs, columns, and the two relations with CI and Mantel p (the notes are in summary.json)."""
  rel = result["relation"]
  n_cols = len(set(result["columns"]))
  lines = [f"geometry: {rel['cosine']['n_pairs']} pairs of {n_cols} human columns; "
           f"{_line(rel['cosine'], 'cos')}; {_line(rel['projection'], 'projection r')}"]
  apart = result.get("relation_no_shared_poles")
  if apart and apart["n_pairs_dropped"]:
    cos = apart["cosine"]
    text = "too few pairs left" if not np.isfinite(cos["r"]) else _line(cos, "cos")
    lines.append(f"  without the {apart['n_pairs_dropped']} pair(s) whose scales share a pole word "
                 f"({cos['n_pairs']} left): {text}")
  return lines
