"""Hugging Face snapshot directories (config.json + safetensors) -> ModelConfig and params.

Supported ``model_type``: llama (also SmolLM), mistral, qwen2, gemma3_text, and the
text half of gemma3 (multimodal; vision weights are ignored). Weights are read one
tensor at a time from memory-mapped safetensors files (never pickle), converted to
the layout documented in ``jaxsem.models.config``, stacked into one preallocated
``[L, ...]`` buffer per leaf, and handed to ``place`` as soon as the leaf is complete.

Hugging Face -> jaxsem, per layer ``i`` under ``{prefix}layers.{i}.``::

    self_attn.q_proj.weight [H*Dh, D]   -> q [D, H, Dh]      (k, v likewise with K heads)
    self_attn.o_proj.weight [D, H*Dh]   -> o [H, Dh, D]
    self_attn.q_proj.bias   [H*Dh]      -> q_bias [H, Dh]    (Qwen2)
    mlp.gate_proj.weight    [F, D]      -> gate [D, F]       (up likewise)
    mlp.down_proj.weight    [D, F]      -> down [F, D]
    input_layernorm                     -> attn_norm
    post_attention_layernorm            -> mlp_norm (llama) | post_attn_norm (Gemma 3)
    pre/post_feedforward_layernorm      -> mlp_norm / post_mlp_norm (Gemma 3)

Gemma norms are stored as ``w`` and applied as ``x * (1 + w)``: the ``+1`` is folded in.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can return BF16)
import numpy as np
from safetensors import safe_open

from jaxsem.errors import InputError
from jaxsem.io import host_memory
from jaxsem.io import safe_json
from jaxsem.models.config import ModelConfig, RopeScaling

Place = Callable[[str, np.ndarray], Any]

LLAMA_TYPES = ("llama", "mistral", "qwen2")
GEMMA3_TYPES = ("gemma3_text", "gemma3")
SUPPORTED_MODEL_TYPES = LLAMA_TYPES + GEMMA3_TYPES

# Prefixes of the text model inside a checkpoint, tried in order.
_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")
_LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Config keys that change the math and that this loader would otherwise ignore.
_UNSUPPORTED_FLAGS = ("attention_bias", "mlp_bias", "use_bidirectional_attention")
_HARMLESS_ROPE_TYPES = ("dynamic",)  # NTK scaling that only acts past the trained length


# ----------------------------------------------------------------------------- directory


def read_hf_dir(directory: str | os.PathLike) -> tuple[dict[str, Any], str | None, list[str]]:
  """Finds the pieces of a snapshot directory.

  Args:
    directory: a Hugging Face snapshot directory.

  Returns:
    ``(config_json, tokenizer_json_path or None, weight_files)``; the weight files are
    the shards named by ``model.safetensors.index.json``, or ``model.safetensors``, or
    every ``*.safetensors`` file in the directory.

  Raises:
    InputError: the directory, config.json or the safetensors weights are missing or
      unreadable, or the weights are only in a pickle format.
  """
  d = os.fspath(directory)
  if not os.path.isdir(d):
    raise InputError(f"{d}: not a directory; pass a Hugging Face snapshot directory with config.json "
                     "and *.safetensors files.")
  config_path = os.path.join(d, "config.json")
  if not os.path.isfile(config_path):
    raise InputError(f"{config_path}: no config.json in the directory; download the full snapshot.")
  config_json = _read_json(config_path)
  tokenizer = os.path.join(d, "tokenizer.json")
  return config_json, tokenizer if os.path.isfile(tokenizer) else None, _weight_files(d)


def _read_json(path: str) -> dict[str, Any]:
  """A JSON object side file, within ``safe_json``'s size and nesting limits."""
  return safe_json.read_object(path, fix="re-download the file")


def _weight_files(d: str) -> list[str]:
  index_path = os.path.join(d, "model.safetensors.index.json")
  if os.path.isfile(index_path):
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise InputError(f"{index_path}: has no 'weight_map'; re-download the file.")
    # A shard must be a file of this directory: no other JSON types, no paths out of it.
    bad = [v for v in weight_map.values()
           if not isinstance(v, str) or os.path.basename(v) != v or v in ("", ".", "..")]
    if bad:
      raise InputError(f"{index_path}: weight_map names the shard {bad[0]!r}, not a file name in the "
                       "snapshot directory; re-download the file.")
    files = [os.path.join(d, name) for name in sorted(set(weight_map.values()))]
    for f in files:
      if not os.path.isfile(f):
        raise InputError(f"{f}: shard listed in {index_path} is missing; download every shard.")
    return files
  single = os.path.join(d, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  names = sorted(os.listdir(d))
  found = [os.path.join(d, n) for n in names if n.endswith(".safetensors")]
  if found:
    return found
  pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES)]
  if pickles:
    raise InputError(f"{os.path.join(d, pickles[0])}: pickle checkpoints are not loaded; convert to "
                     "safetensors (or download the model's *.safetensors files).")
  raise InputError(f"{d}: no *.safetensors weights in the directory; download the model's "
                   "safetensors files.")


# ----------------------------------------------------------------------------- config


def _rope_dicts(c: dict[str, Any], gemma: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
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


def _rope(rope: dict[str, Any], c: dict[str, Any], path: str) -> tuple[float, RopeScaling | None]:
  """One rope dict -> ``(theta, scaling)``."""
  kind = rope.get("rope_type", rope.get("type")) or "default"
  if rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) not in (1, 1.0, None):
    raise InputError(f"{path}: partial_rotary_factor is not supported; use a model with full-width RoPE.")
  theta = float(rope["rope_theta"])
  if kind in ("linear", "llama3") and rope.get("factor") is None:
    raise InputError(f"{path}: rope type {kind!r} has no 'factor'; fix config.json.")
  if kind == "default":
    return theta, None
  if kind in _HARMLESS_ROPE_TYPES:
    warnings.warn(f"{path}: rope type {kind!r} is treated as default RoPE (it only changes "
                  "sequences longer than the trained context).", stacklevel=3)
    return theta, None
  if kind == "linear":
    return theta, RopeScaling("linear", float(rope["factor"]))
  if kind == "llama3":
    return theta, RopeScaling(
        "llama3", float(rope["factor"]), float(rope.get("low_freq_factor", 1.0)),
        float(rope.get("high_freq_factor", 4.0)),
        _int(rope.get("original_max_position_embeddings", c.get("max_position_embeddings", 8192)),
             "original_max_position_embeddings", path))
  raise InputError(f"{path}: rope type {kind!r} is not supported; supported: default, linear, llama3.")


def _int(value: Any, key: str, path: str, minimum: int = 1) -> int:
  """``value`` as an int if it is a whole number ``>= minimum``.

  ``2`` and ``2.0`` are; ``2.5``, ``"2"`` and ``true`` are not (``int()`` would truncate or accept them).
  """
  whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
  if isinstance(value, bool) or not whole or value < minimum:
    kind = "a positive" if minimum == 1 else "a non-negative"
    raise InputError(f"{path}: config.json sets {key} to {value!r}, which is not {kind} whole number; "
                     "fix config.json.")
  return int(value)


def _token_ids(c: dict[str, Any], outer: dict[str, Any], path: str) -> dict[str, Any]:
  def pick(key):
    return c[key] if c.get(key) is not None else outer.get(key)

  def token(value, key):
    return None if value is None else _int(value, key, path, minimum=0)

  eos = pick("eos_token_id")
  eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
  eos = tuple(token(e, "eos_token_id") for e in eos if e is not None)
  return {"bos_token_id": token(pick("bos_token_id"), "bos_token_id"), "eos_token_ids": eos,
          "pad_token_id": token(pick("pad_token_id"), "pad_token_id")}


def _need(c: dict[str, Any], key: str, path: str) -> Any:
  if c.get(key) is None:
    raise InputError(f"{path}: config.json has no {key!r}; re-download the config or fill it in.")
  return c[key]


def _size(c: dict[str, Any], key: str, path: str, default: Any = None) -> int:
  """A positive whole-number field; ``default`` when absent (or 0/null, as transformers treats them)."""
  value = c.get(key)
  if value is None or (value == 0 and default is not None and not isinstance(value, bool)):
    if default is None:
      _need(c, key, path)
    value = default
  return _int(value, key, path)


def _check_flags(c: dict[str, Any], path: str) -> None:
  for key in _UNSUPPORTED_FLAGS:
    if c.get(key):
      raise InputError(f"{path}: config.json sets {key}=true, which jaxsem does not support for "
                       f"model_type {c.get('model_type')!r}; use a model without it.")


def _local_layers(c: dict[str, Any], n_layers: int, default: tuple[bool, ...], path: str) -> tuple[bool, ...]:
  types = c.get("layer_types")
  if types is None:
    return default
  if len(types) != n_layers or not set(types) <= {"full_attention", "sliding_attention"}:
    raise InputError(f"{path}: layer_types must list 'full_attention'/'sliding_attention' for each of "
                     f"{n_layers} layers; fix config.json.")
  return tuple(t == "sliding_attention" for t in types)


def config_from_hf(config_json: dict[str, Any], path: str) -> ModelConfig:
  """Builds the ModelConfig described by a Hugging Face ``config.json``.

  Args:
    config_json: the parsed config.json.
    path: where it came from, for error messages.

  Returns:
    The ModelConfig; for gemma3 multimodal configs, that of the text model.

  Raises:
    InputError: unsupported ``model_type`` or architecture feature, a missing field, a
      size that is not a positive whole number, or sizes that contradict each other.
  """
  try:
    return _config_from_hf(config_json, path)
  except ValueError as e:  # ModelConfig's consistency checks, or float() of a non-number
    raise InputError(f"{path}: inconsistent architecture ({e}); fix config.json.") from None
  except (TypeError, AttributeError, KeyError) as e:  # a field of the wrong JSON type
    raise InputError(f"{path}: a field of config.json has the wrong type ({type(e).__name__}: {e}); "
                     "fix config.json.") from None


def _config_from_hf(config_json: dict[str, Any], path: str) -> ModelConfig:
  outer = config_json
  model_type = outer.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise InputError(f"{path}: model_type {model_type!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
  c = outer
  if model_type == "gemma3":
    c = outer.get("text_config") or {}
    if not isinstance(c, dict):
      raise InputError(f"{path}: gemma3 config has no 'text_config' object; re-download the config.")
  gemma = model_type in GEMMA3_TYPES
  _check_flags(c, path)
  d_model = _size(c, "hidden_size", path)
  n_layers = _size(c, "num_hidden_layers", path)
  n_heads = _size(c, "num_attention_heads", path, 8 if gemma else None)
  n_kv = _size(c, "num_key_value_heads", path, 4 if gemma else n_heads)
  head_dim = _size(c, "head_dim", path, 256 if gemma else max(d_model // n_heads, 1))
  vocab = _size(c, "vocab_size", path, 262_208 if gemma else None)
  full, sliding = _rope_dicts(c, gemma)
  theta, scaling = _rope(full, c, path)
  common = dict(
      vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
      head_dim=head_dim, d_ff=_size(c, "intermediate_size", path), rope_theta=theta,
      rope_scaling=scaling, norm_eps=float(c.get("rms_norm_eps") or 1e-6),
      max_position=_size(c, "max_position_embeddings", path, 131_072 if gemma else 8192),
      **_token_ids(c, outer, path))
  if gemma:
    act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
      raise InputError(f"{path}: Gemma 3 activation {act!r} is not supported; expected gelu_pytorch_tanh.")
    pattern = _int(c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6,
                   "sliding_window_pattern", path)
    default = tuple(bool((i + 1) % pattern) for i in range(n_layers))
    local_theta, local_scaling = _rope(sliding, c, path)
    if local_scaling is not None:
      raise InputError(f"{path}: RoPE scaling on sliding-window layers is not supported.")
    window = c.get("sliding_window", 4096)
    tie = c.get("tie_word_embeddings", outer.get("tie_word_embeddings", True))
    if c.get("attn_logit_softcapping") is not None:
      warnings.warn(f"{path}: attn_logit_softcapping is ignored, as the transformers Gemma 3 reference "
                    "ignores it (Gemma 3 uses q/k norms instead).", stacklevel=2)
    return ModelConfig(
        family="gemma3", activation="gelu_tanh", qk_norm=True, post_norms=True,
        embed_scale=math.sqrt(d_model), query_scale=float(c.get("query_pre_attn_scalar") or 256) ** -0.5,
        final_softcap=c.get("final_logit_softcapping"),
        rope_local_theta=local_theta,
        sliding_window=None if window is None else _int(window, "sliding_window", path),
        local_layers=_local_layers(c, n_layers, default, path), tie_embeddings=bool(tie), **common)
  act = c.get("hidden_act") or "silu"
  if act != "silu":
    raise InputError(f"{path}: activation {act!r} is not supported for {model_type}; expected silu.")
  window = c.get("sliding_window")
  if model_type == "qwen2":
    use_window = bool(c.get("use_sliding_window")) and window is not None
    start = _int(c.get("max_window_layers") or 0, "max_window_layers", path, minimum=0)
    default = tuple(use_window and i >= start for i in range(n_layers))
  else:
    default = (window is not None,) * n_layers
  local = _local_layers(c, n_layers, default, path)
  local_theta = None
  if sliding is not None and any(local):
    local_theta, local_scaling = _rope(sliding, c, path)
    if (local_theta, local_scaling) == (theta, scaling):
      local_theta = None  # same RoPE everywhere
    elif local_scaling is not None:
      raise InputError(f"{path}: RoPE scaling on sliding-window layers is not supported.")
  return ModelConfig(
      family="llama", qkv_bias=model_type == "qwen2", rope_local_theta=local_theta,
      sliding_window=_int(window, "sliding_window", path) if any(local) else None, local_layers=local,
      tie_embeddings=bool(c.get("tie_word_embeddings", False)), **common)


# ----------------------------------------------------------------------------- weights


def _heads_in(n: int, dh: int) -> Callable[[np.ndarray], np.ndarray]:
  return lambda w: w.reshape(n, dh, -1).transpose(2, 0, 1)  # [n*dh, D] -> [D, n, dh]


def _heads_out(n: int, dh: int) -> Callable[[np.ndarray], np.ndarray]:
  return lambda w: w.reshape(-1, n, dh).transpose(1, 2, 0)  # [D, n*dh] -> [n, dh, D]


def _plain(w: np.ndarray) -> np.ndarray:
  return w


def _transpose(w: np.ndarray) -> np.ndarray:
  return w.T


def _plus_one(w: np.ndarray) -> np.ndarray:
  return w.astype(np.float32) + np.float32(1.0)


def block_leaves(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...], Callable]]:
  """Leaf path -> (HF name under ``layers.{i}.``, HF shape, converter to one layer's slot)."""
  c = config
  D, H, K, Dh, F = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff
  norm = _plus_one if c.family == "gemma3" else _plain
  leaves = {
      "blocks/attn_norm": ("input_layernorm.weight", (D,), norm),
      "blocks/q": ("self_attn.q_proj.weight", (H * Dh, D), _heads_in(H, Dh)),
      "blocks/k": ("self_attn.k_proj.weight", (K * Dh, D), _heads_in(K, Dh)),
      "blocks/v": ("self_attn.v_proj.weight", (K * Dh, D), _heads_in(K, Dh)),
      "blocks/o": ("self_attn.o_proj.weight", (D, H * Dh), _heads_out(H, Dh)),
      "blocks/gate": ("mlp.gate_proj.weight", (F, D), _transpose),
      "blocks/up": ("mlp.up_proj.weight", (F, D), _transpose),
      "blocks/down": ("mlp.down_proj.weight", (D, F), _transpose),
  }
  if c.qkv_bias:
    for name, n in (("q", H), ("k", K), ("v", K)):
      leaves[f"blocks/{name}_bias"] = (f"self_attn.{name}_proj.bias", (n * Dh,),
                                       lambda w, n=n: w.reshape(n, Dh))
  if c.qk_norm:
    leaves["blocks/q_norm"] = ("self_attn.q_norm.weight", (Dh,), norm)
    leaves["blocks/k_norm"] = ("self_attn.k_norm.weight", (Dh,), norm)
  if c.post_norms:
    leaves["blocks/post_attn_norm"] = ("post_attention_layernorm.weight", (D,), norm)
    leaves["blocks/mlp_norm"] = ("pre_feedforward_layernorm.weight", (D,), norm)
    leaves["blocks/post_mlp_norm"] = ("post_feedforward_layernorm.weight", (D,), norm)
  else:
    leaves["blocks/mlp_norm"] = ("post_attention_layernorm.weight", (D,), norm)
  return leaves


class _Tensors:
  """Name -> tensor over a set of open safetensors files."""

  def __init__(self, files: list[str], stack: contextlib.ExitStack):
    self.where: dict[str, tuple[str, Any]] = {}
    for path in files:
      try:
        handle = stack.enter_context(safe_open(path, framework="numpy"))
        names = handle.keys()
      except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise InputError(f"{path}: not a readable safetensors file ({e}); re-download it.") from None
      for name in names:
        self.where[name] = (path, handle)

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    path, handle = self.where[name]
    try:
      found = tuple(handle.get_slice(name).get_shape())
      if found == shape:
        return handle.get_tensor(name)
    except Exception as e:
      raise InputError(f"{path}: tensor {name} cannot be read ({e}); re-download the file.") from None
    raise InputError(f"{path}: tensor {name} has shape {list(found)} but config.json implies "
                     f"{list(shape)}; the weights and config.json do not match.")


def _prefix(tensors: _Tensors, directory: str) -> str:
  for p in _PREFIXES:
    if f"{p}embed_tokens.weight" in tensors.where:
      return p
  raise InputError(f"{directory}: no embed_tokens.weight tensor in the safetensors files; this is not "
                   "a supported Hugging Face causal LM checkpoint.")


def load_hf_params(directory: str | os.PathLike, config: ModelConfig, *, dtype: Any = np.float32,
                   place: Place | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """Reads the weights of a snapshot directory into the jaxsem params layout.

  Args:
    directory: the snapshot directory (see ``read_hf_dir``).
    config: its ModelConfig (``config_from_hf``).
    dtype: numpy dtype of the host buffers (``np.float32`` or ``ml_dtypes.bfloat16`` ...).
    place: ``place(path, array)`` called once per complete leaf (``"embed"``,
      ``"blocks/q"`` ...); its result is stored in the params. Default: keep the array.
    progress: ``progress(params_done, params_total)`` after each tensor read.

  Returns:
    The nested params dict (``{"embed": ..., "blocks": {"q": ...}}``).

  Raises:
    InputError: a missing, unreadable or wrongly shaped tensor, naming the file.
  """
  d = os.fspath(directory)
  place = place or (lambda path, array: array)
  dtype = np.dtype(dtype)
  L, D, V = config.n_layers, config.d_model, config.vocab_size
  params: dict[str, Any] = {"blocks": {}}
  total, done = config.n_params, 0

  def advance(n: int) -> None:
    nonlocal done
    done += n
    if progress is not None:
      progress(min(done, total), total)

  with contextlib.ExitStack() as stack:
    tensors = _Tensors(read_hf_dir(d)[2], stack)
    prefix = _prefix(tensors, d)

    used = {"lm_head.weight"}

    def need(name: str) -> str:
      used.add(name)
      if name not in tensors.where:
        raise InputError(f"{d}: tensor {name} is missing from the safetensors files; the weights and "
                         "config.json do not match.")
      return name

    top = [("embed", need(f"{prefix}embed_tokens.weight"), (V, D), _plain),
           ("final_norm", need(f"{prefix}norm.weight"), (D,),
            _plus_one if config.family == "gemma3" else _plain)]
    if not config.tie_embeddings:
      head = next((n for n in _LM_HEADS if n in tensors.where), _LM_HEADS[0])
      top.append(("unembed", need(head), (V, D), _plain))
    for path, name, shape, convert in top:
      array = np.asarray(convert(tensors.get(name, shape)), dtype=dtype)
      params[path] = place(path, array)
      advance(array.size)
      del array
    for path, (name, shape, convert) in block_leaves(config).items():
      buf = None
      for i in range(L):
        slot = convert(tensors.get(need(f"{prefix}layers.{i}.{name}"), shape))
        if buf is None:
          buf = host_memory.aligned_empty((L,) + slot.shape, dtype)
        buf[i] = slot
        advance(slot.size)
      params["blocks"][path.split("/", 1)[1]] = place(path, buf)
      del buf
  unused = sorted(n for n in tensors.where
                  if n.startswith(prefix) and n not in used and "rotary_emb" not in n)
  if unused:
    warnings.warn(f"{d}: {len(unused)} tensors were not used (e.g. {', '.join(unused[:3])}); the "
                  "architecture may have features jaxsem does not model.", stacklevel=2)
  return params


def hf_provenance(config_json: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
  """What was loaded and how, as a JSON-friendly dict."""
  text = config_json.get("text_config") if config_json.get("model_type") == "gemma3" else config_json
  text = text or {}
  return {
      "model_type": config_json.get("model_type"),
      "architectures": config_json.get("architectures"),
      "checkpoint_dtype": text.get("dtype", text.get("torch_dtype", config_json.get("torch_dtype"))),
      "transformers_version": config_json.get("transformers_version"),
      "embed_tensor": "embed_tokens.weight",
      "unembed_tensor": "embed_tokens.weight" if config.tie_embeddings else "lm_head.weight",
      "tied": config.tie_embeddings,
      "norm_plus_one_folded": config.family == "gemma3",
  }


def load_hf(directory: str | os.PathLike, *, dtype: Any = np.float32,
            place: Place | None = None) -> tuple[ModelConfig, dict[str, Any], str | None]:
  """``(config, params, tokenizer_json_path or None)`` of a snapshot directory."""
  config_json, tokenizer, _ = read_hf_dir(directory)
  config = config_from_hf(config_json, os.path.join(os.fspath(directory), "config.json"))
  return config, load_hf_params(directory, config, dtype=dtype, place=place), tokenizer
