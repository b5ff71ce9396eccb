"""Word-vector spaces on tiny random models: gathers, hidden reads, centring, whitening, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.analyses import lexicon, spaces
from jaxsem.errors import InputError
from jaxsem.models.forward import forward_jit
from jaxsem.models.model import Model
from tests import toy
from tests.analyses import toy_tokenizer

WORDS = ["kind", "cruel", "kindness", "ice cream", "good", "unkindly"]


def _model(family="gemma3", marker="\u2581", mesh=None, params=None, **overrides):
  cfg = toy.CONFIGS[family](**overrides)
  params = toy.params_for(cfg) if params is None else params
  if mesh is not None:
    params = sharding.shard_params(jax.tree.map(np.asarray, params), mesh)
  return Model(config=cfg, params=params, tokenizer=toy_tokenizer(marker), provenance={}, mesh=mesh)


@pytest.fixture(params=[("gemma3", "\u2581"), ("llama", "\u0120")], ids=["gemma-sp", "llama-bytelevel"])
def model(request):
  return _model(*request.param)


@pytest.mark.parametrize("policy", lexicon.POLICIES)
def test_embedding_vectors_are_row_gathers(model, policy):
  wt = lexicon.resolve_words(model.tokenizer, WORDS, policy=policy)
  embed = np.asarray(model.params["embed"])
  unembed = embed if model.config.tie_embeddings else np.asarray(model.params["unembed"])
  scale = np.float32(model.config.embed_scale)
  want_in = np.stack([embed[list(ids)].mean(0) * scale for ids in wt.used_token_ids])
  want_out = np.stack([unembed[list(ids)].mean(0) for ids in wt.used_token_ids])
  got_in = np.asarray(spaces.word_vectors(model, wt, "input_embedding"))
  got_out = np.asarray(spaces.word_vectors(model, wt, "unembedding"))
  assert got_in.shape == (wt.n_used, model.config.d_model)
  np.testing.assert_allclose(got_in, want_in, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-6)
  if policy == "first":  # "kindness" is its first token ("▁kind"), like "kind"
    np.testing.assert_array_equal(got_in[0], got_in[2])


def test_vocab_matrix_and_provenance(model):
  cfg = model.config
  m = np.asarray(spaces.vocab_matrix(model, "input_embedding"))
  np.testing.assert_allclose(m, np.asarray(model.params["embed"]) * np.float32(cfg.embed_scale), rtol=1e-6)
  out = spaces.make_space(model, "unembedding")
  inp = spaces.make_space(model, "input_embedding")
  assert out.tied == cfg.tie_embeddings and out.embed_scale_applied == 1.0
  assert inp.embed_scale_applied == pytest.approx(cfg.embed_scale)
  prov = inp.provenance()
  assert prov["name"] == "input_embedding" and prov["centred"] is False and prov["stats_tokens"] == 0
  assert prov["embed_scale_applied"] == pytest.approx(cfg.embed_scale)
  with pytest.raises(InputError, match="--space='residual'"):
    spaces.vocab_matrix(model, "residual")


def test_centring_zeroes_the_vocab_mean(model):
  for name in ("input_embedding", "unembedding"):
    space = spaces.make_space(model, name, centre=True)
    assert space.centred and not space.whitened and space.stats_tokens == model.config.vocab_size
    m = spaces.vocab_matrix(model, name)
    assert float(jnp.abs(m.mean(0)).max()) > 1e-3  # random init has a nonzero sample mean
    centred = np.asarray(spaces.apply(space.transform, m))
    np.testing.assert_allclose(centred.mean(0), 0.0, atol=1e-5)
    # Word vectors go through the same transform.
    wt = lexicon.resolve_words(model.tokenizer, ["kind", "good"])
    raw = np.asarray(spaces.word_vectors(model, wt, name))
    np.testing.assert_allclose(np.asarray(spaces.word_vectors(model, wt, space)),
                               raw - np.asarray(space.transform.mean), rtol=1e-5, atol=1e-5)


def test_whitening_undoes_a_planted_covariance():
  v, d = 4096, 32
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  sd = np.geomspace(0.05, 5.0, d)  # condition number 1e4 of the covariance
  true_cov = (q * sd**2) @ q.T
  shift = rng.normal(size=d) * 3
  rows = (rng.normal(size=(v, d)) * sd) @ q.T + shift
  cfg = toy.gemma_config(vocab_size=v)
  params = dict(toy.params_for(cfg), embed=jnp.asarray(rows, jnp.float32))
  model = Model(config=cfg, params=params, tokenizer=toy_tokenizer(), provenance={})
  space = spaces.make_space(model, "unembedding", centre=True, whiten=True)
  assert space.whitened and space.provenance()["eps"] == spaces.DEFAULT_EPS
  white = np.asarray(spaces.apply(space.transform, spaces.vocab_matrix(model, "unembedding")), np.float64)
  np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(d), atol=2e-3)
  # The fitted map whitens the population covariance too (up to sampling error).
  w = np.asarray(space.transform.W, np.float64)
  np.testing.assert_allclose(w @ true_cov @ w, np.eye(d), atol=0.15)
  np.testing.assert_allclose(np.asarray(space.transform.mean), shift, atol=0.25)
  # Input embedding: embed_scale cancels out of whitened vectors.
  inp = spaces.make_space(model, "input_embedding", centre=True, whiten=True)
  white_in = np.asarray(spaces.apply(inp.transform, spaces.vocab_matrix(model, "input_embedding")))
  np.testing.assert_allclose(white_in, white, atol=2e-3)


def test_inverse_sqrt_regularises_rank_deficiency():
  c = np.diag([4.0, 1.0, 0.0])
  w = spaces.inverse_sqrt(c, eps=1e-2)
  floor = 1e-2 * (5.0 / 3)
  np.testing.assert_allclose(np.diag(w), 1 / np.sqrt(np.array([4.0, 1.0, 0.0]) + floor), rtol=1e-12)
  assert np.isfinite(w).all()


def _independent_hidden(model, word, site, template="The word {word} is"):
  """The hidden state at ``word``'s last token, located by character offsets of the full text."""
  text = template.format(word=word)
  enc = model.tokenizer.backend.encode(text, add_special_tokens=True)
  end = text.index(word) + len(word) - 1
  pos = enc.char_to_token(end)
  ids = np.asarray([enc.ids], np.int32)
  out = forward_jit(model.params, model.config, ids, np.ones_like(ids), logits_at="none", capture=(site,))
  return np.asarray(out.captured[site])[0, pos]


@pytest.mark.parametrize("layer,site", [(1, "resid_post.1"), (-1, "final"), ("final", "final")])
def test_hidden_vectors_match_forward_at_last_word_token(model, layer, site):
  words = ["kind", "kindness", "ice cream", "unkindly"]
  wt = lexicon.resolve_words(model.tokenizer, words, policy="mean")
  got = np.asarray(spaces.word_vectors(model, wt, "hidden", layer=layer, template="The word {word} is"))
  for i, word in enumerate(wt.used_variants):
    np.testing.assert_allclose(got[i], _independent_hidden(model, word, site), rtol=1e-4, atol=1e-5)
  # "first" still runs the whole word in the hidden space.
  first = lexicon.resolve_words(model.tokenizer, words, policy="first")
  np.testing.assert_allclose(np.asarray(spaces.word_vectors(model, first, "hidden", layer=layer)),
                             np.asarray(spaces.word_vectors(model, wt, "hidden", layer=layer)), atol=1e-6)


def test_hidden_vectors_do_not_depend_on_batch_or_padding(model):
  words = ["kind", "unkindly", "ice cream", "good", "kindness", "cruel", "hot"]
  wt = lexicon.resolve_words(model.tokenizer, words, policy="mean")
  batched = np.asarray(spaces.word_vectors(model, wt, "hidden", layer=2, batch_size=4))
  for i, word in enumerate(words):
    alone = lexicon.resolve_words(model.tokenizer, [word], policy="mean")
    single = np.asarray(spaces.word_vectors(model, alone, "hidden", layer=2))
    np.testing.assert_allclose(batched[i], single[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(batched[0], batched[3])


def test_hidden_space_statistics_and_provenance(model):
  space = spaces.make_space(model, "hidden", layer=0, centre=True, stats_sample=50, seed=3)
  assert space.stats_tokens == 50 and space.site == "resid_post.0" and space.layer == 0
  tokens = spaces.sample_tokens(model, 50, seed=3)
  assert not set(tokens.tolist()) & {0, 1, 2, 3}  # no special tokens
  np.testing.assert_array_equal(tokens, spaces.sample_tokens(model, 50, seed=3))
  raw = spaces.hidden_vectors(model, [(int(t),) for t in tokens], 0, space.template)
  np.testing.assert_allclose(np.asarray(spaces.apply(space.transform, raw)).mean(0), 0.0, atol=1e-4)
  prov = space.provenance()
  assert prov["template"] == spaces.DEFAULT_TEMPLATE and prov["seed"] == 3 and prov["stats_tokens"] == 50
  everything = spaces.make_space(model, "hidden", layer=0, centre=True, stats_sample=10**6)
  assert everything.stats_tokens == model.config.vocab_size - 4


def test_bad_layer_template_and_space_raise(model):
  wt = lexicon.resolve_words(model.tokenizer, ["kind"])
  n = model.config.n_layers
  with pytest.raises(InputError, match=rf"--layer={n} is out of range .*0\.\.{n - 1}"):
    spaces.word_vectors(model, wt, "hidden", layer=n)
  with pytest.raises(InputError, match="--layer is required"):
    spaces.make_space(model, "hidden")
  with pytest.raises(InputError, match="--layer=-2"):
    spaces.word_vectors(model, wt, "hidden", layer=-2)
  with pytest.raises(InputError, match=r"--template='The word' must contain the slot \{word\}"):
    spaces.word_vectors(model, wt, "hidden", layer=0, template="The word")
  with pytest.raises(InputError, match="only applies to --space=hidden"):
    spaces.make_space(model, "input_embedding", layer=1)


def test_non_finite_vectors_name_space_and_word(model):
  params = dict(model.params)
  kind = model.tokenizer.token_to_id(model.tokenizer.word_initial_marker + "kind")
  params["embed"] = params["embed"].at[kind, 3].set(jnp.nan)
  broken = Model(config=model.config, params=params, tokenizer=model.tokenizer, provenance={})
  wt = lexicon.resolve_words(model.tokenizer, ["good", "kind", "cruel"])
  with pytest.raises(InputError, match="input_embedding space: the vector of 'kind' has NaN"):
    spaces.word_vectors(broken, wt, "input_embedding")
  with pytest.raises(InputError, match="hidden space: the vector of 'kind'"):
    spaces.word_vectors(broken, wt, "hidden", layer=0)


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_sharded_equals_unsharded(family):
  mesh = sharding.make_mesh("data:2,model:4")
  params = toy.params_for(toy.CONFIGS[family]())
  # An offset makes the vocabulary mean large, so zero padding rows would bias the statistics.
  params = {k: (v + 0.5 if k in ("embed", "unembed") else v) for k, v in params.items()}
  plain = _model(family, params=params)
  placed = _model(family, mesh=mesh, params=params)
  assert placed.params["embed"].shape[0] == 252 and len(placed.params["embed"].sharding.device_set) == 8
  assert spaces.vocab_matrix(placed).shape == (250, plain.config.d_model)
  wt = lexicon.resolve_words(plain.tokenizer, WORDS, policy="mean")
  for name, layer in (("input_embedding", None), ("unembedding", None), ("hidden", 1)):
    a = spaces.make_space(plain, name, layer=layer, centre=True, whiten=True, stats_sample=64)
    b = spaces.make_space(placed, name, layer=layer, centre=True, whiten=True, stats_sample=64)
    assert a.stats_tokens == b.stats_tokens
    np.testing.assert_allclose(np.asarray(b.transform.mean), np.asarray(a.transform.mean), atol=1e-5)
    np.testing.assert_allclose(np.asarray(b.transform.W), np.asarray(a.transform.W), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(spaces.word_vectors(placed, wt, b)),
                               np.asarray(spaces.word_vectors(plain, wt, a)), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m-instruct"])
def test_real_model_hidden_space_runs(embedded_models, name):
  model = embedded_models(name)
  wt = lexicon.resolve_words(model.tokenizer, ["kind", "cruel", "hot", "cold", "happy"])
  assert wt.coverage == 1.0
  layer = model.config.n_layers // 2
  vectors = np.asarray(spaces.word_vectors(model, wt, "hidden", layer=layer))
  assert vectors.shape == (5, model.config.d_model) and np.isfinite(vectors).all()
  want = _independent_hidden(model, "cruel", f"resid_post.{layer}", template=spaces.DEFAULT_TEMPLATE)
  np.testing.assert_allclose(vectors[1], want, rtol=2e-3, atol=2e-3)
  space = spaces.make_space(model, "input_embedding", centre=True, whiten=True)
  white = np.asarray(spaces.word_vectors(model, wt, space))
  assert white.shape == (5, model.config.d_model) and np.isfinite(white).all()


def test_hidden_states_report_progress_per_forward_call(model, capsys):
  """A callback hears after each batch; progress=True prints the hidden states' lines, same vectors."""
  words = ["kind", "good", "cruel", "hot", "cold"]
  wt = lexicon.resolve_words(model.tokenizer, words, policy="mean")
  seen = []
  ids = wt.used_all_ids or wt.used_token_ids
  spaces.hidden_vectors(model, ids, 1, batch_size=2, progress=lambda *a: seen.append(a))
  assert seen == [(2, 5), (4, 5), (5, 5)]
  quiet = np.asarray(spaces.word_vectors(model, wt, "hidden", layer=1, batch_size=2))
  assert capsys.readouterr().err == ""
  loud = np.asarray(spaces.word_vectors(model, wt, "hidden", layer=1, batch_size=2, progress=True))
  np.testing.assert_array_equal(loud, quiet)
  lines = capsys.readouterr().err.splitlines()
  assert lines[0].startswith("hidden states: 0/5 words") and lines[-1].startswith("hidden states: 5/5 words")
