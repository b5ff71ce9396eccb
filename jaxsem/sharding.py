"""Device mesh from a flag string, logical-axis rules as a table, param placement.

Model code never names mesh axes. Each param leaf has *logical* axes (``vocab``,
``embed``, ``heads`` ...); ``LOGICAL_AXIS_RULES`` maps them to mesh axes. A dimension
that does not divide evenly over its mesh axis is replicated instead (small models have
e.g. 9 heads), except the vocabulary, which is padded with zero rows to a multiple of
the mesh axis (``pad_vocab``) — the forward pass slices logits back to ``vocab_size``.

The same command runs on one CPU (``--mesh=data:1,model:1``), 8 fake CPU devices
(``--mesh=data:2,model:4``) or a pod; ``-1`` takes the remaining devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsem.errors import InputError
from jaxsem.io import host_memory
from jaxsem.models import params as params_lib
from jaxsem.models.families import leaf_table as leaves_lib

MESH_AXES = ("data", "model")
# The mesh of a run without --mesh: every device on the model axis (one device: 1 x 1).
# ``load(mesh=None)`` instead keeps params on the one default device.
DEFAULT_MESH = "data:1,model:-1"

# logical axis -> mesh axis (None = replicated). One table for the whole library.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("head_dim", None),
    ("layers", None),
    ("seq", None),
    ("directions", "model"),
    # Rows of a words x scales matrix (a word list's vectors), sharded like the vocab.
    ("words", "model"),
    # Direction columns of a projection whose rows hold the model axis: the output
    # [rows, scales] then spans the whole mesh without any communication.
    ("scales", "data"),
)

# param leaf path -> logical axes of its dimensions, read from the leaf table.
PARAM_AXES: dict[str, tuple[str, ...]] = leaves_lib.PARAM_AXES

_VOCAB_LEAVES = ("embed", "unembed")


def parse_mesh(spec: str | None, n_devices: int | None = None) -> dict[str, int]:
  """``"data:2,model:4"`` -> ``{"data": 2, "model": 4}``; one axis may be ``-1``.

  Raises:
    InputError: naming ``--mesh`` when the string is malformed or does not match the
      number of devices.
  """
  n_devices = jax.device_count() if n_devices is None else n_devices
  spec = DEFAULT_MESH if not spec else spec
  shape: dict[str, int] = {}
  for part in spec.split(","):
    name, sep, size = part.strip().partition(":")
    if not sep or name not in MESH_AXES or name in shape:
      raise InputError(f"--mesh={spec!r}: expected comma-separated axis:size pairs over axes "
                       f"{MESH_AXES}, each once, e.g. --mesh=data:2,model:4.")
    try:
      shape[name] = int(size)
    except ValueError:
      raise InputError(f"--mesh={spec!r}: size {size!r} of axis {name!r} is not an integer.") from None
    if shape[name] == 0 or shape[name] < -1:
      raise InputError(f"--mesh={spec!r}: axis {name!r} must have a positive size (or -1 for the rest).")
  for name in MESH_AXES:
    shape.setdefault(name, 1)
  free = [k for k, v in shape.items() if v == -1]
  if len(free) > 1:
    raise InputError(f"--mesh={spec!r}: only one axis may be -1.")
  fixed = int(np.prod([v for v in shape.values() if v != -1]))
  if free:
    if n_devices % fixed:
      raise InputError(f"--mesh={spec!r}: {n_devices} devices do not divide over the fixed axes ({fixed}).")
    shape[free[0]] = n_devices // fixed
  total = int(np.prod(list(shape.values())))
  if total != n_devices:
    raise InputError(f"--mesh={spec!r} asks for {total} devices but {n_devices} are available;"
                     " make the axis sizes multiply to the device count (or use -1).")
  return shape


def make_mesh(spec: str | None = None) -> Mesh:
  """A ``Mesh`` with axes ``("data", "model")`` from a ``--mesh`` string (None: ``DEFAULT_MESH``)."""
  shape = parse_mesh(spec)
  return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
  """PartitionSpec for logical ``axes`` of an array of ``shape``, by the rules table.

  A dimension that does not divide its mesh axis, or a mesh axis already used by an
  earlier dimension, is left replicated.
  """
  rules = dict(LOGICAL_AXIS_RULES)
  used: set[str] = set()
  out = []
  for axis, size in zip(axes, shape):
    mesh_axis = rules.get(axis)
    if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
      out.append(None)
      continue
    used.add(mesh_axis)
    out.append(mesh_axis)
  return P(*out)


def vocab_multiple(mesh: Mesh | None) -> int:
  """Multiple the vocabulary dimension is padded to on ``mesh``."""
  if mesh is None:
    return 1
  return mesh.shape[dict(LOGICAL_AXIS_RULES)["vocab"]]


def pad_vocab(array: np.ndarray, multiple: int) -> np.ndarray:
  """Pads axis 0 of ``array`` with zero rows up to a multiple of ``multiple``."""
  extra = -array.shape[0] % multiple
  if not extra:
    return array
  out = host_memory.aligned_empty((array.shape[0] + extra,) + array.shape[1:], array.dtype)
  out[:array.shape[0]] = array
  out[array.shape[0]:] = 0
  return out


def param_sharding(path: str, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
  """NamedSharding of the param leaf ``path`` (e.g. ``"blocks/q"``)."""
  if path not in PARAM_AXES:
    raise KeyError(f"no logical axes for param {path!r}; add it to jaxsem.models.families.leaf_table")
  return NamedSharding(mesh, logical_to_spec(PARAM_AXES[path], shape, mesh))


Index = tuple[tuple[int, int], ...]  # a block of a leaf: (start, stop) per dimension


def _index_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> Index:
  return tuple(sl.indices(n)[:2] for sl, n in zip(index, shape))


class Placer:
  """Where loaded param leaves go, and which blocks of each a loader must read.

  A loader asks ``blocks(path, shape)`` for the blocks of a leaf this process holds, fills one
  host buffer per block (``dtype``, straight from the file: no float32 copy of a bfloat16 leaf)
  and hands them to ``assemble``. On a mesh, a process's blocks are the distinct shards of its
  own devices (``jax.make_array_from_callback``), so a first load on N processes reads and holds
  about 1/N of every sharded leaf; without a mesh the one block is the whole leaf.

  Attributes:
    mesh: the mesh, or None (the whole leaf on the default device, or numpy with ``host``).
    dtype: numpy dtype of the leaves (None: as given; blocks a loader reads are then float32).
    host: keep whole numpy leaves on the host (no mesh).
  """

  def __init__(self, mesh: Mesh | None, dtype=np.float32, host: bool = False):
    if host and mesh is not None:
      raise ValueError("a host placer has no mesh")
    self.mesh, self.host = mesh, host
    self.dtype = None if dtype is None else np.dtype(dtype)

  @property
  def partial(self) -> bool:
    """Whether this process holds only part of the sharded leaves (the mesh spans other processes)."""
    return self.mesh is not None and self.mesh.is_multi_process

  def padded_shape(self, path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with the vocabulary rows padded to a multiple of the model axis."""
    if self.mesh is None or path not in _VOCAB_LEAVES:
      return tuple(shape)
    m = vocab_multiple(self.mesh)
    return (-(-shape[0] // m) * m, *shape[1:])

  def blocks(self, path: str, shape: tuple[int, ...]) -> list[Index]:
    """The distinct blocks of the (padded) leaf this process's devices hold, in a fixed order."""
    padded = self.padded_shape(path, shape)
    if self.mesh is None:
      return [tuple((0, n) for n in padded)]
    sharding = param_sharding(path, padded, self.mesh)
    found = {_index_key(idx, padded) for idx in sharding.addressable_devices_indices_map(padded).values()}
    return sorted(found)

  def assemble(self, path: str, shape: tuple[int, ...], blocks: dict[Index, np.ndarray]):
    """The leaf from the blocks ``blocks(path, shape)`` named (rows past the vocabulary are zero)."""
    padded = self.padded_shape(path, shape)
    if self.mesh is None:
      (array,) = blocks.values()
      return array if self.host else jax.device_put(array)
    sharding = param_sharding(path, padded, self.mesh)
    return jax.make_array_from_callback(padded, sharding, lambda idx: blocks[_index_key(idx, padded)])

  def __call__(self, path: str, array: np.ndarray):
    """Places a whole host leaf (cast to ``dtype``, vocabulary padded) as ``assemble`` would."""
    array = np.asarray(array)
    if self.dtype is not None and array.dtype != self.dtype:
      converted = host_memory.aligned_empty(array.shape, self.dtype)
      converted[...] = array
      array = converted
    if self.mesh is None:
      return array if self.host else jax.device_put(array)
    if path in _VOCAB_LEAVES:
      array = pad_vocab(array, vocab_multiple(self.mesh))
    return jax.device_put(array, param_sharding(path, array.shape, self.mesh))


def make_placer(mesh: Mesh | None, dtype=np.float32) -> Placer:
  """The ``Placer`` of loads onto ``mesh`` (None: the default device) in ``dtype``."""
  return Placer(mesh, dtype)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of ``[B, ...]`` inputs: the batch over the data axis."""
  return NamedSharding(mesh, P(dict(LOGICAL_AXIS_RULES)["batch"], *([None] * (ndim - 1))))


def shard_params(params: dict, mesh: Mesh) -> dict:
  """Places an existing params pytree on ``mesh`` by the rules (vocab padded)."""
  place = Placer(mesh, dtype=None)
  return params_lib.unflatten({path: place(path, np.asarray(leaf))
                               for path, leaf in params_lib.flatten(params).items()})
