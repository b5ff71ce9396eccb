"""The embedded models against transformers on the same GGUF file: weights, config, logits.

Both libraries dequantize the same file, so the weights are identical and the logits
must agree up to float32 summation order. Slow: transformers parses the GGUF itself (once
per model, for every test here).
"""

import math
import os

import numpy as np
import pytest

import jaxsem
from jaxsem.io import assets
from jaxsem.models import gguf_load

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Kindness is the opposite of cruelty, and strength is the opposite of",
    "1, 2, 3, 4,",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein",
]
# (model, mesh): one runs sharded over 8 fake devices, one on a data x model mesh.
CASES = [("smollm2-135m-instruct", "data:2,model:4"), ("gemma3-270m", "model:8")]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  name, mesh = request.param
  path = assets.resolve_model(name).path
  ours = jaxsem.load(name, mesh=mesh)
  kw = dict(gguf_file=os.path.basename(path))
  ref_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), **kw)
  ref = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), dtype=torch.float32, **kw)
  ref.eval()
  return name, ours, ref, ref_tok


def _ref_logits(ref, ids):
  import torch

  with torch.inference_mode():
    return ref(input_ids=torch.tensor([ids])).logits[0].numpy()


def test_logits_match_reference_at_every_position(pair):
  name, ours, ref, ref_tok = pair
  for text in PROMPTS:
    ids = ref_tok(text)["input_ids"]
    expected = _ref_logits(ref, ids)
    arr = np.array([ids], np.int32)
    got = np.asarray(ours.forward(arr, np.ones_like(arr), logits_at="all").logits)[0]
    scale = np.abs(expected).max()
    err = np.abs(got - expected).max()
    assert err <= 1e-4 * max(1.0, scale), f"{name} {text!r}: max abs diff {err} (logit scale {scale})"
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_batched_next_token_logits_match_reference(pair):
  name, ours, ref, ref_tok = pair
  got = ours.next_token_logits(PROMPTS)  # our tokenizer, right-padded batch
  assert got.shape == (len(PROMPTS), ours.config.vocab_size)
  for row, text in zip(got, PROMPTS):
    expected = _ref_logits(ref, ref_tok(text)["input_ids"])[-1]
    np.testing.assert_allclose(row, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


# A prompt each model completes correctly (Gemma-3-270M base answers the France prompt
# with " the capital of the ..."; the reference does the same, see the next test).
SENSIBLE = {"smollm2-135m-instruct": ("The capital of France is", "Paris"),
            "gemma3-270m": ("The opposite of good is", "bad")}


def test_greedy_continuation_is_sensible(pair):
  name, ours, _, _ = pair
  prompt, expected = SENSIBLE[name]
  (text,) = ours.generate([prompt], max_new_tokens=4)
  assert expected in text, f"{name}: {prompt!r} -> {text!r}"


def test_greedy_decoding_matches_reference(pair):
  import torch

  name, ours, ref, ref_tok = pair
  prompts = ["The capital of France is", "The opposite of good is"]
  got = ours.generate(prompts, max_new_tokens=6)
  for prompt, text in zip(prompts, got):
    enc = ref_tok(prompt, return_tensors="pt")
    with torch.inference_mode():
      out = ref.generate(**enc, max_new_tokens=6, do_sample=False)
    ref_ids = out[0, enc["input_ids"].shape[1]:].tolist()
    eos = set(ours.config.eos_token_ids)
    ref_ids = ref_ids[:next((i for i, t in enumerate(ref_ids) if t in eos), len(ref_ids))]
    assert ours.tokenizer.encode(text, add_special_tokens=False) == ref_ids or \
        text == ref_tok.decode(ref_ids), f"{name}: {text!r} vs {ref_tok.decode(ref_ids)!r}"


# ----------------------------------------------------------------------------- weights and config


@pytest.fixture(scope="module")
def host_params():
  """name -> ``gguf_load.load_gguf`` of the file (config, numpy params, provenance); one model held."""
  cache = {}

  def get(name):
    if name not in cache:
      cache.clear()
      cache[name] = gguf_load.load_gguf(assets.resolve_model(name).path)
    return cache[name]

  yield get
  cache.clear()


def _leaves(params):
  out = {k: v for k, v in params.items() if k != "blocks"}
  out.update({f"blocks/{k}": v for k, v in params["blocks"].items()})
  return out


def _hf_as_params(sd, config):
  """A transformers state dict in jaxsem's layout (Gemma norms left as HF's offsets)."""
  d, h, k, dh = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim

  def stack(name, fn=lambda w: w):
    return np.stack([fn(sd[f"model.layers.{i}.{name}"]) for i in range(config.n_layers)])
  blocks = {
      "attn_norm": stack("input_layernorm.weight"),
      "q": stack("self_attn.q_proj.weight", lambda w: w.T.reshape(d, h, dh)),
      "k": stack("self_attn.k_proj.weight", lambda w: w.T.reshape(d, k, dh)),
      "v": stack("self_attn.v_proj.weight", lambda w: w.T.reshape(d, k, dh)),
      "o": stack("self_attn.o_proj.weight", lambda w: w.T.reshape(h, dh, d)),
      "gate": stack("mlp.gate_proj.weight", lambda w: w.T),
      "up": stack("mlp.up_proj.weight", lambda w: w.T),
      "down": stack("mlp.down_proj.weight", lambda w: w.T),
  }
  if config.family == "gemma3":
    blocks.update(q_norm=stack("self_attn.q_norm.weight"), k_norm=stack("self_attn.k_norm.weight"),
                  post_attn_norm=stack("post_attention_layernorm.weight"),
                  mlp_norm=stack("pre_feedforward_layernorm.weight"),
                  post_mlp_norm=stack("post_feedforward_layernorm.weight"))
  else:
    blocks["mlp_norm"] = stack("post_attention_layernorm.weight")
  out = {"embed": sd["model.embed_tokens.weight"], "final_norm": sd["model.norm.weight"], "blocks": blocks}
  if not config.tie_embeddings:
    out["unembed"] = sd["lm_head.weight"]
  return out


def test_params_match_transformers_state_dict(pair, host_params):
  name, _, ref, _ = pair
  config, params, _ = host_params(name)
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  want = _leaves(_hf_as_params(sd, config))
  got = _leaves(params)
  assert set(got) == set(want)
  for leaf, w in want.items():
    g = got[leaf]
    assert g.shape == w.shape, (leaf, g.shape, w.shape)
    if config.family == "gemma3" and leaf.endswith("norm"):
      # The file holds 1 + w; transformers subtracts the 1 again.
      np.testing.assert_array_equal(g - np.float32(1), w, err_msg=leaf)
    else:
      np.testing.assert_array_equal(g, w, err_msg=leaf)
  if config.tie_embeddings:
    np.testing.assert_array_equal(sd["lm_head.weight"], params["embed"])


def test_config_matches_transformers(pair, host_params):
  name, _, ref, _ = pair
  config, params, provenance = host_params(name)
  c = ref.config
  assert (config.vocab_size, config.d_model, config.n_layers) == (c.vocab_size, c.hidden_size,
                                                                   c.num_hidden_layers)
  assert (config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff) == (
      c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size)
  assert math.isclose(config.norm_eps, c.rms_norm_eps, rel_tol=1e-6)
  assert config.bos_token_id == c.bos_token_id and c.eos_token_id in config.eos_token_ids
  assert config.tie_embeddings == c.tie_word_embeddings and provenance["tied"]
  assert params["embed"].shape == (config.vocab_size, config.d_model)
  assert provenance["unused_tensors"] == [] and provenance["embed_type"] == "Q8_0"
  if config.family == "gemma3":
    assert config.local_layers == tuple(t == "sliding_attention" for t in c.layer_types)
    assert config.sliding_window == c.sliding_window
    assert math.isclose(config.query_scale, c.query_pre_attn_scalar ** -0.5)
    assert math.isclose(config.embed_scale, c.hidden_size ** 0.5)
    assert config.rope_theta == c.rope_parameters["full_attention"]["rope_theta"]
    assert config.rope_local_theta == c.rope_parameters["sliding_attention"]["rope_theta"]
    assert config.final_softcap == c.final_logit_softcapping
    assert provenance["quant_types"] == {"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}
    assert provenance["norms_include_plus_one"] and not provenance["qk_unpermuted"]
  else:
    assert config.rope_theta == c.rope_parameters["rope_theta"] and config.rope_scaling is None
    assert provenance["quant_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert provenance["qk_unpermuted"]
