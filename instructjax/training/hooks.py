"""Host-side logic the training loop runs around each jitted step.

What does not belong in the pure step plugs in here: counters, custom logging, a curriculum
that changes the next batch. (State the step itself needs, such as PPO's KL controller, lives
in the train state instead, so it is jitted and checkpointed with it.)
Anything a hook must remember across a restart lives either in its own `get_state()`/`set_state()`
(saved under the hook's `name`) or in `ctx.extra`, the loop's checkpointed host dict.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax

Metrics = Mapping[str, jax.Array]


@dataclasses.dataclass
class LoopContext:
  """What hooks may look at (and, for `extra`, change).

  Attributes:
    workdir: the run's directory.
    num_steps: the step the loop stops at.
    start_step: the step the loop started (or resumed) from.
    log_every: the loop's logging period (hooks that sync can align with it).
    extra: JSON-able host state saved in every checkpoint and restored on resume; its top-level
      int/float entries are logged as "host/<name>" at log steps.
    state: the current train state. It is donated to the next step: read it, don't keep it.
    writer: the run's `MetricsWriter`, for hooks that log their own records.
  """
  workdir: str
  num_steps: int
  start_step: int
  log_every: int
  extra: dict[str, Any]
  state: Any = None
  writer: Any = None

  def is_log_step(self, step: int) -> bool:
    return self.log_every > 0 and (step % self.log_every == 0 or step == self.num_steps)


class Hook:
  """Base class: override the methods you need. All run on every process, in loop order.

  `metrics` given to `after_step` are the step's device arrays; converting one to a Python number
  (`float(m["kl"])`) waits for the step to finish, so do it only when the logic needs the value
  (most hooks only at `ctx.is_log_step(step)`).
  """

  # Key of this hook's `get_state()` in the checkpoint; hooks without a name are not saved.
  name: str = ""

  def on_start(self, ctx: LoopContext) -> None:
    """After the loop restored (or initialized) everything, before the first step."""

  def before_step(self, step: int, batch: Any, ctx: LoopContext) -> Any:
    """Returns the batch for step `step` (e.g. with the current KL coefficient added)."""
    return batch

  def after_step(self, step: int, metrics: Metrics, ctx: LoopContext) -> Optional[Mapping[str, Any]]:
    """After step `step` ran; a returned mapping updates `ctx.extra`."""
    return None

  def on_end(self, ctx: LoopContext) -> None:
    """After the last step (also after preemption / data exhaustion), before the final save."""

  def get_state(self) -> Any:
    """JSON-able state saved with each checkpoint (when `name` is set)."""
    return None

  def set_state(self, state: Any) -> None:
    """Receives what `get_state` returned, when resuming."""


class CallableHook(Hook):
  """Adapts `fn(step, metrics) -> mapping | None`: the returned mapping updates `ctx.extra`."""

  def __init__(self, fn: Callable[[int, Metrics], Optional[Mapping[str, Any]]]):
    self.fn = fn

  def after_step(self, step: int, metrics: Metrics, ctx: LoopContext) -> Optional[Mapping[str, Any]]:
    return self.fn(step, metrics)


def as_hook(hook: Hook | Callable[[int, Metrics], Any]) -> Hook:
  if isinstance(hook, Hook):
    return hook
  if callable(hook):
    return CallableHook(hook)
  raise TypeError(f"hooks must be Hook instances or callables (step, metrics), got {hook!r}")
