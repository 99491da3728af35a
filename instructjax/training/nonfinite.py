"""Non-finite losses: skip the update inside jit, or find the first bad step without per-step syncs.

Why the skip happens inside the jitted step: the loop donates the state to the step, so after the
call the old buffers may already hold the new values; the host cannot "keep the previous state".
`guard_nonfinite` therefore computes the new state and selects old vs new on device, with the
finiteness of the watched metrics as predicate, while the old buffers are still alive.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.parallel import xla_options

SKIPPED = "skipped"  # Metric added by `guard_nonfinite`: 1 if this step's update was dropped.

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, Any]]]

# Codes per watched metric, reported by `nonfinite_codes`.
_FINITE, _NAN, _POSINF, _NEGINF = 0, 1, 2, 3
_CODE_NAMES = {_NAN: "nan", _POSINF: "inf", _NEGINF: "-inf"}


class NonFiniteError(FloatingPointError):
  """A watched metric (a loss) was NaN or infinite."""


def resolve_keys(metric_names: Sequence[str], keys: Sequence[str] | None) -> tuple[str, ...]:
  """The metrics to watch: `keys`, or by default every metric whose name ends with 'loss'."""
  names = list(metric_names)
  if keys is None:
    resolved = tuple(k for k in names if k.endswith("loss"))
    if not resolved:
      raise ValueError(
          f"no metric name ends with 'loss' among {sorted(names)}; name the metrics to check for "
          "non-finite values (nonfinite_keys=[...]), or pass nonfinite_keys=() to check none")
    return resolved
  missing = [k for k in keys if k not in names]
  if missing:
    raise KeyError(f"non-finite check: metrics {missing} not returned by the step "
                   f"(it returns {sorted(names)})")
  return tuple(keys)


def all_finite(metrics: Mapping[str, Any], keys: Sequence[str]) -> jax.Array:
  """Scalar bool: every element of every watched metric is finite."""
  ok = jnp.bool_(True)
  for k in keys:
    ok = ok & jnp.all(jnp.isfinite(metrics[k]))
  return ok


def guard_nonfinite(step_fn: StepFn, keys: Sequence[str] | None = None, *,
                    donate: bool = True) -> StepFn:
  """Wraps `step_fn` so that an update with a non-finite watched metric leaves the state as is.

  The wrapper is jitted with the state donated (when `donate`); `step_fn` may itself be jitted (it
  is then inlined; one from `xla_options.jit` is re-jitted with its shardings and options). The
  returned metrics gain `skipped` (int32, 1 when the update was dropped); the other metrics are
  those of the attempted update, so a NaN loss is still visible in logs.
  Shardings: the kept state is an elementwise select between old and new, so it keeps the
  state's sharding as long as `step_fn` preserves it (as a donated step must anyway).

  Args:
    step_fn: `(state, batch, rng) -> (state, metrics)`.
    keys: metric names to check; default: those ending with 'loss'.
    donate: donate the state argument.
  """
  # A step from `xla_options.jit` (compiler options: top level only) is re-jitted from its
  # Python function, with its shardings and options, rather than called inside this jit.
  inner, jit_kwargs = xla_options.source(step_fn)

  def guarded(state, batch, rng):
    new_state, metrics = inner(state, batch, rng)
    ok = all_finite(metrics, resolve_keys(metrics.keys(), keys))
    kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return kept, {**metrics, SKIPPED: jnp.logical_not(ok).astype(jnp.int32)}

  return xla_options.jit(guarded, guarded=True,
                         **{**jit_kwargs, "donate_argnums": (0,) if donate else ()})


def is_guarded(step_fn: Any) -> bool:
  """`step_fn` came from `guard_nonfinite` (run_loop does not wrap it twice)."""
  return isinstance(step_fn, xla_options.Jitted) and step_fn.guarded


def _code(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.int32(_FINITE)  # Integers cannot be non-finite.
  return jnp.where(jnp.any(jnp.isnan(x)), _NAN,
                   jnp.where(jnp.any(x == jnp.inf), _POSINF,
                             jnp.where(jnp.any(x == -jnp.inf), _NEGINF, _FINITE))).astype(jnp.int32)


@jax.jit
def _update(tracker: dict[str, jax.Array], watched: tuple[jax.Array, ...], skipped: jax.Array,
            step: jax.Array) -> dict[str, jax.Array]:
  skipped = jnp.asarray(skipped)
  codes = jnp.stack([_code(x) for x in watched]) if watched else jnp.zeros((0,), jnp.int32)
  first_bad = (tracker["first_step"] < 0) & jnp.any(codes != _FINITE)
  return {
      "first_step": jnp.where(first_bad, step.astype(jnp.int32), tracker["first_step"]),
      "codes": jnp.where(first_bad, codes, tracker["codes"]),
      "skipped": tracker["skipped"] + skipped.astype(jnp.int32),
  }


class NonfiniteTracker:
  """Remembers, on device, the first step whose watched metrics were non-finite, and counts skips.

  `update` is one tiny asynchronous jitted op per step (no device->host sync); `check` syncs and
  is meant for log/eval/save steps. The loop thus raises a few steps after the NaN at worst, but
  names the step where it first appeared, and never checkpoints the bad state.
  """

  def __init__(self, keys: Sequence[str] | None, skipped_total: int = 0):
    self._keys_arg = None if keys is None else tuple(keys)
    self.keys: tuple[str, ...] | None = None
    self._initial_skipped = int(skipped_total)
    self._state: dict[str, jax.Array] | None = None

  def update(self, step: int, metrics: Mapping[str, Any]) -> None:
    if self._state is None:
      self.keys = resolve_keys(metrics.keys(), self._keys_arg)
      self._state = {"first_step": jnp.int32(-1),
                     "codes": jnp.zeros((len(self.keys),), jnp.int32),
                     "skipped": jnp.int32(self._initial_skipped)}
      self._no_skip = jnp.int32(0)  # Reused: no host->device transfer per step.
    watched = tuple(metrics[k] for k in self.keys)
    skipped = metrics.get(SKIPPED, self._no_skip)
    self._state = _update(self._state, watched, skipped, np.int32(step))

  def fetch(self) -> tuple[int, dict[str, str], int]:
    """(first bad step or -1, {metric: 'nan'|'inf'|'-inf'} at that step, skipped total)."""
    if self._state is None:
      return -1, {}, self._initial_skipped
    host = jax.device_get(self._state)
    first = int(host["first_step"])
    bad = {k: _CODE_NAMES[int(c)] for k, c in zip(self.keys, host["codes"]) if int(c) != _FINITE}
    return first, bad, int(host["skipped"])

  def skipped_total(self) -> int:
    return self.fetch()[2]

  def raise_if_nonfinite(self) -> None:
    first, bad, _ = self.fetch()
    if first >= 0:
      raise NonFiniteError(f"step {first}: " + ", ".join(f"{k} is {v}" for k, v in bad.items()))
