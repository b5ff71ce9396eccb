"""Reading a Hugging Face ``config.json``: the fields every llama-like family shares.

Family files (``llama.py``, ``gemma3.py`` ...) call ``base_fields`` for sizes, RoPE,
epsilon and token ids, and add what is their own.
"""

from __future__ import annotations

import warnings
from typing import Any

from jaxsem.errors import InputError
from jaxsem.models.config import RopeScaling

# Config keys that change the math and that the loaders would otherwise ignore.
UNSUPPORTED_FLAGS = ("attention_bias", "mlp_bias", "use_bidirectional_attention")
_HARMLESS_ROPE_TYPES = ("dynamic",)  # NTK scaling that only acts past the trained length


def whole(value: Any, key: str, path: str, minimum: int = 1) -> int:
  """``value`` as an int if it is a whole number ``>= minimum``.

  ``2`` and ``2.0`` are; ``2.5``, ``"2"`` and ``true`` are not (``int()`` would truncate or accept them).
  """
  ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
  if isinstance(value, bool) or not ok or value < minimum:
    kind = "a positive" if minimum == 1 else "a non-negative"
    raise InputError(f"{path}: config.json sets {key} to {value!r}, which is not {kind} whole number; "
                     "fix config.json.")
  return int(value)


def size(c: dict[str, Any], key: str, path: str, default: Any = None) -> int:
  """A positive whole-number field; ``default`` when absent (or 0/null, as transformers treats them)."""
  value = c.get(key)
  if value is None or (value == 0 and default is not None and not isinstance(value, bool)):
    if default is None:
      raise InputError(f"{path}: config.json has no {key!r}; re-download the config or fill it in.")
    value = default
  return whole(value, key, path)


def check_flags(c: dict[str, Any], path: str) -> None:
  """Refuses config flags (``attention_bias`` ...) whose math no family here models."""
  for key in UNSUPPORTED_FLAGS:
    if c.get(key):
      raise InputError(f"{path}: config.json sets {key}=true, which jaxsem does not support for "
                       f"model_type {c.get('model_type')!r}; use a model without it.")


def rope_dicts(c: dict[str, Any], gemma: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """``(global, sliding or None)`` rope dicts from old (rope_theta/rope_scaling) or new
  (rope_parameters, maybe per layer type) config forms."""
  params = c.get("rope_parameters")
  if isinstance(params, dict) and params:
    if isinstance(params.get("full_attention"), dict) or isinstance(params.get("sliding_attention"), dict):
      full = dict(params.get("full_attention") or {})
      sliding = params.get("sliding_attention")
      sliding = dict(sliding) if isinstance(sliding, dict) else None
    else:
      full, sliding = dict(params), None
  else:
    full, sliding = dict(c.get("rope_scaling") or {}), None
    if gemma:
      sliding = {"rope_theta": c.get("rope_local_base_freq", 10_000.0)}
  full.setdefault("rope_theta", c.get("rope_theta", 1_000_000.0 if gemma else 10_000.0))
  if gemma:
    sliding = sliding or {}
    sliding.setdefault("rope_theta", c.get("rope_local_base_freq", 10_000.0))
  elif sliding is not None:
    sliding.setdefault("rope_theta", full["rope_theta"])
  return full, sliding


def rope(r: dict[str, Any], c: dict[str, Any], path: str) -> tuple[float, RopeScaling | None]:
  """One rope dict -> ``(theta, scaling)``."""
  kind = r.get("rope_type", r.get("type")) or "default"
  if r.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) not in (1, 1.0, None):
    raise InputError(f"{path}: partial_rotary_factor is not supported; use a model with full-width RoPE.")
  theta = float(r["rope_theta"])
  if kind in ("linear", "llama3") and r.get("factor") is None:
    raise InputError(f"{path}: rope type {kind!r} has no 'factor'; fix config.json.")
  if kind == "default":
    return theta, None
  if kind in _HARMLESS_ROPE_TYPES:
    warnings.warn(f"{path}: rope type {kind!r} is treated as default RoPE (it only changes "
                  "sequences longer than the trained context).", stacklevel=4)
    return theta, None
  if kind == "linear":
    return theta, RopeScaling("linear", float(r["factor"]))
  if kind == "llama3":
    return theta, RopeScaling(
        "llama3", float(r["factor"]), float(r.get("low_freq_factor", 1.0)),
        float(r.get("high_freq_factor", 4.0)),
        whole(r.get("original_max_position_embeddings", c.get("max_position_embeddings", 8192)),
              "original_max_position_embeddings", path))
  raise InputError(f"{path}: rope type {kind!r} is not supported; supported: default, linear, llama3.")


def token_ids(c: dict[str, Any], outer: dict[str, Any], path: str) -> dict[str, Any]:
  """``bos_token_id``, ``eos_token_ids`` and ``pad_token_id`` (the outer config fills gaps)."""
  def pick(key):
    return c[key] if c.get(key) is not None else outer.get(key)

  def token(value, key):
    return None if value is None else whole(value, key, path, minimum=0)

  eos = pick("eos_token_id")
  eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
  eos = tuple(token(e, "eos_token_id") for e in eos if e is not None)
  return {"bos_token_id": token(pick("bos_token_id"), "bos_token_id"), "eos_token_ids": eos,
          "pad_token_id": token(pick("pad_token_id"), "pad_token_id")}


def local_layers(c: dict[str, Any], n_layers: int, default: tuple[bool, ...], path: str) -> tuple[bool, ...]:
  """Per-layer sliding-window flags from ``layer_types``, or ``default`` without it."""
  types = c.get("layer_types")
  if types is None:
    return default
  if len(types) != n_layers or not set(types) <= {"full_attention", "sliding_attention"}:
    raise InputError(f"{path}: layer_types must list 'full_attention'/'sliding_attention' for each of "
                     f"{n_layers} layers; fix config.json.")
  return tuple(t == "sliding_attention" for t in types)


def base_fields(c: dict[str, Any], outer: dict[str, Any], path: str, *,
                gemma: bool = False) -> dict[str, Any]:
  """ModelConfig fields every family reads the same way (Gemma's defaults when ``gemma``).

  Returns:
    Sizes, ``rope_theta``/``rope_scaling`` of the global layers, ``norm_eps``,
    ``max_position`` and token ids, plus ``"_sliding_rope"``: the sliding layers' rope
    dict or None (for the family to resolve; not a ModelConfig field).
  """
  check_flags(c, path)
  d_model = size(c, "hidden_size", path)
  n_layers = size(c, "num_hidden_layers", path)
  n_heads = size(c, "num_attention_heads", path, 8 if gemma else None)
  n_kv = size(c, "num_key_value_heads", path, 4 if gemma else n_heads)
  head_dim = size(c, "head_dim", path, 256 if gemma else max(d_model // n_heads, 1))
  vocab = size(c, "vocab_size", path, 262_208 if gemma else None)
  full, sliding = rope_dicts(c, gemma)
  theta, scaling = rope(full, c, path)
  return dict(
      vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
      head_dim=head_dim, d_ff=size(c, "intermediate_size", path), rope_theta=theta, rope_scaling=scaling,
      norm_eps=float(c.get("rms_norm_eps") or 1e-6),
      max_position=size(c, "max_position_embeddings", path, 131_072 if gemma else 8192),
      _sliding_rope=sliding, **token_ids(c, outer, path))


def silu_only(c: dict[str, Any], path: str) -> None:
  act = c.get("hidden_act") or "silu"
  if act != "silu":
    raise InputError(f"{path}: activation {act!r} is not supported for {c.get('model_type')}; expected silu.")


def windows(c: dict[str, Any], fields: dict[str, Any], default: tuple[bool, ...],
            path: str) -> dict[str, Any]:
  """Sliding-window fields of a llama-like family: ``local_layers``, ``sliding_window``,
  ``rope_local_theta`` (only when the sliding layers' RoPE differs)."""
  sliding = fields.pop("_sliding_rope")
  local = local_layers(c, fields["n_layers"], default, path)
  local_theta = None
  if sliding is not None and any(local):
    local_theta, local_scaling = rope(sliding, c, path)
    if (local_theta, local_scaling) == (fields["rope_theta"], fields["rope_scaling"]):
      local_theta = None  # same RoPE everywhere
    elif local_scaling is not None:
      raise InputError(f"{path}: RoPE scaling on sliding-window layers is not supported.")
  window = c.get("sliding_window")
  return dict(local_layers=local, rope_local_theta=local_theta,
              sliding_window=whole(window, "sliding_window", path) if any(local) else None)


def qwen_windows(c: dict[str, Any], fields: dict[str, Any], path: str) -> dict[str, Any]:
  """Qwen's sliding windows: layers from ``max_window_layers`` on, when ``use_sliding_window``."""
  use = bool(c.get("use_sliding_window")) and c.get("sliding_window") is not None
  start = whole(c.get("max_window_layers") or 0, "max_window_layers", path, minimum=0)
  return windows(c, fields, tuple(use and i >= start for i in range(fields["n_layers"])), path)
