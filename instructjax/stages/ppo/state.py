"""The PPO train state: one pytree with everything an iteration reads and writes.

It is donated to the jitted iteration and checkpointed whole by `run_loop`, so the KL
controller, the step counter and the optional EMA come back on resume with the weights.
The frozen reference (SFT) and reward-model parameters live in it too: the iteration returns
them unchanged, which under donation costs nothing (XLA aliases input to output buffer).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from instructjax.models import DecoderLM
from instructjax.ops.kl import KLController
from instructjax.parallel.sharding import ShardingContext, param_shardings
from instructjax.training.state import boxed_param_init


@flax.struct.dataclass
class PPOState:
  """Policy and value model with their optimizers, frozen models, KL controller.

  Attributes:
    step: [] int32, PPO iterations done (rollout + update).
    policy_params, policy_opt_state: the policy (lm head) and its optax state.
    value_params, value_opt_state: the value model (scalar head), optimised separately.
    ref_params: the reference (SFT) policy; never updated.
    rm_params: the reward model; never updated.
    kl: the KL-coefficient controller (beta is its only leaf).
    ema_params: EMA of the policy parameters, or None when the EMA is off.
  """
  step: jax.Array
  policy_params: Any
  policy_opt_state: Any
  value_params: Any
  value_opt_state: Any
  ref_params: Any
  rm_params: Any
  kl: KLController
  ema_params: Optional[Any] = None


def ppo_state_shardings(policy_model: DecoderLM, value_model: DecoderLM, rm_model: DecoderLM,
                        policy_tx: optax.GradientTransformation,
                        value_tx: optax.GradientTransformation, kl: KLController, ema: bool,
                        ctx: ShardingContext) -> PPOState:
  """A PPOState of NamedShardings from the models' logical axes and the rules of `ctx`.

  Optimizer states are built from the *boxed* (logically annotated) abstract parameters,
  which is how their moments inherit the parameters' sharding (as in `create_train_state`).
  """
  def boxed_state(rng):
    lm = boxed_param_init(policy_model)(rng)
    value = boxed_param_init(value_model)(rng)
    rm = boxed_param_init(rm_model)(rng)
    return PPOState(step=jnp.zeros((), jnp.int32), policy_params=lm,
                    policy_opt_state=policy_tx.init(lm), value_params=value,
                    value_opt_state=value_tx.init(value), ref_params=lm, rm_params=rm,
                    kl=kl, ema_params=lm if ema else None)
  return param_shardings(ctx, jax.eval_shape(boxed_state, jax.random.key(0)))


def create_ppo_state(policy_model: DecoderLM, value_model: DecoderLM, rm_model: DecoderLM,
                     policy_tx: optax.GradientTransformation,
                     value_tx: optax.GradientTransformation, *, policy_params: Any,
                     value_params: Any, rm_params: Any, kl: KLController,
                     ema: bool = False, ref_params: Any = None,
                     ctx: Optional[ShardingContext] = None) -> tuple[PPOState, Any]:
  """PPOState (placed by the sharding rules when `ctx` is given) and its shardings (or None).

  The policy and the reference start from the same weights (`ref_params` defaults to
  `policy_params`) but every tree gets its own buffers, so donating the state never frees the
  caller's arrays, nor the reference together with the policy.
  """
  ref_params = policy_params if ref_params is None else ref_params
  if ctx is None:
    shardings = None
    own = lambda tree, _: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
    init = lambda tx, params, _: tx.init(params)
  else:
    shardings = ppo_state_shardings(policy_model, value_model, rm_model, policy_tx, value_tx,
                                    kl, ema, ctx)
    # From host memory (as create_train_state): fresh buffers, and multi-host safe, since
    # every process holds the same full values.
    own = lambda tree, sh: jax.device_put(jax.tree.map(np.asarray, tree), sh)
    init = lambda tx, params, sh: jax.jit(tx.init, out_shardings=sh)(params)
  pick = lambda name: None if shardings is None else getattr(shardings, name)
  policy = own(policy_params, pick("policy_params"))
  value = own(value_params, pick("value_params"))
  state = PPOState(
      step=own(np.zeros((), np.int32), pick("step")), policy_params=policy,
      policy_opt_state=init(policy_tx, policy, pick("policy_opt_state")), value_params=value,
      value_opt_state=init(value_tx, value, pick("value_opt_state")),
      ref_params=own(ref_params, pick("ref_params")), rm_params=own(rm_params, pick("rm_params")),
      kl=own(kl, pick("kl")), ema_params=own(policy_params, pick("ema_params")) if ema else None)
  return state, shardings
