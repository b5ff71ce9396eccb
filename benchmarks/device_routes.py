"""The routes ``device_check.py`` times: jaxsem and transformers/torch on the same device and weights.

Each ``Setup`` holds one architecture with random weights: the transformers model, built on
the torch device with its own random init, and jaxsem's params read from the same weights
through jaxsem's Hugging Face snapshot loader (``hf_load.load_hf``). Each route
function returns a dict of figures (``ours``/``peer`` throughput, ``flops`` of jaxsem's
work, ``diff``: max |difference| of the two sides' outputs, ``scale``: the largest |output|).

FLOPs, counted as the multiply-adds (x2) of the matmuls only (norms, softmax, RoPE and
elementwise work not counted): per token and layer ``2 (2 D H Dh + 2 D K Dh + 3 D F)``
(q, o; k, v; gate, up, down), attention ``4 H Dh`` per (query, key) pair over every pair of
the square ``[T, T]`` score matrix, and ``2 D V`` per token whose full logits are computed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
import types

import numpy as np

# The steering grid's synthetic template: a shared prefix, then per word a 4-token suffix
# (the word, then 3 tokens of the template's tail), read at its last token.
PREFIX, SUFFIX = 11, 4


def timed(fn, sync, repeats: int) -> tuple[float, list[float], float]:
  """``(median s, times, first call s)``: one warm-up call (compiles), then ``repeats`` timed."""
  t0 = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), times, first


def jax_sync(x):
  import jax

  return jax.block_until_ready(x)


def torch_sync(device: str):
  import torch

  def sync(x):
    if device == "cuda":
      torch.cuda.synchronize()
    return x

  return sync


def layer_flops_per_token(config) -> float:
  """Matmul FLOPs of one block per token (projections and MLP)."""
  d, h, k, dh, f = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff
  return 2.0 * (2 * d * h * dh + 2 * d * k * dh + 3 * d * f)


def tiny(data: dict) -> dict:
  """The same architecture at toy sizes (CPU smoke runs)."""
  out = dict(data, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1 if data["model_type"].startswith("gemma") else 2, head_dim=16,
             vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  if "query_pre_attn_scalar" in data:
    out["query_pre_attn_scalar"] = 16
  if data.get("sliding_window"):
    out["sliding_window"] = 8
  return out


@dataclasses.dataclass
class Setup:
  """One architecture with random weights on both sides."""

  name: str
  torch_model: object
  model: object  # jaxsem.models.model.Model, float32 params
  device: str  # torch device
  setup_s: float

  @property
  def config(self):
    return self.model.config


def build(name: str, data: dict, device: str, seed: int = 0) -> Setup:
  """Random-init transformers model (float32, on ``device``) and jaxsem's copy of its weights."""
  import torch
  import transformers

  from jaxsem import sharding
  from jaxsem.models import hf_load
  from jaxsem.models.model import Model

  t0 = time.perf_counter()
  torch.manual_seed(seed)
  hf_config = transformers.CONFIG_MAPPING[data["model_type"]](**data)
  with torch.device(device):
    tm = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32,
                                                       attn_implementation="sdpa").eval()
  with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
    tm.save_pretrained(tmp)
    config, params, _ = hf_load.load_hf(tmp, placer=sharding.make_placer(None, np.float32))
  model = Model(config=config, params=params, tokenizer=types.SimpleNamespace(pad_id=None),
                provenance={"name": name, "dtype": "float32"})
  return Setup(name=name, torch_model=tm, model=model, device=device, setup_s=time.perf_counter() - t0)


def as_dtype(setup: Setup, dtype: str) -> tuple[object, object]:
  """``(jaxsem Model, torch model)`` in ``dtype``; the torch model is converted in place."""
  import jax
  import jax.numpy as jnp
  import torch

  tm = setup.torch_model.to(getattr(torch, dtype))
  if dtype == "float32":
    return setup.model, tm
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), setup.model.params)
  return dataclasses.replace(setup.model, params=params, provenance={**setup.model.provenance, "dtype": dtype}), tm


def _ids(rng, vocab: int, shape) -> np.ndarray:
  return rng.integers(3, vocab, size=shape).astype(np.int32)


def forward(setup: Setup, dtype: str, batch: int, length: int, repeats: int) -> dict:
  """Last-position logits of ``batch`` random prompts of ``length`` tokens (no padding)."""
  import torch

  model, tm = as_dtype(setup, dtype)
  c = model.config
  ids = _ids(np.random.default_rng(1), c.vocab_size, (batch, length))
  mask = np.ones_like(ids)
  ours_s, ours_t, first = timed(lambda: model.forward(ids, mask, logits_at="last").logits, jax_sync, repeats)
  ours = np.asarray(model.forward(ids, mask, logits_at="last").logits, np.float32).reshape(batch, -1)
  t_ids = torch.from_numpy(ids).long().to(setup.device)
  t_mask = torch.ones_like(t_ids)
  with torch.inference_mode():
    run = lambda: tm(input_ids=t_ids, attention_mask=t_mask, logits_to_keep=1).logits  # noqa: E731
    peer_s, peer_t, _ = timed(run, torch_sync(setup.device), repeats)
    peer = run()[:, -1].float().cpu().numpy()
  tokens = batch * length
  flops = (tokens * c.n_layers * layer_flops_per_token(c) + 4.0 * batch * c.n_layers * length**2 * c.n_heads
           * c.head_dim + 2.0 * batch * c.d_model * c.vocab_size)
  return dict(unit="tok/s", ours=tokens / ours_s, peer=tokens / peer_s, flops=flops / ours_s, ours_times=ours_t,
              peer_times=peer_t, first_s=first, diff=float(np.abs(ours - peer).max()),
              scale=float(np.abs(peer).max()), sizes=[batch, length])


@dataclasses.dataclass
class GridInputs:
  """A synthetic steering grid: random prompts, pole tokens and steering rows."""

  prefix: np.ndarray  # [P]
  suffixes: np.ndarray  # [W, SUFFIX]
  rows: np.ndarray  # [R] pole token ids
  positive: np.ndarray  # [J, K] indices into rows
  negative: np.ndarray
  word_index: np.ndarray  # [N]
  vectors: np.ndarray  # [N, D] float32


def grid_inputs(setup: Setup, words: int, directions: int, scales: int, alphas=(-1.0, -0.5, 0.5, 1.0)) -> GridInputs:
  """``words x directions x len(alphas)`` rows steering at ``embed`` by ``alpha`` times the median
  norm of the residual there; read on ``scales`` pole pairs of 2 tokens each."""
  import torch

  from jaxsem.analyses import grid as grid_lib

  c = setup.config
  rng = np.random.default_rng(2)
  prefix = _ids(rng, c.vocab_size, (PREFIX,))
  suffixes = _ids(rng, c.vocab_size, (words, SUFFIX))
  rows = rng.choice(np.arange(3, c.vocab_size), size=4 * scales, replace=False).astype(np.int32)
  idx = np.arange(4 * scales, dtype=np.int32).reshape(2, scales, 2)
  with torch.inference_mode():
    x = setup.torch_model.get_input_embeddings()(torch.from_numpy(prefix).long().to(setup.device))
    unit = float(x.float().norm(dim=-1).median())
  dirs = rng.standard_normal((directions, c.d_model)).astype(np.float32)
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  word_index, vectors = grid_lib.grid_rows(words, dirs * unit, alphas)
  return GridInputs(prefix, suffixes, rows, idx[0], idx[1], word_index, vectors.astype(np.float32))


def _pole_logodds(torch, logits, g: GridInputs):
  """``[B, J]`` log-odds of each scale's poles from the pole tokens' logits ``[B, R]``."""
  pos, neg = torch.as_tensor(g.positive).long(), torch.as_tensor(g.negative).long()
  pos, neg = pos.to(logits.device), neg.to(logits.device)
  return torch.logsumexp(logits[:, pos], dim=-1) - torch.logsumexp(logits[:, neg], dim=-1)


def steer(setup: Setup, dtype: str, g: GridInputs, batch: int, peer_batch: int, repeats: int,
          prefix_reuse: bool) -> dict:
  """jaxsem's ``Grid.evaluate`` over every row against transformers: the naive peer runs each full
  prompt; the prefix-reusing peer runs the prefix once and only the suffixes against a copy of its
  KV cache per batch."""
  import torch

  from jaxsem.analyses import grid as grid_lib
  from jaxsem.analyses import readouts

  model, tm = as_dtype(setup, dtype)
  c = model.config
  prompts = readouts.Prompts(template="{word}", prefix=tuple(int(t) for t in g.prefix),
                             suffixes=tuple(tuple(int(t) for t in s) for s in g.suffixes),
                             word_positions=((0,),) * len(g.suffixes))
  poles = readouts.PoleTokens(names=tuple(f"s{j}" for j in range(len(g.positive))), rows=g.rows,
                              positive=g.positive, negative=g.negative, report={})
  grid = grid_lib.Grid(model, prompts, poles, "embed", batch_size=batch)
  ours_s, ours_t, first = timed(lambda: grid.evaluate(g.word_index, g.vectors)[0], lambda x: x, repeats)
  ours = np.asarray(grid.evaluate(g.word_index, g.vectors)[0], np.float32)

  dev, tdtype = setup.device, getattr(torch, dtype)
  embed = tm.get_input_embeddings()
  full = torch.from_numpy(np.concatenate([np.tile(g.prefix, (len(g.suffixes), 1)), g.suffixes], 1)).long().to(dev)
  suffix = torch.from_numpy(g.suffixes).long().to(dev)
  vectors = torch.from_numpy(g.vectors).to(dev, tdtype)
  word_index = torch.from_numpy(g.word_index).long().to(dev)
  rows = torch.from_numpy(g.rows).long().to(dev)
  n, p = len(g.word_index), len(g.prefix)

  def naive():
    out = []
    for start in range(0, n, peer_batch):
      w = word_index[start:start + peer_batch]
      x = embed(full[w])
      x[:, p] += vectors[start:start + peer_batch]
      logits = tm(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[:, -1, rows].float()
      out.append(_pole_logodds(torch, logits, g))
    return torch.cat(out)

  def reuse():
    cache = tm(input_ids=full[:1, :p], use_cache=True).past_key_values
    positions = torch.arange(p, p + suffix.shape[1], device=dev)[None]
    out = []
    for start in range(0, n, peer_batch):
      w = word_index[start:start + peer_batch]
      kv = copy.deepcopy(cache)
      kv.batch_repeat_interleave(len(w))
      x = embed(suffix[w])
      x[:, 0] += vectors[start:start + peer_batch]
      logits = tm(inputs_embeds=x, past_key_values=kv, position_ids=positions.expand(len(w), -1),
                  use_cache=True, logits_to_keep=1).logits[:, -1, rows].float()
      out.append(_pole_logodds(torch, logits, g))
    return torch.cat(out)

  with torch.inference_mode():
    run = reuse if prefix_reuse else naive
    peer_s, peer_t, _ = timed(run, torch_sync(dev), repeats)
    peer = run().cpu().numpy()
  # jaxsem's work per row: the suffix tokens through every layer, their attention over prefix +
  # suffix keys (the prefix's keys are computed once per grid, not counted), the pole tokens' logits.
  s = g.suffixes.shape[1]
  per_row = (s * c.n_layers * layer_flops_per_token(c) + 4.0 * c.n_layers * s * (p + s) * c.n_heads * c.head_dim
             + 2.0 * c.d_model * len(g.rows))
  return dict(unit="rows/s", ours=n / ours_s, peer=n / peer_s, flops=per_row * n / ours_s, ours_times=ours_t,
              peer_times=peer_t, first_s=first, diff=float(np.abs(ours - peer).max()),
              scale=float(np.abs(peer).max()), rows=n, batch=grid.batch_size, peer_batch=peer_batch)


def sweep(setup: Setup, dtype: str, directions: int, repeats: int) -> dict:
  """Every embedding row projected (cosine) on ``directions`` random directions, plus the rows'
  mean and covariance that the sweep's spectrum uses: the work that grows with the vocabulary.
  jaxsem's ``projection.project`` + ``spectrum.row_moments`` against the same math in torch. Both
  compute in float32 at full precision from rows stored in ``dtype``; no zarr write. The
  covariance's square root, taken once per sweep whatever the vocabulary, is ``sweep_root``."""
  import jax.numpy as jnp
  import torch

  from jaxsem.kernels import projection
  from jaxsem.kernels import spectrum

  v = setup.model.params["embed"].astype(jnp.dtype(dtype))
  n, d = v.shape
  u_np = np.random.default_rng(3).standard_normal((directions, d)).astype(np.float32)
  u = jnp.asarray(u_np)

  def ours_fn():
    m = spectrum.row_moments(v, "cosine")
    return projection.project(v, u, "cosine"), m.mean, m.cov

  ours_s, ours_t, first = timed(ours_fn, jax_sync, repeats)
  ours_p = np.asarray(projection.project(v, u, "cosine"))

  dev = setup.device
  tv = torch.from_numpy(np.array(v.astype(jnp.float32))).to(dev).to(getattr(torch, dtype))
  tu = torch.from_numpy(u_np).to(dev)

  def peer_fn():
    w = tv.float()
    w = w * torch.nan_to_num(w.square().sum(-1, keepdim=True).rsqrt(), posinf=0.0)
    units = tu / tu.norm(dim=-1, keepdim=True)
    p = (w @ units.T).clamp(-1, 1)
    mean = w.mean(0)
    centred = w - mean
    return p, mean, centred.T @ centred / (n - 1)

  with torch.inference_mode():
    peer_s, peer_t, _ = timed(peer_fn, torch_sync(dev), repeats)
    peer_p = peer_fn()[0].cpu().numpy()
  flops = 2.0 * n * d * directions + 2.0 * n * d * d
  return dict(unit="rows/s", ours=n / ours_s, peer=n / peer_s, flops=flops / ours_s, ours_times=ours_t,
              peer_times=peer_t, first_s=first, diff=float(np.abs(ours_p - peer_p).max()), scale=1.0,
              sizes=[n, d, directions])


def sweep_root(setup: Setup, repeats: int) -> dict:
  """The ``[D, D]`` square root of the rows' covariance that every spectrum of a sweep shares, once
  per sweep: jaxsem's float64 eigendecomposition on the host (``spectrum.Moments.root``) against
  torch's float64 ``eigh`` on the device; roots/s (the inverse of one root's time)."""
  import jax.numpy as jnp
  import torch

  from jaxsem.kernels import spectrum

  m = spectrum.row_moments(setup.model.params["embed"], "cosine")
  d = int(m.cov.shape[0])

  def ours_fn():
    return spectrum.Moments(n=m.n, mean=m.mean, cov=m.cov, metric=m.metric).root

  ours_s, ours_t, first = timed(ours_fn, lambda x: x, repeats)
  tcov = torch.from_numpy(np.asarray(m.cov.astype(jnp.float32))).to(setup.device)

  def peer_fn():
    lam, vec = torch.linalg.eigh(tcov.double())
    return vec * lam.clamp(min=0).sqrt()

  with torch.inference_mode():
    peer_s, peer_t, _ = timed(peer_fn, torch_sync(setup.device), repeats)
    peer = peer_fn().cpu().numpy()
  ours = ours_fn()
  diff = float(np.abs(ours @ ours.T - peer @ peer.T).max())  # roots differ by a rotation; L L^T do not
  return dict(unit="roots/s", ours=1.0 / ours_s, peer=1.0 / peer_s, flops=None, ours_times=ours_t,
              peer_times=peer_t, first_s=first, diff=diff, scale=float(np.abs(peer @ peer.T).max()),
              sizes=[d, d])


def matmul_peak(size: int, dtype: str, device: str, repeats: int = 5) -> dict:
  """``2 size^3`` FLOPs per ``jnp.dot`` (precision highest) and per ``torch.matmul`` (no TF32)."""
  import jax
  import jax.numpy as jnp
  import torch

  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (size, size), jnp.float32).astype(jnp.dtype(dtype))
  b = jax.random.normal(kb, (size, size), jnp.float32).astype(jnp.dtype(dtype))
  mm = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
  ours_s, ours_t, _ = timed(lambda: mm(a, b), jax_sync, repeats)
  ta = torch.from_numpy(np.array(a.astype(jnp.float32))).to(device, getattr(torch, dtype))
  tb = torch.from_numpy(np.array(b.astype(jnp.float32))).to(device, getattr(torch, dtype))
  peer_s, peer_t, _ = timed(lambda: ta @ tb, torch_sync(device), repeats)
  flops = 2.0 * size**3
  return dict(unit="TFLOP/s", ours=flops / ours_s / 1e12, peer=flops / peer_s / 1e12, flops=flops / ours_s,
              ours_times=ours_t, peer_times=peer_t, sizes=[size, size, size])


def cpu_threads() -> int:
  return len(os.sched_getaffinity(0))
