"""Multi-host start-up: `jax.distributed.initialize` from a config section or the environment.

Every process of a multi-host run executes the same program; once JAX's distributed runtime is
up, `jax.devices()` lists every host's devices, a mesh built from them spans all hosts, the
data iterators read `jax.process_index()`'s shard, and orbax writes each host's shards of a
checkpoint (the directory must then be shared: GCS, NFS, ...).

Where the coordinates come from, first match wins:
  1. the section (`--distributed.coordinator_address=10.0.0.2:1234 --distributed.num_processes=2
     --distributed.process_id=0` in experiments/train.py, or a stage config's `distributed`);
  2. INSTRUCTJAX_COORDINATOR, INSTRUCTJAX_NUM_PROCESSES, INSTRUCTJAX_PROCESS_ID;
  3. with mode "auto" only: JAX's own cluster detection (TPU VM slices, SLURM, Open MPI, GKE),
     i.e. `jax.distributed.initialize()` without arguments.
Otherwise (the default on one machine) nothing is initialised and the run is single-process.

On CPU the cross-process collectives are gloo's (`jax_cpu_collectives_implementation`); the
option only concerns the CPU client, so it is set whatever the accelerator.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Optional

import jax
import ml_collections

from instructjax.config import ConfigError

ENV_COORDINATOR = "INSTRUCTJAX_COORDINATOR"
ENV_NUM_PROCESSES = "INSTRUCTJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "INSTRUCTJAX_PROCESS_ID"
MODES = ("off", "env", "auto")
CPU_COLLECTIVES = ("gloo", "mpi", "none")

_log = logging.getLogger(__name__)


def config_section(mode: str = "env", coordinator_address: str = "", num_processes: int = 0,
                   process_id: int = -1, cpu_collectives: str = "gloo",
                   initialization_timeout: int = 300) -> ml_collections.ConfigDict:
  """The `distributed` section.

  mode: "off" never initialises; "env" (default) initialises when the section or the
    INSTRUCTJAX_* variables name a coordinator; "auto" also falls back to JAX's detection.
  coordinator_address: "host:port" of process 0's coordinator service.
  num_processes, process_id: this run's size and this process's rank (0 = coordinator).
  cpu_collectives: CPU cross-process collectives ("gloo"; "mpi" needs an MPI build).
  initialization_timeout: seconds to wait for every process to join.
  """
  return ml_collections.ConfigDict(dict(
      mode=mode, coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, cpu_collectives=cpu_collectives,
      initialization_timeout=initialization_timeout))


def merge_sections(*sections: Optional[Mapping[str, Any]]) -> ml_collections.ConfigDict:
  """Field-wise merge: a later section's value wins where it differs from the default.

  So a stage config's `distributed` section can be partly overridden by command-line flags.
  """
  merged = config_section()
  defaults = config_section()
  for section in sections:
    if not section:
      continue
    for key, value in dict(section).items():
      if key not in defaults:
        raise ConfigError(f"config.distributed.{key}: unknown key; known: {sorted(defaults)}")
      if value != defaults[key]:
        merged[key] = value
  return merged


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """What `initialize` passes to `jax.distributed.initialize` (None: JAX detects it)."""
  coordinator_address: Optional[str]
  num_processes: Optional[int]
  process_id: Optional[int]
  source: str  # "config", "env" or "jax" (JAX's cluster detection).
  cpu_collectives: str = "gloo"
  initialization_timeout: int = 300


def _env_int(environ: Mapping[str, str], name: str) -> int:
  if name not in environ:
    raise ConfigError(f"{ENV_COORDINATOR} is set but {name} is not")
  try:
    return int(environ[name])
  except ValueError:
    raise ConfigError(f"{name}={environ[name]!r} is not an integer") from None


def _check_rank(num_processes: int, process_id: int, where: str) -> None:
  if num_processes < 1:
    raise ConfigError(f"{where} num_processes must be >= 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"{where} process_id must be in [0, {num_processes}), got {process_id}")


def resolve(section: Optional[Mapping[str, Any]] = None,
            environ: Optional[Mapping[str, str]] = None) -> Optional[DistributedSpec]:
  """The spec this process should initialise with, or None to stay single-process."""
  s = merge_sections(section)
  environ = os.environ if environ is None else environ
  if s.mode not in MODES:
    raise ConfigError(f"config.distributed.mode: {s.mode!r} is not one of {MODES}")
  if s.cpu_collectives not in CPU_COLLECTIVES:
    raise ConfigError(f"config.distributed.cpu_collectives: {s.cpu_collectives!r} is not one of "
                      f"{CPU_COLLECTIVES}")
  common = dict(cpu_collectives=s.cpu_collectives,
                initialization_timeout=int(s.initialization_timeout))
  if s.mode == "off":
    return None
  if s.coordinator_address:
    _check_rank(s.num_processes, s.process_id, "config.distributed:")
    return DistributedSpec(s.coordinator_address, int(s.num_processes), int(s.process_id),
                           "config", **common)
  if environ.get(ENV_COORDINATOR):
    n, rank = _env_int(environ, ENV_NUM_PROCESSES), _env_int(environ, ENV_PROCESS_ID)
    _check_rank(n, rank, "INSTRUCTJAX_*:")
    return DistributedSpec(environ[ENV_COORDINATOR], n, rank, "env", **common)
  if s.mode == "auto":
    return DistributedSpec(None, None, None, "jax", **common)
  return None


def initialize(section: Optional[Mapping[str, Any]] = None,
               environ: Optional[Mapping[str, str]] = None) -> Optional[DistributedSpec]:
  """Starts JAX's distributed runtime if `resolve` says so. Call before any JAX computation.

  Idempotent: a second call (or one after the caller initialised JAX itself) does nothing.
  """
  spec = resolve(section, environ)
  if spec is None:
    return None
  if jax.distributed.is_initialized():
    _log.info("jax.distributed already initialised; process %d of %d", jax.process_index(),
              jax.process_count())
    return spec
  # Before the CPU backend exists: the option is read when the client is created.
  jax.config.update("jax_cpu_collectives_implementation", spec.cpu_collectives)
  try:
    jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                               num_processes=spec.num_processes, process_id=spec.process_id,
                               initialization_timeout=spec.initialization_timeout)
  except ValueError as e:
    # "auto" on a machine that is no cluster (a laptop, one GPU box): JAX detects nothing and
    # asks for a coordinator. That is a single-process run, not an error.
    if spec.source != "jax" or "coordinator_address" not in str(e):
      raise
    _log.info("distributed mode auto: no cluster detected (%s); single process", e)
    return None
  _log.info("distributed (%s): process %d of %d, %d local of %d devices, coordinator %s",
            spec.source, jax.process_index(), jax.process_count(), jax.local_device_count(),
            jax.device_count(), spec.coordinator_address or "detected by JAX")
  return spec


def host_batch_size(global_batch: int, key: str = "train.batch_size") -> int:
  """This process's rows of a global batch: every host feeds an equal slice of it.

  Batch sizes in configs are global (checked against the mesh's data-parallel size), while the
  data iterators batch per host; `jax.make_array_from_process_local_data` then assembles the
  global array from the hosts' slices.
  """
  n = jax.process_count()
  if global_batch % n:
    raise ConfigError(f"config.{key}={global_batch} is not divisible by the number of "
                      f"processes {n}")
  return global_batch // n
