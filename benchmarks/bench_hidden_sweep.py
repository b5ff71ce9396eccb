"""Hidden-state vocabulary sweep: every token's state at every site, projected on every WordNet direction.

    .venv/bin/python -m benchmarks.bench_hidden_sweep --tokens=8192

The work, on the first ``--tokens`` token ids of ``--model`` (default Gemma 3 270M, float32):
each token right after ``<bos>`` (the sweep's default context), its state at the 19 sites
``transformers`` returns with ``output_hidden_states=True`` (the embedding, blocks 0..16 and
the final-normed output: ``--layers=embed,0,...,16,final``), centred by the exact mean of those
tokens' states per site, cosine-projected on one direction per WordNet antonym pair built at
that site, and the ``[site, D, D]`` moments of the normalised rows (the spectra's input).

* jaxsem: ``launch.sweep --space=hidden`` as a library call (``sweep.run_sweep``): two passes
  over the tokens on device (statistics, then projection + moments), the scores streamed to zarr
  in float16 (the hidden default). The pole words' states and the directions are built in the
  same call; their time is reported apart (a fixed cost, not per token).
* peer: transformers + PyTorch (float32, eager) runs ``[<bos>, token]`` in batches with
  ``output_hidden_states=True`` and keeps the 19 states at the token's position in memory; numpy
  then centres them, projects them on the SAME directions (saved by the jaxsem process) and
  forms the moments. The peer's token states stay in memory (19 x 262,144 x 640 float32 is
  12.7 GB at full size); jaxsem's never leave the device.

Each side runs in a fresh process (``common.run_snippet``), one after the other, in the same
run. tokens/s counts the token passes only. The forward's share of the matmul peak counts the
useful forward FLOPs, ``2 x (non-embedding params) x tokens`` (one position per token), over the
forward time (jaxsem: its statistics pass, forward + moments; peer: its forward calls), against
a jitted / torch float32 matmul of ``--peak_size`` cubed measured in the same process. The
full-size wall time (all 262,144 tokens) is EXTRAPOLATED: fixed costs + per-token time x vocab.
Both sides must agree on the projections (float16 storage: 2e-3).
"""

import json
import os
import tempfile

from absl import app
from absl import flags

from benchmarks import common

_MODEL = flags.DEFINE_string("model", "gemma3-270m", "Embedded model.")
_TOKENS = flags.DEFINE_integer("tokens", 8192, "Token ids 0..tokens-1 are swept.")
_SCALES = flags.DEFINE_string("scales", "wordnet", "Scale set whose directions are projected on.")
_BATCH = flags.DEFINE_integer("batch", 256, "Peer: sequences per forward call.")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "Side of the square matmul that measures the peak.")

_JAXSEM = """
import jax, jax.numpy as jnp, numpy as np
import jaxsem
from jaxsem.analyses import hidden_sweep, hidden_sweep_kernels, hidden_sweep_sites, sweep
from jaxsem.io.scales import load_scales
n = {peak_size}
a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
jax.block_until_ready(mm(a, a))
times = []
for _ in range(5):
  t0 = time.perf_counter()
  jax.block_until_ready(mm(a, a))
  times.append(time.perf_counter() - t0)
peak = 2 * n**3 / float(np.median(times)) / 1e9
del a
model = jaxsem.load({model!r}, dtype="float32")
layers = "embed," + ",".join(str(i) for i in range(model.config.n_layers - 1)) + ",final"
opts = sweep.SweepOptions(space="hidden", scales={scales!r}, layers=layers, norms=(), baselines=(),
                          checkpoint_seconds=1e9)
t0 = time.perf_counter()
res = hidden_sweep.run_hidden_sweep(model, opts, {out!r}, baselines=(), n_tokens={tokens})
wall = time.perf_counter() - t0
stats_s = res["statistics"]["pass"]["seconds"]
proj_s = res["projection_pass"]["seconds"]
# The directions the sweep built (centring cancels in pole_mean differences): saved for the peer.
sites = hidden_sweep.parse_layers(layers, model.config.n_layers)
runner = hidden_sweep_kernels._Runner(model, opts.context, sites, opts.hidden_chunk_rows)
built, _ = hidden_sweep_sites._site_directions(model, opts, runner, load_scales({scales!r}), opts.context,
                                            [None] * len(sites), {tokens})
names = json.load(open(os.path.join({out!r}, "projections.zarr", "zarr.json")))["attributes"]["columns"]
u = np.stack([np.asarray(d.vectors)[[d.names.index(x) for x in names]] for _, d in built]).astype(np.float32)
np.save({u_path!r}, u)
c = model.config
non_embed = c.n_params - c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
_report(wall=wall, stats_s=stats_s, proj_s=proj_s, fixed_s=wall - stats_s - proj_s, peak_gflops=peak,
        non_embed=non_embed, sites=len(sites), directions=len(names), vocab=c.vocab_size,
        version=jax.__version__)
"""

_PEER = """
import numpy as np, torch
torch.set_num_threads(os.cpu_count())
from transformers import AutoModelForCausalLM
n = {peak_size}
a = torch.randn(n, n)
torch.matmul(a, a)
times = []
for _ in range(5):
  t0 = time.perf_counter()
  torch.matmul(a, a)
  times.append(time.perf_counter() - t0)
peak = 2 * n**3 / float(np.median(times)) / 1e9
del a
m = AutoModelForCausalLM.from_pretrained({dir!r}, gguf_file={file!r}, dtype=torch.float32).eval()
bos = m.config.bos_token_id
u = np.load({u_path!r})  # [sites, K, D]
units = u / np.linalg.norm(u, axis=-1, keepdims=True)
tokens = np.arange({tokens})
states = None
t0 = time.perf_counter()
with torch.inference_mode():
  for s in range(0, len(tokens), {batch}):
    t = torch.as_tensor(tokens[s:s + {batch}])
    ids = torch.stack([torch.full_like(t, bos), t], dim=1)
    hs = m.model(input_ids=ids, output_hidden_states=True).hidden_states
    block = torch.stack([h[:, 1] for h in hs]).numpy()  # [sites, B, D]
    states = block if states is None else np.concatenate([states, block], axis=1)
forward_s = time.perf_counter() - t0
t1 = time.perf_counter()
x = states - states.mean(axis=1, keepdims=True)
norms = np.linalg.norm(x, axis=-1, keepdims=True)
w = np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
p = np.clip(np.matmul(w, units.astype(np.float32).transpose(0, 2, 1)), -1.0, 1.0)  # batched BLAS
mean_w = w.mean(axis=1)
cw = w - mean_w[:, None]
moments = np.matmul(cw.transpose(0, 2, 1), cw)
numpy_s = time.perf_counter() - t1
np.save({p_path!r}, p.astype(np.float32))
_report(forward_s=forward_s, numpy_s=numpy_s, peak_gflops=peak, sites=int(states.shape[0]),
        version=torch.__version__)
"""


def main(argv):
  del argv
  import numpy as np

  from jaxsem.kernels import zarr_out

  path = common.gguf_path(_MODEL.value)
  n = _TOKENS.value
  print(f"machine: {common.machine()}")
  with tempfile.TemporaryDirectory() as tmp:
    u_path, p_path, out = (os.path.join(tmp, f) for f in ("u.npy", "p.npy", "out"))
    kw = dict(peak_size=_PEAK_SIZE.value, tokens=n, u_path=u_path)
    jx = common.run_snippet(_JAXSEM.format(model=_MODEL.value, scales=_SCALES.value, out=out, **kw),
                            timeout=7200)
    peer = common.run_snippet(_PEER.format(dir=os.path.dirname(path), file=os.path.basename(path),
                                           batch=_BATCH.value, p_path=p_path, **kw), timeout=7200)
    got = zarr_out.open_for_read(os.path.join(out, "projections.zarr")).read().result().astype(np.float32)
    want = np.load(p_path)
  err = float(np.max(np.abs(got - want)))
  j_pass = jx["stats_s"] + jx["proj_s"]
  p_pass = peer["forward_s"] + peer["numpy_s"]
  flops = 2 * jx["non_embed"] * n
  j_share = flops / jx["stats_s"] / 1e9 / jx["peak_gflops"]
  p_share = flops / peer["forward_s"] / 1e9 / peer["peak_gflops"]
  vocab = jx["vocab"]
  j_full = jx["fixed_s"] + j_pass / n * vocab
  p_full = p_pass / n * vocab  # the peer's directions come from jaxsem: no fixed cost charged
  row = {
      "tokens": n, "sites": jx["sites"], "directions": jx["directions"],
      "jaxsem": {"tokens_per_s": n / j_pass, "pass_s": j_pass, "statistics_s": jx["stats_s"],
                 "projection_s": jx["proj_s"], "fixed_s": jx["fixed_s"], "forward_share_of_peak": j_share,
                 "peak_gflops": jx["peak_gflops"], "full_size_s_extrapolated": j_full},
      "peer": {"tokens_per_s": n / p_pass, "pass_s": p_pass, "forward_s": peer["forward_s"],
               "numpy_s": peer["numpy_s"], "forward_share_of_peak": p_share,
               "peak_gflops": peer["peak_gflops"],
               "full_size_s_extrapolated": p_full},
      "ratio": (n / j_pass) / (n / p_pass), "max_abs_diff": err,
      "versions": {"jax": jx["version"], "torch": peer["version"]},
  }
  print(json.dumps(row, indent=1))
  if err > 2e-3:
    raise SystemExit(f"jaxsem and the peer disagree: max |diff| {err:.2e} > 2e-3")


if __name__ == "__main__":
  app.run(main)
