"""The hidden sweep per site: the scale set's directions and the spectra of the projections.

``_site_directions`` builds each site's directions from the pole words' states in the sweep's
context (dropping at every site a scale whose poles are identical at some site);
``_spectra`` turns the merged moments of each site into the spectra of the antonym directions
and the random baselines, and the verdict (``kernels.spectrum``, as the static sweep does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.analyses import layers_capture
from jaxsem.analyses import lexicon
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.analyses.hidden_sweep_kernels import _Runner
from jaxsem.errors import InputError
from jaxsem.kernels import directions as dir_k
from jaxsem.kernels import spectrum as spectrum_k
from jaxsem.progress import Progress


def _site_directions(model, opts, runner: _Runner, scale_set, context, transforms, n_stats: int):
  """Per site ``(Space, Directions)`` of the scale set from the pole words' states in ``context``, and the
  scales dropped because their poles are identical at some site (``{scale: site}``).

  A word's state is read at its last token, so at ``embed`` two words that end in the same token
  (``ab|axial``, ``ad|axial``) have one state; such a scale has no direction there and is left out
  at every site, so that every site projects on the same directions.
  """
  words = list(dict.fromkeys(w for s in scale_set for w in (*s.positive, *s.negative)))
  wt = lexicon.resolve_words(model.tokenizer, words, opts.policy)
  ids = [tuple(t) for t in (wt.used_all_ids or wt.used_token_ids)]
  seqs = list(dict.fromkeys(ids))
  bar = Progress(f"hidden sweep {scale_set.name}: pole words' states", len(seqs), unit="words")
  bar.update(0)
  states = runner.word_states(seqs, progress=bar.update)  # [n_sites, words, D], the words' last tokens
  bar.close()
  rows = {t: i for i, t in enumerate(seqs)}
  word_row = {w: rows[t] for w, t in zip(wt.used_words, ids)}
  identical: dict[str, str] = {}
  for scale in scale_set:
    pos = [word_row[w] for w in scale.positive if w in word_row]
    neg = [word_row[w] for w in scale.negative if w in word_row]
    if not pos or not neg:
      continue  # build reports it as missing
    same = [site for si, site in enumerate(runner.sites)
            if not np.any(states[si, pos].mean(axis=0) != states[si, neg].mean(axis=0))]
    if same:
      identical[scale.name] = same[0]
  kept = [sc for sc in scale_set if sc.name not in identical]
  if not kept:
    raise InputError(f"{scale_set.name}: every scale has identical poles at some site of --layers; "
                     "leave out the embed site or give other scales.")
  out = []
  bar = Progress(f"hidden sweep {scale_set.name}: directions", len(runner.sites), unit="sites")
  bar.update(0)
  for s, site in enumerate(runner.sites):
    table = spaces_lib.StateTable(rows, states[s])
    space = spaces_lib.Space(name="hidden", layer=layers_capture.site_layer(site), site=site,
                             centred=opts.centre, whitened=opts.whiten, template=context,
                             stats_tokens=n_stats if (opts.centre or opts.whiten) else 0,
                             tied=bool(model.config.tie_embeddings), transform=transforms[s], states=table)
    out.append((space, scale_directions.build(model, space, kept, policy=opts.policy, method=opts.method,
                                              missing="drop", min_coverage=opts.min_coverage,
                                              what=scale_set.name)))
    bar.update(s + 1)
  bar.close()
  return out, identical


def _spectra(model, opts, runner, sites, built, names, units, transforms, moments, baselines):
  """Per site: spectra of the antonym directions and the random baselines, and the verdict."""
  from jaxsem.analyses import sweep as sweep_lib

  key = jax.random.key(opts.seed)
  n = moments.n
  k, d = units.shape[1], units.shape[2]
  pairs = None
  if "token_pairs" in baselines:
    sample = spaces_lib.sample_tokens(model, n=max(2 * k, 256), seed=opts.seed)
    raw = runner.states(sample.astype(np.int64))
    pairs = (sample, raw)
  out = []
  for s, site in enumerate(sites):
    cov = moments.m2[s] / max(n - 1, 1.0)
    mom = spectrum_k.Moments(n=int(n), mean=jnp.asarray(moments.mean[s], jnp.float32),
                             cov=jnp.asarray(cov, jnp.float32), metric=opts.metric, cov64=cov)
    sets = {"antonym": units[s]}
    if "gaussian" in baselines:
      sets["gaussian"] = np.asarray(dir_k.random_directions(jax.random.fold_in(key, 1), k, d))
    if pairs is not None:
      vec = pairs[1][s] if transforms[s] is None else np.asarray(spaces_lib.apply(transforms[s], pairs[1][s]))
      sets["token_pairs"] = sweep_lib.token_pair_directions(vec, k, jax.random.fold_in(key, 2),
                                                            np.arange(len(pairs[0])))
    report = sweep_lib._spectrum_report  # noqa: SLF001
    spectra = {name: report(spectrum_k.projection_spectrum(mom, v, opts.standardize))
               for name, v in sets.items()}
    out.append({"site": site, "layer": layers_capture.site_layer(site), "n_directions": k,
                "spectra": spectra, "verdict": sweep_lib.verdict(spectra),
                "space": built[s][0].provenance()})
  if pairs is not None:
    for row in out:
      row["token_pairs_sample"] = {"tokens": int(len(pairs[0])), "seed": opts.seed,
                                   "what": "pairs of a seeded sample of non-special vocabulary tokens"}
  return out
