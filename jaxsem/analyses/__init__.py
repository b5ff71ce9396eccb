"""Analyses: compose kernels over word vectors and return result dataclasses.

``lexicon`` turns words into token ids under an explicit, reported policy; ``spaces``
turns those ids into vectors (input embedding, unembedding or hidden states, with
optional centring / whitening).
"""

from jaxsem.analyses.lexicon import POLICIES, WordTokens, require_coverage, resolve_words
from jaxsem.analyses.spaces import (DEFAULT_TEMPLATE, SPACES, Space, Transform, apply, fit_transform,
                                    make_space, vocab_matrix, word_vectors)

__all__ = [
    "DEFAULT_TEMPLATE",
    "POLICIES",
    "SPACES",
    "Space",
    "Transform",
    "WordTokens",
    "apply",
    "fit_transform",
    "make_space",
    "require_coverage",
    "resolve_words",
    "vocab_matrix",
    "word_vectors",
]
