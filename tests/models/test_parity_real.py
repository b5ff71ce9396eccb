"""The embedded models: jaxsem logits == transformers logits on the same GGUF file.

Both libraries dequantize the same file, so the weights are identical and the logits
must agree up to float32 summation order. Slow: transformers parses the GGUF itself.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jaxsem  # noqa: E402
from jaxsem.io import assets  # noqa: E402

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
