"""Train state as a pytree, initialised directly into its sharded layout."""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from instructjax.models import DecoderLM
from instructjax.parallel.sharding import ShardingContext, param_shardings


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def dummy_inputs(seq_len: int = 8):
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return tokens, jnp.arange(seq_len, dtype=jnp.int32)[None], jnp.ones((1, seq_len), jnp.int32)


def boxed_param_init(model: DecoderLM) -> Callable[[jax.Array], Any]:
  """rng -> params still wrapped in nn.LogicallyPartitioned (they carry logical axis names)."""
  def init(rng):
    return model.init(rng, *dummy_inputs())["params"]
  return init


def init_params(model: DecoderLM, rng: jax.Array, ctx: Optional[ShardingContext] = None):
  """Parameters (plain arrays), created sharded when `ctx` is given. Returns (params, shardings)."""
  init = boxed_param_init(model)
  if ctx is None:
    return nn.meta.unbox(init(rng)), None
  shardings = param_shardings(ctx, jax.eval_shape(init, rng))
  params = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return params, shardings


def state_shardings(ctx: ShardingContext, boxed_init: Callable[[], Any]):
  """Shardings for a state whose boxed (logically annotated) form `boxed_init()` builds."""
  return param_shardings(ctx, jax.eval_shape(boxed_init))


def create_train_state(model: DecoderLM, tx: optax.GradientTransformation, rng: jax.Array,
                       ctx: Optional[ShardingContext] = None, params: Any = None):
  """TrainState (and its shardings) with optimizer state laid out like the parameters.

  The optimizer is initialised on the *boxed* parameters so its moments inherit the logical
  axis names, which is how they get the same sharding as the weights. With `params` given
  (e.g. loaded from a checkpoint) they are placed into that layout instead of initialised.
  """
  init = boxed_param_init(model)

  def boxed_state(r):
    boxed = init(r)
    return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed))

  if ctx is None:
    if params is None:
      return nn.meta.unbox(boxed_state(rng)), None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)), None
  shardings = param_shardings(ctx, jax.eval_shape(boxed_state, rng))
  if params is None:
    state = jax.jit(lambda r: nn.meta.unbox(boxed_state(r)), out_shardings=shardings)(rng)
    return state, shardings
  # From host memory: every process holds the same full values, and device_put of host arrays
  # onto a sharding that spans other processes' devices is allowed where a device array's is not.
  params = jax.device_put(jax.tree.map(np.asarray, params), shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  return TrainState(step=step, params=params, opt_state=opt_state), shardings
