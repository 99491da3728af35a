"""jit with shardings from the rules and the train state donated, shared by every stage."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from instructjax.parallel import xla_options
from instructjax.parallel.sharding import ShardingContext


def batch_shardings(ctx: ShardingContext, batch_spec: Mapping[str, Any]) -> dict:
  """Each array of a batch split along its leading (batch) axis over (data, fsdp)."""
  return {k: ctx.batch_sharding(len(v.shape)) for k, v in batch_spec.items()}


def jit_step(step_fn: Callable, ctx: Optional[ShardingContext], state_shardings: Any,
             batch_spec: Optional[Mapping[str, Any]] = None, donate: bool = True) -> Callable:
  """`step_fn(state, batch, rng) -> (state, metrics)` jitted with in/out shardings.

  The state is donated: its buffers are reused for the new state, halving peak state memory.
  Without a sharding context this is plain jit (single device). Compiled with
  `xla_options.compiler_options()`: call the result at top level, not inside another jit.
  """
  donate_argnums = (0,) if donate else ()
  if ctx is None:
    return xla_options.jit(step_fn, donate_argnums=donate_argnums)
  batch_sh = batch_shardings(ctx, batch_spec) if batch_spec is not None else None
  return xla_options.jit(step_fn, in_shardings=(state_shardings, batch_sh, ctx.replicated()),
                         out_shardings=(state_shardings, ctx.replicated()),
                         donate_argnums=donate_argnums)
