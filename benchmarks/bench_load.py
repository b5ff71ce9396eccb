"""Cold load: jaxsem.load vs transformers from_pretrained(gguf_file=...), same GGUF file;
and jaxsem's cached load (params restored from the params cache).

    .venv/bin/python -m benchmarks.bench_load [--models=gemma3-270m,smollm2-135m-instruct]

Prints, per model: seconds and peak RSS of each, the speed ratio, and peak RSS as a
multiple of the float32 parameter bytes. Each load runs in a fresh process, one device,
with the files in the page cache. The cold load runs with ``JAXSEM_PARAMS_CACHE=0``
(dequantizes the GGUF file); the cached load restores the params (and the tokenizer)
that an earlier load saved in the jaxsem cache.
"""

from absl import app
from absl import flags

from benchmarks import common

_MODELS = flags.DEFINE_list("models", ["gemma3-270m", "smollm2-135m-instruct"], "Embedded models.")
_SKIP_REF = flags.DEFINE_bool("skip_reference", False, "Only measure jaxsem.")

_JAXSEM = """
import jax
t_imp = time.perf_counter()
import jaxsem
base = _peak_rss_mb()
t0 = time.perf_counter()
m = jaxsem.load({name!r})
jax.block_until_ready(m.params)
dt = time.perf_counter() - t0
_report(seconds=dt, peak_rss_mb=_peak_rss_mb(), import_rss_mb=base, n_params=m.config.n_params,
        hit=m.provenance["params_cache"]["hit"])
"""

_REFERENCE = """
import torch
torch.set_num_threads(os.cpu_count())
from transformers import AutoModelForCausalLM
base = _peak_rss_mb()
t0 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained({dir!r}, gguf_file={file!r}, dtype=torch.float32)
dt = time.perf_counter() - t0
_report(seconds=dt, peak_rss_mb=_peak_rss_mb(), import_rss_mb=base,
        n_params=sum(p.numel() for p in m.parameters()))
"""


def main(argv):
  del argv
  import os

  print(f"machine: {common.machine()}")
  print(f"{'model':24s} {'jaxsem s':>9s} {'ref s':>8s} {'speedup':>8s} {'jaxsem RSS MB':>14s} "
        f"{'ref RSS MB':>11s} {'f32 MB':>8s} {'RSS/f32':>8s} {'cached s':>9s} {'cached RSS MB':>14s}")
  cold_env = {"JAXSEM_PARAMS_CACHE": "0"}
  for name in _MODELS.value:
    path = common.gguf_path(name)
    # Warm the page cache (and fill the params cache) so both libraries read from memory.
    common.run_snippet(_JAXSEM.format(name=name))
    ours = common.run_snippet(_JAXSEM.format(name=name), env=cold_env)
    cached = common.run_snippet(_JAXSEM.format(name=name))
    if not cached["hit"]:
      raise RuntimeError(f"{name}: the second load did not restore from the params cache")
    ref = None
    if not _SKIP_REF.value:
      ref = common.run_snippet(_REFERENCE.format(dir=os.path.dirname(path), file=os.path.basename(path)))
    f32_mb = ours["n_params"] * 4 / 2**20
    ref_s = f"{ref['seconds']:8.2f}" if ref else f"{'-':>8s}"
    ratio = f"{ref['seconds'] / ours['seconds']:7.1f}x" if ref else f"{'-':>8s}"
    ref_rss = f"{ref['peak_rss_mb']:11.0f}" if ref else f"{'-':>11s}"
    print(f"{name:24s} {ours['seconds']:9.2f} {ref_s} {ratio} {ours['peak_rss_mb']:14.0f} {ref_rss} "
          f"{f32_mb:8.0f} {ours['peak_rss_mb'] / f32_mb:7.2f}x {cached['seconds']:9.2f} "
          f"{cached['peak_rss_mb']:14.0f}")
    print(f"{'':24s} (jaxsem RSS after imports, before load: {ours['import_rss_mb']:.0f} MB)")


if __name__ == "__main__":
  app.run(main)
