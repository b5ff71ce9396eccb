"""Tiny random Hugging Face models (transformers as the reference), saved as snapshots.

Every parameter is re-drawn after construction (norm weights away from their init,
biases non-zero, weights ~ N(0, 1/fan_in)) so each one influences the logits and a
wrong transpose or a missing ``+1`` cannot pass unnoticed.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               head_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
               pad_token_id=0)


def _llama_gqa():
  return transformers.LlamaConfig(**_COMMON, num_hidden_layers=2, num_key_value_heads=2,
                                  rms_norm_eps=1e-5, rope_theta=10_000.0, tie_word_embeddings=False)


def _llama3_rope():
  rope = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
  return transformers.LlamaConfig(**_COMMON, num_hidden_layers=3, num_key_value_heads=1,
                                  rope_parameters=rope, tie_word_embeddings=True)


def _qwen2_bias():
  return transformers.Qwen2Config(**_COMMON, num_hidden_layers=2, num_key_value_heads=2,
                                  rope_theta=1_000_000.0, tie_word_embeddings=True)


def _qwen3_qk_norm():
  # head_dim * heads (96) differs from hidden_size (64), as in the real Qwen 3 models.
  return transformers.Qwen3Config(**dict(_COMMON, head_dim=24), num_hidden_layers=2, num_key_value_heads=2,
                                  rope_theta=1_000_000.0, tie_word_embeddings=False)


def _mistral_window():
  return transformers.MistralConfig(**_COMMON, num_hidden_layers=2, num_key_value_heads=2,
                                    sliding_window=5, tie_word_embeddings=False)


def _gemma3(**kw):
  rope = {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
          "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
  args = dict(_COMMON, num_hidden_layers=4, num_key_value_heads=2, query_pre_attn_scalar=24,
              sliding_window=4, rope_parameters=rope,
              layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
  args.update(kw)
  return transformers.Gemma3TextConfig(**args)


def _gemma3_softcap_untied():
  # attn_logit_softcapping is deliberately unset: transformers' Gemma 3 ignores it.
  return _gemma3(final_logit_softcapping=3.0, tie_word_embeddings=False)


CONFIGS = {
    "llama_gqa": _llama_gqa,              # untied, grouped-query attention
    "llama3_rope": _llama3_rope,          # tied, llama3 RoPE scaling, one kv head
    "qwen2_bias": _qwen2_bias,            # tied, q/k/v biases
    "qwen3_qk_norm": _qwen3_qk_norm,      # untied, q/k RMS norm per head, head_dim * heads != hidden
    "mistral_window": _mistral_window,    # untied, sliding window on every layer
    "gemma3": _gemma3,                    # tied, local + global layers, linear RoPE on global
    "gemma3_softcap_untied": _gemma3_softcap_untied,
}


def gemma3_config(**overrides) -> transformers.Gemma3TextConfig:
  """The ``gemma3`` fixture config with some fields changed."""
  return _gemma3(**overrides)


def randomize(model: torch.nn.Module, seed: int) -> None:
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(model.named_parameters()):
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      if "norm" in name:
        p.copy_(p + 0.2 * noise)
      elif name.endswith("bias"):
        p.copy_(0.3 * noise)
      elif "embed_tokens" in name or name.startswith("lm_head"):
        p.copy_(noise)
      else:
        p.copy_(noise / p.shape[-1] ** 0.5)


def build(name_or_config: str | transformers.PretrainedConfig, seed: int = 0) -> torch.nn.Module:
  """A float32, eval-mode causal LM (eager attention) with every parameter randomized."""
  config = CONFIGS[name_or_config]() if isinstance(name_or_config, str) else name_or_config
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                        dtype=torch.float32)
  randomize(model, seed)
  return model.eval()


def save(model: torch.nn.Module, directory: str, max_shard_size: str | None = None) -> str:
  """``save_pretrained`` as safetensors (optionally sharded); returns the directory."""
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(directory, **kwargs)
  return directory


def batch(lengths: list[int], seq_len: int, vocab: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded ``(token_ids, attention_mask)`` int32 ``[B, seq_len]``; padding uses id 0."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(len(lengths), seq_len)).astype(np.int32)
  mask = (np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  return ids * mask, mask


def hf_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Reference logits ``[B, T, V]`` (float32 numpy)."""
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)), use_cache=False)
  return out.logits.float().numpy()


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  """Parameter name -> float32 numpy array."""
  return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
