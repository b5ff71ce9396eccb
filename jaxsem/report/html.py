"""One self-contained HTML page per run: digest, tables, figures and provenance of every summary.json.

    path = html.write_report("out/main")   # -> out/main/report.html

The page is built only from what a launcher wrote under ``out_dir``: every ``summary.json``
(found recursively) and the PNG figures beside it, embedded as ``data:`` URIs. It has inline
CSS, no script and no reference to anything outside itself (its Content-Security-Policy tells
the browser so). Summaries are grouped into sections by their ``job`` (alignment, structure,
steering, ...); where several models ran (``launch.main``: ``<model>/{align,structure,steer}/``)
each section shows them side by side, one column per model. A summary that lacks keys renders
what it has.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jaxsem.errors import InputError
from jaxsem.io import out_dir as out_dir_lib
from jaxsem.io import safe_json
from jaxsem.io.cache import atomic_write_text
from jaxsem.report import captions
from jaxsem.report import geometry_report
from jaxsem.report import pvalues
from jaxsem.report import layers_report
from jaxsem.report import writers

REPORT_NAME = "report.html"
# Sections in reading order, with their headings; other jobs follow, sorted, headed by their name.
SECTIONS = {"main": "Models loaded and talking", "align": "Alignment with human norms",
            "structure": "Structure: PCA of words x scales", "steer": "Steering: off-target law and methods",
            "geometry": "Geometry: axis cosines against human inter-scale correlations",
            "layers": "Layers: alignment and structure at every site", "sweep": "Sweep: spectra of direction sets"}
_DIGESTS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "align": writers.align_digest, "structure": writers.structure_digest, "steer": writers.steer_digest,
    "geometry": geometry_report.digest, "layers": layers_report.digest, "sweep": writers.sweep_digest}
# What a summary that lacks keys (or holds the wrong types) raises inside a digest or a table.
_MISSING = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
 max-width:1600px;padding:0 18px 40px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;border-bottom:2px solid #ccc;margin:28px 0 10px}
h3{font-size:15px;margin:0 0 6px}h4{font-size:13px;margin:12px 0 4px}
.meta,.note,.context{color:#555;font-size:12px}nav a{margin-right:14px}
.cols{display:grid;gap:18px}.run{min-width:0;border:1px solid #e3e3e3;border-radius:6px;padding:10px}
pre{background:#f6f6f6;padding:6px 8px;font-size:11.5px;overflow-x:auto;white-space:pre-wrap}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:11.5px;margin:4px 0 8px}
th,td{border:1px solid #ddd;padding:2px 4px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}
figure{margin:10px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#333}details{margin-top:8px}summary{cursor:pointer;color:#333}
"""


@dataclasses.dataclass(frozen=True)
class _Run:
  """One summary.json: where it lies (relative to out_dir), what it holds, the figures beside it."""
  rel: Path
  doc: dict[str, Any]
  error: str | None
  figures: tuple[Path, ...]

  @property
  def job(self) -> str:
    job = self.doc.get("job")
    return job if isinstance(job, str) and job else (self.rel.name or "run")

  @property
  def model(self) -> str:
    name = _get(self.doc, "provenance", "model", "name")
    if isinstance(name, str) and name:
      return name
    return self.rel.parts[0] if self.rel.parts else "run"


def write_report(out_dir: str | os.PathLike, *, title: str | None = None) -> Path:
  """Writes ``out_dir/report.html`` from the summary.json files and figures under ``out_dir``.

  Args:
    out_dir: a launcher's output directory (one run, or ``launch.main``'s ``<model>/<job>/`` tree).
    title: the page's heading; by default the models and jobs found.

  Returns:
    The path of the page written.

  Raises:
    InputError: ``out_dir`` is not a directory or holds no summary.json.
    WriteError: the page cannot be written there (``out_dir.write_error``).
  """
  out = Path(out_dir)
  if not out.is_dir():
    raise InputError(f"{out} is not a directory; give the --out_dir a launcher wrote to.")
  runs = [_load(out, path) for path in _summaries(out)]
  if not runs:
    raise InputError(f"{out} holds no summary.json; run a launcher with --out_dir={out} first.")
  # Text from the summaries may hold lone surrogates (JSON allows "\ud800"), which UTF-8 cannot encode.
  page = _render(runs, title=title, where=out.name).encode("utf-8", "replace").decode("utf-8")
  try:
    return atomic_write_text(out / REPORT_NAME, page)
  except OSError as e:
    raise out_dir_lib.write_error(out, e) from None


def _summaries(out: Path) -> list[Path]:
  """Every summary.json under ``out``, skipping hidden folders and zarr stores (which can be huge)."""
  found = []
  for root, dirs, files in os.walk(out):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".zarr"))
    if "summary.json" in files:
      found.append(Path(root) / "summary.json")
  return found


def _load(out: Path, path: Path) -> _Run:
  rel = path.parent.relative_to(out)
  pngs = (p for p in path.parent.glob("*.png") if not p.name.startswith(".") and p.is_file())
  figures = tuple(sorted(pngs, key=lambda p: (captions.rank(p.name), p.name)))
  try:
    where = (rel / "summary.json").as_posix()  # relative: the page names no path of this machine
    doc = safe_json.read_object(path, where=where, fix="rerun the launcher that wrote it")
    return _Run(rel, doc, None, figures)
  except InputError as e:
    return _Run(rel, {}, str(e), figures)


def _render(runs: list[_Run], *, title: str | None = None, where: str = "") -> str:
  """The page's HTML for loaded runs (``write_report`` finds and loads them)."""
  models = list(dict.fromkeys(r.model for r in runs))
  order = list(SECTIONS)
  jobs = sorted({r.job for r in runs}, key=lambda j: (order.index(j) if j in order else len(order), j))
  title = title or f"jaxsem report: {', '.join(models)} ({', '.join(jobs)})"
  commits = sorted({str(c)[:12] for r in runs if (c := _get(r.doc, "provenance", "code", "git_commit"))})
  meta = [f"{len(runs)} summaries in {where or '.'}", f"models: {', '.join(models)}"]
  if commits:
    meta.append(f"code: {', '.join(commits)}")
  ids = {job: f"s{i}-" + "".join(c if c.isascii() and c.isalnum() else "-" for c in job.lower())
         for i, job in enumerate(jobs)}
  nav = " ".join(f'<a href="#{ids[j]}">{_e(SECTIONS.get(j, j))}</a>' for j in jobs)
  body = [f"<header><h1>{_e(title)}</h1><p class=meta>{_e(' · '.join(meta))}</p><nav>{nav}</nav></header>"]
  for job in jobs:
    cells = sorted((r for r in runs if r.job == job), key=lambda r: (models.index(r.model), str(r.rel)))
    labels = [r.model for r in cells]
    labels = [f"{r.model} · {r.rel}" if labels.count(r.model) > 1 else r.model for r in cells]
    cols = f"grid-template-columns:repeat({len(cells)},minmax(0,1fr))"
    heading = _e(SECTIONS.get(job, job))
    columns = "".join(_cell(r, label) for r, label in zip(cells, labels))
    body.append(f'<section id="{ids[job]}"><h2>{heading}</h2>'
                f'<div class=cols style="{cols}">{columns}</div></section>')
  return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
          "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
          "style-src 'unsafe-inline'\"><meta name=viewport content=\"width=device-width,initial-scale=1\">"
          f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
          + "\n</body></html>\n")


def _cell(run: _Run, label: str) -> str:
  """One run's column: heading, digest, tables, figures and folded provenance."""
  parts = [f"<article class=run><h3>{_e(label)}</h3><p class=context>{_e(_context(run))}</p>"]
  if run.error:
    parts.append(f"<p class=note>{_e(run.error)}</p>")
  digest = _DIGESTS.get(run.job)
  if digest and run.doc:
    text = "\n".join(_guard(digest, run.doc, None) or ())
    parts.append(f"<pre>{_e(text)}</pre>" if text
                 else "<p class=note>No digest: this summary lacks some of the numbers it reads.</p>")
  for table in _TABLES.get(run.job, ()):
    parts.append(_guard(table, run.doc, "<p class=note>A table was left out: this summary lacks some of its "
                        "numbers.</p>"))
  parts += [_figure(p) for p in run.figures]
  prov = run.doc.get("provenance")
  if prov is not None:
    text = json.dumps(prov, indent=2, ensure_ascii=False, default=str)
    parts.append(f"<details><summary>Provenance</summary><pre>{_e(text)}</pre></details>")
  return "".join(parts) + "</article>"


def _context(run: _Run) -> str:
  """Where the numbers come from, in a few words: the folder, the space or site, the readout."""
  bits = [f"{run.rel}/summary.json" if run.rel.parts else "summary.json"]
  space = _dict(_get(run.doc, "provenance", "space"))
  if space.get("name"):
    bits.append(str(space["name"]) + (f" layer {space['layer']}" if space.get("layer") is not None else ""))
    bits.append("centred" if space.get("centred") else "uncentred")
    if space.get("whitened"):
      bits.append("whitened")
  for key in ("site", "readout"):
    if run.doc.get(key):
      bits.append(f"{key} {run.doc[key]}")
  if isinstance(run.doc.get("seconds"), (int, float)):
    bits.append(f"{run.doc['seconds']:.0f} s")
  return " · ".join(bits)


def _figure(path: Path) -> str:
  """An ``<img>`` with the PNG's bytes inline and its caption, or a note if it is not a readable PNG."""
  try:
    data = path.read_bytes()
  except OSError as e:
    return f"<p class=note>{_e(path.name)}: cannot be read ({_e(e.strerror or str(e))}).</p>"
  if len(data) < 24 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
    return f"<p class=note>{_e(path.name)} is not a PNG image; left out.</p>"
  width, height = struct.unpack(">II", data[16:24])
  cap = captions.caption(path.name)
  src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
  return (f'<figure><img src="{src}" width={width} height={height} alt="{_e(path.name)}">'
          f"<figcaption><b>{_e(path.name)}</b>: {_e(cap)}</figcaption></figure>")


# --- tables, one function per table; each reads with _get and renders what is there --------------

def _main_table(doc: dict[str, Any]) -> str:
  model = _dict(_get(doc, "provenance", "model"))
  facts = [(k, model[k]) for k in ("name", "architecture", "quantization", "dtype", "load_seconds")
           if model.get(k) is not None]
  rows = [[str(k), str(v)] for k, v in facts]
  gens = [[str(g.get("prompt")), str(g.get("continuation"))] for g in _list(doc.get("generations"))
          if isinstance(g, dict)]
  return (_table(["model", ""], rows) if rows else "") + (
      "<h4>Continuations (greedy)</h4>" + _table(["prompt", "continuation"], gens) if gens else "")


def _align_table(doc: dict[str, Any]) -> str:
  head = ["scale", "vs norm", "r [95% CI]", "null95", "p (Holm)", "pairs null95", "pairs p (Holm)", "probe r"]
  rows = [r for r in _list(doc.get("results")) if isinstance(r, dict)]

  def row(r):
    norm = ":".join(str(r[k]) for k in ("norm", "column") if r.get(k) is not None) or "–"
    return [r.get("scale"), norm, _est(r.get("pearson"), r.get("pearson_ci")),
            _num(r.get("null_p95")), _tested(r, ""), _num(r.get("pairs_null_p95")), _tested(r, "pairs_"),
            _num(r.get("probe_r"))]
  tagged = [r for r in rows if r.get("matches_tag")]
  other = [r for r in rows if not r.get("matches_tag")]
  out = "<h4>Each scale against the norm it is tagged with</h4>"
  out += _table(head, [row(r) for r in tagged or rows])
  if tagged and other:
    n = f"{len(other)} more row" + "s" * (len(other) > 1)
    out += (f"<details><summary>Cross-correlations ({n})</summary>"
            + _table(head, [row(r) for r in other]) + "</details>")
  return out


def _structure_table(doc: dict[str, Any]) -> str:
  curves: dict[str, list[Any]] = {"scales": _list(_get(doc, "pca", "cumulative"))[:3],
                                  "random directions": _list(_get(doc, "random_pca", "cumulative"))[:3]}
  pair = _dict(doc.get("pair_null"))
  if pair:
    lo, hi = _list(pair.get("cumulative_p05")), _list(pair.get("cumulative_p95"))
    curves["WordNet pairs, mean"] = _list(pair.get("cumulative_mean"))[:3]
    curves["WordNet pairs, 5-95%"] = [[a, b] for a, b in zip(lo, hi)][:3]
  curves["human norms"] = _list(_get(doc, "human_pca", "cumulative"))[:3]
  for name, ctrl in _dict(doc.get("control")).items():
    curves[f"scales ({name})"] = _list(_get(ctrl, "pca", "cumulative_1_2_3"))[:3]
  rows = [[name] + [_ci(v) if isinstance(v, list) else _num(v) for v in cum] + ["–"] * (3 - len(cum))
          for name, cum in curves.items() if cum]
  out = "<h4>Cumulative explained variance</h4>" + _table(["", "PC1", "PC1-2", "PC1-3"], rows) if rows else ""
  tests = []
  for name, block in [("", doc), *((f" ({k})", c) for k, c in _dict(doc.get("control")).items())]:
    if not isinstance(block, dict):
      continue
    pn, en = _dict(block.get("pair_null")), _dict(block.get("epa_null"))
    if pn:
      tests.append([f"PC1-3 vs WordNet pairs{name}", _num(pn.get("observed")),
                    f"{_num(pn.get('percentile'), '.1f')} pct", _tested(pn)])
    if en:
      tests.append([f"E/P/A congruence vs shuffled tags{name}", _num(en.get("observed")),
                    f"null95 {_num(en.get('null_p95'))}", _tested(en)])
  if tests:
    out += "<h4>Against its nulls</h4>" + _table(["test", "observed", "null", "p (Holm)"], tests)
  matched = _get(doc, "pca", "epa_congruence", "matched")
  if isinstance(matched, dict) and matched:
    rows = [[f, _num(_get(m, "component"), "d"), _num(_get(m, "congruence"), "+.2f")]
            for f, m in matched.items()]
    out += "<h4>Tucker congruence with E/P/A tags</h4>" + _table(["factor", "component", "congruence"], rows)
  return out


def _steer_tables(doc: dict[str, Any]) -> str:
  law = []
  for key, label in (("offtarget", "shared readout"), ("offtarget_disjoint", "disjoint readout words")):
    ot = doc.get(key)
    if not isinstance(ot, dict):
      continue
    sl, direct = _dict(ot.get("shuffled_labels")), _dict(ot.get("direct_path"))
    law.append([label, _num(ot.get("n_pairs"), "d"), _est(ot.get("slope"), _get(ot, "ci", "slope")),
                _est(ot.get("r"), _get(ot, "ci", "r")), _num(ot.get("r2")), _tested(sl),
                _est(direct.get("partial_r"), direct.get("partial_ci")), _num(direct.get("share_direct"))])
  head = ["readout", "pairs", "slope [95% CI]", "r [95% CI]", "R2", "shuffled p (Holm)", "partial r [CI]",
          "direct R2"]
  out = ("<h4>Off-target law: D against cosine</h4>" + _table(head, law) + "<p class=note>partial r: the law "
         "once the direct path (the tied embedding alone) is partialled out; direct R2: the share of D that "
         "path explains.</p>") if law else ""
  methods = _dict(doc.get("methods"))
  for block, label in ((methods, f"held-out words ({methods.get('test_words', '?')})"),
                       (methods.get("disjoint_readout"), "read with the disjoint readout words"),
                       (methods.get("heldout_readout"), "read in a template not used in fitting")):
    if isinstance(block, dict) and isinstance(block.get("methods"), dict):
      out += f"<h4>Methods compared: {_e(label)}</h4>" + _methods_table(block)
  return out


def _methods_table(block: dict[str, Any]) -> str:
  rows = []
  for name, m in block["methods"].items():
    m = _dict(m)
    red = _dict(_get(block, "reduction_vs_plain", name))
    rows.append([name, _est(m.get("on_target"), m.get("on_target_ci"), "+.3f"),
                 _est(m.get("off_target_abs"), m.get("off_target_abs_ci"), ".3f"),
                 _est(m.get("off_per_on"), m.get("off_per_on_ci"), ".3f"),
                 _est(red.get("value"), red.get("ci"), "+.0%") if red else "–"])
  return _table(["method", "on-target [CI]", "mean |off-target| [CI]", "off-target per on-target [CI]",
                 "reduction vs plain [CI]"], rows)


def _sweep_table(doc: dict[str, Any]) -> str:
  sets = dict(_dict(doc.get("spectra")))
  sets.update({f"antonym/{n} words": r for n, r in _dict(doc.get("rated_words")).items()})
  rows = [[name, _num(_get(rep, "n_directions"), "d"),
           ", ".join(f"{k}:{v}" for k, v in (_get(rep, "n_components") or {}).items()),
           ", ".join(_num(c) for c in _list(_get(rep, "cumulative_1_2_3"))),
           _num(_get(rep, "participation_ratio"), ".1f")] for name, rep in sets.items()]
  return _table(["direction set", "directions", "components for", "PC1-3 cumulative", "participation ratio"],
                rows) if rows else ""


_TABLES: dict[str, tuple[Callable[[dict[str, Any]], str], ...]] = {
    "main": (_main_table,), "align": (_align_table,), "structure": (_structure_table,),
    "steer": (_steer_tables,), "sweep": (_sweep_table,)}


# --- small helpers ---------------------------------------------------------------------------------

def _e(text: Any) -> str:
  return html.escape(str(text), quote=True)


def _guard(fn: Callable[[dict[str, Any]], Any], doc: dict[str, Any], fallback: Any) -> Any:
  """``fn(doc)``, or ``fallback`` when the summary lacks a key or holds the wrong type somewhere."""
  try:
    return fn(doc)
  except _MISSING:
    return fallback


def _get(doc: Any, *keys: str) -> Any:
  """``doc[k1][k2]...``, or None where a level is missing or not a dict."""
  for k in keys:
    if not isinstance(doc, dict):
      return None
    doc = doc.get(k)
  return doc


def _dict(value: Any) -> dict[Any, Any]:
  return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
  return value if isinstance(value, list) else []


def _is_num(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any, fmt: str = ".2f") -> str:
  if not _is_num(x):
    return "–"
  try:
    return format(x, fmt)
  except ValueError:  # e.g. an integer format given a float
    return format(x, ".3g")


def _ci(pair: Any, fmt: str = ".2f") -> str:
  if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not any(_is_num(v) for v in pair):
    return "–"
  return f"[{_num(pair[0], fmt)},\u00a0{_num(pair[1], fmt)}]"  # breaks before the interval, not in it


def _p(p: Any, n_null: Any = None, at_floor: Any = None) -> str:
  """A p-value cell: ``0.013``, or ``≤ 0.002`` at the floor of its null."""
  if not _is_num(p):
    return "–"
  n = n_null if _is_num(n_null) else None
  text = pvalues.format_p(float(p), n, at_floor if isinstance(at_floor, bool) else None, name="")
  return text.strip().removeprefix("= ").replace("≤ ", "≤\u00a0")


def _est(x: Any, ci: Any, fmt: str = "+.2f") -> str:
  """An estimate with its interval: ``+0.58 [+0.33, +0.62]``."""
  interval = _ci(ci, fmt)
  return _num(x, fmt) + ("" if interval == "–" else f" {interval}")


def _tested(block: dict[str, Any], prefix: str = "") -> str:
  """``<prefix>p_value`` and its Holm adjustment from one block: ``≤ 0.002 (0.036)``."""
  p = _p(block.get(f"{prefix}p_value"), block.get(f"{prefix}n_null"), block.get(f"{prefix}p_at_floor"))
  holm = _p(block.get(f"{prefix}p_adjusted"), None, block.get(f"{prefix}p_adjusted_at_floor"))
  return p if holm == "–" else f"{p} ({holm})"


def _table(head: Iterable[Any], rows: list[list[Any]]) -> str:
  th = "".join(f"<th>{_e(h)}</th>" for h in head)
  body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
  return f"<div class=scroll><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"
