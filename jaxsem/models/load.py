"""``load(name_or_path)``: a Model from an embedded model name, a GGUF file or an HF dir."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxsem import sharding as sharding_lib
from jaxsem.errors import InputError
from jaxsem.io import assets
from jaxsem.io import gguf_file
from jaxsem.io import hf_checkpoint
from jaxsem.io import tokenizer as tokenizer_lib
from jaxsem.io import tokenizer_cache
from jaxsem.models import families
from jaxsem.models import gguf_load
from jaxsem.models import hf_load
from jaxsem.models import params_cache as params_cache_lib
from jaxsem.models.model import Model
from jaxsem.progress import Progress

_DTYPES = {"float32": np.float32, "bfloat16": None, "float16": np.float16}


def _np_dtype(dtype: str):
  if dtype not in _DTYPES:
    raise InputError(f"--dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}.")
  if dtype == "bfloat16":
    import ml_dtypes  # a JAX dependency; numpy has no bfloat16 of its own

    return ml_dtypes.bfloat16
  return _DTYPES[dtype]


def _mesh(mesh: Mesh | str | None) -> Mesh | None:
  if mesh is None or isinstance(mesh, Mesh):
    return mesh
  return sharding_lib.make_mesh(mesh)


def _check_vocab(n_ids: int, rows: int, tokenizer_file: str, rows_from: str) -> None:
  """Refuses token ids without an embedding row; warns of rows no token id reaches.

  An id past the rows would read outside the embedding (NaN logits), so it is an error.
  Rows past the ids are what padded vocabularies have: harmless for decoding, but they
  take part in vocabulary-wide statistics (means, covariances, sweeps), hence the warning.

  Args:
    n_ids: one more than the tokenizer's highest token id.
    rows: rows of the embedding (``config.vocab_size``).
    tokenizer_file: the file the tokenizer came from, for the message.
    rows_from: where the row count comes from, e.g. ``"vocab_size in config.json"``.
  """
  if n_ids > rows:
    raise InputError(f"{tokenizer_file}: the tokenizer has {n_ids} token ids but the model's embedding has "
                     f"only {rows} rows ({rows_from}), so ids {rows}..{n_ids - 1} would give NaN logits; use "
                     "the tokenizer that was saved with these weights.")
  if n_ids < rows:
    warnings.warn(f"{tokenizer_file}: the model's embedding has {rows} rows ({rows_from}) but the tokenizer "
                  f"only {n_ids} token ids; the {rows - n_ids} rows past them are never produced by the "
                  "tokenizer, yet take part in vocabulary-wide statistics.", stacklevel=3)


def _hf_token_ids(tokenizer) -> int:
  """One more than the highest id of a ``tokenizer.json`` tokenizer (its ids may have gaps)."""
  ids = tokenizer.backend.get_vocab(with_added_tokens=True).values()
  return max(ids, default=-1) + 1


def _merge_file_provenance(provenance: dict, file_prov: dict) -> dict:
  """Adds what the file says of itself; its own model name is kept as ``name_in_file``."""
  file_prov = dict(file_prov)
  file_prov["name_in_file"] = file_prov.pop("name", None)
  provenance.update(file_prov)
  return file_prov


def load(name_or_path: str | os.PathLike = assets.DEFAULT_MODEL, *, mesh: Mesh | str | None = None,
         dtype: str = "float32", params_cache: bool = True, progress: bool = False) -> Model:
  """Loads a model for jaxsem.

  Args:
    name_or_path: an embedded model name (``"gemma3-270m"``, ``"smollm2-135m-instruct"``),
      a ``.gguf`` file, or a Hugging Face snapshot directory (config.json,
      safetensors, tokenizer.json).
    mesh: a ``Mesh``, a ``--mesh`` string such as ``"data:2,model:4"``, or None for
      the default device (no mesh), which is also what launchers do without ``--mesh``
      (``--mesh=model:-1`` puts every device on the model axis). Params are placed on
      their shardings leaf by leaf as they load; ``provenance["mesh"]`` records the mesh
      used (None: the default device).
    dtype: parameter/activation dtype, ``"float32"`` (default) or ``"bfloat16"``.
    params_cache: keep the loaded params in ``cache_dir()/params`` (and a GGUF file's
      tokenizer in ``cache_dir()/tokenizers``) and restore them from there on later
      loads of the same file and dtype (``jaxsem.models.params_cache``, ``tokenizer_cache``);
      ``$JAXSEM_PARAMS_CACHE=0`` turns both off too.
    progress: print progress lines (params loaded, rate, ETA) while reading the
      source file; on process 0 only.

  Returns:
    A ``Model`` with config, params, tokenizer and provenance.

  Raises:
    InputError: unknown name, missing or corrupt file, unsupported architecture or
      quantization, a tokenizer with ids past the embedding's rows — one sentence
      naming the file and the fix.

  Warns:
    UserWarning: one, when the embedding has rows that no token id reaches (a padded
      vocabulary).
  """
  start = time.perf_counter()
  np_dtype = _np_dtype(dtype)
  mesh = _mesh(mesh)
  resolved = assets.resolve_model(name_or_path)
  place = sharding_lib.make_placer(mesh, np_dtype)
  provenance: dict[str, Any] = {
      "name": resolved.name,
      "path": str(resolved.path),
      "format": resolved.kind,
      "package": resolved.package,
      "package_version": resolved.package_version,
      "sha256": resolved.sha256,
      "licence": resolved.licence,
      "citation": resolved.citation,
      "dtype": dtype,
      "mesh": None if mesh is None else dict(mesh.shape),
  }
  if resolved.kind == "gguf":
    with gguf_file.GGUFFile(resolved.path) as f:
      config = gguf_load.read_config(f)
      report = Progress(f"load {resolved.name}", config.n_params, unit="params") if progress else None
      # The tokenizer first: the transient memory of building (or reading) it is free
      # again before the params arrive, so the two peaks do not add up.
      tokenizer = tokenizer_cache.cached_tokenizer(
          f.path, use_cache=params_cache, build=lambda: tokenizer_lib.tokenizer_from_gguf(f.metadata, f.path))
      # A GGUF tokenizer's ids are the positions in its token list.
      _check_vocab(len(f.metadata.get("tokenizer.ggml.tokens") or ()), config.vocab_size, str(f.path),
                   "token_embd.weight")
      params, cache_info = params_cache_lib.cached_params(
          f.path, config, dtype, mesh, use_cache=params_cache,
          build=lambda: gguf_load.load_gguf_params(f, config, placer=place, progress=report))
      file_prov = _merge_file_provenance(provenance, gguf_load.gguf_provenance(f, config))
      counts = file_prov.get("quant_types", {})
      provenance["quantization"] = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
  else:
    config_json, tokenizer_path, _ = hf_checkpoint.read_hf_dir(resolved.path)
    config = families.config_from_hf(config_json, str(resolved.path))
    report = Progress(f"load {resolved.name}", config.n_params, unit="params") if progress else None
    tokenizer = tokenizer_lib.tokenizer_from_json(tokenizer_path)
    _check_vocab(_hf_token_ids(tokenizer), config.vocab_size, tokenizer.provenance()["source"],
                 "vocab_size in config.json")
    params, cache_info = params_cache_lib.cached_params(
        resolved.path, config, dtype, mesh, use_cache=params_cache,
        build=lambda: hf_load.load_hf_params(resolved.path, config, placer=place, progress=report))
    _merge_file_provenance(provenance, hf_load.hf_provenance(config_json, config))
    provenance.setdefault("quantization", "none (safetensors)")
  provenance.update({
      "family": config.family,
      "input_embedding": "embed",
      "unembedding": "embed" if config.tie_embeddings else "unembed",
      "tied_embeddings": config.tie_embeddings,
      "embed_scale": config.embed_scale,
      "tokenizer": tokenizer.provenance(),
      "params_cache": cache_info,
      "load_seconds": round(time.perf_counter() - start, 3),
  })
  return Model(config=config, params=params, tokenizer=tokenizer, provenance=provenance, mesh=mesh)
