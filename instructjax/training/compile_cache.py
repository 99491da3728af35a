"""JAX's persistent compilation cache, kept in a run's directory.

A process that compiles the same computation more than once (the recipe's evaluation loads
several models of one architecture, each with its own jitted functions; PPO-ptx and the
group-conditioned PPO-ptx compile the same steps) then compiles it once, and a rerun of the
same run compiles nothing it compiled before. Executables are XLA's own: results are bitwise
those of a run without the cache.
"""
from __future__ import annotations

import os

import jax

# Compilations shorter than this are not written (JAX's default is 1 s): the evaluation's
# repeated functions take a fraction of a second to a few seconds each on a CPU.
MIN_COMPILE_TIME_S = 0.2


def enable(directory: str, min_compile_time_s: float = MIN_COMPILE_TIME_S) -> str:
  """Points this process's persistent compilation cache at `directory` (created); returns it.

  Must run before the process compiles anything: JAX decides once, at its first compilation,
  whether a persistent cache is in use.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
  return directory
