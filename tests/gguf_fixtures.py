"""Tiny synthetic GGUF files, written the way llama.cpp's converter writes real ones.

Typical use::

    config = tiny_llama_config(tied=False)
    params = random_params(config, seed=0)
    path = write_gguf(tmp_path / "tiny.gguf", config, params, types={"*": "Q8_0", "embed": "F16"})
    # loading `path` must give back `config` and `params` (up to quantization error)

Params are in jaxsem's layout (see ``jaxsem.models.config``). The writer converts
them as the converter does: weights become ``[out, in]`` matrices, llama Q/K rows (and
biases) are permuted to interleaved-RoPE order (not those of qwen2/qwen3/gemma3), Gemma
norms are stored as ``1 + w`` (which is the multiplier the params already hold), Llama 3.1
RoPE scaling becomes a ``rope_freqs.weight`` tensor, and metadata keys use llama.cpp's names. Norms and
biases are always F32, as in llama.cpp.

Quantization uses ``gguf.quants`` for the types it can quantize and small reference
quantizers here for Q4_K and Q6_K (rows must be multiples of 256 for those).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from jaxsem.models.config import ModelConfig, RopeScaling

BOS, EOS, PAD = 1, 2, 0


# ----------------------------------------------------------------------------- configs


def tiny_llama_config(*, tied: bool = True, n_layers: int = 2, vocab_size: int = 96, d_model: int = 64,
                      n_heads: int = 4, n_kv_heads: int = 2, head_dim: int = 16, d_ff: int = 96,
                      rope_theta: float = 10000.0, rope_scaling: RopeScaling | None = None,
                      qkv_bias: bool = False) -> ModelConfig:
  """A small grouped-query llama config, exactly as the loader should read it back."""
  return ModelConfig(
      family="llama", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff, norm_eps=1e-5, rope_theta=rope_theta,
      rope_scaling=rope_scaling, qkv_bias=qkv_bias, tie_embeddings=tied, max_position=256,
      bos_token_id=BOS, eos_token_ids=(EOS,), pad_token_id=PAD)


def tiny_qwen_config(family: str, *, tied: bool = True, n_layers: int = 2, vocab_size: int = 96,
                     d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 2, head_dim: int = 32,
                     d_ff: int = 96) -> ModelConfig:
  """A small Qwen 2.5 (``"qwen2"``: q/k/v biases) or Qwen 3 (``"qwen3"``: q/k norms) config."""
  return ModelConfig(
      family=family, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff, norm_eps=1e-6, rope_theta=1e6,
      qkv_bias=family == "qwen2", qk_norm=family == "qwen3", tie_embeddings=tied, max_position=256,
      bos_token_id=BOS, eos_token_ids=(EOS,), pad_token_id=PAD)


def gemma3_default_local_layers(n_layers: int) -> tuple[bool, ...]:
  """Gemma 3's pattern: layer i is global iff (i + 1) % 6 == 0."""
  return tuple((i + 1) % 6 != 0 for i in range(n_layers))


def tiny_gemma3_config(*, n_layers: int = 7, vocab_size: int = 96, d_model: int = 64, n_heads: int = 4,
                       n_kv_heads: int = 2, head_dim: int = 32, d_ff: int = 128, sliding_window: int = 8,
                       local_layers: tuple[bool, ...] | None = None, rope_scaling: RopeScaling | None = None,
                       final_softcap: float | None = None) -> ModelConfig:
  """A small Gemma 3 config with local and global layers, as the loader should read it back."""
  return ModelConfig(
      family="gemma3", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff, norm_eps=1e-6, rope_theta=1e6,
      rope_scaling=rope_scaling, rope_local_theta=10000.0, sliding_window=sliding_window,
      local_layers=local_layers or gemma3_default_local_layers(n_layers), activation="gelu_tanh",
      qk_norm=True, post_norms=True, embed_scale=math.sqrt(d_model), query_scale=head_dim ** -0.5,
      final_softcap=final_softcap, tie_embeddings=True, max_position=256, bos_token_id=BOS,
      eos_token_ids=(EOS,), pad_token_id=PAD)


# ----------------------------------------------------------------------------- params


def param_shapes(config: ModelConfig) -> dict[str, Any]:
  """Leaf shapes of the params layout: ``{"embed": (V, D), ..., "blocks": {...}}``."""
  v, d, h, k, dh, f, n = (config.vocab_size, config.d_model, config.n_heads, config.n_kv_heads,
                          config.head_dim, config.d_ff, config.n_layers)
  shapes: dict[str, Any] = {"embed": (v, d), "final_norm": (d,)}
  if not config.tie_embeddings:
    shapes["unembed"] = (v, d)
  blocks = {"attn_norm": (n, d), "q": (n, d, h, dh), "k": (n, d, k, dh), "v": (n, d, k, dh),
            "o": (n, h, dh, d)}
  if config.qkv_bias:
    blocks.update(q_bias=(n, h, dh), k_bias=(n, k, dh), v_bias=(n, k, dh))
  if config.qk_norm:
    blocks.update(q_norm=(n, dh), k_norm=(n, dh))
  if config.post_norms:
    blocks.update(post_attn_norm=(n, d), post_mlp_norm=(n, d))
  blocks.update(mlp_norm=(n, d), gate=(n, d, f), up=(n, d, f), down=(n, f, d))
  shapes["blocks"] = blocks
  return shapes


def random_params(config: ModelConfig, seed: int = 0) -> dict[str, Any]:
  """Random float32 params; norm multipliers near 1, weights ~ N(0, 0.5^2)."""
  rng = np.random.default_rng(seed)

  def make(name, shape):
    if name.endswith("norm"):
      return (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    return (0.5 * rng.standard_normal(shape)).astype(np.float32)

  shapes = param_shapes(config)
  params = {name: make(name, s) for name, s in shapes.items() if name != "blocks"}
  params["blocks"] = {name: make(name, s) for name, s in shapes["blocks"].items()}
  return params


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Rotate-half rows -> interleaved rows, per head (the converter's Q/K permutation)."""
  dh = w.shape[0] // n_head
  return w.reshape(n_head, 2, dh // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(config: ModelConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The float32 tensors a converter would write for ``params``: GGUF name -> numpy array.

  Shapes are numpy order (GGUF ``ne`` reversed), i.e. ``[out_features, in_features]``.
  """
  d, h, k, dh = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
  perm = config.family == "llama"
  out = {"token_embd.weight": params["embed"], "output_norm.weight": params["final_norm"]}
  if not config.tie_embeddings:
    out["output.weight"] = params["unembed"]
  b = params["blocks"]
  for i in range(config.n_layers):
    q = np.asarray(b["q"][i]).reshape(d, h * dh).T
    kk = np.asarray(b["k"][i]).reshape(d, k * dh).T
    t = {
        "attn_norm.weight": b["attn_norm"][i],
        "attn_q.weight": _permute(q, h) if perm else q,
        "attn_k.weight": _permute(kk, k) if perm else kk,
        "attn_v.weight": np.asarray(b["v"][i]).reshape(d, k * dh).T,
        "attn_output.weight": np.asarray(b["o"][i]).reshape(h * dh, d).T,
        "ffn_norm.weight": b["mlp_norm"][i],
        "ffn_gate.weight": np.asarray(b["gate"][i]).T,
        "ffn_up.weight": np.asarray(b["up"][i]).T,
        "ffn_down.weight": np.asarray(b["down"][i]).T,
    }
    if config.qkv_bias:
      qb, kb = np.asarray(b["q_bias"][i]).reshape(-1), np.asarray(b["k_bias"][i]).reshape(-1)
      t["attn_q.bias"] = _permute(qb, h) if perm else qb
      t["attn_k.bias"] = _permute(kb, k) if perm else kb
      t["attn_v.bias"] = np.asarray(b["v_bias"][i]).reshape(-1)
    if config.qk_norm:
      t["attn_q_norm.weight"] = b["q_norm"][i]
      t["attn_k_norm.weight"] = b["k_norm"][i]
    if config.post_norms:
      t["post_attention_norm.weight"] = b["post_attn_norm"][i]
      t["post_ffw_norm.weight"] = b["post_mlp_norm"][i]
    out.update({f"blk.{i}.{name}": v for name, v in t.items()})
  return {name: np.ascontiguousarray(v, np.float32) for name, v in out.items()}


def leaf_of(tensor_name: str) -> str:
  """GGUF tensor name -> params leaf name used as a key of ``types`` (``"q"``, ``"embed"``...)."""
  base = tensor_name.split(".")[-2] if tensor_name.startswith("blk.") else tensor_name.split(".")[0]
  return {"token_embd": "embed", "output": "unembed", "attn_q": "q", "attn_k": "k", "attn_v": "v",
          "attn_output": "o", "ffn_gate": "gate", "ffn_up": "up", "ffn_down": "down"}.get(base, base)


# ----------------------------------------------------------------------------- quantization


def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(f16 bytes [n, 2], the float32 value they hold [n, 1])."""
  h = np.asarray(x, np.float32).reshape(-1, 1).astype(np.float16)
  return h.view(np.uint8).reshape(-1, 2), h.astype(np.float32)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
  """Simple (not llama.cpp's optimal) Q4_K quantizer: rows ``[..., 256k]`` -> uint8 blocks."""
  blocks = np.asarray(x, np.float32).reshape(-1, 8, 32)
  n = blocks.shape[0]
  lo = np.minimum(blocks.min(-1), 0)
  scale = (blocks.max(-1) - lo) / 15
  d_bytes, d = _f16(scale.max(-1) / 63)
  m_bytes, dmin = _f16(-lo.min(-1) / 63)
  with np.errstate(divide="ignore", invalid="ignore"):
    sc = np.clip(np.nan_to_num(np.rint(scale / d)), 0, 63).astype(np.uint8)
    mn = np.clip(np.nan_to_num(np.rint(-lo / dmin)), 0, 63).astype(np.uint8)
    step = (d * sc)[..., None]
    q = np.nan_to_num(np.rint((blocks + (dmin * mn)[..., None]) / step))
  q = np.clip(q, 0, 15).astype(np.uint8)
  packed = np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                           (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)], axis=1)
  qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)
  rows = np.concatenate([d_bytes, m_bytes, packed, qs], axis=1)
  return rows.reshape(*x.shape[:-1], -1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
  """Simple Q6_K quantizer: rows ``[..., 256k]`` -> uint8 blocks (ql | qh | scales | d)."""
  blocks = np.asarray(x, np.float32).reshape(-1, 16, 16)
  n = blocks.shape[0]
  scale = np.abs(blocks).max(-1) / 31
  d_bytes, d = _f16(scale.max(-1) / 127)
  with np.errstate(divide="ignore", invalid="ignore"):
    sc = np.clip(np.nan_to_num(np.rint(scale / d)), -128, 127).astype(np.int8)
    q = np.nan_to_num(np.rint(blocks / (d * sc)[..., None]))
  q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # [half, quarter, pos]
  lo, hi = q & 0x0F, q >> 4
  ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
  qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
  rows = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d_bytes], axis=1)
  return rows.reshape(*x.shape[:-1], -1)


def quantize(x: np.ndarray, type_name: str) -> tuple[np.ndarray, GGMLQuantizationType | None]:
  """``(data, raw_dtype)`` ready for ``GGUFWriter.add_tensor``."""
  qtype = GGMLQuantizationType[type_name]
  block = gguf.GGML_QUANT_SIZES[qtype][0]
  if np.shape(x)[-1] % block:
    raise ValueError(f"rows of length {np.shape(x)[-1]} cannot be quantized to {type_name}"
                     f" (blocks of {block})")
  if qtype == GGMLQuantizationType.F32:
    return np.asarray(x, np.float32), None
  if qtype == GGMLQuantizationType.F16:
    return np.asarray(x, np.float32).astype(np.float16), None
  if qtype == GGMLQuantizationType.Q4_K:
    return quantize_q4_k(x), qtype
  if qtype == GGMLQuantizationType.Q6_K:
    return quantize_q6_k(x), qtype
  return gguf.quants.quantize(np.asarray(x, np.float32), qtype), qtype


# ----------------------------------------------------------------------------- writer


def _llama3_rope_freqs(s: RopeScaling, theta: float, dim: int) -> np.ndarray:
  """rope_freqs.weight as the converter computes it for Llama 3.1 scaling."""
  out = []
  for i in range(0, dim, 2):
    wavelen = 2 * math.pi / (1.0 / theta ** (i / dim))
    if wavelen < s.original_max_position / s.high_freq_factor:
      out.append(1.0)
    elif wavelen > s.original_max_position / s.low_freq_factor:
      out.append(s.factor)
    else:
      lo, hi = s.low_freq_factor, s.high_freq_factor
      smooth = (s.original_max_position / wavelen - lo) / (hi - lo)
      out.append(1 / ((1 - smooth) / s.factor + smooth))
  return np.asarray(out, np.float32)


def gguf_metadata(config: ModelConfig, name: str = "tiny") -> dict[str, tuple[Any, GGUFValueType]]:
  """llama.cpp-named metadata for ``config``: key -> (value, GGUF value type)."""
  a = config.family  # the GGUF architecture of each family has the family's name
  u32, f32, s = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
  arr = GGUFValueType.ARRAY
  m: dict[str, tuple[Any, GGUFValueType]] = {
      "general.architecture": (a, s), "general.name": (name, s), "general.file_type": (1, u32),
      "general.quantization_version": (2, u32),
      f"{a}.context_length": (config.max_position, u32), f"{a}.embedding_length": (config.d_model, u32),
      f"{a}.block_count": (config.n_layers, u32), f"{a}.feed_forward_length": (config.d_ff, u32),
      f"{a}.attention.head_count": (config.n_heads, u32),
      f"{a}.attention.head_count_kv": (config.n_kv_heads, u32),
      f"{a}.attention.layer_norm_rms_epsilon": (config.norm_eps, f32),
      f"{a}.rope.freq_base": (config.rope_theta, f32),
  }
  if a != "gemma3":
    m[f"{a}.rope.dimension_count"] = (config.head_dim, u32)
    m[f"{a}.vocab_size"] = (config.vocab_size, u32)
    if config.head_dim != config.d_model // config.n_heads:
      m[f"{a}.attention.key_length"] = (config.head_dim, u32)
      m[f"{a}.attention.value_length"] = (config.head_dim, u32)
    if a == "llama" and config.sliding_window is not None:  # a Mistral: the window on every layer
      m[f"{a}.attention.sliding_window"] = (config.sliding_window, u32)
  else:
    m[f"{a}.attention.key_length"] = (config.head_dim, u32)
    m[f"{a}.attention.value_length"] = (config.head_dim, u32)
    m[f"{a}.attention.sliding_window"] = (config.sliding_window, u32)
    if config.local_layers != gemma3_default_local_layers(config.n_layers):
      m[f"{a}.attention.sliding_window_pattern"] = (list(config.local_layers), arr)
    if config.final_softcap is not None:
      m[f"{a}.final_logit_softcapping"] = (config.final_softcap, f32)
  if config.rope_scaling is not None and config.rope_scaling.kind == "linear":
    m[f"{a}.rope.scaling.type"] = ("linear", s)
    m[f"{a}.rope.scaling.factor"] = (config.rope_scaling.factor, f32)
  tokens = [f"<t{i}>" for i in range(config.vocab_size)]
  m["tokenizer.ggml.model"] = ("llama" if a == "gemma3" else "gpt2", s)
  m["tokenizer.ggml.tokens"] = (tokens, arr)
  m["tokenizer.ggml.token_type"] = ([1] * config.vocab_size, arr)
  if a == "gemma3":
    m["tokenizer.ggml.scores"] = ([0.0] * config.vocab_size, arr)
  m["tokenizer.ggml.bos_token_id"] = (BOS, u32)
  m["tokenizer.ggml.eos_token_id"] = (EOS, u32)
  m["tokenizer.ggml.padding_token_id"] = (PAD, u32)
  return m


def write_gguf(path: str | os.PathLike, config: ModelConfig, params: Mapping[str, Any], *,
               types: str | Mapping[str, str] = "F32", name: str = "tiny",
               metadata: Mapping[str, Any] | None = None, drop: tuple[str, ...] = (),
               replace: Mapping[str, np.ndarray] | None = None,
               raw: Mapping[str, tuple[np.ndarray, str]] | None = None) -> str:
  """Writes ``params`` as a GGUF file of ``config``'s family.

  Args:
    path: destination.
    config: the model; its family names the architecture (``llama``, ``gemma3``, ``qwen2``, ``qwen3``).
    params: jaxsem-layout params (e.g. ``random_params(config)``).
    types: GGML type name for every 2-D weight, or a mapping from leaf name (``"embed"``,
      ``"unembed"``, ``"q"``, ``"k"``, ``"v"``, ``"o"``, ``"gate"``, ``"up"``, ``"down"``) to
      type name with ``"*"`` as the default. Norms and biases are always F32.
    name: ``general.name``.
    metadata: extra or overriding metadata, key -> value, or key -> (value, GGUFValueType);
      a value of None removes the key.
    drop: GGUF tensor names to leave out (to make broken files).
    replace: GGUF tensor name -> float32 array written instead (to make broken files).
    raw: GGUF tensor name -> (uint8 ``[rows, bytes per row]``, GGML type name) written
      verbatim instead, e.g. to store a type the loader does not support.

  Returns:
    ``str(path)``.
  """
  if isinstance(types, str):
    types = {"*": types}
  meta = gguf_metadata(config, name)
  for key, value in (metadata or {}).items():
    if value is None:
      meta.pop(key, None)
    elif isinstance(value, tuple):
      meta[key] = value
    else:
      vtype = meta[key][1] if key in meta else GGUFValueType.get_type(value)
      meta[key] = (value, vtype)
  tensors = gguf_tensors(config, params)
  if config.rope_scaling is not None and config.rope_scaling.kind == "llama3":
    tensors["rope_freqs.weight"] = _llama3_rope_freqs(config.rope_scaling, config.rope_theta, config.head_dim)
  tensors.update(replace or {})
  writer = gguf.GGUFWriter(os.fspath(path), meta["general.architecture"][0])
  for key, (value, vtype) in meta.items():
    if key == "general.architecture":
      continue
    if vtype == GGUFValueType.ARRAY:
      writer.add_array(key, value)
    else:
      writer.add_key_value(key, value, vtype)
  for tname, x in tensors.items():
    if tname in drop:
      continue
    if raw and tname in raw:
      data, raw_type = raw[tname]
      writer.add_tensor(tname, np.asarray(data, np.uint8), raw_dtype=GGMLQuantizationType[raw_type])
      continue
    tname_type = "F32" if x.ndim == 1 else types.get(leaf_of(tname), types.get("*", "F32"))
    data, raw_dtype = quantize(x, tname_type)
    writer.add_tensor(tname, data, raw_dtype=raw_dtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return os.fspath(path)
