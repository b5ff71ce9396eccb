"""Multi-process runs through JAX's own distributed runtime.

Every launcher that loads a model takes the usual multi-host settings::

    # process 0 of 2 (the coordinator), then the same with --process_id=1
    python -m launch.sweep --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

or reads them from the environment: ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``, or a cluster JAX detects by itself (Cloud TPU pods, SLURM, Open MPI),
where ``jax.distributed.initialize()`` needs no arguments. All processes run the same
program on one global mesh; each holds the param shards of its own devices, and only
process 0 writes files and prints progress. A process that cannot join within
``--distributed_timeout`` seconds stops with one ``error:`` line, as does every process of
a run whose processes were given different ``--num_processes``. Once joined, a watchdog
thread in each process beats every second through the coordinator's key-value store and
watches the others' beats: when a process stops answering for ``--distributed_timeout``
seconds (killed, crashed, hung), the others stop with one ``error:`` line naming it.

On CPU, processes talk through gloo collectives, so ``2 processes x 4 devices`` on one
machine runs exactly the program of ``1 process x 8 devices``. The lines gloo prints as it
connects (``[Gloo] Rank 0 is connected to 1 peer ranks. ...``) are dropped from the output.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import os
import socket
import sys
import threading
import time
from typing import Any

from jaxsem.errors import InputError
from jaxsem.output_filter import OutputFilter

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_MESSAGE_BYTES = 1024
# JAX's own join and heartbeat timeouts run this much longer than --distributed_timeout: when one expires,
# the C++ runtime aborts the process with a stack dump, so our watchdogs must give up (with one line) first.
_JAX_GRACE_S = 30
# Where each process's watchdog posts its beats in the coordinator's key-value store.
_BEAT_DIR = "jaxsem/beat/"
_EXITED = "exited"
# Words in a runtime error that mean a collective lost its connection to another process.
_LOST_PEER_HINTS = ("gloo", "connection", "peer", "socket")
# Set by the schedulers whose clusters jax.distributed.initialize() detects by itself.
_CLUSTER_ENV = {
    "slurm": ("SLURM_JOB_ID", "SLURM_NTASKS"),
    "ompi": ("OMPI_COMM_WORLD_SIZE",),
    "tpu": ("TPU_WORKER_HOSTNAMES",),
}
# gloo (the CPU collectives) writes lines such as "[Gloo] Rank 0 is connected to 1 peer ranks. Expected
# number of connected peer ranks is : 1" straight to this file descriptor (C++ std::cout) when collectives
# are set up.
_GLOO_FD = 1
_GLOO_PREFIX = b"[Gloo]"


@dataclasses.dataclass(frozen=True)
class Settings:
  """How this process joins a multi-process run.

  Attributes:
    coordinator_address: ``host:port`` of process 0's coordinator service, or None
      (single process, or a cluster JAX detects by itself).
    num_processes: number of processes, or None.
    process_id: this process's index in ``0 .. num_processes - 1``, or None.
    auto: let ``jax.distributed.initialize()`` detect a TPU/SLURM/Open MPI cluster.
    timeout_s: seconds to wait for all processes to reach the coordinator.
    cpu_collectives: CPU collectives implementation for multi-process CPU runs.
  """

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False
  timeout_s: int = 300
  cpu_collectives: str = "gloo"

  @property
  def multi_process(self) -> bool:
    return self.auto or (self.num_processes or 1) > 1


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise InputError(f"${name}={value!r} is not an integer; set it to a number or unset it.") from None


def _detected_cluster() -> str | None:
  for name, keys in _CLUSTER_ENV.items():
    if all(os.environ.get(k) for k in keys):
      if name == "slurm" and _env_int("SLURM_NTASKS") == 1:
        continue
      if name == "ompi" and _env_int("OMPI_COMM_WORLD_SIZE") == 1:
        continue
      return name
  return None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, *, mode: str = "auto", timeout_s: int = 300) -> Settings:
  """Settings from flags, else the environment, else cluster detection.

  Args:
    coordinator_address, num_processes, process_id: the flags (None = not given).
    mode: ``"auto"`` (flags, environment, then a detected cluster), ``"on"`` (always
      call ``jax.distributed.initialize``, letting JAX detect what flags leave out),
      ``"off"`` (single process; the flags must then be unset).
    timeout_s: seconds to wait for the other processes.

  Raises:
    InputError: naming the flag when the settings are incomplete or inconsistent.
  """
  if mode not in ("auto", "on", "off"):
    raise InputError(f"--distributed={mode!r}: use auto, on or off.")
  if timeout_s <= 0:
    raise InputError(f"--distributed_timeout={timeout_s}: give a positive number of seconds.")
  address = coordinator_address or os.environ.get(ENV_ADDRESS, "").strip() or None
  n = num_processes if num_processes is not None else _env_int(ENV_PROCESSES)
  pid = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if mode == "off":
    if (n or 1) > 1:
      raise InputError(f"--distributed=off but --num_processes={n}; drop one of them.")
    return Settings(timeout_s=timeout_s)
  given = {"--coordinator_address": address, "--num_processes": n, "--process_id": pid}
  if any(v is not None for v in given.values()):
    if n is not None and n < 1:
      raise InputError(f"--num_processes={n}: give at least 1.")
    if n == 1 and not address:
      return Settings(num_processes=1, process_id=0, timeout_s=timeout_s)
    missing = [k for k, v in given.items() if v is None]
    if missing and mode != "on":
      raise InputError(f"multi-process settings are incomplete: {', '.join(missing)} not given (as a flag or "
                       f"${ENV_ADDRESS}/${ENV_PROCESSES}/${ENV_PROCESS_ID}); give all three.")
    if n is not None and pid is not None and not 0 <= pid < n:
      raise InputError(f"--process_id={pid} is outside 0..{n - 1} for --num_processes={n}.")
    if address and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
      raise InputError(f"--coordinator_address={address!r}: expected host:port, e.g. 10.0.0.1:1234.")
    return Settings(address, n, pid, auto=mode == "on", timeout_s=timeout_s)
  if mode == "on" or _detected_cluster():
    return Settings(auto=True, timeout_s=timeout_s)
  return Settings(timeout_s=timeout_s)


def initialize(settings: Settings) -> dict[str, Any]:
  """Joins the run described by ``settings`` (a no-op for a single process).

  Must run before anything touches a JAX backend. On CPU it selects gloo collectives, and drops the
  ``[Gloo] Rank ...`` lines gloo prints from this process's output (``OutputFilter``).
  JAX aborts the process (a C++ fatal error and a stack dump) when the processes do not
  all meet within its timeout, so a watchdog stops this process first, after
  ``settings.timeout_s``, with one ``error:`` line on stderr and exit status 2. Once
  joined, every process checks that the run has the ``num_processes`` it was given, and
  a ``PeerWatch`` stops it the same way when another process stops answering for
  ``settings.timeout_s`` (JAX's own heartbeat abort comes ``_JAX_GRACE_S`` later).

  Returns:
    ``{"process_index", "process_count", "coordinator_address"}`` for provenance.

  Raises:
    InputError: when JAX refuses to join (e.g. it was already initialised), or the
      processes were given different ``--num_processes`` (on every process).
  """
  import jax

  if not settings.multi_process:
    return info(settings)
  platforms = (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "").lower()
  if not platforms or "cpu" in platforms.split(",")[0]:
    jax.config.update("jax_cpu_collectives_implementation", settings.cpu_collectives)
    if settings.cpu_collectives == "gloo":
      _filter_gloo_lines()
  kwargs: dict[str, Any] = {"initialization_timeout": int(settings.timeout_s) + _JAX_GRACE_S,
                            "heartbeat_timeout_seconds": int(settings.timeout_s) + _JAX_GRACE_S}
  if settings.coordinator_address is not None:
    kwargs.update(coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
                  process_id=settings.process_id)
  _check_coordinator_port(settings)
  lock, joined = threading.Lock(), threading.Event()
  watchdog = threading.Timer(settings.timeout_s, _give_up, args=(settings, lock, joined))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # noqa: BLE001 - the runtime raises several types; all mean "could not join"
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise InputError(_join_error(settings, first, waited=False)) from None
  finally:
    watchdog.cancel()
    with lock:  # blocks while the watchdog is exiting; once set, the watchdog does nothing
      joined.set()
  _check_process_count(settings)
  _watch_peers(settings)
  return info(settings)


def _check_coordinator_port(settings: Settings) -> None:
  """On process 0: the port its coordinator will listen on must be free (JAX crashes when it is not)."""
  if settings.process_id != 0 or settings.coordinator_address is None:
    return
  port = settings.coordinator_address.rsplit(":", 1)[1]
  # Where JAX binds the coordinator: $JAX_COORDINATOR_BIND_ADDRESS, else every interface.
  host, port = (os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or f"[::]:{port}").rsplit(":", 1)
  host = host.strip("[]")
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  try:
    with socket.socket(family, socket.SOCK_STREAM) as s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
      s.bind((host, int(port)))
  except OSError as e:
    if e.errno == errno.EADDRINUSE:
      raise InputError(f"--coordinator_address={settings.coordinator_address}: port {port} is already in "
                       f"use on process 0's machine, where the coordinator must listen; choose a free "
                       f"port.") from None
  except ValueError:
    pass  # an odd bind address: JAX reports it


def _join_error(settings: Settings, reason: str, waited: bool = True) -> str:
  where = settings.coordinator_address or "the detected cluster's coordinator"
  n = f"all {settings.num_processes}" if settings.num_processes else "all"
  if not waited:
    return f"could not join the multi-process run at {where} ({reason}); check --coordinator_address."
  return (f"could not join the multi-process run at {where} within {settings.timeout_s} s ({reason}); check "
          f"--coordinator_address and that {n} processes were started, or raise --distributed_timeout.")


def _answers(address: str) -> bool:
  """True when something accepts TCP connections at ``host:port``."""
  host, port = address.rsplit(":", 1)
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
      return True
  except (OSError, ValueError):
    return False


def _give_up(settings: Settings, lock: threading.Lock, joined: threading.Event) -> None:
  """The watchdog: one ``error:`` line (as ``cli.fail`` prints it) and exit status 2, before JAX aborts."""
  lock.acquire()  # held until the process exits
  if joined.is_set():
    lock.release()
    return
  if settings.coordinator_address is None:
    reason = "the other processes did not all arrive"
  elif settings.process_id != 0 and not _answers(settings.coordinator_address):
    reason = "nothing answers at that address"
  else:
    reason = "the coordinator is up but not every process reached it"
  _exit_with(_join_error(settings, reason))


def _check_process_count(settings: Settings) -> None:
  """Stops every process, with one message, when they were given different ``num_processes``."""
  import jax

  error = None
  if settings.num_processes is not None and jax.process_count() != settings.num_processes:
    error = (f"--num_processes={settings.num_processes} on process {jax.process_index()}, but "
             f"{jax.process_count()} processes joined the run at {settings.coordinator_address}; give every "
             f"process the same --num_processes.")
  agree_any(error)


class PeerWatch:
  """Beats for this process and watches the other processes' beats, in a daemon thread.

  Every ``period_s`` it posts a counter under ``_BEAT_DIR`` in the coordinator's key-value
  store and reads everyone's. A process whose counter has not moved for ``timeout_s`` (or,
  seen from the others, process 0's coordinator not answering for that long) is lost: the thread
  prints one ``error:`` line naming it and ends this process with status 2. A process
  that ends normally posts ``"exited"`` first, so the others finishing their own work
  (process 0 writing its outputs) do not count it as lost.

  Args:
    client: the runtime's key-value client (``key_value_set``, ``key_value_dir_get``).
    process_id, num_processes: this process and the run's size.
    timeout_s: seconds of silence after which a process is lost.
    period_s: seconds between beats.
  """

  def __init__(self, client: Any, process_id: int, num_processes: int, timeout_s: float,
               period_s: float = 1.0):
    self.client, self.process_id, self.num_processes = client, process_id, num_processes
    self.timeout_s, self.period_s = timeout_s, period_s
    self.exited: set[int] = set()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="jaxsem-peer-watch", daemon=True)

  def start(self) -> "PeerWatch":
    self._thread.start()
    return self

  def stop(self) -> None:
    """Posts ``"exited"`` and stops watching (at the end of a run, before JAX shuts down)."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join(timeout=2 * self.period_s + 5)
    try:
      self.client.key_value_set(f"{_BEAT_DIR}{self.process_id}", _EXITED, allow_overwrite=True)
    except Exception:  # noqa: BLE001 - the coordinator may already be gone; nothing is left to tell
      pass

  def lost(self, beats: dict[int, str], seen: dict[int, tuple[str | None, float]], now: float) -> int | None:
    """The first other process whose beat has not changed for ``timeout_s``.

    Args:
      beats: process index -> its latest beat (a counter, or ``"exited"``); absent: none yet.
      seen: process index -> (beat, when it was first seen), updated in place.
      now: the time of ``beats`` (``time.monotonic()``).
    """
    for pid in range(self.num_processes):
      if pid == self.process_id:
        continue
      beat = beats.get(pid)
      if beat == _EXITED:
        self.exited.add(pid)
        continue
      last = seen.get(pid)
      if last is None or last[0] != beat:
        seen[pid] = (beat, now)
      elif now - last[1] > self.timeout_s:
        return pid
    return None

  def message(self, pid: int) -> str:
    what = " (the coordinator)" if pid == 0 else ""
    return (f"process {pid} of {self.num_processes}{what} stopped answering for {self.timeout_s:g} s "
            f"(it died, was killed or hangs) and the run cannot go on without it; see that process's "
            f"output, then rerun all {self.num_processes} processes (--distributed_timeout sets how long "
            f"to wait).")

  def _run(self) -> None:
    beat, seen, answered = 0, {}, time.monotonic()
    key = f"{_BEAT_DIR}{self.process_id}"
    while not self._stop.wait(self.period_s):
      now = time.monotonic()
      beat += 1
      try:
        self.client.key_value_set(key, str(beat), allow_overwrite=True)
        rows = self.client.key_value_dir_get(_BEAT_DIR)
      except Exception:  # noqa: BLE001 - the coordinator did not answer this time
        if now - answered > self.timeout_s and self.process_id != 0 and not self._stop.is_set():
          _exit_with(self.message(0))
        continue
      answered = now
      beats = {}
      for name, value in rows:
        tail = name.rsplit("/", 1)[-1]
        if tail.isdigit():
          beats[int(tail)] = value
      pid = self.lost(beats, seen, now)
      if pid is not None and not self._stop.is_set():
        _exit_with(self.message(pid))


_watch: PeerWatch | None = None


def _exit_with(message: str) -> None:
  """One ``error:`` line (as ``cli.fail`` prints it) and exit status 2, from any thread.

  ``os._exit`` runs no exit handlers: the output filter is drained here first, so that everything printed
  before comes out, then the error line.
  """
  try:
    sys.stdout.flush()
  except Exception:  # noqa: BLE001 - a broken stdout must not hide the error line
    pass
  if _filter is not None:
    _filter.close()
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(2)  # other threads may be blocked inside the runtime; only a hard exit ends the process


def _watch_peers(settings: Settings) -> None:
  """Starts this process's ``PeerWatch``, stopped at exit; a failed collective waits for its verdict."""
  global _watch
  import jax
  from jax._src import distributed as jax_distributed  # the runtime's client: no public accessor

  client = getattr(jax_distributed.global_state, "client", None)
  if client is None or _watch is not None or jax.process_count() < 2:
    return
  _watch = PeerWatch(client, jax.process_index(), jax.process_count(), settings.timeout_s).start()
  atexit.register(_watch.stop)  # runs before JAX's own shutdown (registered when jax was imported)
  previous = sys.excepthook

  def excepthook(kind, value, tb):
    # A collective with a process that died fails at once (gloo: "Connection closed by peer"); the
    # watchdog names that process within timeout_s, so wait for it rather than print a stack dump.
    runtime_error = getattr(jax.errors, "JaxRuntimeError", None)
    watch = _watch
    if (watch is not None and runtime_error is not None and isinstance(value, runtime_error)
        and any(hint in str(value).lower() for hint in _LOST_PEER_HINTS)):
      deadline = time.monotonic() + watch.timeout_s + 3 * watch.period_s
      while time.monotonic() < deadline:
        if watch.exited:
          pids = ", ".join(map(str, sorted(watch.exited)))
          _exit_with(f"process {pids} of {watch.num_processes} ended while this process still needed it "
                     f"({str(value).strip().splitlines()[0][:200]}); see that process's output.")
        time.sleep(watch.period_s / 4)
    previous(kind, value, tb)

  sys.excepthook = excepthook


_filter: OutputFilter | None = None


def _filter_gloo_lines() -> None:
  """Drops gloo's ``[Gloo] Rank ...`` lines from this process's output, until exit."""
  global _filter
  if _filter is not None:
    return
  try:
    _filter = OutputFilter(_GLOO_FD, _GLOO_PREFIX)
  except OSError:
    return  # no such descriptor (a closed stdout): nothing to filter
  atexit.register(_filter.close)


def info(settings: Settings | None = None) -> dict[str, Any]:
  """This process's place in the run, for provenance."""
  import jax

  return {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "coordinator_address": None if settings is None else settings.coordinator_address}


def is_main() -> bool:
  """True on process 0, the one that writes files and prints."""
  import jax

  return jax.process_index() == 0


def broadcast(value: Any) -> Any:
  """Process 0's ``value`` (a small numpy-able pytree) on every process; identity for one."""
  import jax

  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return multihost_utils.broadcast_one_to_all(value)


def all_true(flag: bool) -> bool:
  """True when ``flag`` holds on every process (a collective when there are several)."""
  import jax
  import numpy as np

  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))))


def _encode(error: str | None) -> "np.ndarray":
  import numpy as np

  buf = np.zeros(_MESSAGE_BYTES, np.uint8)
  if error:
    raw = error.encode("utf-8")[:_MESSAGE_BYTES - 1]
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    buf[-1] = 1
  return buf


def _raise_if_set(buf) -> None:
  if buf[-1]:
    raise InputError(bytes(buf[:-1]).rstrip(b"\0").decode("utf-8", "replace"))


def agree(error: str | None) -> None:
  """Raises process 0's ``error`` (if any) as ``InputError`` on every process.

  Checks that only process 0 makes (the out_dir lock, a writable out_dir, a resumable
  state) go through this, so that the other processes stop with the same message
  instead of waiting at the next collective.
  """
  import numpy as np

  _raise_if_set(np.asarray(broadcast(_encode(error))))


def agree_any(error: str | None) -> None:
  """Raises the first process's ``error`` (lowest index with one) as ``InputError`` on every process.

  For checks any process can fail; every process must call it.
  """
  import jax
  import numpy as np

  if jax.process_count() == 1:
    _raise_if_set(_encode(error))
    return
  from jax.experimental import multihost_utils

  bufs = np.asarray(multihost_utils.process_allgather(_encode(error))).reshape(-1, _MESSAGE_BYTES)
  for buf in bufs:
    _raise_if_set(buf)


def to_host(x) -> "np.ndarray":
  """``x`` as a numpy array on every process, gathering shards held by other processes."""
  import jax
  import numpy as np

  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
