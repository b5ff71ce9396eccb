"""Writing alignment and structure results: summary.json, PNG figures, a short digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxsem.report import figures
from jaxsem.report import summary


def _provenance(result: dict[str, Any], opts) -> dict[str, Any]:
  space = result["space"]
  return {
      "space": space,
      "layer": space.get("layer"),
      "centred": space.get("centred"),
      "whitened": space.get("whitened"),
      "policy": opts.policy,
      "coverage": result["coverage"],
      "directions": result["directions"],
      "scales_file": result["scales_file"],
      "seed": opts.seed,
      "options": opts.provenance(),
  }


def _title(model, result) -> str:
  s = result["space"]
  bits = [model.provenance.get("name", "?"), s.get("name", "?")]
  if s.get("layer") is not None:
    bits.append(f"layer {s['layer']}")
  bits.append("centred" if s.get("centred") else "uncentred")
  if s.get("whitened"):
    bits.append("whitened")
  return " · ".join(bits)


def write_align(out_dir, result: dict[str, Any], model, opts) -> Path:
  """``out_dir/summary.json`` plus one bars figure per norm table."""
  out = Path(out_dir)
  rows = result["results"]
  for norm in sorted({r["norm"] for r in rows}):
    sel = [r for r in rows if r["norm"] == norm]
    figures.correlation_bars(
        out / f"align_{norm}.png", [f"{r['scale']} · {r['column']}" for r in sel],
        np.array([r["pearson"] for r in sel]), np.array([r["pearson_ci"] for r in sel]),
        null_p95=np.array([r["null_p95"] for r in sel]), probe_r=np.array([r["probe_r"] for r in sel]),
        title=f"{_title(model, result)} · {norm} norms")
  doc = {k: v for k, v in result.items() if k not in ("space", "coverage", "directions", "scales_file")}
  return summary.write(out, {"job": "align", **doc}, model=model, **_provenance(result, opts))


def write_structure(out_dir, result: dict[str, Any], model, opts) -> Path:
  """``out_dir/summary.json`` plus cosine heatmap, scree and loadings figures."""
  out = Path(out_dir)
  title = _title(model, result)
  names, factors = result["scales"], result["factors"]
  figures.heatmap(out / "cosine.png", np.array(result["cosine"]["matrix"]), names,
                  title=f"{title} · direction cosines (random baseline mean |cos| "
                        f"{result['cosine']['baseline']['random_directions_mean_abs']:.3f})")
  curves = {"scales": result["pca"]["explained_variance_ratio"],
            "random directions": result["random_pca"]["explained_variance_ratio"]}
  for name, ctrl in result.get("control", {}).items():
    curves[f"scales ({name})"] = ctrl["pca"]["explained_variance_ratio"]
  if result.get("human_pca"):
    curves["human norms"] = result["human_pca"]["explained_variance_ratio"]
  figures.scree(out / "scree.png", curves, title=f"{title} · PCA of words x scales")
  labels = [f"{n} ({f})" if f else n for n, f in zip(names, factors)]
  figures.loadings(out / "loadings.png", np.array(result["pca"]["varimax_loadings"]), labels, factors,
                   title=f"{title} · varimax loadings", components=("F1", "F2", "F3"))
  doc = {k: v for k, v in result.items() if k not in ("space", "coverage", "directions", "scales_file")}
  return summary.write(out, {"job": "structure", **doc}, model=model, **_provenance(result, opts))


def align_digest(result: dict[str, Any], top: int = 6) -> list[str]:
  """A few readable lines: the strongest correlations against their null and ceiling."""
  rows = sorted(result["results"], key=lambda r: -abs(r["pearson"]))[:top]
  lines = []
  for r in rows:
    lo, hi = r["pearson_ci"]
    lines.append(f"{r['scale']:>16s} vs {r['norm']}:{r['column']:<12s} r={r['pearson']:+.2f} "
                 f"[{lo:+.2f},{hi:+.2f}]  null95={r['null_p95']:.2f}  p={r['p_value']:.3g}  "
                 f"probe={r['probe_r']:.2f}")
  return lines


def structure_digest(result: dict[str, Any]) -> list[str]:
  """Variance explained, E/P/A congruence and the whitening control in a few lines."""
  p = result["pca"]
  cum = ", ".join(f"{c:.2f}" for c in p["cumulative_1_2_3"])
  rnd = ", ".join(f"{c:.2f}" for c in result["random_pca"]["cumulative"][:3])
  lines = [f"PC1-3 cumulative variance {cum} (random directions {rnd}); "
           f"participation ratio {p['participation_ratio']:.1f}"]
  if p.get("epa_congruence"):
    m = p["epa_congruence"]["matched"]
    lines.append("Tucker congruence with E/P/A tags: " + ", ".join(
        f"{f}={v['congruence']:+.2f}" for f, v in m.items()))
  for col, rs in p.get("component_vs_norms", {}).items():
    lines.append(f"components vs human {col}: " + ", ".join(f"{r:+.2f}" for r in rs))
  for name, ctrl in result.get("control", {}).items():
    cum_c = ", ".join(f"{c:.2f}" for c in ctrl["pca"]["cumulative_1_2_3"])
    lines.append(f"control ({name}): cumulative {cum_c}, participation ratio "
                 f"{ctrl['pca']['participation_ratio']:.1f}")
  return lines


def write_sweep(out_dir, result: dict[str, Any], model, opts) -> Path:
  """``out_dir/summary.json`` plus the cumulative-variance figure of every direction set."""
  out = Path(out_dir)
  curves = {f"{name} ({rep['n_directions']})": rep["cumulative"] for name, rep in result["spectra"].items()}
  for norm, rep in result["rated_words"].items():
    curves[f"antonym, {norm} words only ({rep['n_words']})"] = rep["cumulative"]
  figures.cumulative_curves(out / "cumulative.png", curves,
                            title=f"{_title(model, result)} · {result['n_tokens']} tokens x directions")
  for name, ctrl in result.get("control", {}).items():
    curves = {f"{k} ({rep['n_directions']})": rep["cumulative"] for k, rep in ctrl["spectra"].items()}
    for norm, rep in ctrl["rated_words"].items():
      curves[f"antonym, {norm} words only ({rep['n_words']})"] = rep["cumulative"]
    figures.cumulative_curves(out / f"cumulative_{name}.png", curves,
                              title=f"{_title(model, result)} · control: {name}")
  doc = {k: v for k, v in result.items() if k not in ("space", "coverage", "directions", "scales_file")}
  return summary.write(out, {"job": "sweep", **doc}, model=model, **_provenance(result, opts))


def sweep_digest(result: dict[str, Any]) -> list[str]:
  """Components for 50/80/90% per direction set, and the throughput of the sweep."""
  lines = []
  if "zarr" in result:
    z = result["zarr"]
    lines.append(f"{z['shape'][0]} tokens x {z['shape'][1]} directions -> {z['path']} "
                 f"({z['gigabytes']:.2f} GB, {z['seconds']:.1f} s, {z['scores_per_second'] / 1e6:.0f}M scores/s)")
  sets = dict(result["spectra"])
  sets.update({f"antonym/{n} words": r for n, r in result["rated_words"].items()})
  lines += _spectra_lines(sets)
  for name, ctrl in result.get("control", {}).items():
    lines.append(f"control ({name}):")
    sets = dict(ctrl["spectra"])
    sets.update({f"antonym/{n} words": r for n, r in ctrl["rated_words"].items()})
    lines += _spectra_lines(sets)
  return lines


def _spectra_lines(sets: dict[str, Any]) -> list[str]:
  lines = []
  for name, rep in sets.items():
    counts = ", ".join(f"{k}:{v}" for k, v in rep["n_components"].items())
    cum = ", ".join(f"{c:.2f}" for c in rep["cumulative_1_2_3"])
    lines.append(f"{name:>22s}: components for {counts}; PC1-3 cumulative {cum}; "
                 f"participation ratio {rep['participation_ratio']:.1f}")
  return lines


def write_steer(out_dir, result: dict[str, Any], model, opts) -> Path:
  """``out_dir/summary.json`` plus the D-vs-cosine scatter, the D heatmap and dose-response curves."""
  out = Path(out_dir)
  title = f"{model.provenance.get('name', '?')} · {result['site']} · {result['readout']}"
  ot = result["offtarget"]
  pairs = ot["per_pair"]
  figures.offtarget_scatter(out / "offtarget.png", np.array([p["cos"] for p in pairs], float),
                            np.array([np.nan if p["D"] is None else p["D"] for p in pairs], float),
                            ot["slope"], ot["intercept"], ot["r"] if ot["r"] is not None else np.nan,
                            title=f"{title} · off-target effect vs cosine")
  figures.heatmap(out / "offtarget_matrix.png", np.array(ot["D"], float), result["scales"],
                  title=f"{title} · D[steered -> read] (rows: steered)", row_labels=result["steered"],
                  cbar_label="D (off-target / on-target)")
  dr = result["dose_response"]
  figures.dose_response(out / "dose_response.png", np.array(dr["alphas"]), np.array(dr["on_target"]),
                        np.array(dr["off_target_abs"]), result["steered"],
                        title=f"{title} · strength in site-norm units")
  methods = result.get("methods")
  if methods:
    names = list(methods["methods"])
    figures.method_bars(out / "methods.png", names, np.array([methods["methods"][n]["off_per_on"] for n in names]),
                        np.array([methods["methods"][n]["off_per_on_ci"] for n in names], float),
                        title=f"{title} · held-out words ({methods['test_words']}), equal on-target strength")
  prov = {"site": result["site"], "layer": opts.layer, "readout": result["readout"],
          "read_site": result["read_site"], "template": result["template"], "policy": "single",
          "coverage": {"words": len(result["words"]), "scales": len(result["scales"])},
          "centred": False, "whitened": False, "seed": opts.seed, "options": opts.provenance(),
          "scales_file": result.get("scales_file")}
  return summary.write(out, {"job": "steer", **result}, model=model, **prov)


def steer_digest(result: dict[str, Any]) -> list[str]:
  """Readout validity, the off-target regression, controls and the methods comparison."""
  lines = []
  val = result["readout_validation"]
  if val:
    lines.append("readout vs human norms: " + ", ".join(
        f"{v['scale']}~{v['norm'].split(':')[1]} r={v['pearson']:+.2f}" for v in val[:6]))
  rating = result.get("rating_readout_validation") or {}
  if rating.get("scales"):
    lines.append("rating prompts (1-7, chat format): " + ", ".join(
        f"{v['scale']} r={v['pearson'] if v['pearson'] is None else round(v['pearson'], 2)}, top answer "
        f"{max(v['most_likely_answer_counts'], key=v['most_likely_answer_counts'].get)} for "
        f"{max(v['most_likely_answer_counts'].values())}/{v['n']} words" for v in rating["scales"]))
  ot = result["offtarget"]
  ci = ot["ci"]["slope"]
  lines.append(f"off-target D vs cosine over {ot['n_pairs']} pairs: slope {ot['slope']:+.2f} "
               f"[{ci[0]:+.2f},{ci[1]:+.2f}], r={ot['r']:+.2f}, R2={ot['r2']:.2f}; shuffled-label p="
               f"{ot['shuffled_labels']['p_value']:.3g}")
  rnd = result["controls"].get("random_directions")
  if rnd:
    lines.append(f"random directions: mean |rating slope| {rnd['mean_abs_slope']:.3f} vs antonym off-target "
                 f"{rnd['antonym_mean_abs_offtarget_slope']:.3f}, on-target {rnd['antonym_mean_ontarget_slope']:.3f}")
  methods = result.get("methods")
  if methods:
    for name, m in methods["methods"].items():
      red = methods["reduction_vs_plain"].get(name)
      extra = "" if red is None else f"; {red['value']:+.0%} [{red['ci'][0]:+.0%},{red['ci'][1]:+.0%}] vs plain"
      lines.append(f"{name:>10s}: on-target {m['on_target']:+.3f}, mean |off-target| "
                   f"{m['off_target_abs']:.3f}, per unit on-target {m['off_per_on']:.3f}{extra}")
  return lines
