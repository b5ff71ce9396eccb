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

The per-layer pieces (norms, RoPE, attention, MLP) are in ``jaxsem.models.layers``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxsem.models import interventions as iv_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.layers import attention, mlp, rms_norm, rope_inv_freq, rope_tables, rows_at, softcap

if TYPE_CHECKING:  # kv_cache builds on this module
  from jaxsem.models.kv_cache import PrefixCache


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
  h = (h if q_index is None else rows_at(h, q_index)) + a
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
    return softcap(logits, cfg.final_softcap)
  logits = jnp.einsum("...d,vd->...v", x, w, preferred_element_type=jnp.float32)
  logits = logits[..., :cfg.vocab_size]  # drop rows padded for sharding
  return softcap(logits, cfg.final_softcap)


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
      h = iv_lib.apply(h, dataclasses.replace(iv, mask=rows_at(iv.mask, read)))
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
    logits = unembed(params, cfg, h if restrict else rows_at(h, read), logit_rows)  # [B, Q, V]
    if logit_positions is None or jnp.ndim(logit_positions) == 1:
      logits = logits[:, 0]
  return ForwardOutput(logits=logits, captured=captured)


forward_jit = jax.jit(forward, static_argnames=("config", "logits_at", "capture"))
