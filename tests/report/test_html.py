"""The report page: built from hand-written summaries and tiny figures, then read in headless Chromium."""

import base64
import errno
import json
import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxsem.errors import InputError  # noqa: E402
from jaxsem.io import out_dir as out_dir_lib  # noqa: E402
from jaxsem.report import captions  # noqa: E402
from jaxsem.report import html  # noqa: E402

MODELS = ("alpha-lm", "beta-lm")


def _png(path, seed=0):
  """A tiny real PNG (a line plot) at ``path``."""
  fig, ax = plt.subplots(figsize=(2, 1.5), dpi=40)
  ax.plot(np.random.RandomState(seed).randn(8))
  fig.savefig(path)
  plt.close(fig)
  return path


def _write(folder, doc, *pngs):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "summary.json").write_text(json.dumps(doc))
  for i, name in enumerate(pngs):
    _png(folder / name, seed=i)


def _prov(model):
  return {"model": {"name": model, "architecture": "toy", "dtype": "float32"}, "seed": 0,
          "code": {"git_commit": "0123456789abcdef"}, "space": {"name": "input_embedding", "centred": True}}


def _align(model, r):
  row = {"scale": "valence", "norm": "warriner", "column": "valence", "matches_tag": True, "pearson": r,
         "pearson_ci": [r - 0.1, r + 0.05], "null_p95": 0.17, "p_value": 0.002, "n_null": 500,
         "p_at_floor": True, "pairs_null_p95": 0.43, "pairs_p_value": 0.04, "pairs_n_null": 186,
         "probe_r": 0.84}
  cross = {**row, "column": "arousal", "matches_tag": False, "pearson": -0.24, "pearson_ci": [-0.3, -0.2]}
  return {"job": "align", "results": [row, cross], "provenance": _prov(model)}


def _structure(model):
  pca = {"cumulative": [0.33, 0.43, 0.51, 0.6], "cumulative_1_2_3": [0.33, 0.43, 0.51],
         "participation_ratio": 7.1,
         "epa_congruence": {"matched": {"E": {"component": 2, "congruence": 0.75}}}}
  return {"job": "structure", "pca": pca,
          "random_pca": {"cumulative": [0.09, 0.16, 0.22]},
          "pair_null": {"cumulative_mean": [0.32, 0.43, 0.49], "cumulative_p05": [0.25, 0.36, 0.43],
                        "cumulative_p95": [0.41, 0.5, 0.56], "observed": 0.51, "percentile": 72.5,
                        "p_value": 0.28, "p_adjusted": 0.28},
          "provenance": _prov(model)}


def _steer(model):
  ot = {"slope": 1.36, "intercept": 0.04, "r": 0.8, "r2": 0.65, "n_pairs": 756,
        "ci": {"slope": [1.23, 1.48], "r": [0.75, 0.84]},
        "shuffled_labels": {"p_value": 0.002, "n": 500, "n_null": 500, "p_at_floor": True},
        "direct_path": {"partial_r": 0.058, "partial_ci": [-0.02, 0.13], "share_direct": 0.66}}
  methods = {"test_words": 64, "methods": {
      "plain": {"on_target": 2.77, "off_target_abs": 0.59, "off_per_on": 0.215,
                "off_per_on_ci": [0.208, 0.223]},
      "fitted": {"on_target": 2.74, "off_target_abs": 0.26, "off_per_on": 0.096,
                 "off_per_on_ci": [0.092, 0.1]}},
      "reduction_vs_plain": {"fitted": {"value": 0.55, "ci": [0.53, 0.57]}}}
  return {"job": "steer", "site": "embed", "readout": "logodds", "template": "T {word}",
          "readout_validation": [], "controls": {}, "offtarget": ot, "methods": methods,
          "provenance": _prov(model)}


@pytest.fixture
def main_dir(tmp_path):
  """A ``launch.main``-shaped out_dir: two models, each with align, structure and steer."""
  out = tmp_path / "main"
  for i, model in enumerate(MODELS):
    _write(out / model, {"job": "main", "generations": [{"prompt": "The opposite of good is",
                                                         "continuation": f" bad ({model})"}],
                         "provenance": _prov(model)})
    _write(out / model / "align", _align(model, 0.58 - 0.2 * i), "align_warriner.png")
    _write(out / model / "structure", _structure(model), "scree.png", "cosine.png")
    _write(out / model / "steer", _steer(model), "offtarget.png", "methods.png", "extra_plot.png")
  return out


def _sections(page):
  return dict(re.findall(r'<section id="[^"]*"><h2>([^<]*)</h2>(.*?)</section>', page, re.S))


def test_page_shows_models_side_by_side_with_tables_and_captions(main_dir):
  path = html.write_report(main_dir)
  assert path == main_dir / "report.html"
  page = path.read_text()
  sections = _sections(page)
  assert list(sections) == [html.SECTIONS[j] for j in ("main", "align", "structure", "steer")]
  for body in sections.values():  # one column per model, in the same order in every section
    assert "repeat(2," in body
    assert body.index(">alpha-lm</h3>") < body.index(">beta-lm</h3>")
  align = sections[html.SECTIONS["align"]]
  assert "+0.58 [+0.48,\u00a0+0.63]" in align and "+0.38 [+0.28,\u00a0+0.43]" in align  # r [CI] per model
  assert "≤\u00a00.002" in align and "0.17" in align  # p at the floor of its null; the null's 95th pct
  assert "<td>0.84</td>" in align  # the probe's ceiling
  assert "Cross-correlations (1 more row)" in align
  assert "valence vs warriner:valence" in align  # the launcher's digest line
  structure = sections[html.SECTIONS["structure"]]
  assert "WordNet pairs, 5-95%" in structure and "[0.43,\u00a00.56]" in structure and "72.5 pct" in structure
  steer = sections[html.SECTIONS["steer"]]
  assert "+1.36 [+1.23,\u00a0+1.48]" in steer and "+0.06 [-0.02,\u00a0+0.13]" in steer  # slope, partial r
  assert "+55% [+53%,\u00a0+57%]" in steer and "D vs cosine over 756 pairs" in steer
  assert "bad (beta-lm)" in sections[html.SECTIONS["main"]]
  for name in ("align_warriner.png", "scree.png", "cosine.png", "offtarget.png", "methods.png"):
    assert html._e(captions.caption(name)) in page
  assert "extra_plot.png, written beside this summary (no caption" in page
  assert steer.index("offtarget.png</b>") < steer.index("methods.png</b>") < steer.index("extra_plot.png</b>")
  assert page.count("<summary>Provenance</summary>") == 8


def test_figures_are_embedded_and_nothing_is_fetched(main_dir):
  (main_dir / "alpha-lm" / "steer" / ".offtarget.png.x1.tmp.png").write_bytes(b"partial")  # a killed write
  (main_dir / "alpha-lm" / "steer" / "broken.png").write_bytes(b"not a png")
  page = html.write_report(main_dir).read_text()
  srcs = re.findall(r'<img src="([^"]*)"', page)
  pngs = sorted(p for p in main_dir.rglob("*.png") if not p.name.startswith(".") and p.name != "broken.png")
  assert len(srcs) == len(pngs) == 12
  assert all(s.startswith("data:image/png;base64,") for s in srcs)
  assert sorted(base64.b64decode(s.split(",", 1)[1]) for s in srcs) == sorted(p.read_bytes() for p in pngs)
  assert "broken.png is not a PNG image; left out." in page
  for bad in ('src="http', "href=\"http", "file:", str(main_dir), "<script", "<link", "@import", "url("):
    assert bad not in page


def test_hostile_text_is_escaped(tmp_path):
  evil = '<script>alert("x")</script>&'
  doc = _align(evil, 0.5)
  doc["results"][0]["scale"] = evil
  doc["provenance"]["note"] = "</pre><img src=x onerror=alert(1)>"
  _write(tmp_path / "run", doc, "align_<u>.png")
  page = html.write_report(tmp_path / "run", title="<i>mine</i>").read_text()
  assert "<script" not in page and "<i>" not in page and "<u>" not in page and "<img src=x" not in page
  assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
  assert "<title>&lt;i&gt;mine&lt;/i&gt;</title>" in page
  assert "align_&lt;u&gt;.png" in page


def test_summaries_that_lack_keys_still_render(tmp_path):
  out = tmp_path / "out"
  _write(out / "a", {"job": "align", "results": [{"scale": "valence", "pearson": "high"}]})
  _write(out / "s", {"job": "steer", "offtarget": {"slope": None}, "methods": {"methods": {"plain": None}}})
  _write(out / "p", {"job": "structure", "pca": {"cumulative": "oops"}, "control": [1, 2]})
  _write(out / "w", {"job": "sweep"})
  odd = {"seed": float("nan"), "odd": "\ud800"}  # JSON allows a lone surrogate; UTF-8 does not
  _write(out / "x", {"something": [1, 2, 3], "provenance": odd}, "plot.png")
  (out / "bad").mkdir()
  (out / "bad" / "summary.json").write_text("{not json")
  page = html.write_report(out).read_text()
  sections = _sections(page)
  assert {html.SECTIONS[j] for j in ("align", "steer", "structure", "sweep")} | {"x", "bad"} == set(sections)
  assert "No digest: this summary lacks" in sections[html.SECTIONS["align"]]
  assert "<td>valence</td>" in sections[html.SECTIONS["align"]]  # the row that is there, numbers as dashes
  assert "bad/summary.json is not valid JSON" in sections["bad"] and str(tmp_path) not in page
  assert "plot.png" in sections["x"] and "NaN" in sections["x"] and "&quot;odd&quot;: &quot;?&quot;" in page


def test_one_run_out_dir_and_errors(tmp_path, monkeypatch):
  _write(tmp_path / "run", _align("alpha-lm", 0.5), "align_warriner.png")
  page = html.write_report(tmp_path / "run").read_text()
  assert "<h1>jaxsem report: alpha-lm (align)</h1>" in page and "repeat(1," in page
  with pytest.raises(InputError, match="is not a directory"):
    html.write_report(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="holds no summary.json"):
    html.write_report(tmp_path / "empty")

  def full(path, text):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(html, "atomic_write_text", full)
  with pytest.raises(out_dir_lib.WriteError, match="No space left on device"):
    html.write_report(tmp_path / "run")


def test_captions_name_known_figures_and_unknown_files():
  assert "warriner" in captions.caption("align_warriner.png")
  assert "whitened control" in captions.caption("cumulative_whitened.png")
  assert "Look for" in captions.caption("offtarget_matrix.png")
  assert "mystery.png" in captions.caption("mystery.png") and "no caption" in captions.caption("mystery.png")
  assert captions.rank("offtarget.png") < captions.rank("methods.png") < captions.rank("zzz.png")


# --- in a real browser ------------------------------------------------------------------------------

_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var report = imgs.filter(function (i) { return !i.id; });
  var loaded = report.filter(function (i) {
    return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0;
  });
  var probe = document.createElement("div");
  probe.id = "probe";
  probe.textContent = "images=" + report.length + " loaded=" + loaded.length +
      " control=" + document.getElementById("control").naturalWidth;
  document.body.appendChild(probe);
});
</script>"""


def _chromium():
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if path := shutil.which(name):
      return path
  pytest.skip("a real browser is needed for this test and chromium not found; scripts/setup.sh --test "
              "installs it (Debian package chromium) where apt-get can be run as root")


def _browse(binary, page, tmp_path, *flags):
  cmd = [binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *flags, page.as_uri()]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  return done


def test_page_renders_in_headless_chromium(main_dir, tmp_path):
  binary = _chromium()
  page = html.write_report(main_dir)
  shot = tmp_path / "shot.png"
  done = _browse(binary, page, tmp_path, "--window-size=1200,3000", f"--screenshot={shot}")
  # The page has no script: any console line is a blocked load, a policy violation or an error.
  assert not [line for line in done.stderr.splitlines() if ":CONSOLE" in line], done.stderr[-2000:]
  pixels = mpimg.imread(shot)
  assert pixels.shape[:2] == (3000, 1200) and pixels[..., :3].std() > 0.02  # not blank

  # A copy with a probe script (allowed by its policy) counts the images the browser decoded. Two
  # controls show that the checks can fail: a broken image is not counted as loaded, and a remote
  # image (blocked by the page's policy, never fetched) is reported on the console log read above.
  text = page.read_text().replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
  controls = ('<img id="control" src="data:image/png;base64,AAAA">'
              '<img id="remote" src="http://127.0.0.1:9/x.png">')
  probed = tmp_path / "probed.html"
  probed.write_text(text.replace("</body>", controls + _PROBE + "</body>"))
  done = _browse(binary, probed, tmp_path, "--dump-dom", "--virtual-time-budget=10000")
  assert "images=12 loaded=12 control=0" in done.stdout, done.stdout[-500:]
  assert [line for line in done.stderr.splitlines() if ":CONSOLE" in line and "127.0.0.1" in line]
