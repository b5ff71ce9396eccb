"""GGUF -> (ModelConfig, params pytree) for the ``llama`` and ``gemma3`` architectures.

What llama.cpp's converter does to a Hugging Face checkpoint, and how it is undone:

* Tensors are stored as ``[out_features, in_features]`` (numpy order); the params
  layout of :mod:`jaxsem.models.config` is ``[in, ...out]``, so leaves are transposed.
* ``llama``: Q and K rows (and biases) of every head are permuted from rotate-half to
  interleaved RoPE order: file row ``2j + p`` of a head is Hugging Face row
  ``p * Dh/2 + j``. The permutation is inverted here. Gemma 3 is not permuted.
* ``gemma3``: every ``*norm.weight`` is stored as ``1 + w`` (llama.cpp multiplies by the
  stored value directly), which is already the multiplier the params hold.
* Llama 3.1 RoPE scaling is stored as a ``rope_freqs.weight`` tensor of per-frequency
  divisors instead of metadata; its parameters are recovered by fitting (see
  :func:`llama3_scaling_from_freqs`).
"""

from __future__ import annotations

import collections
import math
import os
from typing import Any, Callable, Mapping

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io import host_memory
from jaxsem.io.dequant import dequantize, type_name
from jaxsem.io.gguf_file import GGUFFile, TensorInfo
from jaxsem.models.config import ModelConfig, RopeScaling

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
GEMMA3_LOCAL_ROPE_THETA = 10000.0
GEMMA3_SLIDING_PERIOD = 6

Place = Callable[[str, np.ndarray], Any]


# ----------------------------------------------------------------------------- config


class _Meta:
  """Typed access to ``{arch}.*`` metadata with errors that name the file."""

  def __init__(self, metadata: Mapping[str, Any], path: str, arch: str):
    self.m, self.path, self.arch = metadata, path, arch

  def get(self, key: str, default: Any = None) -> Any:
    value = self.m.get(key.format(arch=self.arch), default)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size:
      if np.all(value == value[0]):  # per-layer arrays with one value
        return value[0].item()
      raise InputError(f"{self.path}: metadata {key.format(arch=self.arch)!r} varies per layer"
                       f" ({value.tolist()}), which jaxsem does not support.")
    return value

  def num(self, key: str, default: Any = None, cast: Callable[[Any], Any] = int) -> Any:
    """A positive number; ``default`` if absent, an error if absent without default."""
    value = self.get(key, default)
    name = key.format(arch=self.arch)
    if value is None:
      raise InputError(f"{self.path}: metadata key {name!r} is missing; the file is not a complete"
                       f" {self.arch} GGUF.")
    try:
      out = None if isinstance(value, (bool, np.bool_)) else cast(value)
      if cast is int and out != value:  # 2.5 or "2" is refused, not truncated or parsed
        out = None
    except (TypeError, ValueError, OverflowError):
      out = None
    if out is None or not out > 0:
      raise InputError(f"{self.path}: metadata {name!r} is {value!r}, not a positive number;"
                       " the file is corrupt.")
    return out

  def optional(self, key: str, cast: Callable[[Any], Any] = float) -> Any:
    return None if self.get(key) is None else self.num(key, cast=cast)


def _tidy(x: float) -> float:
  """Float32 metadata (1e-5 stored as 9.99999975e-06) back to its 7-digit decimal value."""
  return float(f"{float(x):.7g}")


def _token_ids(metadata: Mapping[str, Any]) -> dict[str, Any]:
  def tok(key):
    value = metadata.get(f"tokenizer.ggml.{key}")
    return None if value is None else int(value)
  eos = [t for t in (tok("eos_token_id"), tok("eot_token_id"), tok("eom_token_id")) if t is not None]
  return dict(bos_token_id=tok("bos_token_id"), eos_token_ids=tuple(dict.fromkeys(eos)),
              pad_token_id=tok("padding_token_id"))


def _rope_scaling(meta: _Meta, theta: float, head_dim: int,
                  rope_freqs: np.ndarray | None) -> RopeScaling | None:
  kind = meta.get("{arch}.rope.scaling.type")
  if kind not in (None, "none"):
    if kind != "linear":
      raise InputError(f"{meta.path}: RoPE scaling type {kind!r} is not supported (only linear and"
                       " llama3); use a model without it.")
    return RopeScaling("linear", meta.num("{arch}.rope.scaling.factor", cast=float))
  if rope_freqs is None:
    return None
  orig = meta.num("{arch}.rope.scaling.original_context_length", 8192)
  return llama3_scaling_from_freqs(np.asarray(rope_freqs, np.float64), theta, head_dim, orig, meta.path)


def llama3_factors(scaling: RopeScaling, theta: float, head_dim: int) -> np.ndarray:
  """Per-frequency divisors of Llama 3.1 RoPE, float64 ``[head_dim // 2]``."""
  inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv_freq
  lo, hi, f = scaling.low_freq_factor, scaling.high_freq_factor, scaling.factor
  smooth = (scaling.original_max_position / wavelen - lo) / (hi - lo)
  mid = 1 / ((1 - smooth) / f + smooth)
  out = np.where(wavelen > scaling.original_max_position / lo, f, mid)
  return np.where(wavelen < scaling.original_max_position / hi, 1.0, out)


def llama3_scaling_from_freqs(freqs: np.ndarray, theta: float, head_dim: int, orig: int,
                              path: str = "<file>") -> RopeScaling | None:
  """Recovers ``RopeScaling("llama3", ...)`` from a ``rope_freqs`` tensor.

  Factors are 1 for short wavelengths, ``factor`` for long ones, and in between
  ``1 / ((1 - s) / factor + s)`` with ``s = orig / ((hi - lo) * wavelen) - lo / (hi - lo)``.
  Only ``orig / (hi - lo)`` and ``lo / (hi - lo)`` are identifiable, so ``orig`` is taken
  from metadata (default 8192) and ``lo``, ``hi`` fitted; any consistent triple gives
  the same frequencies.

  Args:
    freqs: float ``[head_dim // 2]`` divisors from the file.
    theta: RoPE base; head_dim: rotary width; orig: original context length.
    path: file name for error messages.

  Returns:
    The scaling, or None when every factor is 1.
  """
  if freqs.shape != (head_dim // 2,):
    raise InputError(f"{path}: tensor 'rope_freqs.weight' has shape {freqs.shape}, expected"
                     f" {(head_dim // 2,)}.")
  factor = float(freqs.max())
  if np.allclose(freqs, 1.0, rtol=0, atol=1e-6):
    return None
  inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv_freq
  mid = (freqs > 1 + 1e-6) & (freqs < factor * (1 - 1e-6))
  candidates = [RopeScaling("llama3", _tidy(factor), 1.0, 4.0, orig)]
  if mid.sum() >= 2:
    s = (1 / freqs[mid] - 1 / factor) / (1 - 1 / factor)
    a, b = np.polyfit(1 / wavelen[mid], s, 1)
    span = orig / a
    candidates.append(RopeScaling("llama3", _tidy(factor), _tidy(-b * span), _tidy(-b * span + span), orig))
  for cand in candidates:
    if np.allclose(llama3_factors(cand, theta, head_dim), freqs, rtol=1e-4, atol=1e-6):
      return cand
  raise InputError(f"{path}: tensor 'rope_freqs.weight' does not match Llama 3 RoPE scaling;"
                   " this kind of RoPE scaling is not supported.")


def _common(meta: _Meta, tensors: Mapping[str, TensorInfo] | None) -> dict[str, Any]:
  """Fields shared by every architecture."""
  d_model = meta.num("{arch}.embedding_length")
  n_heads = meta.num("{arch}.attention.head_count")
  head_dim = meta.num("{arch}.attention.key_length", d_model // n_heads)
  value_dim = meta.num("{arch}.attention.value_length", head_dim)
  if value_dim != head_dim:
    raise InputError(f"{meta.path}: key width {head_dim} differs from value width {value_dim},"
                     " which jaxsem does not support.")
  rope_dim = meta.num("{arch}.rope.dimension_count", head_dim)
  if rope_dim != head_dim:
    raise InputError(f"{meta.path}: RoPE covers {rope_dim} of {head_dim} head dimensions; partial"
                     " rotary embeddings are not supported.")
  if tensors is not None and "token_embd.weight" in tensors:
    vocab = tensors["token_embd.weight"].shape[0]
  else:
    tokens = meta.m.get("tokenizer.ggml.tokens")
    vocab = meta.num("{arch}.vocab_size", None if tokens is None else len(tokens))
  return dict(
      vocab_size=int(vocab), d_model=d_model, n_layers=meta.num("{arch}.block_count"),
      n_heads=n_heads, n_kv_heads=meta.num("{arch}.attention.head_count_kv", n_heads),
      head_dim=head_dim, d_ff=meta.num("{arch}.feed_forward_length"),
      max_position=meta.num("{arch}.context_length", 8192),
      tie_embeddings=tensors is None or "output.weight" not in tensors,
      **_token_ids(meta.m))


def _local_layers(meta: _Meta, n_layers: int) -> tuple[bool, ...]:
  pattern = meta.m.get(f"{meta.arch}.attention.sliding_window_pattern", GEMMA3_SLIDING_PERIOD)
  if isinstance(pattern, (np.ndarray, list, tuple)):
    if len(pattern) != n_layers:
      raise InputError(f"{meta.path}: sliding_window_pattern has {len(pattern)} entries for"
                       f" {n_layers} layers; the file is corrupt.")
    return tuple(bool(x) for x in pattern)
  period = int(pattern)
  # As llama.cpp reads it: period p makes every p-th layer global; 0 makes all local.
  return tuple(period == 0 or i % period < period - 1 for i in range(n_layers))


def config_from_gguf(metadata: Mapping[str, Any], path: str,
                     tensors: Mapping[str, TensorInfo] | None = None,
                     rope_freqs: np.ndarray | None = None) -> ModelConfig:
  """Builds the ModelConfig a GGUF file describes.

  Args:
    metadata: ``GGUFFile.metadata``.
    path: the file, for error messages.
    tensors: ``GGUFFile.tensors``; decides tied embeddings (an ``output.weight`` is
      present or not), Q/K/V biases and the vocabulary size. Without it the model is
      taken as tied and bias-free and the vocabulary comes from the token list.
    rope_freqs: contents of a ``rope_freqs.weight`` tensor (Llama 3.1 RoPE scaling).

  Returns:
    The config.

  Raises:
    InputError: unknown architecture, missing, malformed or unsupported metadata.
  """
  try:
    return _config_from_gguf(metadata, path, tensors, rope_freqs)
  except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
    raise InputError(f"{path}: malformed GGUF metadata ({type(e).__name__}: {str(e)[:160]}); the file is "
                     "corrupt.") from None


def _config_from_gguf(metadata: Mapping[str, Any], path: str, tensors: Mapping[str, TensorInfo] | None,
                      rope_freqs: np.ndarray | None) -> ModelConfig:
  arch = metadata.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise InputError(f"{path}: architecture {arch!r} is not supported; supported GGUF architectures"
                     f" are {', '.join(SUPPORTED_ARCHITECTURES)}.")
  meta = _Meta(metadata, path, arch)
  common = _common(meta, tensors)
  theta = _tidy(meta.num("{arch}.rope.freq_base", 10000.0, float))
  scaling = _rope_scaling(meta, theta, common["head_dim"], rope_freqs)
  eps_default = 1e-6 if arch == "gemma3" else 1e-5
  eps = _tidy(meta.num("{arch}.attention.layer_norm_rms_epsilon", eps_default, float))
  if arch == "llama":
    bias = tensors is not None and "blk.0.attn_q.bias" in tensors
    fields = dict(family="llama", qkv_bias=bias)
  else:
    d, n_layers = common["d_model"], common["n_layers"]
    window = meta.optional("{arch}.attention.sliding_window", int)
    # Gemma 3 27B scales queries by (d_model / n_heads) ** -0.5, the others by head_dim ** -0.5.
    is_27b = n_layers == 62 and d == 5376
    fields = dict(
        family="gemma3", activation="gelu_tanh", qk_norm=True, post_norms=True,
        rope_local_theta=_tidy(meta.num("{arch}.rope.freq_base_swa", GEMMA3_LOCAL_ROPE_THETA, float)),
        sliding_window=window, local_layers=_local_layers(meta, n_layers) if window else (),
        embed_scale=math.sqrt(d),
        query_scale=(d / common["n_heads"]) ** -0.5 if is_27b else common["head_dim"] ** -0.5,
        attn_softcap=meta.optional("{arch}.attn_logit_softcapping"),
        final_softcap=meta.optional("{arch}.final_logit_softcapping"))
  try:
    return ModelConfig(norm_eps=eps, rope_theta=theta, rope_scaling=scaling, **fields, **common)
  except ValueError as e:
    raise InputError(f"{path}: inconsistent {arch} metadata: {e}.") from None


def read_config(f: GGUFFile) -> ModelConfig:
  """The ModelConfig of an open GGUF file (metadata, tensor index and ``rope_freqs``)."""
  freqs = None
  info = f.tensors.get("rope_freqs.weight")
  if info is not None:
    freqs = dequantize(f.raw(info.name), info.ggml_type, info.shape, name=info.name, path=f.path)
  return config_from_gguf(f.metadata, f.path, f.tensors, freqs)


# ----------------------------------------------------------------------------- params

# Leaf writer: (dequantized file tensor, destination slot) -> None.
Writer = Callable[[np.ndarray, np.ndarray], None]


def _plain(src: np.ndarray, slot: np.ndarray) -> None:
  slot[...] = src


def _transposed(src: np.ndarray, slot: np.ndarray) -> None:
  slot[...] = src.T


def _heads_in(n: int, dh: int, permuted: bool) -> Writer:
  """File ``[n*dh, D]`` -> slot ``[D, n, dh]``, undoing llama's interleaved-RoPE row order."""
  def write(src: np.ndarray, slot: np.ndarray) -> None:
    d = src.shape[1]
    if permuted:
      slot.reshape(d, n, 2, dh // 2)[...] = src.reshape(n, dh // 2, 2, d).transpose(3, 0, 2, 1)
    else:
      slot[...] = src.reshape(n, dh, d).transpose(2, 0, 1)
  return write


def _bias_in(n: int, dh: int, permuted: bool) -> Writer:
  """File ``[n*dh]`` -> slot ``[n, dh]``, as :func:`_heads_in` with ``D = 1``."""
  write = _heads_in(n, dh, permuted)
  return lambda src, slot: write(src[:, None], slot[None])


def _heads_out(n: int, dh: int) -> Writer:
  def write(src: np.ndarray, slot: np.ndarray) -> None:
    slot[...] = src.reshape(src.shape[0], n, dh).transpose(1, 2, 0)
  return write


def block_leaves(config: ModelConfig, permuted: bool) -> dict[str, tuple[str, tuple, tuple, Writer]]:
  """Per-layer leaves: name -> (GGUF suffix, file shape, leaf shape per layer, writer)."""
  d, h, k, dh, ff = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff
  leaves = {
      "attn_norm": ("attn_norm.weight", (d,), (d,), _plain),
      "q": ("attn_q.weight", (h * dh, d), (d, h, dh), _heads_in(h, dh, permuted)),
      "k": ("attn_k.weight", (k * dh, d), (d, k, dh), _heads_in(k, dh, permuted)),
      "v": ("attn_v.weight", (k * dh, d), (d, k, dh), _heads_in(k, dh, False)),
      "o": ("attn_output.weight", (d, h * dh), (h, dh, d), _heads_out(h, dh)),
  }
  if config.qkv_bias:
    leaves["q_bias"] = ("attn_q.bias", (h * dh,), (h, dh), _bias_in(h, dh, permuted))
    leaves["k_bias"] = ("attn_k.bias", (k * dh,), (k, dh), _bias_in(k, dh, permuted))
    leaves["v_bias"] = ("attn_v.bias", (k * dh,), (k, dh), _bias_in(k, dh, False))
  if config.qk_norm:
    leaves["q_norm"] = ("attn_q_norm.weight", (dh,), (dh,), _plain)
    leaves["k_norm"] = ("attn_k_norm.weight", (dh,), (dh,), _plain)
  if config.post_norms:
    leaves["post_attn_norm"] = ("post_attention_norm.weight", (d,), (d,), _plain)
  leaves["mlp_norm"] = ("ffn_norm.weight", (d,), (d,), _plain)
  leaves["gate"] = ("ffn_gate.weight", (ff, d), (d, ff), _transposed)
  leaves["up"] = ("ffn_up.weight", (ff, d), (d, ff), _transposed)
  leaves["down"] = ("ffn_down.weight", (d, ff), (ff, d), _transposed)
  if config.post_norms:
    leaves["post_mlp_norm"] = ("post_ffw_norm.weight", (d,), (d,), _plain)
  return leaves


def top_leaves(config: ModelConfig) -> dict[str, tuple[str, tuple]]:
  """Unstacked leaves: name -> (GGUF tensor name, shape; file and leaf shapes agree)."""
  v, d = config.vocab_size, config.d_model
  leaves = {"embed": ("token_embd.weight", (v, d)), "final_norm": ("output_norm.weight", (d,))}
  if not config.tie_embeddings:
    leaves["unembed"] = ("output.weight", (v, d))
  return leaves


def _expected(config: ModelConfig, permuted: bool) -> dict[str, tuple]:
  """Every tensor the params need: GGUF name -> file shape."""
  want = {name: shape for name, shape in top_leaves(config).values()}
  for suffix, shape, _, _ in block_leaves(config, permuted).values():
    for i in range(config.n_layers):
      want[f"blk.{i}.{suffix}"] = shape
  return want


def check_tensors(f: GGUFFile, config: ModelConfig) -> None:
  """Raises InputError if the file's tensors do not fit the config.

  A needed tensor missing or of the wrong shape, an ``output.weight`` the config would
  ignore, or a ``rope_freqs.weight`` scaling the config lacks, all mean the config was
  not built from this file (use :func:`read_config`).
  """
  if config.tie_embeddings and "output.weight" in f.tensors:
    raise InputError(f"{f.path}: has a separate output head 'output.weight' but the config ties"
                     " embeddings; build the config with read_config(file).")
  info = f.tensors.get("rope_freqs.weight")
  if info is not None and config.rope_scaling is None:
    freqs = dequantize(f.raw(info.name), info.ggml_type, info.shape, name=info.name, path=f.path)
    if not np.allclose(freqs, 1.0, rtol=0, atol=1e-6):
      raise InputError(f"{f.path}: tensor 'rope_freqs.weight' scales RoPE but the config has no"
                       " rope_scaling; build the config with read_config(file).")
  for name, shape in _expected(config, _permuted(f)).items():
    info = f.tensors.get(name)
    if info is None:
      raise InputError(f"{f.path}: tensor {name!r} is missing; the file is not a complete"
                       f" {config.family} model for this config.")
    if tuple(info.shape) != tuple(shape):
      raise InputError(f"{f.path}: tensor {name!r} has shape {tuple(info.shape)} but the config"
                       f" needs {tuple(shape)}; the metadata and weights disagree.")


def _permuted(f: GGUFFile) -> bool:
  return f.metadata.get("general.architecture") == "llama"


def load_gguf_params(f: GGUFFile, config: ModelConfig, *, dtype: Any = np.float32,
                     place: Place | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """Dequantizes a GGUF file into the params pytree of :mod:`jaxsem.models.config`.

  Leaves are built one at a time (stacked leaves ``[L, ...]`` filled layer by layer)
  and handed to ``place`` as soon as each is complete; no reference to the host buffer
  is kept, so with a ``place`` that moves data to devices host memory peaks near one
  leaf.

  Args:
    f: open GGUF file.
    config: its config (usually ``read_config(f)``).
    dtype: numpy dtype of the leaves (float32, float16 or ml_dtypes.bfloat16).
    place: ``place(path, array) -> leaf`` with ``path`` like ``"embed"`` or
      ``"blocks/q"``; default keeps the numpy array.
    progress: ``progress(params_done, params_total)`` after each tensor read.

  Returns:
    ``{"embed", "final_norm", ["unembed"], "blocks": {...}}`` of placed leaves.

  Raises:
    InputError: missing tensor, shape mismatch, unsupported quantization type.
  """
  place = place or (lambda _, array: array)
  dtype = np.dtype(dtype)
  check_tensors(f, config)
  permuted = _permuted(f)

  def read(name: str, out: np.ndarray | None = None) -> np.ndarray:
    info = f.tensors[name]
    array = dequantize(f.raw(name), info.ggml_type, info.shape, out=out, name=name, path=f.path)
    f.release(name)
    return array

  tops, blocks = top_leaves(config), block_leaves(config, permuted)
  total = sum(math.prod(shape) for _, shape in tops.values())
  total += sum(config.n_layers * math.prod(shape) for _, _, shape, _ in blocks.values())
  done = 0

  def advance(n: int) -> None:
    nonlocal done
    done += n
    if progress is not None:
      progress(done, total)

  params: dict[str, Any] = {"blocks": {}}
  for leaf, (name, shape) in tops.items():
    array = host_memory.aligned_empty(shape, dtype)
    read(name, out=array)
    params[leaf] = place(leaf, array)
    advance(array.size)
    del array
    host_memory.trim()
  for leaf, (suffix, _, shape, write) in blocks.items():
    array = host_memory.aligned_empty((config.n_layers, *shape), dtype)
    for i in range(config.n_layers):
      write(read(f"blk.{i}.{suffix}"), array[i])
      advance(math.prod(shape))
    params["blocks"][leaf] = place(f"blocks/{leaf}", array)
    del array
    host_memory.trim()
  return params


def gguf_provenance(f: GGUFFile, config: ModelConfig) -> dict[str, Any]:
  """What was loaded and how: quantization types, embedding tensors, conventions undone.

  Returns:
    A JSON-friendly dict: ``file``, ``architecture``, ``name``, ``quant_types`` (type
    name -> tensor count over the whole file), ``embed_tensor``/``embed_type``,
    ``unembed_tensor``/``unembed_type``, ``tied``, ``embed_scale``, ``qk_unpermuted``
    (llama Q/K rows were put back in rotate-half order), ``norms_include_plus_one``
    (Gemma: the file stores ``1 + w``, used as the multiplier) and ``unused_tensors``.
  """
  counts = collections.Counter(type_name(t.ggml_type) for t in f.tensors.values())
  unembed = "token_embd.weight" if config.tie_embeddings else "output.weight"
  used = set(_expected(config, _permuted(f))) | {"rope_freqs.weight"}

  def type_of(name: str) -> str | None:
    return type_name(f.tensors[name].ggml_type) if name in f.tensors else None

  return {
      "file": f.path,
      "architecture": f.metadata.get("general.architecture"),
      "name": f.metadata.get("general.name"),
      "quant_types": dict(sorted(counts.items())),
      "embed_tensor": "token_embd.weight",
      "embed_type": type_of("token_embd.weight"),
      "unembed_tensor": unembed,
      "unembed_type": type_of(unembed),
      "tied": config.tie_embeddings,
      "embed_scale": config.embed_scale,
      "qk_unpermuted": _permuted(f),
      "norms_include_plus_one": config.family == "gemma3",
      "unused_tensors": sorted(set(f.tensors) - used),
  }


def load_gguf(path: str | os.PathLike, *, dtype: Any = np.float32,
              place: Place | None = None) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
  """Opens ``path`` and returns ``(config, params, provenance)``; the file is closed after."""
  with GGUFFile(path) as f:
    config = read_config(f)
    params = load_gguf_params(f, config, dtype=dtype, place=place)
    provenance = gguf_provenance(f, config)
  return config, params, provenance
