"""Compiled functions kept with the object whose lifetime they share (a loaded model, a run),
never in a module-level cache: a module cache keeps every model it ever saw alive, and hides
from the caller when a call compiles."""
from __future__ import annotations

from typing import Any, Callable, Hashable


class JitCache:
  """`get(key, build)`: the function `build()` made for `key` on first use, then the same one.

  `key` names what shapes the compiled function besides the owner (a sampling config, a
  temperature, a sharding context); jax.jit itself compiles once per input shape.
  """

  def __init__(self):
    self._fns: dict[Hashable, Callable] = {}

  def get(self, key: Hashable, build: Callable[[], Callable]) -> Callable:
    fn = self._fns.get(key)
    if fn is None:
      fn = self._fns[key] = build()
    return fn

  def __len__(self) -> int:
    return len(self._fns)


def cached(cache: "JitCache | None", key: Hashable, build: Callable[[], Callable]) -> Any:
  """`cache.get(key, build)`, or a fresh `build()` when there is no cache."""
  return build() if cache is None else cache.get(key, build)
