"""Writing a layer run (``analyses.layers.run_layers``): summary.json, the figures and a digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxsem.analyses import layers_geometry
from jaxsem.io import norms
from jaxsem.report import figures
from jaxsem.report import summary
from jaxsem.report import writers

FIGURES = ("layers_alignment.png", "layers_pca.png", "layers_congruence.png")
GEOMETRY_FIGURE = "layers_geometry.png"  # written where the run measured the geometry relation
_FIRST_COLUMNS = ("valence", "arousal", "dominance")


def site_label(site: str) -> str:
  """A short tick label: ``resid_post.3`` -> ``3``; the static spaces spelled out."""
  if site.startswith("resid_post."):
    return site.split(".", 1)[1]
  return {"input_embedding": "input embedding", "unembedding": "output embedding"}.get(site, site)


def _tagged_curves(points: list[dict[str, Any]]):
  """(r curves, CI bands, probe ceilings) of every tagged scale x column, in depth order."""
  keys = list(dict.fromkeys((r["scale"], r["norm"], r["column"]) for r in points[0]["alignment"]
                            if r["matches_tag"]))
  curves, bands, ceilings = {}, {}, {}
  for scale, norm, column in keys:
    rows = [next((r for r in p["alignment"] if (r["scale"], r["norm"], r["column"]) == (scale, norm, column)),
                 None) for p in points]
    label = f"{scale} ~ {norm}:{column}"
    curves[label] = [np.nan if r is None else r["pearson"] for r in rows]
    bands[label] = [[np.nan, np.nan] if r is None else r["pearson_ci"] for r in rows]
    ceilings[label] = [p["probe_r"].get(f"{norm}:{column}", np.nan) for p in points]
  return curves, bands, ceilings


def _geometry_curves(points: list[dict[str, Any]]):
  """(relation r curves, CI bands) of the axis cosines and the projection correlations, in depth order."""
  labels = {"cosine": "axis cosine", "projection": "projection r"}
  curves, bands = {}, {}
  for side, label in labels.items():
    rels = [((p.get("geometry") or {}).get("relation") or {}).get(side) for p in points]
    curves[label] = [np.nan if r is None else r["r"] for r in rels]
    bands[label] = [[np.nan, np.nan] if r is None else r["ci"] for r in rels]
  return curves, bands


def write(out_dir, result: dict[str, Any], model, opts, config: dict | None = None) -> Path:
  """``out_dir/summary.json`` (job ``layers``) plus ``FIGURES`` (and ``GEOMETRY_FIGURE`` where the
  run measured the geometry relation); returns the summary's path."""
  out = Path(out_dir)
  points = result["layers"]
  sites = [site_label(p["site"]) for p in points]
  name = model.provenance.get("name", "?")
  centring = "centred" if opts.centre else "uncentred"
  whitened = " · whitened" if opts.whiten else ""
  title = f"{name} · {centring}{whitened} · {len(result['templates'])} templates"
  curves, bands, ceilings = _tagged_curves(points)
  figures.layer_curves(out / FIGURES[0], sites, curves, bands=bands, ceilings=ceilings,
                       ylabel="Pearson r with human ratings", title=f"{title} · alignment", ylim=(-1, 1))
  cum = np.array([list(p["pca_cumulative_1_2_3"]) + [np.nan] * (3 - len(p["pca_cumulative_1_2_3"]))
                  for p in points])
  rnd = [p["random_pca_cumulative_1_2_3"][-1] for p in points]
  figures.layer_curves(out / FIGURES[1], sites, {"PC1": cum[:, 0], "PC1-2": cum[:, 1], "PC1-3": cum[:, 2]},
                       dotted={"random directions, PC1-3": rnd}, ylabel="cumulative explained variance",
                       title=f"{title} · PCA of words x {opts.structure_scales}", ylim=(0, 1.02))
  factors = list(dict.fromkeys(f for p in points for f in (p["epa_congruence"] or {})))
  if factors:
    curves = {f: [(p["epa_congruence"] or {}).get(f, np.nan) for p in points] for f in factors}
    figures.layer_curves(out / FIGURES[2], sites, curves,
                         ylabel="Tucker congruence with the tags", title=f"{title} · E/P/A congruence",
                         ylim=(-1, 1))
  if any(p.get("geometry") and "relation" in p["geometry"] for p in points):
    curves, bands = _geometry_curves(points)
    n_pairs = (result.get("geometry") or {}).get("n_pairs")
    figures.layer_curves(out / GEOMETRY_FIGURE, sites, curves, bands=bands,
                         ylabel="r(model side, human inter-scale r) over pairs",
                         title=f"{title} · geometry relation, {n_pairs} pairs", ylim=(-1, 1))
  # Each site's rows state their p-values' floors and Holm adjustments, as launch.align's do.
  layers = [{**p, "alignment": writers.align_tests({"results": p["alignment"],
                                                    "nulls": p["nulls"]})["results"]} for p in points]
  rest = {k: v for k, v in result.items() if k not in ("coverage", "directions", "layers")}
  doc = {"job": "layers", **rest, "layers": layers}
  files = result["scales_files"]
  prov = {"templates": result["templates"], "statistics": result["statistics"], "centred": opts.centre,
          "whitened": opts.whiten, "policy": opts.policy, "seed": opts.seed, "coverage": result["coverage"],
          "directions": result["directions"],
          "scales_files": {k: {"file": v, "sha256": writers.file_sha256(v)} for k, v in files.items()},
          "scales_file": files["align"], "scales_sha256": writers.file_sha256(files["align"]),
          "norms_files": [norms.norms_provenance(t) for t in opts.norms if t in norms.NORMS],
          "options": opts.provenance()}
  if config is not None:
    prov["config"] = config
  return summary.write(out, doc, model=model, **prov)


def _ci(pair) -> str:
  return "[n/a]" if not pair or None in pair else f"[{pair[0]:+.2f},{pair[1]:+.2f}]"


def _relation_text(rel: dict[str, Any] | None) -> str:
  if not rel:
    return "n/a"
  return f"{rel['r']:+.2f} {_ci(rel.get('ci'))} Mantel p={rel['mantel_p']:.3g}"


def _geometry_line(result: dict[str, Any]) -> str:
  """One line: the geometry relation at the static input embedding and at the best site, or why skipped."""
  info = result.get("geometry") or {}
  if info.get("skipped") or not result.get("best_geometry"):
    return f"geometry relation: skipped ({info.get('skipped') or 'no site carries it'})"
  b = result["best_geometry"]
  static = b.get("static") or {}
  where = b["site"] + (f" (layer {b['layer']})" if b.get("layer") not in (None, -1) else "")
  return (f"geometry relation over {b['n_pairs']} pairs, r(axis cosine, human inter-scale r): static "
          f"{_relation_text(static.get('cosine'))}; best {where} {_relation_text(b['cosine'])} "
          f"(projection r there {_relation_text(b['projection'])}; static "
          f"{_relation_text(static.get('projection'))})")


def digest(result: dict[str, Any]) -> list[str]:
  """The best site per norm column (r, CI, probe) beside the static input embedding, and where
  the structure peaks."""
  best = result["best"]
  order = sorted(best, key=lambda c: (next((i for i, n in enumerate(_FIRST_COLUMNS) if c.endswith(f":{n}")),
                                           len(_FIRST_COLUMNS)), c))
  lines = [f"best site per column over {len(result['layers'])} sites, {len(result['templates'])} templates "
           "(r [words and pole words resampled]; static input embedding):"]
  for column in order:
    b = best[column]
    static = b.get("static") or {}
    where = b["site"] + (f" (layer {b['layer']})" if b.get("layer") not in (None, -1) else "")
    st = "n/a" if not static else f"{static['pearson']:+.2f} {_ci(static.get('pearson_ci'))}"
    lines.append(f"{b['scale']:>12s} ~ {column:<20s} {where:<24s} r={b['pearson']:+.2f} "
                 f"{_ci(b['pearson_ci'])}  probe={b['probe_r']:.2f}  static r={st}")
  points = result["layers"]
  cong = [(np.mean(list(p["epa_congruence"].values())), p) for p in points if p.get("epa_congruence")]
  if cong:
    value, p = max(cong, key=lambda vp: vp[0])
    lines.append(f"E/P/A congruence peaks at {p['site']} (mean {value:.2f}: " + ", ".join(
        f"{f}={v:+.2f}" for f, v in p["epa_congruence"].items()) + ")")
  if (result.get("geometry") or {}).get("skipped") != layers_geometry.OFF:  # asked for: measured or why not
    lines.append(_geometry_line(result))
  cum = [(p["pca_cumulative_1_2_3"][-1], p) for p in points if p.get("pca_cumulative_1_2_3")]
  if cum:
    value, p = max(cum, key=lambda vp: vp[0])
    lines.append(f"PC1-3 cumulative variance peaks at {p['site']} ({value:.2f}; random directions "
                 f"{p['random_pca_cumulative_1_2_3'][-1]:.2f}); participation ratio there "
                 f"{p['participation_ratio']:.1f}")
  return lines
