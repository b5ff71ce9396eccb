"""The per-layer pieces against plain forms: RoPE's halves, the one-kv-head attention core."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem.models import layers
from tests import toy


def test_rope_matches_the_rotate_half_formula():
  """``x cos + rotate_half(x) sin``, written out in numpy, for tables of any values."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 8)).astype(np.float32)
  cos, sin = (rng.normal(size=(2, 3, 8)).astype(np.float32) for _ in range(2))
  rotated = np.concatenate([-x[..., 4:], x[..., :4]], axis=-1)
  want = x * cos[:, :, None] + rotated * sin[:, :, None]
  np.testing.assert_allclose(np.asarray(layers.apply_rope(jnp.asarray(x), cos, sin)), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prefix", [0, 5])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_one_kv_head_core_equals_the_grouped_core(prefix, cap):
  """With one key/value head the core runs as matmuls on q's own layout; its values and
  derivatives are the grouped form's, with padding, a window-like mask and a soft-cap."""
  cfg = dataclasses.replace(toy.CONFIGS["gemma3"](), attn_softcap=cap)
  assert cfg.n_kv_heads == 1
  b, t, s, h, dh = 3, 4, 4, cfg.n_heads, cfg.head_dim
  rng = np.random.default_rng(prefix)
  q = rng.normal(size=(b, t, h, dh)).astype(np.float32)
  k, v = (rng.normal(size=(b, s, 1, dh)).astype(np.float32) for _ in range(2))
  kv = None if not prefix else tuple(rng.normal(size=(prefix, 1, dh)).astype(np.float32) for _ in range(2))
  mask = rng.random((b, t, prefix + s)) < 0.7
  mask[..., -1] = True
  cot = rng.normal(size=(b, t, h, dh)).astype(np.float32)

  def loss(core, q, k, v):
    return jnp.sum(core(q, k, v, mask, kv, cfg) * cot)

  one = lambda q, k, v, m, p, c: layers._one_kv_head_core(q, k[:, :, 0], v[:, :, 0], m, p, c)  # noqa: E731
  got = one(q, k, v, mask, kv, cfg)
  want = layers._grouped_core(q, k, v, mask, kv, cfg)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.ptp(np.asarray(want)) > 1e-2
  grads = [jax.grad(lambda *a, c=c: loss(c, *a), argnums=(0, 1, 2))(q, k, v) for c in (one, layers._grouped_core)]
  for g_one, g_grouped in zip(*grads):
    np.testing.assert_allclose(g_one, g_grouped, atol=1e-4)
    assert np.abs(g_grouped).max() > 1e-3
