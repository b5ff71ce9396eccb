"""The parameter leaf table: one row per leaf, shared by every family.

Each ``Leaf`` says, for one entry of the params pytree (layout in ``jaxsem.models.config``):

* its shape, as dimension symbols resolved from a ``ModelConfig`` (``"L"`` layers,
  ``"D"`` d_model, ``"H"``/``"K"`` query/kv heads, ``"Dh"`` head_dim, ``"F"`` d_ff,
  ``"V"`` vocab); the symbols also give its *logical axes* for sharding;
* its Hugging Face tensor name (under ``{prefix}layers.{i}.`` for stacked leaves,
  ``{prefix}`` otherwise) and its GGUF tensor name (under ``blk.{i}.`` when stacked);
* the converter from the file layout to the leaf layout (``convert``), whether the
  rows are in RoPE order (llama.cpp's ``llama`` converter interleaves them), and the
  offset folded into a Hugging Face norm (Gemma stores ``w`` for ``x * (1 + w)``).

Families (``jaxsem.models.families.*``) pick the rows their configs need and rename or
offset a few; the loaders, ``sharding`` and ``params.param_shapes`` all read this table.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# symbol -> (ModelConfig field, logical axis)
DIMS: dict[str, tuple[str, str]] = {
    "L": ("n_layers", "layers"),
    "D": ("d_model", "embed"),
    "H": ("n_heads", "heads"),
    "K": ("n_kv_heads", "kv_heads"),
    "Dh": ("head_dim", "head_dim"),
    "F": ("d_ff", "mlp"),
    "V": ("vocab_size", "vocab"),
}

# File layout -> leaf layout (per layer for stacked leaves):
#   plain      same shape
#   transpose  [out, in] -> [in, out]
#   heads_in   [n*Dh, D] -> [D, n, Dh]   (q, k, v projections)
#   heads_out  [D, n*Dh] -> [n, Dh, D]   (output projection)
#   heads_bias [n*Dh]    -> [n, Dh]
# Before any of them, a fused leaf (``Leaf.fused``) takes its row range of the stored tensor
# (``split``): Phi-3's ``qkv_proj`` holds [q; k; v] rows, its ``gate_up_proj`` [gate; up].
CONVERTERS = ("plain", "transpose", "heads_in", "heads_out", "heads_bias")


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One parameter leaf.

  Attributes:
    path: params path, ``"embed"`` or ``"blocks/q"`` (stacked over layers).
    dims: dimension symbols of the whole leaf (see ``DIMS``); stacked leaves start with ``"L"``.
    hf: Hugging Face tensor name (relative, see the module docstring).
    gguf: GGUF tensor name (relative for stacked leaves).
    convert: one of ``CONVERTERS``.
    rope_rows: rows follow the RoPE pair order (Q and K weights and biases).
    norm: an RMSNorm multiplier.
    hf_offset: added to the Hugging Face tensor (Gemma norms: 1.0).
    gguf_permuted: the GGUF rows are in interleaved-RoPE order and are put back.
    fused: paths of the leaves whose file tensors are stacked row-wise, in this order, into
      one fused tensor (``hf``/``gguf`` name it) of which this leaf reads its own rows
      (Phi-3's ``qkv_proj``: q, k, v); empty for a tensor of its own.
  """

  path: str
  dims: tuple[str, ...]
  hf: str
  gguf: str
  convert: str = "plain"
  rope_rows: bool = False
  norm: bool = False
  hf_offset: float = 0.0
  gguf_permuted: bool = False
  fused: tuple[str, ...] = ()

  @property
  def stacked(self) -> bool:
    return self.path.startswith("blocks/")

  @property
  def axes(self) -> tuple[str, ...]:
    """Logical axes of the whole leaf."""
    return tuple(DIMS[s][1] for s in self.dims)

  def shape(self, config) -> tuple[int, ...]:
    """Shape of the whole leaf (``[L, ...]`` when stacked)."""
    return tuple(int(getattr(config, DIMS[s][0])) for s in self.dims)

  def slot_shape(self, config) -> tuple[int, ...]:
    """Shape of one layer's slot (the whole leaf when not stacked)."""
    shape = self.shape(config)
    return shape[1:] if self.stacked else shape

  def file_shape(self, config) -> tuple[int, ...]:
    """Shape of the tensor in the checkpoint (one layer's for stacked leaves)."""
    s = self.slot_shape(config)
    if self.convert == "transpose":
      return s[::-1]
    if self.convert == "heads_in":
      return (s[1] * s[2], s[0])
    if self.convert == "heads_out":
      return (s[2], s[0] * s[1])
    if self.convert == "heads_bias":
      return (s[0] * s[1],)
    return s

  def rows(self, config) -> tuple[int, int]:
    """``(start, stop)``: this leaf's rows of the (maybe fused) tensor in the checkpoint."""
    if not self.fused:
      return 0, self.file_shape(config)[0]
    sizes = [BY_PATH[p].file_shape(config)[0] for p in self.fused]
    i = self.fused.index(self.path)
    return sum(sizes[:i]), sum(sizes[:i + 1])

  def tensor_shape(self, config) -> tuple[int, ...]:
    """Shape of the stored tensor: ``file_shape``, or that of the whole fused tensor."""
    shape = self.file_shape(config)
    if not self.fused:
      return shape
    return (sum(BY_PATH[p].file_shape(config)[0] for p in self.fused),) + shape[1:]


def split(leaf: Leaf, w: np.ndarray, config) -> np.ndarray:
  """The fused-split converter: ``leaf``'s rows of a stored tensor ``w`` (``tensor_shape``),
  a view; ``w`` itself when the leaf is not fused."""
  if not leaf.fused:
    return w
  start, stop = leaf.rows(config)
  return w[start:stop]


# Per converter: slot axis -> (axis of the stored tensor, stored elements per slot element) where a
# range of that slot axis is one range of the stored tensor (whole heads for the heads converters).
_FILE_AXES = {
    "plain": lambda slot: {a: (a, 1) for a in range(len(slot))},
    "transpose": lambda slot: {0: (1, 1), 1: (0, 1)},
    "heads_in": lambda slot: {0: (1, 1), 1: (0, slot[2])},
    "heads_out": lambda slot: {0: (1, slot[1]), 2: (0, 1)},
    "heads_bias": lambda slot: {0: (0, slot[1])},
}


def file_block(leaf: Leaf, config, block: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...] | None:
  """The region of the stored tensor (``(start, stop)`` per axis) that converts to ``block`` of the
  leaf's slot (one layer's), so a loader can read only that; None where the block is the whole slot
  of a tensor of its own (read it whole) or is not one region of the stored tensor (a loader then
  reads the whole tensor and slices).

  Args:
    leaf: the table row.
    config: the model's config.
    block: ``(start, stop)`` per slot axis; at most one axis is a proper part (a mesh axis splits
      one dimension of a leaf).
  """
  slot = leaf.slot_shape(config)
  split = [a for a, (start, stop) in enumerate(block) if (start, stop) != (0, slot[a])]
  region = [(0, n) for n in leaf.file_shape(config)]
  region[0] = leaf.rows(config)  # a fused leaf's rows of the stored tensor
  if not split:
    return tuple(region) if leaf.fused else None  # a fused leaf's whole slot: its rows only
  if len(split) != 1 or split[0] not in _FILE_AXES[leaf.convert](slot):
    return None
  axis = split[0]
  file_axis, unit = _FILE_AXES[leaf.convert](slot)[axis]
  offset = region[file_axis][0]
  region[file_axis] = (offset + block[axis][0] * unit, offset + block[axis][1] * unit)
  return tuple(region)


def convert(leaf: Leaf, w: np.ndarray, slot: tuple[int, ...], *, permuted: bool = False,
            offset: float = 0.0) -> np.ndarray:
  """A checkpoint tensor ``w`` (file layout) -> the leaf layout ``slot`` (often a view).

  Args:
    leaf: the table row.
    w: the tensor as stored.
    slot: ``leaf.slot_shape(config)``.
    permuted: rows are in interleaved-RoPE order (file row ``2j + p`` of a head is
      rotate-half row ``p * Dh/2 + j``); undone here.
    offset: added to the values (a norm's ``+1``), in float32.
  """
  kind = leaf.convert
  if kind == "transpose":
    out = w.T
  elif kind in ("heads_in", "heads_bias"):
    n, dh = (slot[1], slot[2]) if kind == "heads_in" else slot
    cols = w.reshape(w.shape[0], -1)  # [n*dh, D] (D = 1 for a bias)
    if permuted:
      out = cols.reshape(n, dh // 2, 2, -1).transpose(3, 0, 2, 1).reshape(-1, n, dh)
    else:
      out = cols.reshape(n, dh, -1).transpose(2, 0, 1)
    out = out.reshape(slot)
  elif kind == "heads_out":
    out = w.reshape(w.shape[0], slot[0], slot[1]).transpose(1, 2, 0)
  else:
    out = w
  if offset:
    out = out.astype(np.float32) + np.float32(offset)
  return out


# ----------------------------------------------------------------------------- the table

# In ``params.param_shapes`` order. Optional leaves follow the always-present ones.
EMBED = Leaf("embed", ("V", "D"), "embed_tokens.weight", "token_embd.weight")
FINAL_NORM = Leaf("final_norm", ("D",), "norm.weight", "output_norm.weight", norm=True)
ATTN_NORM = Leaf("blocks/attn_norm", ("L", "D"), "input_layernorm.weight", "attn_norm.weight", norm=True)
Q = Leaf("blocks/q", ("L", "D", "H", "Dh"), "self_attn.q_proj.weight", "attn_q.weight", "heads_in",
         rope_rows=True)
K = Leaf("blocks/k", ("L", "D", "K", "Dh"), "self_attn.k_proj.weight", "attn_k.weight", "heads_in",
         rope_rows=True)
V = Leaf("blocks/v", ("L", "D", "K", "Dh"), "self_attn.v_proj.weight", "attn_v.weight", "heads_in")
O = Leaf("blocks/o", ("L", "H", "Dh", "D"), "self_attn.o_proj.weight", "attn_output.weight", "heads_out")
MLP_NORM = Leaf("blocks/mlp_norm", ("L", "D"), "post_attention_layernorm.weight", "ffn_norm.weight",
                norm=True)
GATE = Leaf("blocks/gate", ("L", "D", "F"), "mlp.gate_proj.weight", "ffn_gate.weight", "transpose")
UP = Leaf("blocks/up", ("L", "D", "F"), "mlp.up_proj.weight", "ffn_up.weight", "transpose")
DOWN = Leaf("blocks/down", ("L", "F", "D"), "mlp.down_proj.weight", "ffn_down.weight", "transpose")
UNEMBED = Leaf("unembed", ("V", "D"), "lm_head.weight", "output.weight")
Q_BIAS = Leaf("blocks/q_bias", ("L", "H", "Dh"), "self_attn.q_proj.bias", "attn_q.bias", "heads_bias",
              rope_rows=True)
K_BIAS = Leaf("blocks/k_bias", ("L", "K", "Dh"), "self_attn.k_proj.bias", "attn_k.bias", "heads_bias",
              rope_rows=True)
V_BIAS = Leaf("blocks/v_bias", ("L", "K", "Dh"), "self_attn.v_proj.bias", "attn_v.bias", "heads_bias")
Q_NORM = Leaf("blocks/q_norm", ("L", "Dh"), "self_attn.q_norm.weight", "attn_q_norm.weight", norm=True)
K_NORM = Leaf("blocks/k_norm", ("L", "Dh"), "self_attn.k_norm.weight", "attn_k_norm.weight", norm=True)
# OLMo 2's q/k norms span the whole projection (``[H*Dh]`` / ``[K*Dh]`` in the file).
Q_PROJ_NORM = Leaf("blocks/q_proj_norm", ("L", "H", "Dh"), "self_attn.q_norm.weight", "attn_q_norm.weight",
                   "heads_bias", rope_rows=True, norm=True)
K_PROJ_NORM = Leaf("blocks/k_proj_norm", ("L", "K", "Dh"), "self_attn.k_norm.weight", "attn_k_norm.weight",
                   "heads_bias", rope_rows=True, norm=True)
POST_ATTN_NORM = Leaf("blocks/post_attn_norm", ("L", "D"), "post_attention_layernorm.weight",
                      "post_attention_norm.weight", norm=True)
POST_MLP_NORM = Leaf("blocks/post_mlp_norm", ("L", "D"), "post_feedforward_layernorm.weight",
                     "post_ffw_norm.weight", norm=True)

ALL = (EMBED, FINAL_NORM, ATTN_NORM, Q, K, V, O, MLP_NORM, GATE, UP, DOWN, UNEMBED, Q_BIAS, K_BIAS,
       V_BIAS, Q_NORM, K_NORM, Q_PROJ_NORM, K_PROJ_NORM, POST_ATTN_NORM, POST_MLP_NORM)

BY_PATH: dict[str, Leaf] = {leaf.path: leaf for leaf in ALL}

# params path -> logical axes of its dimensions (what ``sharding`` places by).
PARAM_AXES: dict[str, tuple[str, ...]] = {leaf.path: leaf.axes for leaf in ALL}


def select(config, *, hf_norm_offset: float = 0.0, gguf_permuted: bool = False,
           hf_names: dict[str, str] | None = None) -> tuple[Leaf, ...]:
  """The rows a config needs, adjusted for one family.

  Args:
    config: the ModelConfig; ``tie_embeddings``, ``qkv_bias``, ``qk_norm`` (and its scope),
      ``pre_norms`` and ``post_norms`` decide the optional leaves.
    hf_norm_offset: added to every Hugging Face norm (Gemma: 1.0).
    gguf_permuted: the family's GGUF files store Q/K rows in interleaved-RoPE order.
    hf_names: params path -> Hugging Face name, where the family differs from the table.
  """
  optional = {UNEMBED: not config.tie_embeddings, Q_BIAS: config.qkv_bias, K_BIAS: config.qkv_bias,
              V_BIAS: config.qkv_bias, POST_ATTN_NORM: config.post_norms, POST_MLP_NORM: config.post_norms,
              ATTN_NORM: config.pre_norms, MLP_NORM: config.pre_norms}
  per_head = config.qk_norm_scope == "head"
  for leaf, wanted in ((Q_NORM, per_head), (K_NORM, per_head), (Q_PROJ_NORM, not per_head),
                       (K_PROJ_NORM, not per_head)):
    optional[leaf] = config.qk_norm and wanted
  hf_names = hf_names or {}
  out = []
  for leaf in ALL:
    if not optional.get(leaf, True):
      continue
    out.append(dataclasses.replace(
        leaf, hf=hf_names.get(leaf.path, leaf.hf), hf_offset=hf_norm_offset if leaf.norm else 0.0,
        gguf_permuted=gguf_permuted and leaf.rope_rows))
  return tuple(out)


def fuse(table: tuple[Leaf, ...], paths: tuple[str, ...], *, hf: str, gguf: str) -> tuple[Leaf, ...]:
  """``table`` with the leaves ``paths`` read from one fused tensor, stacked row-wise in that order.

  Args:
    table: rows from ``select``.
    paths: the fused leaves, e.g. ``("blocks/q", "blocks/k", "blocks/v")``; all in ``table``,
      with the same converter (their file tensors share every dimension but the first).
    hf: Hugging Face name of the fused tensor (``"self_attn.qkv_proj.weight"``).
    gguf: GGUF name of the fused tensor (``"attn_qkv.weight"``).
  """
  assert set(paths) <= {leaf.path for leaf in table}, paths
  return tuple(dataclasses.replace(leaf, hf=hf, gguf=gguf, fused=tuple(paths)) if leaf.path in paths else leaf
               for leaf in table)
