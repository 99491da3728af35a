"""Timing of jitted functions: compile once, warm up, repeat, report the median.

Every timed call ends with `jax.block_until_ready` on its outputs, so a time is the
wall-clock time of the computation, not of its dispatch. Stateful steps (the state donated
and returned) thread their state through the repetitions.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds of `reps` timed calls after `warmup` untimed ones."""
  seconds: tuple[float, ...]
  warmup: int

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def min(self) -> float:
    return min(self.seconds)

  @property
  def max(self) -> float:
    return max(self.seconds)

  def to_dict(self) -> dict:
    return {"median_s": self.median, "min_s": self.min, "max_s": self.max,
            "reps": len(self.seconds), "warmup": self.warmup,
            "all_s": [round(s, 6) for s in self.seconds]}


def compile_seconds(jitted: Callable, *args, **kwargs) -> tuple[Any, float]:
  """(compiled executable, seconds to lower + compile it for these arguments)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  return compiled, time.perf_counter() - start


def time_calls(fn: Callable[[], Any], reps: int = 5, warmup: int = 1) -> Timing:
  """Times `fn()` (no state): `warmup` untimed calls, then `reps` timed ones."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  out = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - start)
  return Timing(tuple(out), warmup)


def time_with_setup(prepare: Callable[[], Any], fn: Callable[[Any], Any], reps: int = 5,
                    warmup: int = 1) -> Timing:
  """Times `fn(prepare())`, `prepare()` untimed each call (fresh inputs for a donating fn)."""
  out = []
  for i in range(warmup + reps):
    x = jax.block_until_ready(prepare())
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    if i >= warmup:
      out.append(time.perf_counter() - start)
  return Timing(tuple(out), warmup)


def time_stateful(step: Callable[..., tuple[Any, Any]], state: Any, args: Sequence[Any] = (),
                  reps: int = 5, warmup: int = 1,
                  vary: Callable[[int], Sequence[Any]] | None = None) -> tuple[Timing, Any]:
  """Times `state, aux = step(state, *args)` threading the (donated) state.

  `vary(i)`, when given, supplies the arguments of call i instead of `args` (e.g. a fresh
  rng per step). Returns (timing, final state).
  """
  i = 0

  def call(s):
    nonlocal i
    a = vary(i) if vary is not None else args
    i += 1
    return step(s, *a)

  for _ in range(warmup):
    state, aux = call(state)
    jax.block_until_ready((state, aux))
  out = []
  for _ in range(reps):
    start = time.perf_counter()
    state, aux = call(state)
    jax.block_until_ready((state, aux))
    out.append(time.perf_counter() - start)
  return Timing(tuple(out), warmup), state


__all__ = ["Timing", "compile_seconds", "time_calls", "time_stateful", "time_with_setup"]
