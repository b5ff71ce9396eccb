"""Writing alignment and structure results: summary.json, PNG figures, a short digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxsem.io import norms, packages
from jaxsem.io import scales as scales_io
from jaxsem.report import figures
from jaxsem.report import pvalues
from jaxsem.report import summary


def file_sha256(path: str | Path | None) -> str | None:
  """sha256 of a file's bytes, or None when ``path`` is not a file."""
  return packages.sha256_file(Path(path)) if path and Path(path).is_file() else None


def _norms_files(tables) -> list[dict[str, Any]]:
  """``norms.norms_provenance`` of every embedded norm table among ``tables``."""
  return [norms.norms_provenance(t) for t in tables if t in norms.NORMS]


def _scales_path(name_or_path: str) -> str:
  """The file ``scales_io.load_scales`` reads for a scale-set name or path."""
  return str(scales_io.scale_set_path(name_or_path) if name_or_path in scales_io.SCALE_SETS else name_or_path)


def _provenance(result: dict[str, Any], opts) -> dict[str, Any]:
  space = result["space"]
  prov = {
      "space": space,
      "layer": space.get("layer"),
      "centred": space.get("centred"),
      "whitened": space.get("whitened"),
      "policy": opts.policy,
      "coverage": result["coverage"],
      "directions": result["directions"],
      "scales_file": result["scales_file"],
      "scales_sha256": file_sha256(result["scales_file"]),
      "norms_files": _norms_files(result["coverage"]),
      "seed": opts.seed,
      "options": opts.provenance(),
  }
  if getattr(opts, "n_null_pairs", 0) > 0 or "pair_null" in result:
    pool = _scales_path("wordnet")  # the pool of random antonym pairs in the pair nulls
    prov["pair_pool_file"] = {"file": pool, "sha256": file_sha256(pool)}
  return prov


def _config(config: dict | None) -> dict[str, Any]:
  """The resolved experiment config, for provenance, when a launcher gives one."""
  return {} if config is None else {"config": config}


def _title(model, result) -> str:
  s = result["space"]
  bits = [model.provenance.get("name", "?"), s.get("name", "?")]
  if s.get("layer") is not None:
    bits.append(f"layer {s['layer']}")
  bits.append("centred" if s.get("centred") else "uncentred")
  if s.get("whitened"):
    bits.append("whitened")
  return " · ".join(bits)


def write_align(out_dir, result: dict[str, Any], model, opts, config: dict | None = None) -> Path:
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
  return summary.write(out, align_tests({"job": "align", **doc}), model=model, **_provenance(result, opts),
                       **_config(config))


def align_tests(doc: dict[str, Any]) -> dict[str, Any]:
  """A copy of an alignment result whose rows state their p-values' floors and Holm adjustments.

  Each row gains ``n_null``/``p_at_floor`` (random directions) and ``pairs_n_null``/
  ``pairs_p_at_floor`` (WordNet pairs) where it lacks them, read from ``doc["nulls"]``;
  then ``pvalues.ALIGN_FAMILIES`` are Holm-adjusted (``p_adjusted``, ``pairs_p_adjusted``).
  """
  nulls = doc.get("nulls", {})
  rows = []
  for row in doc["results"]:
    row = dict(row)
    for prefix, null in (("", "random"), ("pairs_", "wordnet_pairs")):
      if f"{prefix}n_null" not in row:
        row[f"{prefix}n_null"] = nulls.get(f"{row.get('norm')}:{row.get('column')}:{null}", {}).get("n")
      if f"{prefix}p_at_floor" not in row:
        p = row.get(f"{prefix}p_value")
        row[f"{prefix}p_at_floor"] = None if p is None else pvalues.is_at_floor(p, row[f"{prefix}n_null"])
    rows.append(row)
  return pvalues.add_families({**doc, "results": rows}, pvalues.ALIGN_FAMILIES)


def write_structure(out_dir, result: dict[str, Any], model, opts, config: dict | None = None) -> Path:
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
  pair = result.get("pair_null")
  band = None if not pair else {
      "lo": pair["cumulative_p05"], "hi": pair["cumulative_p95"], "mean": pair["cumulative_mean"],
      "label": f"{pair['n_sets']} random sets of {pair['n_pairs_per_set']} WordNet pairs"}
  figures.scree(out / "scree.png", curves, title=f"{title} · PCA of words x scales", band=band)
  labels = [f"{n} ({f})" if f else n for n, f in zip(names, factors)]
  figures.loadings(out / "loadings.png", np.array(result["pca"]["varimax_loadings"]), labels, factors,
                   title=f"{title} · varimax loadings", components=("F1", "F2", "F3"))
  doc = {k: v for k, v in result.items() if k not in ("space", "coverage", "directions", "scales_file")}
  doc = pvalues.add_families({"job": "structure", **doc}, pvalues.STRUCTURE_FAMILIES)
  return summary.write(out, doc, model=model, **_provenance(result, opts), **_config(config))


def align_digest(result: dict[str, Any], top: int = 6) -> list[str]:
  """A few readable lines: each scale against the column it is tagged with (the test of the
  scale; other rows are cross-correlations), with both intervals, its null and the ceiling."""
  rows = align_tests(result)["results"]
  tagged = [r for r in rows if r.get("matches_tag")]
  rows = sorted(tagged or rows, key=lambda r: -abs(r["pearson"]))[:top]
  lines = ["r [words and pole words resampled] (words only; leave one pole word out), null, ceiling:"]
  for r in rows:
    lo, hi = r["pearson_ci"]
    wlo, whi = r.get("pearson_ci_words") or (lo, hi)
    loo = r.get("leave_one_pole_out")
    loo = f"; {loo[0]:+.2f}..{loo[1]:+.2f}" if loo else ""
    p = pvalues.format_p(r["p_value"], r.get("n_null"), r.get("p_at_floor"))
    holm = pvalues.format_p(r.get("p_adjusted"), at_floor=r.get("p_adjusted_at_floor"), name="Holm p")
    lines.append(f"{r['scale']:>16s} vs {r['norm']}:{r['column']:<12s} r={r['pearson']:+.2f} "
                 f"[{lo:+.2f},{hi:+.2f}] ([{wlo:+.2f},{whi:+.2f}]{loo})  null95={r['null_p95']:.2f}  "
                 f"{p} ({holm})  probe={r['probe_r']:.2f}")
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
  # What the nulls allow one to conclude, in words (structure_nulls.conclusion states the rule).
  if result.get("conclusion"):
    lines.append(f"conclusion: {result['conclusion']}")
  for name, ctrl in result.get("control", {}).items():
    if ctrl.get("conclusion"):
      lines.append(f"conclusion ({name} control): {ctrl['conclusion']}")
  return lines


def write_sweep(out_dir, result: dict[str, Any], model, opts, config: dict | None = None) -> Path:
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
  return summary.write(out, {"job": "sweep", **doc}, model=model, **_provenance(result, opts),
                       **_config(config))


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


def write_steer(out_dir, result: dict[str, Any], model, opts, config: dict | None = None) -> Path:
  """``out_dir/summary.json`` plus the D-vs-cosine scatter, the D heatmap and dose-response curves."""
  out = Path(out_dir)
  title = f"{model.provenance.get('name', '?')} · {result['site']} · {result['readout']}"
  ot = result["offtarget"]
  for name, label in (("offtarget", "shared readout"), ("offtarget_disjoint", "disjoint readout words")):
    block = result.get(name)
    if not block:
      continue
    pairs = block["per_pair"]
    direct = block.get("direct_path") or {}
    extra = "" if not direct else (f" · direct path R2 {direct['share_direct']:.2f}, partial r "
                                   f"{direct['partial_r']:+.2f}")
    figures.offtarget_scatter(out / f"{name}.png", np.array([p["cos"] for p in pairs], float),
                              np.array([np.nan if p["D"] is None else p["D"] for p in pairs], float),
                              block["slope"], block["intercept"], block["r"] if block["r"] is not None else np.nan,
                              title=f"{title} · {label}: off-target effect vs cosine{extra}")
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
    for key, label in (("disjoint_readout", "disjoint readout words"), ("heldout_readout", "held-out template")):
      block = methods.get(key)
      if block:
        names = list(block["methods"])
        figures.method_bars(out / f"methods_{key}.png", names,
                            np.array([block["methods"][n]["off_per_on"] for n in names]),
                            np.array([block["methods"][n]["off_per_on_ci"] for n in names], float),
                            title=f"{title} · read with the {label} (not used in fitting)")
  if result.get("layers"):
    steer_layers_figures(out, result, f"{model.provenance.get('name', '?')} · {result['layers_site']} at each"
                         f" block · {result['readout']}")
  scales_file = result.get("scales_file") or _scales_path(opts.scales)
  # Steering reads Warriner for the readout validation, and samples words from a norm table when named.
  tables = dict.fromkeys(["warriner", *(opts.words if len(opts.words) == 1 else ())])
  layer = result["compare_layers"][0] if result.get("layers") else opts.layer
  prov = {"site": result["site"], "layer": layer,
          "layers": [e["layer"] for e in result.get("layers") or ()], "readout": result["readout"],
          "read_site": result["read_site"], "template": result["template"], "policy": "single",
          "coverage": {"words": len(result["words"]), "scales": len(result["scales"])},
          "centred": False, "whitened": False, "seed": opts.seed, "options": opts.provenance(),
          "scales_file": scales_file, "scales_sha256": file_sha256(scales_file),
          "norms_files": _norms_files(tables)}
  return summary.write(out, steer_tests({"job": "steer", **result}), model=model, **prov, **_config(config))


def steer_layers_figures(out: Path, result: dict[str, Any], title: str) -> list[Path]:
  """``steer_layers.png`` (off-target r with its CI and slope with its CI against the block) and
  ``steer_layers_on_target.png`` (on-target change per unit strength, with its CI)."""
  entries = result["layers"]
  ticks = [e["site"] for e in entries]

  def column(path):
    out = []
    for e in entries:
      x = e
      for key in path:
        x = (x or {}).get(key) if isinstance(key, str) else (x or [None, None])[key]
      out.append(np.nan if x is None else float(x))
    return np.array(out)

  ot = ("offtarget",)
  bands = {"off-target r": np.stack([column(ot + ("ci", "r", 0)), column(ot + ("ci", "r", 1))], 1),
           "off-target slope (D per unit cos)": np.stack([column(ot + ("ci", "slope", 0)),
                                                         column(ot + ("ci", "slope", 1))], 1)}
  on = ("on_target_per_unit",)
  # The y range holds r's interval and both point curves; a slope interval that explodes where the
  # on-target change nears zero (D = off / on) is clipped rather than flattening the curves.
  shown = np.concatenate([bands["off-target r"].ravel(), column(ot + ("slope",)), [0.0]])
  lo, hi = np.nanmin(shown), np.nanmax(shown)
  pad = 0.1 * max(hi - lo, 0.1)
  return [
      figures.layer_curves(out / "steer_layers.png", ticks,
                           {"off-target r": column(ot + ("r",)),
                            "off-target slope (D per unit cos)": column(ot + ("slope",))},
                           bands=bands, ylabel="D vs cos: r and slope (95% CI, clipped)",
                           ylim=(float(lo - pad), float(hi + pad)),
                           title=f"{title} · off-target effect vs direction cosine, per steering block"),
      figures.layer_curves(out / "steer_layers_on_target.png", ticks,
                           {"on-target change per unit strength": column(on + ("mean",))},
                           bands={"on-target change per unit strength": np.stack(
                               [column(on + ("ci", 0)), column(on + ("ci", 1))], 1)},
                           ylabel="rating change per site-norm unit",
                           title=f"{title} · on-target effect per unit strength, per steering block")]


def steer_layers_line(result: dict[str, Any]) -> str | None:
  """The digest's line of a run over layers: the off-target r at each block and its trend with depth."""
  entries = result.get("layers")
  if not entries:
    return None
  rs = " ".join(f"L{e['layer']} " + ("n/a" if e["offtarget"]["r"] is None else f"{e['offtarget']['r']:.2f}")
                for e in entries)
  trend = (result.get("layers_trend") or {}).get("r") or {}
  rho = trend.get("spearman_rho")
  how = (f"{trend['direction']} with depth: Spearman rho of r on layer = {rho:+.2f}, permutation p = "
         f"{trend['p_value']:.2g}" if rho is not None else
         "trend with depth: too few layers for Spearman rho")
  return f"off-target r by layer: {rs} ({how})"


def steer_tests(doc: dict[str, Any]) -> dict[str, Any]:
  """A copy of a steering result whose shuffled-label p-values state their floor and Holm adjustment.

  ``shuffled_labels`` of ``offtarget`` and ``offtarget_disjoint`` (when present) gain ``n_null``
  and ``p_at_floor`` where they lack them; then ``pvalues.STEER_FAMILIES`` are Holm-adjusted.
  """
  doc = dict(doc)
  for name in ("offtarget", "offtarget_disjoint"):
    shuffled = (doc.get(name) or {}).get("shuffled_labels")
    if not isinstance(shuffled, dict):
      continue
    shuffled = dict(shuffled)
    shuffled.setdefault("n_null", shuffled.get("n"))
    if "p_at_floor" not in shuffled:
      p = shuffled.get("p_value")
      shuffled["p_at_floor"] = None if p is None else pvalues.is_at_floor(p, shuffled["n_null"])
    doc[name] = {**doc[name], "shuffled_labels": shuffled}
  return pvalues.add_families(doc, pvalues.STEER_FAMILIES)


def _signed(x: float | None, fmt: str = "+.2f") -> str:
  return "n/a" if x is None else format(x, fmt)


def _offtarget_lines(ot: dict[str, Any], label: str) -> list[str]:
  """The regression of D on the cosine, its null (with floor and Holm), and the direct-path control."""
  ci = ot["ci"]["slope"]
  sl = ot["shuffled_labels"]
  p = pvalues.format_p(sl.get("p_value"), sl.get("n_null"), sl.get("p_at_floor"), name="shuffled-label p")
  if sl.get("p_adjusted") is not None:
    p += f" ({pvalues.format_p(sl['p_adjusted'], at_floor=sl.get('p_adjusted_at_floor'), name='Holm p')})"
  lines = [f"{label} D vs cosine over {ot['n_pairs']} pairs: slope {_signed(ot['slope'])} "
           f"[{_signed(ci[0])},{_signed(ci[1])}], r={_signed(ot['r'])}, R2={_signed(ot['r2'], '.2f')}; {p}"]
  direct = ot.get("direct_path")
  if direct:
    lo, hi = direct.get("partial_ci") or (None, None)
    lines.append(f"  direct path (tied embedding alone): r(D, direct)={_signed(direct.get('r_direct'))}, "
                 f"explains R2={_signed(direct.get('share_direct'), '.2f')} of D; the cosine law that "
                 f"survives it: partial r={_signed(direct.get('partial_r'))} [{_signed(lo)},{_signed(hi)}] "
                 f"(r={_signed(direct.get('r_cos'))} before)")
  return lines


def steer_digest(result: dict[str, Any]) -> list[str]:
  """Readout validity, the off-target regression, controls and the methods comparison."""
  lines = []
  layer_line = steer_layers_line(result)
  if layer_line:
    lines.append(layer_line)
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
  tested = steer_tests(result)
  for name, label in (("offtarget", "off-target"),
                      ("offtarget_disjoint", "off-target (disjoint readout words)")):
    if tested.get(name):
      lines += _offtarget_lines(tested[name], label)
  rnd = result["controls"].get("random_directions")
  if rnd:
    rnd_mean = rnd.get("random_mean_abs_slope", rnd.get("mean_abs_slope"))
    ci = rnd.get("random_ci")
    ci = f" [{ci[0]:.3f},{ci[1]:.3f}]" if ci and None not in ci else ""
    aci = rnd.get("antonym_ci")
    aci = f" [{aci[0]:.3f},{aci[1]:.3f}]" if aci and None not in aci else ""
    ratio = ""
    if rnd.get("ratio") is not None:
      rci = rnd.get("ratio_ci") or [None, None]
      ratio = f"; antonym / random {rnd['ratio']:.2f}" + (
          f" [{rci[0]:.2f},{rci[1]:.2f}]" if None not in rci else "")
    lines.append(f"random directions ({rnd.get('n_directions', rnd.get('n'))}): mean |rating slope| "
                 f"{rnd_mean:.3f}{ci} vs antonym off-target {rnd['antonym_mean_abs_offtarget_slope']:.3f}{aci}"
                 f"{ratio}; antonym on-target {rnd['antonym_mean_ontarget_slope']:.3f}")
  dis = result.get("disjoint_readout") or {}
  if dis.get("validation"):
    lines.append("disjoint readout vs human norms: " + ", ".join(
        f"{v['scale']}~{v['norm'].split(':')[1]} r={v['pearson']:+.2f}" for v in dis["validation"][:6]))
  if dis.get("note"):
    lines.append(f"disjoint readout: {dis['note']}")
  elif dis.get("left_out"):
    lines.append(f"disjoint readout words for {len(dis.get('scales', []))} scales; left out "
                 f"({len(dis['left_out'])}): {', '.join(dis['left_out'])}")
  methods = result.get("methods")
  if methods:
    lines.append(f"methods on held-out words (fitted on the shared readout, template {result['template']!r}):")
    lines += _method_lines(methods)
    for key, label in (("disjoint_readout", "read with the disjoint readout words"),
                       ("heldout_readout", "read in a template not used in fitting")):
      block = methods.get(key)
      if block:
        extra = f" ({block['template']!r}, {block.get('words', '?')} words)" if "template" in block else ""
        lines.append(f"methods {label}{extra}:")
        lines += _method_lines(block)
  return lines


def _method_lines(block: dict[str, Any]) -> list[str]:
  lines = []
  for name, m in block["methods"].items():
    red = block.get("reduction_vs_plain", {}).get(name)
    extra = ""
    if red is not None and red.get("value") is not None:
      lo, hi = red["ci"]
      extra = f"; {red['value']:+.0%} [{lo:+.0%},{hi:+.0%}] vs plain" if lo is not None else \
          f"; {red['value']:+.0%} vs plain"
    lines.append(f"{name:>12s}: on-target {m['on_target']:+.3f}, mean |off-target| "
                 f"{m['off_target_abs']:.3f}, per unit on-target {m['off_per_on']:.3f}{extra}")
  return lines
