"""Tiny random model configs shared by tests (no files, no reference implementation)."""

import jax
import pytest

from jaxsem.models.config import ModelConfig
from jaxsem.models.params import init_params


def llama_config(**overrides) -> ModelConfig:
  kw = dict(family="llama", vocab_size=250, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
            head_dim=8, d_ff=64, rope_theta=500.0, tie_embeddings=False, eos_token_ids=(1,))
  kw.update(overrides)
  return ModelConfig(**kw)


def gemma_config(**overrides) -> ModelConfig:
  kw = dict(family="gemma3", vocab_size=250, d_model=32, n_layers=4, n_heads=4, n_kv_heads=1,
            head_dim=16, d_ff=64, rope_theta=1e6, rope_local_theta=1e4, sliding_window=4,
            local_layers=(True, False, True, False), activation="gelu_tanh", qk_norm=True,
            post_norms=True, embed_scale=32 ** 0.5, query_scale=12 ** -0.5, tie_embeddings=True,
            final_softcap=30.0, eos_token_ids=(1,))
  kw.update(overrides)
  return ModelConfig(**kw)


CONFIGS = {"llama": llama_config, "gemma3": gemma_config}


def params_for(config: ModelConfig, seed: int = 0):
  return init_params(config, jax.random.key(seed))


# The default model's family. The quick subset (-m "not slow") runs the family-parametrized cases for it;
# the full suite runs them for every family.
QUICK_FAMILY = "gemma3"


def family_params(names=None) -> list:
  """``pytest.param`` per family name (default: ``CONFIGS``), all but ``QUICK_FAMILY`` marked slow."""
  return [pytest.param(name, marks=() if name == QUICK_FAMILY else pytest.mark.slow)
          for name in sorted(names or CONFIGS)]
