"""Memory plans before launch: compile jaxsem's programs for a mesh, allocating nothing.

A plan reads an architecture (a Hugging Face style ``config.json``, no weights), builds
the params as ``jax.ShapeDtypeStruct`` leaves placed by the library's sharding rules
(``jaxsem.sharding``: logical axes, vocabulary padded to the mesh), and lowers and
compiles, for that mesh, the three programs a large run spends its device memory on:

* ``projection``: one ``[chunk_rows, D]`` block of the vocabulary projected on every
  direction, the sweep's sharded kernel (``kernels.projection``);
* ``sweep moments``: the ``[D, D]`` moments of the whole float32 vocabulary matrix,
  the jit-compiled core of ``kernels.spectrum.row_moments`` as the sweep calls it;
* ``steering``: one batch of ``kernels.steering.steered_readout`` after a cached prompt
  prefix (the prefix's keys and values are abstract too).
* ``hidden sweep``: one block of the hidden-state vocabulary sweep
  (``analyses.hidden_sweep_kernels.projection_block``, ``launch.sweep --space=hidden --layers=all``):
  ``HIDDEN_BLOCK`` tokens after a cached ``<bos>``, every site (the embedding and each
  block's output) centred and projected on the directions built there (directions over the
  model axis, tokens over the data axis), with the block's ``[sites, D, D]`` moments
  (first ``D`` over the model axis).

``compiled.memory_analysis()`` then gives each program's per-device argument, output,
temporary and generated-code bytes; ``total = argument + output + temp - alias``. The
params stay on the device between programs, and the sweep holds its float32
vocabulary matrix while it projects, so each program also lists what is *resident*
beside its own arguments, and ``peak = total + resident``.

The numbers come from whatever backend jax runs on; on fake CPU devices
(``--xla_force_host_platform_device_count``) they are XLA's CPU compiler's, whose
fusion and buffer assignment differ from TPU/GPU: argument and output bytes are exact,
temporaries an estimate. CPUs have no bfloat16 matmul, so XLA upcasts bfloat16 weights
to float32 for each dot; its while-loop invariant code motion would then hoist those
upcasts out of the layer scan and hold a float32 copy of every layer's weights at once
(2x the params as temporaries, which no TPU or GPU program holds). On CPU the plan
therefore compiles with that pass disabled (``CPU_COMPILER_OPTIONS``, recorded in the
provenance); the upcast of one layer at a time still counts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from importlib.metadata import version as _version
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsem import experiment_config
from jaxsem import sharding
from jaxsem.analyses import hidden_sweep
from jaxsem.analyses import hidden_sweep_kernels
from jaxsem.errors import InputError
from jaxsem.kernels import projection
from jaxsem.kernels import spectrum
from jaxsem.kernels import steering
from jaxsem.models import interventions as iv_lib
from jaxsem.models import model_configs
from jaxsem.models import params as params_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.kv_cache import PrefixCache

# Re-exported for the launcher: the architecture behind --model_config.
load_model_config = model_configs.load_model_config
model_config_names = model_configs.model_config_names
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GIB = 1 << 30
# See the module docstring: keeps the CPU compiler from holding float32 copies of all layers.
CPU_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


# ----------------------------------------------------------------------------- mesh and params


def requested_devices(spec: str) -> int | None:
  """Devices a ``--mesh`` string names (``"data:8,model:8"`` -> 64); None with ``-1`` or if malformed."""
  try:
    sizes = [int(part.partition(":")[2]) for part in spec.split(",")]
  except ValueError:
    return None
  return math.prod(sizes) if sizes and min(sizes) > 0 else None


def plan_mesh(spec: str) -> Mesh:
  """The ``("data", "model")`` mesh of ``spec`` over the first devices jax has.

  Raises:
    InputError: naming ``--mesh`` when it is malformed or needs more devices than jax has.
  """
  have = jax.device_count()
  want = requested_devices(spec)
  if want is not None and want > have:
    raise InputError(f"--mesh={spec} needs {want} devices but jax has {have}; run launch/plan.py in a new "
                     f"process (it asks XLA for {want} CPU devices) or set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={want} before jax starts.")
  shape = sharding.parse_mesh(spec, want or have)
  sizes = tuple(shape[a] for a in sharding.MESH_AXES)
  devices = np.asarray(jax.devices()[:math.prod(sizes)]).reshape(sizes)
  return Mesh(devices, sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(sizes))


def abstract_params(config: ModelConfig, mesh: Mesh, dtype=jnp.bfloat16) -> dict:
  """The params pytree as ``ShapeDtypeStruct`` leaves with their shardings; nothing is allocated.

  Shapes come from ``jax.eval_shape`` of ``params.init_params``; the vocabulary leaves
  are padded to the mesh (``sharding.vocab_multiple``) as the loaders pad them.
  """
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  shapes = jax.eval_shape(lambda k: params_lib.init_params(config, k, dtype), key)
  multiple = sharding.vocab_multiple(mesh)
  flat = {}
  for path, leaf in params_lib.flatten(shapes).items():
    shape = leaf.shape
    if path in ("embed", "unembed"):
      shape = (shape[0] + -shape[0] % multiple,) + shape[1:]
    flat[path] = jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=sharding.param_sharding(path, shape, mesh))
  return params_lib.unflatten(flat)


def bytes_per_device(tree) -> int:
  """Bytes one device holds of a pytree of sharded ``ShapeDtypeStruct``s (its largest shard)."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(tree))


def _struct(mesh: Mesh, shape: tuple[int, ...], dtype, spec: P | None = None) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P() if spec is None else spec))


def _vocab_matrix(config: ModelConfig, mesh: Mesh) -> jax.ShapeDtypeStruct:
  """The sweep's ``[vocab_size, D]`` float32 vocabulary matrix (padding rows dropped)."""
  shape = (config.vocab_size, config.d_model)
  return _struct(mesh, shape, jnp.float32, sharding.logical_to_spec(("vocab", "embed"), shape, mesh))


# ----------------------------------------------------------------------------- the programs


@dataclasses.dataclass(frozen=True)
@experiment_config.config_defaults("plan")
class PlanOptions:
  """Sizes of the planned programs (defaults: ``configs/experiments/base.py`` ``plan()``).

  Attributes:
    dtype: params (and activations) dtype, ``"bfloat16"`` or ``"float32"``.
    directions: directions of the sweep's projection (WordNet's 3,627 antonym pairs).
    chunk_rows: vocabulary rows per projection block (the sweep's ``--chunk_rows``).
    metric: projection metric, ``"cosine"`` or ``"dot"``.
    batch: steering rows per call (rounded up to the data axis, as the grid does).
    prefix_len: tokens of the cached prompt prefix shared by every steering row.
    suffix_len: tokens of each row's suffix (the word and the template's tail).
    readout_scales: ``J``, scales whose pole log-odds the steering readout returns.
    pole_tokens: ``K``, tokens per pole; the readout reads ``2 J K`` logit rows.
    site: steering intervention site (``"embed"``, ``"resid_pre.{l}"``, ``"resid_post.{l}"``).
    device_memory_gib: memory of one device (a TPU v5e chip has 16 GiB, v4 32, an H100 80);
      peaks above it are flagged.
  """

  dtype: str
  directions: int
  chunk_rows: int
  metric: str
  batch: int
  prefix_len: int
  suffix_len: int
  readout_scales: int
  pole_tokens: int
  site: str
  device_memory_gib: float


def _lower_projection(config: ModelConfig, mesh: Mesh, opts: PlanOptions):
  # The sweep's own layout and kernel (project_chunked): rows over "model", directions over "data".
  layout = projection._Layout(mesh, (opts.chunk_rows, opts.directions), "vocab", "scales")  # noqa: SLF001
  if opts.chunk_rows % layout.row_multiple:
    raise InputError(f"--chunk_rows={opts.chunk_rows} must be a multiple of {layout.row_multiple}, the mesh "
                     "axis the vocabulary rows are sharded over.")
  s_pad = opts.directions + -opts.directions % layout.dir_multiple
  block = jax.ShapeDtypeStruct((opts.chunk_rows, config.d_model), jnp.float32, sharding=layout.vectors)
  dirs = jax.ShapeDtypeStruct((s_pad, config.d_model), jnp.float32, sharding=layout.directions)
  return projection._project_core.lower(block, dirs, opts.metric, "highest", layout.out)  # noqa: SLF001


def _lower_moments(config: ModelConfig, mesh: Mesh, opts: PlanOptions):
  return spectrum._moments.lower(_vocab_matrix(config, mesh), opts.metric, config.vocab_size)  # noqa: SLF001


def _batch_rows(opts: PlanOptions, mesh: Mesh) -> int:
  """``opts.batch`` rounded up to the mesh axis of the batch, as the steering grid rounds it."""
  data = mesh.shape[dict(sharding.LOGICAL_AXIS_RULES)["batch"]]
  return -(-opts.batch // data) * data


def _lower_steering(config: ModelConfig, mesh: Mesh, opts: PlanOptions, params: dict):
  try:
    _, layer = iv_lib.parse_site(opts.site)
  except ValueError as e:
    raise InputError(f"--site: {e}.") from None
  if layer >= config.n_layers:
    raise InputError(f"--site={opts.site}: layer {layer} is out of range 0..{config.n_layers - 1}.")
  b, t, p, d = _batch_rows(opts, mesh), opts.suffix_len, opts.prefix_len, config.d_model
  j, k = opts.readout_scales, opts.pole_tokens

  def rows(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))

  kv_shape = (config.n_layers, p, config.n_kv_heads, config.head_dim)
  kv_spec = sharding.logical_to_spec(("layers", "seq", "kv_heads", "head_dim"), kv_shape, mesh)
  dtype = params["embed"].dtype
  prefix = PrefixCache(k=_struct(mesh, kv_shape, dtype, kv_spec), v=_struct(mesh, kv_shape, dtype, kv_spec),
                       length=p)
  # The log-odds readout: its tokens, pole indices and no representation.
  readout = steering.KernelReadout(logit_rows=_struct(mesh, (2 * j * k,), jnp.int32),
                                   positive=_struct(mesh, (j, k), jnp.int32),
                                   negative=_struct(mesh, (j, k), jnp.int32))
  return steering.steered_readout.lower(
      params, config, prefix, rows((b, t), jnp.int32), rows((b, t), jnp.int32), rows((b, t), jnp.float32),
      rows((b,), jnp.int32), rows((b,), jnp.int32), rows((b, d), jnp.float32), readout, site=opts.site)


HIDDEN_BLOCK = 1024  # tokens per block of the hidden sweep (its --hidden_chunk_rows default)


def _hidden_shapes(config: ModelConfig, mesh: Mesh, opts: PlanOptions) -> tuple[int, int, int]:
  """(tokens per block rounded up to the data axis, sites, directions padded to the model axis)."""
  rules = dict(sharding.LOGICAL_AXIS_RULES)
  data, model = mesh.shape[rules["batch"]], mesh.shape[rules["vocab"]]
  b = -(-HIDDEN_BLOCK // data) * data
  return b, config.n_layers + 1, opts.directions + -opts.directions % model


def _lower_hidden_sweep(config: ModelConfig, mesh: Mesh, opts: PlanOptions, params: dict):
  b, n_sites, k = _hidden_shapes(config, mesh, opts)
  d, axis = config.d_model, dict(sharding.LOGICAL_AXIS_RULES)["vocab"]
  sites = hidden_sweep.parse_layers("all", config.n_layers)

  def rows(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))

  kv_shape = (config.n_layers, 1, config.n_kv_heads, config.head_dim)  # the cached <bos>
  kv_spec = sharding.logical_to_spec(("layers", "seq", "kv_heads", "head_dim"), kv_shape, mesh)
  dtype = params["embed"].dtype
  prefix = PrefixCache(k=_struct(mesh, kv_shape, dtype, kv_spec), v=_struct(mesh, kv_shape, dtype, kv_spec),
                       length=1)
  units = _struct(mesh, (n_sites, k, d), jnp.float32, P(None, axis, None))
  mean = _struct(mesh, (n_sites, d), jnp.float32, P())
  return hidden_sweep_kernels.projection_block.lower(
      params, config, rows((b, 1), jnp.int32), rows((b, 1), jnp.int32), prefix, rows((b,), jnp.bool_), mean,
      None, units, sites=sites, metric=opts.metric, scores=True,
      out_sharding=hidden_sweep_kernels.moments_sharding(mesh))


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
  """Per-device memory of one compiled program, in bytes.

  Attributes:
    name: the program.
    shapes: what one call covers, in words.
    argument, output, temp, code, alias: ``compiled.memory_analysis()``'s sizes.
    resident: bytes held on the device beside this program's arguments.
    resident_what: what they are.
    compile_seconds: wall time of lowering and compiling.
  """

  name: str
  shapes: str
  argument: int
  output: int
  temp: int
  code: int
  alias: int
  resident: int
  resident_what: str
  compile_seconds: float

  @property
  def total(self) -> int:
    """``argument + output + temp - alias``: the program's own footprint."""
    return self.argument + self.output + self.temp - self.alias

  @property
  def peak(self) -> int:
    """``total + resident``."""
    return self.total + self.resident


def _compiler_options(mesh: Mesh) -> dict[str, str]:
  return dict(CPU_COMPILER_OPTIONS) if mesh.devices.flat[0].platform == "cpu" else {}


def _measure(name: str, shapes: str, lower, resident: int, resident_what: str,
             compiler_options: dict[str, str]) -> ProgramMemory:
  start = time.perf_counter()
  stats = lower().compile(compiler_options=compiler_options or None).memory_analysis()
  return ProgramMemory(name=name, shapes=shapes, argument=int(stats.argument_size_in_bytes),
                       output=int(stats.output_size_in_bytes), temp=int(stats.temp_size_in_bytes),
                       code=int(stats.generated_code_size_in_bytes), alias=int(stats.alias_size_in_bytes),
                       resident=resident, resident_what=resident_what,
                       compile_seconds=round(time.perf_counter() - start, 2))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A memory plan: the architecture, the mesh, the params and each program's memory.

  Attributes:
    config: the architecture.
    source: where it came from (``load_model_config``).
    mesh: axis name -> size.
    options: the planned sizes.
    params_per_device: bytes of params one device holds.
    params_total: bytes of all params (vocabulary padded), before sharding.
    programs: per-program memory.
    provenance: jax version, backend, device kind and count.
  """

  config: ModelConfig
  source: dict[str, Any]
  mesh: dict[str, int]
  options: PlanOptions
  params_per_device: int
  params_total: int
  programs: tuple[ProgramMemory, ...]
  provenance: dict[str, Any]

  def over_budget(self) -> list[str]:
    """Names of the programs whose peak exceeds ``options.device_memory_gib``."""
    return [p.name for p in self.programs if p.peak > self.options.device_memory_gib * GIB]

  def to_json(self) -> dict[str, Any]:
    """The plan as JSON-ready data (bytes, and GiB beside them)."""
    programs = []
    for p in self.programs:
      row = dataclasses.asdict(p)
      row.update(total=p.total, peak=p.peak, peak_gib=round(p.peak / GIB, 3),
                 fits=p.peak <= self.options.device_memory_gib * GIB)
      programs.append(row)
    return {"model": {**self.source, "n_params": self.config.n_params, "config": _config_json(self.config)},
            "mesh": self.mesh, "options": dataclasses.asdict(self.options),
            "params": {"bytes_per_device": self.params_per_device, "bytes_total": self.params_total,
                       "gib_per_device": round(self.params_per_device / GIB, 3)},
            "programs": programs, "over_budget": self.over_budget(), "provenance": self.provenance}


def _config_json(config: ModelConfig) -> dict[str, Any]:
  out = dataclasses.asdict(config)
  out["local_layers"] = sum(config.local_layers)  # the count; the flags are in the config file
  return out


def make_plan(config: ModelConfig, mesh: Mesh, options: PlanOptions = PlanOptions(),
              source: dict[str, Any] | None = None) -> Plan:
  """Compiles the four programs for ``mesh`` and collects their per-device memory.

  Args:
    config: the architecture.
    mesh: the mesh (its devices only compile; nothing is placed on them).
    options: sizes of the programs.
    source: provenance of ``config``.

  Returns:
    The Plan.

  Raises:
    InputError: an unknown dtype or site, or a chunk size that does not fit the mesh.
  """
  if options.dtype not in DTYPES:
    raise InputError(f"--dtype={options.dtype!r} is not supported; use one of {sorted(DTYPES)}.")
  params = abstract_params(config, mesh, DTYPES[options.dtype])
  params_dev = bytes_per_device(params)
  vocab_dev = bytes_per_device(_vocab_matrix(config, mesh))
  v, d = config.vocab_size, config.d_model
  xla = _compiler_options(mesh)
  rows = _batch_rows(options, mesh)
  programs = (
      _measure("projection", f"[{options.chunk_rows} x {d}] rows on {options.directions} directions",
               functools.partial(_lower_projection, config, mesh, options), params_dev + vocab_dev,
               "params + float32 vocabulary matrix", xla),
      _measure("sweep moments", f"[{v} x {d}] float32 vocabulary -> [{d} x {d}]",
               functools.partial(_lower_moments, config, mesh, options), params_dev, "params", xla),
      _measure("steering", f"{rows} rows x ({options.prefix_len} cached + {options.suffix_len}) tokens at "
               f"{options.site}", functools.partial(_lower_steering, config, mesh, options, params),
               0, "none (params are arguments)", xla),
      _measure("hidden sweep", "{} tokens x {} sites on {} directions, with [sites, D, D] moments".format(
          *_hidden_shapes(config, mesh, options)),
               functools.partial(_lower_hidden_sweep, config, mesh, options, params), 0,
               "none (params are arguments)", xla),
  )
  device = mesh.devices.flat[0]
  provenance = {**dict(source or {}), "mesh": dict(mesh.shape), "dtype": options.dtype,
                "jax": jax.__version__, "jaxlib": jax.lib.__version__, "jaxsem": _version("jaxsem"),
                "backend": device.platform, "device_kind": device.device_kind,
                "devices": int(mesh.devices.size), "compiler_options": xla}
  total = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(params))
  return Plan(config=config, source=dict(source or {}), mesh=dict(mesh.shape), options=options,
              params_per_device=params_dev, params_total=int(total), programs=programs, provenance=provenance)


# ----------------------------------------------------------------------------- the table


def table(plan: Plan) -> str:
  """The plan as a readable table (GiB per device)."""
  o, c, prov = plan.options, plan.config, plan.provenance
  name = (plan.source.get("hf_name") or plan.source.get("embedded_model") or plan.source.get("config_file")
          or f"{c.family} config")
  mesh = ",".join(f"{k}:{v}" for k, v in plan.mesh.items())
  budget = o.device_memory_gib * GIB
  rows = [("program", "args", "out", "temp", "code", "total", "resident", "peak", f"<= {budget / GIB:g}")]
  for p in plan.programs:
    sizes = (p.argument, p.output, p.temp, p.code, p.total, p.resident, p.peak)
    rows.append((p.name, *(f"{x / GIB:.2f}" for x in sizes), "yes" if p.peak <= budget else "NO"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [f"{name}: {c.n_params / 1e9:.2f}B params, {o.dtype}, mesh {mesh} ({prov['devices']} "
           f"{prov['device_kind']} devices)",
           f"params per device: {plan.params_per_device / GIB:.2f} GiB "
           f"(of {plan.params_total / GIB:.2f} GiB)", ""]
  for r in rows:
    lines.append("  ".join([r[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(r[1:], widths[1:])]))
  lines += [""] + [f"{p.name}: {p.shapes}; resident: {p.resident_what}; compiled in {p.compile_seconds:.1f} s"
                   for p in plan.programs]
  lines.append(f"GiB per device; total = args + out + temp - alias; peak = total + resident. From XLA's "
               f"{prov['backend']} compiler: args and out exact, temp an estimate for other chips.")
  if plan.over_budget():
    lines.append(f"warning: peak above --device_memory_gib={o.device_memory_gib:g} in "
                 f"{', '.join(plan.over_budget())}; grow the model axis or use devices with more memory.")
  return "\n".join(lines)
