"""Per-compilation XLA options of the train steps, and a jit that remembers what it wraps.

On CPU, XLA emits its own loops for elementwise fusions by default; with
`CPU_COMPILER_OPTIONS` the YNNPACK library runs them (and the dots they feed), which is faster
on the 2-core CPU (README "Performance": the tiny PPO iteration and LM step). They are passed
per compilation (`jax.jit(..., compiler_options=...)`), on a CPU backend only, and only when
this XLA knows them; INSTRUCTJAX_NO_CPU_COMPILER_OPTIONS=1 turns them off.

A jit with compiler options must be called at top level, not inside another jit: `jit`
returns a `Jitted`, which keeps the Python function and jit arguments it was made from, so a
wrapper (`training.guard_nonfinite`) re-jits the function instead of nesting the jit.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE"}
DISABLE_ENV = "INSTRUCTJAX_NO_CPU_COMPILER_OPTIONS"

_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def compiler_options() -> Optional[dict]:
  """CPU_COMPILER_OPTIONS on a CPU backend whose XLA accepts them (one tiny probe compile);
  None on other backends, with an XLA without them, or when DISABLE_ENV is set."""
  if os.environ.get(DISABLE_ENV, "") not in ("", "0") or jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(lambda x: x * 2.0, compiler_options=CPU_COMPILER_OPTIONS).lower(
        jnp.zeros((2,), jnp.float32)).compile()
  except Exception as e:  # pylint: disable=broad-except  # An XLA without the option.
    _log.info("CPU compiler options %s not used: %s", CPU_COMPILER_OPTIONS, e)
    return None
  return dict(CPU_COMPILER_OPTIONS)


@dataclasses.dataclass(frozen=True, eq=False)
class Jitted:
  """`jax.jit(fn, compiler_options=compiler_options(), **jit_kwargs)` and what it was made from.

  Calls (and `.lower`, `._cache_size`, ...) go to the jitted function; `guarded` marks one
  that `training.guard_nonfinite` already wraps.
  """
  fn: Callable
  jit_kwargs: dict
  jitted: Callable
  guarded: bool = False

  def __call__(self, *args, **kwargs):
    return self.jitted(*args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.jitted, name)


def jit(fn: Callable, *, guarded: bool = False, **jit_kwargs) -> Jitted:
  """`fn` jitted with the compiler options (a `Jitted`). Call the result at top level only."""
  return Jitted(fn, dict(jit_kwargs),
                jax.jit(fn, compiler_options=compiler_options(), **jit_kwargs), guarded)


def source(fn: Callable) -> tuple[Callable, dict[str, Any]]:
  """(Python function, jit keyword arguments) behind a `Jitted`; (fn, {}) for anything else."""
  if isinstance(fn, Jitted):
    return fn.fn, dict(fn.jit_kwargs)
  return fn, {}
