"""ModelConfig: one frozen description of every architecture jaxsem runs.

Llama-like models (Llama 2/3, SmolLM, Mistral, Qwen 2.5, Qwen 3, Phi-3, OLMo 2), Gemma 2 and
Gemma 3 share one forward pass; the fields below switch the family-specific pieces on and off.
How each family's checkpoints map to these fields, and the leaf table behind the layout below,
live in ``jaxsem.models.families``. The config is
hashable so it can be a static argument of ``jax.jit``.

Params layout (a plain dict pytree; ``L`` layers, ``D`` d_model, ``H`` heads, ``K`` kv
heads, ``Dh`` head_dim, ``F`` d_ff, ``V`` vocab)::

    embed            [V, D]        input embedding (unscaled; ``embed_scale`` is applied in the pass)
    final_norm       [D]           RMSNorm multiplier after the last block
    unembed          [V, D]        output head, only when ``tie_embeddings`` is False
    blocks/          every leaf stacked over layers (leading axis L):
      attn_norm      [L, D]        pre-attention RMSNorm multiplier, only when ``pre_norms``
      q              [L, D, H, Dh]
      k, v           [L, D, K, Dh]
      o              [L, H, Dh, D]
      q_bias         [L, H, Dh]    only when ``qkv_bias``; likewise k_bias, v_bias [L, K, Dh]
      q_norm, k_norm [L, Dh]       only when ``qk_norm`` per head (Gemma 3, Qwen 3)
      q_proj_norm    [L, H, Dh]    only when ``qk_norm`` over the projection (OLMo 2); likewise
      k_proj_norm    [L, K, Dh]    (one RMSNorm over all heads together)
      post_attn_norm [L, D]        only when ``post_norms`` (Gemma 2, 3, OLMo 2)
      mlp_norm       [L, D]        pre-MLP RMSNorm multiplier, only when ``pre_norms``
      gate, up       [L, D, F]
      down           [L, F, D]
      post_mlp_norm  [L, D]        only when ``post_norms`` (Gemma 2, 3, OLMo 2)

RMSNorm leaves hold the *actual multiplier*: Gemma checkpoints store ``w`` and compute
``x * (1 + w)``; loaders fold the ``+1`` in, so one RMSNorm serves every family.
Attention projections use the Hugging Face (rotate-half, "NeoX") RoPE convention;
loaders undo GGUF's interleaved-RoPE row permutation of llama Q/K.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

QK_NORM_SCOPES = ("head", "projection")

# Sizes that must be positive whole numbers (a model with 0 heads or 2.5 layers does not exist).
_SIZES = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling.

  Attributes:
    kind: ``"llama3"`` (Llama 3.1 wavelength-dependent scaling) or ``"linear"``
      (positions divided by ``factor``, as Gemma 3's global layers use).
    factor: scale factor.
    low_freq_factor: llama3 only.
    high_freq_factor: llama3 only.
    original_max_position: llama3 only, the pre-training context length.
  """

  kind: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer (no weights).

  Attributes:
    family: a name in ``jaxsem.models.families.FAMILIES``: ``"llama"`` (Llama, SmolLM,
      Mistral), ``"gemma2"``, ``"gemma3"``, ``"qwen2"`` (Qwen 2 / 2.5), ``"qwen3"``, ``"phi3"``,
      ``"olmo2"`` ...
    vocab_size: rows of the embedding matrix.
    d_model: residual stream width.
    n_layers: number of transformer blocks.
    n_heads: query heads.
    n_kv_heads: key/value heads (``< n_heads`` is grouped-query attention).
    head_dim: width of each head.
    d_ff: MLP hidden width.
    norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base for global-attention layers (all layers for llama).
    rope_scaling: optional frequency scaling of the global RoPE.
    rope_local_theta: RoPE base for sliding-window layers (Gemma 3: 10,000); None for
      the global base everywhere (Gemma 2).
    sliding_window: window of local layers, in tokens (query may see keys with
      ``q_pos - k_pos < sliding_window``); None for no local layers.
    local_layers: per-layer flags, True where the layer uses the sliding window (Gemma 2:
      the even layers; Gemma 3: five of every six).
    activation: ``"silu"`` (SwiGLU) or ``"gelu_tanh"`` (GeGLU, Gemma).
    qkv_bias: Q/K/V projections have biases (Qwen 2.5; some llama GGUFs).
    qk_norm: RMSNorm on the queries and keys before RoPE (Gemma 3, Qwen 3, OLMo 2).
    qk_norm_scope: what one q/k RMSNorm spans: ``"head"`` (each head on its own, a ``[Dh]``
      multiplier: Gemma 3, Qwen 3) or ``"projection"`` (all heads of the projection together,
      a ``[H, Dh]`` / ``[K, Dh]`` multiplier: OLMo 2).
    pre_norms: RMSNorm on the residual entering attention and the MLP (every family but OLMo 2,
      whose blocks feed the raw residual to both and only norm their outputs).
    post_norms: RMSNorm after attention and after the MLP, before the residual add (Gemma 2, 3,
      OLMo 2).
    embed_scale: multiplier applied to embedding rows (Gemma: sqrt(d_model), rounded
      to the compute dtype as the reference does; llama: 1).
    query_scale: multiplier of q.k logits (1/sqrt(head_dim); Gemma:
      query_pre_attn_scalar ** -0.5).
    attn_softcap: tanh soft-cap of the attention scores, ``cap * tanh(s / cap)`` of the
      scaled scores ``s = query_scale * q.k`` before the mask (Gemma 2: 50); None for off.
    final_softcap: tanh soft-cap of the output logits, ``cap * tanh(z / cap)`` (Gemma 2:
      30); None for off.
    tie_embeddings: the output head is the input embedding.
    max_position: context length the model was trained for (informational).
    bos_token_id: beginning-of-sequence token id, or None.
    eos_token_ids: end-of-sequence token ids (generation stops on any).
    pad_token_id: padding token id, or None.
  """

  family: str
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rope_local_theta: float | None = None
  sliding_window: int | None = None
  local_layers: tuple[bool, ...] = ()
  activation: str = "silu"
  qkv_bias: bool = False
  qk_norm: bool = False
  qk_norm_scope: str = "head"
  pre_norms: bool = True
  post_norms: bool = False
  embed_scale: float = 1.0
  query_scale: float | None = None
  attn_softcap: float | None = None
  final_softcap: float | None = None
  tie_embeddings: bool = True
  max_position: int = 8192
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None

  def __post_init__(self):
    from jaxsem.models import families  # the family files build ModelConfigs themselves

    families.get(self.family)  # ValueError naming the known families
    if self.activation not in ("silu", "gelu_tanh"):
      raise ValueError(f"unknown activation {self.activation!r}")
    if self.qk_norm_scope not in QK_NORM_SCOPES:
      raise ValueError(f"qk_norm_scope={self.qk_norm_scope!r} is not one of {', '.join(QK_NORM_SCOPES)}")
    for name in _SIZES + (("sliding_window",) if self.sliding_window is not None else ()):
      value = getattr(self, name)
      if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} is not a positive whole number")
    for name in ("attn_softcap", "final_softcap"):
      cap = getattr(self, name)
      if cap is not None and (isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not cap > 0):
        raise ValueError(f"{name}={cap!r} is not a positive number (None turns the cap off)")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if not self.local_layers:
      object.__setattr__(self, "local_layers", (False,) * self.n_layers)
    if len(self.local_layers) != self.n_layers:
      raise ValueError(f"local_layers has {len(self.local_layers)} entries for {self.n_layers} layers")
    if self.query_scale is None:
      object.__setattr__(self, "query_scale", 1.0 / math.sqrt(self.head_dim))

  @property
  def n_params(self) -> int:
    """Number of parameters (embedding counted once when tied)."""
    d, h, k, dh, f, v = (self.d_model, self.n_heads, self.n_kv_heads, self.head_dim,
                         self.d_ff, self.vocab_size)
    per_layer = d * dh * (2 * h + 2 * k) + 3 * d * f
    if self.pre_norms:
      per_layer += 2 * d
    if self.qkv_bias:
      per_layer += dh * (h + 2 * k)
    if self.qk_norm:
      per_layer += 2 * dh if self.qk_norm_scope == "head" else (h + k) * dh
    if self.post_norms:
      per_layer += 2 * d
    total = self.n_layers * per_layer + v * d + d
    if not self.tie_embeddings:
      total += v * d
    return total
