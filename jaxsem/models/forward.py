"""The pure forward pass shared by llama-like models (OLMo 2 included), Gemma 2 and Gemma 3.

``forward(params, config, token_ids, attention_mask) -> ForwardOutput`` is a pure
function of arrays; ``config`` and the capture/logits choices are static, so
``jax.jit`` compiles one program per shape. Layers run under ``lax.scan`` over the
stacked block params (one compiled block, fast compiles for deep models).

Sites for ``capture`` (hidden states returned in ``ForwardOutput.captured``):

    "embed"            [B, T, D] scaled token embeddings (the residual entering block 0)
    "resid_pre"        [L, B, T, D] residual entering every block
    "resid_post"       [L, B, T, D] residual leaving every block
    "resid_pre.{l}"    [B, T, D] one layer (cheaper than the stack)
    "resid_post.{l}"   [B, T, D]
    "final"            [B, T, D] after the final norm
    "keys", "values"   [L, B, T, n_kv_heads, head_dim] attention keys (after qk-norm
                       and RoPE) and values of every layer (what ``kv_cache`` stores)

Sequences are right-padded (``attention_mask`` 1 on real tokens); positions count the
real tokens, so left padding also works.

With ``prefix`` (a ``kv_cache.PrefixCache`` of ``P`` tokens shared by every row) the
``token_ids`` are suffixes: their positions start at ``P`` and every query also
attends to the cached prefix keys. Logit positions, captures and intervention masks
then index the suffix only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.models import interventions as iv_lib
from jaxsem.models.config import ModelConfig, RopeScaling

if TYPE_CHECKING:  # kv_cache builds on this module
  from jaxsem.models.kv_cache import PrefixCache

_NEG_INF = -1e30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForwardOutput:
  """Result of ``forward``.

  Attributes:
    logits: ``[B, V]`` ("last" or one position per row), ``[B, Q, V]`` (several
      positions), ``[B, T, V]`` ("all"), or None ("none").
    captured: site name -> hidden states, see the module docstring.
  """

  logits: jax.Array | None
  captured: dict[str, jax.Array]


# ----------------------------------------------------------------------------- pieces


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, axis: int | tuple[int, ...] = -1) -> jax.Array:
  """RMSNorm over ``axis`` (the last by default), computed in float32.

  ``scale`` is the multiplier, shaped like the trailing axes normalised over (``[Dh]`` for
  ``axis=-1``; ``[heads, Dh]`` for ``axis=(-2, -1)``, one norm over all heads together).
  """
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def _qk_norm(q: jax.Array, k: jax.Array, p: dict, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """The q/k RMSNorms of ``q`` ``[B, T, H, Dh]`` and ``k`` ``[B, T, K, Dh]``: per head, or over
  the whole projection (all heads together, as OLMo 2 norms ``q_proj(x)`` before the head split)."""
  if cfg.qk_norm_scope == "head":
    return rms_norm(q, p["q_norm"], cfg.norm_eps), rms_norm(k, p["k_norm"], cfg.norm_eps)
  return (rms_norm(q, p["q_proj_norm"], cfg.norm_eps, axis=(-2, -1)),
          rms_norm(k, p["k_proj_norm"], cfg.norm_eps, axis=(-2, -1)))


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
  """Inverse frequencies ``[head_dim // 2]`` (float32, as the reference computes them)."""
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
  if scaling is None:
    return inv_freq
  if scaling.kind == "linear":
    return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
  if scaling.kind == "llama3":
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  raise ValueError(f"unknown rope scaling kind {scaling.kind!r}")


def rope_tables(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """cos, sin ``[B, T, head_dim]`` for rotate-half RoPE."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate-half RoPE on ``x`` ``[B, T, heads, Dh]`` with tables ``[B, T, Dh]``."""
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
  """``cap * tanh(x / cap)`` (Gemma 2's attention and output soft-caps); ``x`` when ``cap`` is None."""
  return x if cap is None else jnp.tanh(x / cap) * cap


def _rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """``x[b, index[b, p]]``: ``[B, T, ...]`` gathered at ``index`` ``[B, Q]`` -> ``[B, Q, ...]``."""
  return jax.vmap(lambda xb, ib: xb[ib])(x, index)


_TINY_ATTENTION = 256  # queries x keys (prefix included) of a row up to which ``_tiny_attention`` is used


def _tiny_attention(q, k, v, mask, cfg: ModelConfig, prefix_kv=None) -> jax.Array:
  """``attention``'s core for few queries on few keys (a steered suffix after a cached prefix).

  Batched matmuls there are many tiny ones, one per row and head group, dearer in per-call
  overhead than in arithmetic, and each changes the layout. Here the scores and the
  weighted values are fused elementwise reductions in the queries' ``[B, T, G, Qh, ...]``
  layout, over the prefix's keys (broadcast over the rows) and the row's own.

  Args:
    q: ``[B, T, G, Qh, Dh]``; k, v: ``[B, S, G, Dh]``; mask: ``[B, T, P + S]`` bool (prefix first).

  Returns:
    ``[B, T, G, Qh, Dh]``, in ``v``'s dtype.
  """
  f32 = jnp.float32
  keys, values = k.astype(f32), v.astype(f32)
  if prefix_kv is not None:
    b = k.shape[0]
    pk, pv = (jnp.broadcast_to(x.astype(f32)[None], (b, *x.shape)) for x in prefix_kv)
    keys, values = jnp.concatenate([pk, keys], axis=1), jnp.concatenate([pv, values], axis=1)
  scores = jnp.sum(q.astype(f32)[:, :, None] * keys[:, None, :, :, None, :], axis=-1)  # [B, T, S, G, Qh]
  scores = _softcap(scores * cfg.query_scale, cfg.attn_softcap)
  scores = jnp.where(mask[:, :, :, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=2)
  return jnp.sum(probs[..., None] * values[:, None, :, :, None, :], axis=2).astype(v.dtype)


def attention(p: dict, x: jax.Array, cfg: ModelConfig, cos, sin, mask: jax.Array,
              q_index: jax.Array | None = None, prefix_kv: tuple[jax.Array, jax.Array] | None = None):
  """Grouped-query self-attention. ``x`` [B, T, D]; ``mask`` [B, T, S] bool.

  With ``q_index`` ``[B, Q]`` only those positions are queried (keys and values still
  cover the whole sequence) and the result is ``[B, Q, D]``.

  With ``prefix_kv`` (keys and values ``[P, n_kv_heads, head_dim]`` of a prefix shared
  by every row) queries also attend to the prefix; ``mask`` is then ``[B, T, P + T]``
  with the prefix keys first. The prefix is broadcast over the batch, never copied.

  Returns:
    ``(out [B, T, D], (k, v))`` with this sequence's keys and values ``[B, T, K, Dh]``.
  """
  xq, cos_q, sin_q, mask_q = x, cos, sin, mask
  if q_index is not None:
    xq, cos_q, sin_q, mask_q = (_rows(a, q_index) for a in (x, cos, sin, mask))
  b, t, _ = xq.shape
  q = jnp.einsum("btd,dhk->bthk", xq, p["q"])
  k = jnp.einsum("btd,dgk->btgk", x, p["k"])
  v = jnp.einsum("btd,dgk->btgk", x, p["v"])
  if cfg.qkv_bias:
    q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
  if cfg.qk_norm:
    q, k = _qk_norm(q, k, p, cfg)
  q, k = apply_rope(q, cos_q, sin_q), apply_rope(k, cos, sin)
  groups = cfg.n_heads // cfg.n_kv_heads
  q = q.reshape(b, t, cfg.n_kv_heads, groups, cfg.head_dim)
  if t * (k.shape[1] + (0 if prefix_kv is None else prefix_kv[0].shape[0])) <= _TINY_ATTENTION:
    out = _tiny_attention(q, k, v, mask_q, cfg, prefix_kv).reshape(b, t, cfg.n_heads, cfg.head_dim)
    return jnp.einsum("bthk,hkd->btd", out, p["o"]), (k, v)
  scores = jnp.einsum("btgqk,bsgk->bgqts", q, k, preferred_element_type=jnp.float32)
  if prefix_kv is not None:
    pk, pv = prefix_kv
    pscores = jnp.einsum("btgqk,sgk->bgqts", q, pk, preferred_element_type=jnp.float32)
    scores = jnp.concatenate([pscores, scores], axis=-1)
  scores = _softcap(scores * cfg.query_scale, cfg.attn_softcap)
  scores = jnp.where(mask_q[:, None, None, :, :], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  if prefix_kv is None:
    out = jnp.einsum("bgqts,bsgk->btgqk", probs, v)
  else:
    n = pk.shape[0]
    out = (jnp.einsum("bgqts,sgk->btgqk", probs[..., :n], pv)
           + jnp.einsum("bgqts,bsgk->btgqk", probs[..., n:], v))
  out = out.reshape(b, t, cfg.n_heads, cfg.head_dim)
  return jnp.einsum("bthk,hkd->btd", out, p["o"]), (k, v)


def mlp(p: dict, x: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Gated MLP: ``act(x W_gate) * (x W_up) W_down``."""
  gate = jnp.einsum("btd,df->btf", x, p["gate"])
  up = jnp.einsum("btd,df->btf", x, p["up"])
  if cfg.activation == "silu":
    act = jax.nn.silu(gate)
  else:
    act = jax.nn.gelu(gate, approximate=True)
  return jnp.einsum("btf,fd->btd", act * up, p["down"])


def block(p: dict, h: jax.Array, cfg: ModelConfig, cos, sin, mask,
          q_index: jax.Array | None = None, prefix_kv: tuple[jax.Array, jax.Array] | None = None):
  """One transformer block: pre-norms (all but OLMo 2) and post-norms (Gemma, OLMo 2) as configured.

  With ``q_index`` ``[B, Q]`` the block's output is computed only at those positions
  (``[B, Q, D]``): enough for a last layer whose other positions nobody reads.
  ``prefix_kv`` is passed to ``attention``.

  Returns:
    ``(h, (k, v))``: the new residual and the attention keys and values (unused ones
    cost nothing under jit).
  """
  def pre_norm(x, name):
    return rms_norm(x, p[name], cfg.norm_eps) if cfg.pre_norms else x

  a, kv = attention(p, pre_norm(h, "attn_norm"), cfg, cos, sin, mask, q_index, prefix_kv)
  if cfg.post_norms:
    a = rms_norm(a, p["post_attn_norm"], cfg.norm_eps)
  h = (h if q_index is None else _rows(h, q_index)) + a
  m = mlp(p, pre_norm(h, "mlp_norm"), cfg)
  if cfg.post_norms:
    m = rms_norm(m, p["post_mlp_norm"], cfg.norm_eps)
  return h + m, kv


def unembed(params: dict, cfg: ModelConfig, x: jax.Array, rows: jax.Array | None = None) -> jax.Array:
  """Final-normed hidden states ``[..., D]`` -> logits ``[..., vocab_size]`` (float32).

  With ``rows`` ``[R]`` (token ids) only those logits are computed: ``[..., R]``.
  """
  w = params["embed"] if cfg.tie_embeddings else params["unembed"]
  if rows is not None:
    logits = jnp.einsum("...d,vd->...v", x, jnp.take(w, rows, axis=0), preferred_element_type=jnp.float32)
    return _softcap(logits, cfg.final_softcap)
  logits = jnp.einsum("...d,vd->...v", x, w, preferred_element_type=jnp.float32)
  logits = logits[..., :cfg.vocab_size]  # drop rows padded for sharding
  return _softcap(logits, cfg.final_softcap)


# ----------------------------------------------------------------------------- the pass


def _masks(cfg: ModelConfig, attention_mask: jax.Array, positions: jax.Array, prefix_len: int = 0):
  """Global and sliding-window attention masks ``[B, T, S]``.

  With ``prefix_len`` ``P`` the keys are the ``P`` prefix tokens (positions ``0..P-1``,
  all visible) followed by the ``T`` suffix tokens: ``S = P + T``.
  """
  b, t = attention_mask.shape
  idx = jnp.arange(t)
  valid = attention_mask.astype(bool)
  causal = (idx[None, :, None] >= idx[None, None, :]) & valid[:, None, :]
  key_positions = positions
  if prefix_len:
    causal = jnp.concatenate([jnp.ones((b, t, prefix_len), bool), causal], axis=2)
    prefix_positions = jnp.broadcast_to(jnp.arange(prefix_len, dtype=positions.dtype), (b, prefix_len))
    key_positions = jnp.concatenate([prefix_positions, positions], axis=1)
  if cfg.sliding_window is None:
    return causal, causal
  dist = positions[:, :, None] - key_positions[:, None, :]
  return causal, causal & (dist < cfg.sliding_window)


def _split_capture(capture: Sequence[str], n_layers: int):
  stacks, singles = set(), {}
  for site in capture:
    if site in ("embed", "final"):
      continue
    if site in ("resid_pre", "resid_post", "keys", "values"):
      stacks.add(site)
      continue
    kind, layer = iv_lib.parse_site(site)
    if not 0 <= layer < n_layers:
      raise ValueError(f"capture site {site!r}: layer {layer} is out of range 0..{n_layers - 1}")
    singles[site] = (kind, layer)
  return stacks, singles


def _update_singles(bufs: dict, singles: dict, kind: str, layer_idx, h) -> dict:
  """Keeps ``h`` in the buffer of every single-layer capture site of this kind and layer."""
  return {s: jnp.where(layer_idx == singles[s][1], h, b) if singles[s][0] == kind else b
          for s, b in bufs.items()}


def forward(
    params: dict,
    config: ModelConfig,
    token_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    logits_at: str = "last",
    logit_positions: jax.Array | None = None,
    capture: Sequence[str] = (),
    interventions: Sequence[iv_lib.Intervention] = (),
    prefix: PrefixCache | None = None,
    logit_rows: jax.Array | None = None,
) -> ForwardOutput:
  """Runs the model.

  Args:
    params: params pytree (layout in ``jaxsem.models.config``).
    config: the architecture (static under jit).
    token_ids: ``[B, T]`` int32 token ids (the suffixes when ``prefix`` is given).
    attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding.
    logits_at: "last" (each row's last real token, ``[B, V]``), "all" (``[B, T, V]``)
      or "none". Ignored when ``logit_positions`` is given.
    logit_positions: optional ``[B]`` or ``[B, Q]`` int positions to read logits at.
    capture: site names to return hidden states for (see module docstring).
    interventions: ``Intervention``s to apply during the pass.
    prefix: optional ``kv_cache.PrefixCache`` of tokens that precede every row; all
      positions above then index ``token_ids`` (the prefix itself is not re-run).
    logit_rows: optional ``[R]`` token ids: logits are computed for these vocabulary
      entries only (last axis ``R`` instead of ``vocab_size``), e.g. a readout's
      answer tokens, skipping the rest of the unembedding.

  Returns:
    ForwardOutput with float32 logits and captured hidden states.
  """
  cfg = config
  dtype = params["embed"].dtype
  mask = attention_mask.astype(jnp.int32)
  prefix_len = 0 if prefix is None else prefix.length
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0) + prefix_len
  global_mask, local_mask = _masks(cfg, mask, positions, prefix_len)
  cos_g, sin_g = rope_tables(positions, rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
  if cfg.rope_local_theta is not None:
    cos_l, sin_l = rope_tables(positions, rope_inv_freq(cfg.head_dim, cfg.rope_local_theta, None))
  else:
    cos_l, sin_l = cos_g, sin_g

  h = jnp.take(params["embed"], token_ids, axis=0)
  h = h * jnp.asarray(cfg.embed_scale, dtype)
  stacks, singles = _split_capture(capture, cfg.n_layers)
  by_site: dict[tuple[str, int], list] = {}
  for iv in interventions:
    kind, layer = iv_lib.parse_site(iv.site)
    if not 0 <= layer < cfg.n_layers:
      raise ValueError(f"intervention site {iv.site!r}: layer {layer} is out of range 0..{cfg.n_layers - 1}")
    by_site.setdefault((kind, layer), []).append(iv)

  def intervene(h, kind, layer_idx):
    for (k, layer), ivs in by_site.items():
      if k != kind or (k, layer) == ("resid_pre", 0):
        continue  # resid_pre.0 (== "embed") is applied before the scan.
      changed = h
      for iv in ivs:
        changed = iv_lib.apply(changed, iv)
      h = jnp.where(layer_idx == layer, changed, h)
    return h

  for iv in by_site.get(("resid_pre", 0), ()):
    h = iv_lib.apply(h, iv)
  captured: dict[str, jax.Array] = {}
  if "embed" in capture:
    captured["embed"] = h
  is_local = jnp.asarray(cfg.local_layers, bool)

  # Positions whose logits are read; when nothing else needs the last block's output
  # at other positions, the last block runs for these positions only.
  read = None
  if logit_positions is not None:
    read = jnp.asarray(logit_positions, jnp.int32)
    read = read if read.ndim == 2 else read[:, None]
  elif logits_at == "last":
    read = jnp.max(jnp.where(mask > 0, jnp.arange(mask.shape[1])[None, :], 0), axis=1)[:, None]
  elif logits_at not in ("all", "none"):
    raise ValueError(f"logits_at must be 'last', 'all' or 'none', got {logits_at!r}")
  last = cfg.n_layers - 1
  restrict = read is not None and not (
      "final" in capture or "resid_post" in stacks or ("resid_post", last) in singles.values())
  n_scan = cfg.n_layers - 1 if restrict else cfg.n_layers

  def layer_inputs(local):
    if any(cfg.local_layers):  # static: only mixed local/global models pay for the select
      return (jnp.where(local, cos_l, cos_g), jnp.where(local, sin_l, sin_g),
              jnp.where(local, local_mask, global_mask))
    return cos_g, sin_g, global_mask

  def prefix_kv(layer_idx):  # this layer's cached prefix keys and values
    return None if prefix is None else (prefix.k[layer_idx], prefix.v[layer_idx])

  def kv_outs(kv):
    return {site: x for site, x in zip(("keys", "values"), kv) if site in stacks}

  def step(carry, layer_idx):
    h, bufs = carry
    p = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, layer_idx, keepdims=False),
                     params["blocks"])
    h = intervene(h, "resid_pre", layer_idx)
    outs = {}
    if "resid_pre" in stacks:
      outs["resid_pre"] = h
    bufs = _update_singles(bufs, singles, "resid_pre", layer_idx, h)
    h, kv = block(p, h, cfg, *layer_inputs(is_local[layer_idx]), prefix_kv=prefix_kv(layer_idx))
    outs.update(kv_outs(kv))
    h = intervene(h, "resid_post", layer_idx)
    if "resid_post" in stacks:
      outs["resid_post"] = h
    bufs = _update_singles(bufs, singles, "resid_post", layer_idx, h)
    return (h, bufs), outs

  bufs0 = {s: jnp.zeros_like(h) for s in singles}
  (h, bufs), outs = jax.lax.scan(step, (h, bufs0), jnp.arange(n_scan))
  if restrict:
    p = jax.tree.map(lambda x: x[last], params["blocks"])
    h = intervene(h, "resid_pre", last)
    if "resid_pre" in stacks:
      outs["resid_pre"] = jnp.concatenate([outs["resid_pre"], h[None]], axis=0)
    bufs = _update_singles(bufs, singles, "resid_pre", last, h)
    h, kv = block(p, h, cfg, *layer_inputs(is_local[last]), q_index=read,  # [B, Q, D]
                  prefix_kv=prefix_kv(last))
    for iv in by_site.get(("resid_post", last), ()):  # its mask, read at the kept positions
      h = iv_lib.apply(h, dataclasses.replace(iv, mask=_rows(iv.mask, read)))
    for site, x in kv_outs(kv).items():
      outs[site] = jnp.concatenate([outs[site], x[None]], axis=0)
  captured.update(outs)
  captured.update(bufs)

  h = rms_norm(h, params["final_norm"], cfg.norm_eps)
  if "final" in capture:
    captured["final"] = h

  if read is None:
    logits = unembed(params, cfg, h, logit_rows) if logits_at == "all" else None
  else:
    logits = unembed(params, cfg, h if restrict else _rows(h, read), logit_rows)  # [B, Q, V]
    if logit_positions is None or jnp.ndim(logit_positions) == 1:
      logits = logits[:, 0]
  return ForwardOutput(logits=logits, captured=captured)


forward_jit = jax.jit(forward, static_argnames=("config", "logits_at", "capture"))
