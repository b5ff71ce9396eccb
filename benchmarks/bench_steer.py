"""Steering-grid throughput: words x scales x strengths, each prompt rated by pole log-odds.

    .venv/bin/python -m benchmarks.bench_steer [--words=8] [--n_scales=20] [--repeats=3]

The grid is the one ``launch.steer`` runs (``analyses.steer``), at site ``embed``: every
word sits in the default completion template, is steered along the unit direction of a
scale in the input-embedding space times a strength (in units of the site's median
residual norm), and is rated on every readout scale by the log-odds of the scales' pole
tokens at the next token. The defaults give 8 words x 20 scales x 4 strengths = 640
prompts.

The inputs are prepared once in their own process (jaxsem) and saved, so both sides run
exactly the same rows:

* the full token ids of every word's prompt (prefix + word + the template's tail) and
  the word's position in it;
* the pole token ids and each scale's pole index rows;
* each grid row's word and steering vector (strength included), float32.

Each side then runs in its own fresh process on the CPU:

* jaxsem: ``analyses.grid.Grid`` over the same prompts and poles (the shared prefix is
  cached once, the vector is added at the word, only the pole tokens' logits are
  computed), ``Grid.evaluate`` over all rows in batches of ``--batch``; after one
  warm-up pass over all rows, which compiles every batch shape (compilation reported on its own).
* transformers + PyTorch (float32, ``torch.set_num_threads(os.cpu_count())``): the
  same GGUF file, batches of ``--ref_batch`` full prompts, left-padded with explicit
  position ids; the vector is added to ``inputs_embeds`` at the word's position, where
  ``inputs_embeds`` is the model's own input-embedding module applied to the ids (for
  llama-family models the raw embedding row; Gemma 3's module already multiplies by its
  embedding scale), i.e. the residual entering the first block, which is jaxsem's
  ``embed`` site. ``logits_to_keep=1``, no KV cache; the same pole log-odds from the
  last position's logits.
* transformers + PyTorch with the same prefix reuse as jaxsem (what a competent user of the
  library would write): the shared prefix runs once with ``use_cache=True``; for each batch
  of ``--prefix_batch`` rows its cache is copied and repeated over the batch
  (``DynamicCache.batch_repeat_interleave``) and only the suffix tokens (the word and the
  template's tail) run, with the vector added to the word's ``inputs_embeds`` and position
  ids continuing after the prefix. Every word is one token, so all suffixes have one length
  and need no padding.

The figure is the median of ``--repeats`` passes over all rows. Both sides must give
the same ratings: their largest difference, relative to the largest rating magnitude,
must stay below ``1e-3``.
"""

import json
import os
import tempfile

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Embedded model (or GGUF path) to steer.")
_SCALES = flags.DEFINE_string("scales", "osgood28", "Scale set: readout scales and steering directions.")
_N_SCALES = flags.DEFINE_integer("n_scales", 20, "Steer along the first N scales of the set (0: all).")
_WORDS = flags.DEFINE_integer("words", 8, "Single-token Warriner words sampled (as launch.steer does).")
_ALPHAS = flags.DEFINE_list("alphas", ["-1", "-0.5", "0.5", "1"], "Strengths, in site-norm units.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the word sample.")
_BATCH = flags.DEFINE_integer("batch", 256, "jaxsem rows per compiled call.")
_REF_BATCH = flags.DEFINE_integer("ref_batch", 16, "transformers prompts per forward call.")
_PREFIX_BATCH = flags.DEFINE_integer("prefix_batch", 64, "prefix-reusing transformers rows per call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes over the grid (after one warm-up).")
_RTOL = 1e-3

_PREP = """
import numpy as np
import jaxsem
from jaxsem.analyses import grid as grid_lib, readouts, steer
from jaxsem.io import scales as scales_io
t0 = time.perf_counter()
model = jaxsem.load({model!r})
opts = steer.SteerOptions(scales={scales!r}, n_words={words}, seed={seed}, site="embed")
scales = list(scales_io.load_scales(opts.scales))
n_steer = {n_scales} or len(scales)
if not 0 < n_steer <= len(scales):
  raise SystemExit(f"--n_scales={{n_steer}}: the set has {{len(scales)}} scales")
words, ids, _ = steer._words(model, opts)
prompts = readouts.build_prompts(model.tokenizer, opts.template, ids)
poles = readouts.pole_tokens(model.tokenizer, scales)
units = steer._unit(steer._directions(model, scales, "embed", opts.template))
unit = steer._site_unit(model, prompts, "embed")
word_index, vectors = grid_lib.grid_rows(len(words), units[:n_steer] * unit, {alphas!r})
full = [list(prompts.prefix) + list(s) for s in prompts.suffixes]
if any(len(p) != 1 for p in prompts.word_positions):
  raise SystemExit("every word must be a single token")
meta = dict(template=prompts.template, prefix=list(prompts.prefix),
            suffixes=[list(s) for s in prompts.suffixes],
            word_positions=[list(p) for p in prompts.word_positions], full_ids=full,
            word_at=[len(prompts.prefix) + p[0] for p in prompts.word_positions], words=words,
            scales=list(poles.names), steered=[s.name for s in scales[:n_steer]], site_norm=unit,
            pad_id=int(model.pad_id))
with open(os.path.join({tmp!r}, "meta.json"), "w") as f:
  json.dump(meta, f)
for key, value in dict(rows=poles.rows, positive=poles.positive, negative=poles.negative,
                       word_index=word_index.astype(np.int64), vectors=vectors.astype(np.float32)).items():
  np.save(os.path.join({tmp!r}, key + ".npy"), value)
_report(seconds=time.perf_counter() - t0, words=len(words), steered=n_steer, scales=len(scales),
        rows=len(word_index), site_norm=unit, prefix=len(prompts.prefix), pole_rows=int(len(poles.rows)),
        tokens=float(np.mean([len(s) for s in full])))
"""

_JAXSEM = """
import jax, numpy as np
import jaxsem
from jaxsem.analyses import grid as grid_lib, readouts
compile_s = [0.0]
def _on_duration(event, duration, **kw):
  if event.startswith("/jax/core/compile/"):
    compile_s[0] += duration
jax.monitoring.register_event_duration_secs_listener(_on_duration)
tmp = {tmp!r}
load = lambda key: np.load(os.path.join(tmp, key + ".npy"))
with open(os.path.join(tmp, "meta.json")) as f:
  meta = json.load(f)
model = jaxsem.load({model!r})
prompts = readouts.Prompts(template=meta["template"], prefix=tuple(meta["prefix"]),
                           suffixes=tuple(tuple(s) for s in meta["suffixes"]),
                           word_positions=tuple(tuple(p) for p in meta["word_positions"]))
poles = readouts.PoleTokens(names=tuple(meta["scales"]), rows=load("rows"), positive=load("positive"),
                            negative=load("negative"), report={{}})
word_index, vectors = load("word_index"), load("vectors")
t0 = time.perf_counter()
grid = grid_lib.Grid(model, prompts, poles, "embed", batch_size={batch})
jax.block_until_ready(grid.cache)
build = time.perf_counter() - t0
b = grid.batch_size
compile_s[0] = 0.0
t0 = time.perf_counter()
grid.evaluate(word_index, vectors)  # warm-up: one pass compiles every batch shape
first = time.perf_counter() - t0
compiled = compile_s[0]
times = []
for _ in range({repeats}):
  t0 = time.perf_counter()
  ratings, _ = grid.evaluate(word_index, vectors)
  times.append(time.perf_counter() - t0)
np.save(os.path.join(tmp, "ratings_jaxsem.npy"), ratings)
c = model.config
peaks = {{}}  # jitted float32 matmuls in this process: the model's MLP shape at one batch, and a square one
rows = b * max(len(s) for s in meta["suffixes"])
for name, (m_, k_, n_) in dict(mlp=(rows, c.d_model, c.d_ff), square=(4096, 4096, 4096)).items():
  x, y = jax.numpy.ones((m_, k_), jax.numpy.float32), jax.numpy.ones((k_, n_), jax.numpy.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(x, y).block_until_ready()
  t0, reps = time.perf_counter(), 0
  while time.perf_counter() - t0 < 2.0:
    f(x, y).block_until_ready()
    reps += 1
  peaks[name] = 2 * m_ * k_ * n_ * reps / (time.perf_counter() - t0) / 1e9
config = dict(d=c.d_model, layers=c.n_layers, heads=c.n_heads, kv_heads=c.n_kv_heads, head_dim=c.head_dim,
              d_ff=c.d_ff)
_report(peaks=peaks, config=config, seconds=float(np.median(times)), times=times, build_s=build, first_s=first, compile_s=compiled,
        batch=b, rss_mb=_peak_rss_mb(), version=jax.__version__)
"""

# What both transformers peers share: the saved inputs, the model from the same GGUF, and the pole
# log-odds of a batch's logits.
_TORCH_SETUP = """
import copy
import numpy as np, torch, transformers
torch.set_num_threads(os.cpu_count())
from transformers import AutoModelForCausalLM
tmp = {tmp!r}
load = lambda key: torch.from_numpy(np.load(os.path.join(tmp, key + ".npy")))
with open(os.path.join(tmp, "meta.json")) as f:
  meta = json.load(f)
m = AutoModelForCausalLM.from_pretrained({dir!r}, gguf_file={file!r}, dtype=torch.float32).eval()
embed = m.get_input_embeddings()  # Gemma 3's module multiplies by its embedding scale itself
rows, positive, negative = load("rows").long(), load("positive").long(), load("negative").long()
word_index, vectors = load("word_index").long(), load("vectors")
keep_pos, keep_neg = positive.clamp(min=0), negative.clamp(min=0)

def pole_lse(logits, index, keep):
  picked = logits[:, keep]  # [B, J, K]
  return torch.logsumexp(picked.masked_fill(index < 0, -torch.inf), dim=-1)
"""

_REFERENCE = _TORCH_SETUP + """
full = meta["full_ids"]
n_words, length = len(full), max(len(s) for s in full)
ids = torch.zeros((n_words, length), dtype=torch.long)  # left-padded; pad ids are masked out
mask = torch.zeros((n_words, length), dtype=torch.long)
for i, s in enumerate(full):
  ids[i, length - len(s):] = torch.tensor(s)
  mask[i, length - len(s):] = 1
positions = (mask.cumsum(1) - 1).clamp(min=0)
word_at = torch.tensor([length - len(s) + p for s, p in zip(full, meta["word_at"])])

def run():
  out = []
  for start in range(0, len(word_index), {ref_batch}):
    w = word_index[start:start + {ref_batch}]
    x = embed(ids[w])
    x[torch.arange(len(w)), word_at[w]] += vectors[start:start + {ref_batch}]
    logits = m(inputs_embeds=x, attention_mask=mask[w], position_ids=positions[w], use_cache=False,
               logits_to_keep=1).logits[:, -1, rows].float()
    out.append(pole_lse(logits, positive, keep_pos) - pole_lse(logits, negative, keep_neg))
  return torch.cat(out)

with torch.inference_mode():
  t0 = time.perf_counter()
  run()  # warm-up
  first = time.perf_counter() - t0
  times = []
  for _ in range({repeats}):
    t0 = time.perf_counter()
    ratings = run()
    times.append(time.perf_counter() - t0)
np.save(os.path.join(tmp, "ratings_reference.npy"), ratings.numpy())
_report(seconds=float(np.median(times)), times=times, first_s=first, threads=torch.get_num_threads(),
        padded_length=length, rss_mb=_peak_rss_mb(),
        version=f"transformers {{transformers.__version__}}, torch {{torch.__version__}}")
"""

_PREFIX_REFERENCE = _TORCH_SETUP + """
prefix = torch.tensor([meta["prefix"]])
suffixes = torch.tensor(meta["suffixes"])  # [W, S]: one length, every word a single token
word_at = torch.tensor([p[0] for p in meta["word_positions"]])
n_prefix, n_suffix = prefix.shape[1], suffixes.shape[1]
positions = torch.arange(n_prefix, n_prefix + n_suffix)[None]

def run():
  t0 = time.perf_counter()
  cache = m(input_ids=prefix, use_cache=True).past_key_values
  prefix_s = time.perf_counter() - t0
  out = []
  for start in range(0, len(word_index), {prefix_batch}):
    w = word_index[start:start + {prefix_batch}]
    batch = copy.deepcopy(cache)
    batch.batch_repeat_interleave(len(w))
    x = embed(suffixes[w])
    x[torch.arange(len(w)), word_at[w]] += vectors[start:start + {prefix_batch}]
    mask = torch.ones((len(w), n_prefix + n_suffix), dtype=torch.long)
    logits = m(inputs_embeds=x, attention_mask=mask, position_ids=positions.expand(len(w), -1),
               past_key_values=batch, use_cache=True, logits_to_keep=1).logits[:, -1, rows].float()
    out.append(pole_lse(logits, positive, keep_pos) - pole_lse(logits, negative, keep_neg))
  return torch.cat(out), prefix_s

with torch.inference_mode():
  t0 = time.perf_counter()
  run()  # warm-up
  first = time.perf_counter() - t0
  times, prefix_times = [], []
  for _ in range({repeats}):
    t0 = time.perf_counter()
    ratings, prefix_s = run()
    times.append(time.perf_counter() - t0)
    prefix_times.append(prefix_s)
np.save(os.path.join(tmp, "ratings_prefix_reference.npy"), ratings.numpy())
_report(seconds=float(np.median(times)), times=times, prefix_s=float(np.median(prefix_times)), first_s=first,
        suffix_tokens=n_suffix, rss_mb=_peak_rss_mb())
"""


def flops_per_prompt(config: dict, prefix: int, suffix: int, pole_rows: int) -> float:
  """Matmul FLOPs of one steered prompt: ``suffix`` tokens through every block after the shared
  ``prefix`` (the last block only at the read position, but its keys and values at all), and the
  pole tokens' logits. Gated MLP; attention over the prefix and the suffix."""
  d, hd, h, kv, ff = config["d"], config["head_dim"], config["heads"], config["kv_heads"], config["d_ff"]
  kv_proj = 2 * d * 2 * kv * hd
  per_token = 2 * d * h * hd + kv_proj + 2 * h * hd * d + 2 * 3 * d * ff + 2 * 2 * h * hd * (prefix + suffix)
  return (config["layers"] - 1) * suffix * per_token + (suffix * kv_proj + per_token - kv_proj) + 2 * d * pole_rows


def main(argv):
  del argv
  print(f"machine: {common.machine()}")
  cpu = {"JAX_PLATFORMS": "cpu"}
  path = common.gguf_path(_MODEL.value)
  alphas = [float(a) for a in _ALPHAS.value]
  with tempfile.TemporaryDirectory(prefix="bench-steer-") as tmp:
    prep = common.run_snippet(_PREP.format(model=_MODEL.value, scales=_SCALES.value, words=_WORDS.value,
                                           seed=_SEED.value, n_scales=_N_SCALES.value, alphas=alphas,
                                           tmp=tmp), env=cpu)
    kw = dict(tmp=tmp, repeats=_REPEATS.value)
    ours = common.run_snippet(_JAXSEM.format(model=_MODEL.value, batch=_BATCH.value, **kw), env=cpu)
    ref_file = dict(dir=os.path.dirname(path), file=os.path.basename(path))
    ref = common.run_snippet(_REFERENCE.format(ref_batch=_REF_BATCH.value, **ref_file, **kw))
    reuse = common.run_snippet(_PREFIX_REFERENCE.format(prefix_batch=_PREFIX_BATCH.value, **ref_file, **kw))
    a = np.load(os.path.join(tmp, "ratings_jaxsem.npy")).astype(np.float64)
    b = np.load(os.path.join(tmp, "ratings_reference.npy")).astype(np.float64)
    c = np.load(os.path.join(tmp, "ratings_prefix_reference.npy")).astype(np.float64)
    with open(os.path.join(tmp, "meta.json")) as f:
      words = json.load(f)["words"]

  n = prep["rows"]
  ours_ps, ref_ps, reuse_ps = n / ours["seconds"], n / ref["seconds"], n / reuse["seconds"]
  diff, diff_reuse = np.abs(a - b), np.abs(a - c)
  span = float(np.max(np.abs(b)))
  rel, rel_reuse = float(diff.max()) / span, float(diff_reuse.max()) / span
  print(f"grid: {_MODEL.value}, {prep['words']} words x {prep['steered']} of {prep['scales']} "
        f"{_SCALES.value} scales x {len(alphas)} strengths {alphas} = {n} prompts, rated on "
        f"{prep['scales']} scales; site embed (norm {prep['site_norm']:.3f}); "
        f"prepared in {prep['seconds']:.1f} s")
  print(f"  words: {', '.join(words)}")
  print(f"versions: jax {ours['version']}; {ref['version']}")
  print(f"{'model':24s} {'rows':>5s} {'tokens':>7s} {'jaxsem p/s':>11s} {'naive p/s':>10s} {'ratio':>7s} "
        f"{'prefix p/s':>11s} {'ratio':>7s} {'rel diff':>9s}")
  print(f"{_MODEL.value:24s} {n:5d} {prep['tokens']:7.1f} {ours_ps:11.1f} {ref_ps:10.1f} "
        f"{ours_ps / ref_ps:6.2f}x {reuse_ps:11.1f} {ours_ps / reuse_ps:6.2f}x {max(rel, rel_reuse):9.2e}")
  print(f"  tokens: mean full prompt length ({prep['prefix']} of them the shared prefix)")
  flops = flops_per_prompt(ours["config"], prep["prefix"], reuse["suffix_tokens"], prep["pole_rows"])
  peaks = ours["peaks"]
  print(f"  work: {flops / 1e6:.0f} MFLOP of matmuls per prompt; jaxsem {ours_ps * flops / 1e9:.0f} GFLOP/s, "
        f"prefix-reusing transformers {reuse_ps * flops / 1e9:.0f}, naive transformers {ref_ps * flops / 1e9:.0f} "
        f"(useful work only); jitted float32 matmul peak here: {peaks['mlp']:.0f} GFLOP/s at the MLP's shape of "
        f"one batch, {peaks['square']:.0f} at 4096^3; jaxsem's share {ours_ps * flops / 1e9 / peaks['mlp']:.0%} "
        f"and {ours_ps * flops / 1e9 / peaks['square']:.0%}")
  print(f"  jaxsem: batch {ours['batch']}, median {ours['seconds']:.2f} s of "
        f"{', '.join(f'{t:.2f}' for t in ours['times'])}; "
        f"grid build (prefix cache) {ours['build_s']:.2f} s; "
        f"warm-up pass {ours['first_s']:.2f} s, of which compilation {ours['compile_s']:.2f} s; "
        f"peak RSS {ours['rss_mb']:.0f} MB")
  print(f"  transformers: batch {_REF_BATCH.value} (padded length {ref['padded_length']}), "
        f"{ref['threads']} threads, median {ref['seconds']:.2f} s of "
        f"{', '.join(f'{t:.2f}' for t in ref['times'])}; warm-up pass {ref['first_s']:.2f} s; "
        f"peak RSS {ref['rss_mb']:.0f} MB")
  print(f"  transformers with prefix reuse: batch {_PREFIX_BATCH.value}, {reuse['suffix_tokens']} suffix tokens "
        f"per row, median {reuse['seconds']:.2f} s of {', '.join(f'{t:.2f}' for t in reuse['times'])} "
        f"(prefix pass {reuse['prefix_s']:.3f} s of it); warm-up pass {reuse['first_s']:.2f} s; "
        f"peak RSS {reuse['rss_mb']:.0f} MB")
  print(f"  agreement: max |rating difference| naive {diff.max():.2e} (mean {diff.mean():.2e}), prefix reuse "
        f"{diff_reuse.max():.2e}; largest |rating| {span:.2f}; relative {rel:.2e} and {rel_reuse:.2e} "
        f"(limit {_RTOL:g})")
  assert rel < _RTOL, f"jaxsem and transformers ratings differ by {diff.max():.3g} (relative {rel:.3g})"
  assert rel_reuse < _RTOL, (f"jaxsem and prefix-reusing transformers ratings differ by {diff_reuse.max():.3g} "
                             f"(relative {rel_reuse:.3g})")


if __name__ == "__main__":
  app.run(main)
