"""jaxsem.load on the embedded models: dtypes, meshes, provenance."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxsem

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "The opposite of good is", "One, two, three,"]


@pytest.fixture(scope="module")
def f32(embedded_models):
  return embedded_models("smollm2-135m-instruct")


def test_bfloat16_agrees_with_float32(f32):
  bf16 = jaxsem.load("smollm2-135m-instruct", dtype="bfloat16")
  assert bf16.params["blocks"]["q"].dtype == jnp.bfloat16
  a, b = f32.next_token_logits(PROMPTS), bf16.next_token_logits(PROMPTS)
  assert b.dtype == np.float32
  assert (a.argmax(-1) == b.argmax(-1)).all()
  assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_mesh_string_places_params_sharded(f32):
  sharded = jaxsem.load("smollm2-135m-instruct", mesh="data:2,model:4")
  assert sharded.params["embed"].sharding.spec == P("model", None)
  assert sharded.params["embed"].shape[0] % 4 == 0
  assert len(sharded.params["embed"].sharding.device_set) == 8
  np.testing.assert_allclose(sharded.next_token_logits(PROMPTS), f32.next_token_logits(PROMPTS), atol=2e-4)


def test_provenance_names_file_matrices_and_quantization(f32):
  p = f32.provenance
  assert p["name"] == "smollm2-135m-instruct"
  assert p["format"] == "gguf" and p["path"].endswith(".gguf") and p["family"] == "llama"
  assert p["tied_embeddings"] is True and p["unembedding"] == "embed"
  assert "Q4_1" in p["quantization"]
  assert p["licence"] and p["citation"]
  assert p["tokenizer"]["pre_tokenizer"] == "smollm"


def test_unknown_dtype_is_a_clear_error():
  with pytest.raises(jaxsem.InputError, match="--dtype"):
    jaxsem.load("smollm2-135m-instruct", dtype="float8")
