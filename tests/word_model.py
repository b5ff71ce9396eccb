"""A tiny llama-style GGUF model that speaks every word the analyses ask for.

Launcher tests that check plumbing (resume after kill -9, out_dir locks, layouts,
provenance, error lines) need a model that loads in a moment and covers the rated words,
the pole words and the readout words as single tokens, not a real one. This file writes
one: random weights (``d_model`` 64, two layers) and a byte-level BPE vocabulary in which
every ASCII word of the norm tables and scale files is one word-initial token (``Ġword``),
built by a chain of merges through its prefixes. Any other text still tokenizes, byte by
byte. Its numbers mean nothing; two runs of the same command must still agree exactly.
``write(path, family=...)`` writes the same vocabulary in another family's layout (Gemma 2 and 3,
Qwen 2 and 3, Phi-3, OLMo 2 as GGUF; Mistral as a Hugging Face snapshot directory), so every
launcher can run on every family.

Typical use::

    path = word_model.write(tmp_path / "words.gguf")
    subprocess.run([sys.executable, "-m", "launch.align", f"--model={path}", ...])
"""

from __future__ import annotations

import dataclasses
import json
import os

import gguf
import numpy as np
import safetensors.numpy
import tokenizers
from gguf import GGUFValueType

from jaxsem.io import norms
from jaxsem.io import scales as scales_io
from jaxsem.io.tokenizer import _byte_alphabet
from jaxsem.models import families
from jaxsem.models import gguf_load
from jaxsem.models.config import ModelConfig
from tests import gguf_fixtures

MARKER = "\u0120"  # "Ġ": byte-level BPE's spelling of a leading space
SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2: gguf_fixtures' PAD, BOS, EOS
ROWS_MULTIPLE = 128  # unused tokens pad the vocabulary to this, as real ones are padded, so it shards
_NORMAL, _CONTROL = 1, 3


# The norm tables whose rated words are spelled. brysbaert and lancaster (about 40k words each)
# would double the vocabulary and every load of it; tests on this model name these tables.
SPELLED_NORMS = ("warriner", "anew", "dal")


def words() -> list[str]:
  """The words given one token each: rated words and scale words that are plain ASCII letters."""
  found: set[str] = set()
  for name in SPELLED_NORMS:
    found.update(norms.read_norms(name)[0])
  for set_name in scales_io.SCALE_SETS:
    for scale in scales_io.load_scales(set_name):
      for side in (scale.positive, scale.negative, scale.readout_positive, scale.readout_negative):
        found.update(side or ())
  return sorted(w for w in found if w.isascii() and w.isalpha())


def vocabulary(word_list: list[str]) -> tuple[list[str], list[int], list[str]]:
  """(tokens, token types, merges): specials, the 256 byte characters, each word's prefix chain, unused."""
  byte_alphabet = _byte_alphabet()  # GPT-2's byte -> character map, as the GGUF reader spells bytes
  alphabet = [byte_alphabet[b] for b in range(256)]
  tokens = [*SPECIALS, *alphabet]
  types = [_CONTROL] * len(SPECIALS) + [_NORMAL] * len(alphabet)
  known = set(tokens)
  merges = []
  for word in word_list:
    piece = MARKER
    for ch in word:
      longer = piece + ch
      if longer not in known:
        known.add(longer)
        tokens.append(longer)
        types.append(_NORMAL)
        merges.append(f"{piece} {ch}")
      piece = longer
  while len(tokens) % ROWS_MULTIPLE:
    tokens.append(f"<unused{len(tokens)}>")
    types.append(_CONTROL)
  return tokens, types, merges


def write(path: str | os.PathLike, *, seed: int = 0, d_model: int = 64, n_layers: int = 2,
          family: str = "llama") -> str:
  """Writes the word model to ``path`` (about 9 MB) and returns ``str(path)``.

  ``family`` (one of ``FAMILIES``) other than ``"llama"`` writes a model of that family with its
  distinguishing features on (``family_config``): a GGUF file, or for ``"mistral"`` a Hugging Face
  snapshot directory at ``path`` (so that one family runs the analyses from safetensors; a Mistral
  GGUF is tested in ``tests/models/test_families.py``).
  """
  if family != "llama":
    return _write_family(path, family, seed=seed, d_model=d_model, n_layers=n_layers)
  tokens, types, merges = vocabulary(words())
  config = gguf_fixtures.tiny_llama_config(tied=True, n_layers=n_layers, vocab_size=len(tokens),
                                           d_model=d_model, n_heads=4, n_kv_heads=2, head_dim=d_model // 4,
                                           d_ff=2 * d_model)
  params = gguf_fixtures.random_params(config, seed=seed)
  # Small embeddings (the tied unembedding too) and small weights give logits of a trained model's size
  # (a few units), so float32 sums in another order stay as close as they do on a real model.
  rng = np.random.default_rng(seed + 1)
  params["embed"] = (0.3 * rng.standard_normal(params["embed"].shape)).astype(np.float32)
  params["blocks"] = {k: (v if k.endswith("norm") else 0.2 * v) for k, v in params["blocks"].items()}
  metadata = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
              "tokenizer.ggml.merges": merges, "tokenizer.ggml.pre": "gpt2",
              "tokenizer.ggml.add_bos_token": True}
  return gguf_fixtures.write_gguf(path, config, params, types={"*": "F32", "embed": "F16"}, name="word-model",
                                  metadata=metadata)


# ----------------------------------------------------------------------------- other families

FAMILIES = ("llama", "mistral", "gemma2", "gemma3", "qwen2", "qwen3", "phi3", "olmo2")
WINDOW = 4  # sliding windows shorter than the templates, so they change the hidden states
# Mistral windows every layer: through two layers of 16 the steering prompt's last position still
# sees the word (with 4, no word reaches it and every word gets the same readout).
MISTRAL_WINDOW = 16


def family_config(family: str, vocab_size: int, *, d_model: int = 64, n_layers: int = 2) -> ModelConfig:
  """A tiny tied config of ``family`` with the features that set it apart switched on.

  Mistral: a sliding window on every layer. Gemma 2: soft-caps on attention scores and logits,
  windows on even layers, pre and post norms. Gemma 3: q/k norms, a local and a global layer.
  Qwen 2: q/k/v biases. Qwen 3: q/k norms. Phi-3: fused q/k/v and gate/up tensors (the leaf
  table's). OLMo 2: post-norms only, q/k norms over the whole projection.
  """
  sizes = dict(n_layers=n_layers, vocab_size=vocab_size, d_model=d_model, n_heads=4, n_kv_heads=2,
               head_dim=d_model // 4, d_ff=2 * d_model)
  alternating = tuple(i % 2 == 0 for i in range(n_layers))
  if family in ("qwen2", "qwen3"):
    return gguf_fixtures.tiny_qwen_config(family, **sizes)
  if family in ("gemma2", "gemma3"):
    config = gguf_fixtures.tiny_gemma3_config(**sizes, sliding_window=WINDOW, local_layers=alternating)
    if family == "gemma2":
      config = dataclasses.replace(config, family="gemma2", qk_norm=False, rope_theta=10000.0,
                                   rope_local_theta=None, attn_softcap=5.0, final_softcap=3.0)
    return config
  llama = gguf_fixtures.tiny_llama_config(tied=True, **sizes)
  changes = {"llama": {}, "phi3": dict(family="phi3"),
             "mistral": dict(sliding_window=MISTRAL_WINDOW, local_layers=(True,) * n_layers),
             "olmo2": dict(family="olmo2", pre_norms=False, post_norms=True, qk_norm=True,
                           qk_norm_scope="projection")}
  if family not in changes:
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
  return dataclasses.replace(llama, **changes[family])


def _mistral_json(config: ModelConfig) -> dict:
  return {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "vocab_size": config.vocab_size,
          "hidden_size": config.d_model, "intermediate_size": config.d_ff,
          "num_hidden_layers": config.n_layers,
          "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
          "head_dim": config.head_dim, "max_position_embeddings": config.max_position,
          "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "hidden_act": "silu",
          "sliding_window": config.sliding_window, "tie_word_embeddings": config.tie_embeddings,
          "bos_token_id": gguf_fixtures.BOS, "eos_token_id": gguf_fixtures.EOS,
          "pad_token_id": gguf_fixtures.PAD}


def _random_leaves(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
  """params path -> random float32 leaf, sized as ``write``'s llama model (embed exact in float16)."""
  rng = np.random.default_rng(seed)
  out = {}
  for leaf in families.leaves(config):
    x = rng.standard_normal(leaf.shape(config)).astype(np.float32)
    out[leaf.path] = 1 + 0.2 * x if leaf.norm else (0.3 if leaf.path == "embed" else 0.1) * x
  out["embed"] = out["embed"].astype(np.float16).astype(np.float32)
  return out


def _file_tensor(convert: str, w: np.ndarray) -> np.ndarray:
  """One layer's leaf slot -> the stored tensor (numpy order, ``[out, in]``): the converters undone."""
  if convert == "transpose":
    return w.T
  if convert == "heads_in":  # [D, n, Dh] -> [n*Dh, D]
    return w.reshape(w.shape[0], -1).T
  if convert == "heads_out":  # [n, Dh, D] -> [D, n*Dh]
    return w.reshape(-1, w.shape[-1]).T
  return w.reshape(-1) if convert == "heads_bias" else w


def checkpoint_tensors(config: ModelConfig, leaves: dict[str, np.ndarray], *,
                       hf: bool) -> dict[str, np.ndarray]:
  """Stored name -> tensor of a Hugging Face (``hf``) or GGUF checkpoint holding ``leaves``.

  Norm offsets are taken off for Hugging Face; fused leaves are stacked row-wise into one
  tensor. GGUF Q/K row interleaving (the ``llama`` converter's) is not written.
  """
  parts: dict[str, dict[str, np.ndarray]] = {}
  for leaf in families.leaves(config):
    assert hf or not leaf.gguf_permuted, leaf.path
    stacked = leaves[leaf.path] if leaf.stacked else [leaves[leaf.path]]
    for i, w in enumerate(stacked):
      layer = i if leaf.stacked else None
      if not hf:
        name = gguf_load.gguf_name(leaf, layer)
      elif leaf.path == "unembed":
        name = "lm_head.weight"
      else:
        name = f"model.{leaf.hf}" if layer is None else f"model.layers.{layer}.{leaf.hf}"
      t = _file_tensor(leaf.convert, w) - (leaf.hf_offset if hf else 0.0)
      parts.setdefault(name, {})[leaf.path] = t
  out = {}
  for name, by_path in parts.items():
    fused = next((leaf.fused for leaf in families.leaves(config) if leaf.path in by_path), ())
    pieces = [by_path[p] for p in fused] if fused else list(by_path.values())
    out[name] = np.ascontiguousarray(np.concatenate(pieces) if len(pieces) > 1 else pieces[0], np.float32)
  return out


def _gguf_metadata(config: ModelConfig, tokens: list[str], types: list[int], merges: list[str]) -> dict:
  meta = gguf_fixtures.gguf_metadata(config, name=f"word-model-{config.family}")
  meta.pop("tokenizer.ggml.scores", None)
  arr, s = GGUFValueType.ARRAY, GGUFValueType.STRING
  a = config.family
  meta.update({"tokenizer.ggml.model": ("gpt2", s), "tokenizer.ggml.tokens": (tokens, arr),
               "tokenizer.ggml.token_type": (types, arr), "tokenizer.ggml.merges": (merges, arr),
               "tokenizer.ggml.pre": ("gpt2", s), "tokenizer.ggml.add_bos_token": (True, GGUFValueType.BOOL)})
  if a == "gemma2":
    meta.update({f"{a}.attention.sliding_window": (config.sliding_window, GGUFValueType.UINT32),
                 f"{a}.attn_logit_softcapping": (config.attn_softcap, GGUFValueType.FLOAT32),
                 f"{a}.final_logit_softcapping": (config.final_softcap, GGUFValueType.FLOAT32)})
  return meta


def _write_gguf(path: str, config: ModelConfig, leaves: dict[str, np.ndarray], metadata: dict) -> None:
  writer = gguf.GGUFWriter(path, config.family)
  for key, (value, vtype) in metadata.items():
    if key == "general.architecture":
      continue
    if vtype == GGUFValueType.ARRAY:
      writer.add_array(key, value)
    else:
      writer.add_key_value(key, value, vtype)
  for name, t in checkpoint_tensors(config, leaves, hf=False).items():
    writer.add_tensor(name, t.astype(np.float16) if name == "token_embd.weight" else t)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _write_hf(directory: str, config_json: dict, config: ModelConfig, leaves: dict[str, np.ndarray],
              tokens: list[str], merges: list[str]) -> None:
  """config.json, model.safetensors, and a byte-level BPE tokenizer.json that adds BOS as the GGUF does."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config_json, f)
  tensors = checkpoint_tensors(config, leaves, hf=True)
  tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].astype(np.float16)
  safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"))
  bpe = tokenizers.models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                              merges=[tuple(m.split(" ")) for m in merges])
  backend = tokenizers.Tokenizer(bpe)
  backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = tokenizers.decoders.ByteLevel()
  backend.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in SPECIALS])
  backend.post_processor = tokenizers.processors.TemplateProcessing(
      single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", gguf_fixtures.BOS)])
  backend.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, f)


def _write_family(path: str | os.PathLike, family: str, *, seed: int, d_model: int, n_layers: int) -> str:
  path = os.fspath(path)
  tokens, types, merges = vocabulary(words())
  config = family_config(family, len(tokens), d_model=d_model, n_layers=n_layers)
  if family == "mistral":
    config_json = _mistral_json(config)
    config = families.config_from_hf(config_json, path)  # the leaves the loader will look for
    _write_hf(path, config_json, config, _random_leaves(config, seed), tokens, merges)
  else:
    _write_gguf(path, config, _random_leaves(config, seed), _gguf_metadata(config, tokens, types, merges))
  return path
