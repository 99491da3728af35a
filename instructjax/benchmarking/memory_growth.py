"""XLA's temporary memory of the compiled train steps as the sequence grows; nothing runs.

Each step is lowered on abstract inputs (`jax.ShapeDtypeStruct`) and compiled exactly as the
stage compiles it; `memory_analysis().temp_size_in_bytes` is what XLA allocates besides the
arguments and outputs: activations kept for the backward pass, gradients in flight, kernel
and fusion buffers. With attention and losses linear in T, it roughly doubles per doubling
of T (README "Performance"); with [T, T] scores per head it quadruples.

    python -c "from instructjax.benchmarking import memory_growth as m; print(m.table())"
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from instructjax import config as config_lib
from instructjax.parallel import xla_options
from instructjax.models import DecoderLM, ModelConfig
from instructjax.ops import fixed_kl_controller
from instructjax.training.optim import make_optimizer
from instructjax.stages import ppo
from instructjax.stages.jit import jit_step
from instructjax.stages.lm import make_lm_train_step
from instructjax.stages.rm import make_rm_train_step
from instructjax.training.state import create_train_state, init_params

# The model of the long-sequence measurements: a llama-family decoder with a 32k vocabulary,
# small enough to compile at 8k tokens on a CPU in seconds.
LONG_CONTEXT_MODEL = ModelConfig(family="llama", vocab_size=32000, d_model=256, n_layers=2,
                                 n_heads=8, n_kv_heads=2, d_ff=512, max_seq_len=8192)
RM_RESPONSES = 4  # Packed RM rows: a prompt and 4 responses (shared-prefix attention).


def _optimizer():
  return make_optimizer(ml_collections.ConfigDict(config_lib.optim_config()), 1000)


def _spec(shape, dtype=jnp.int32):
  return jax.ShapeDtypeStruct(shape, dtype)


def temp_bytes(jitted: Callable, *args) -> int:
  """XLA's temporary bytes of `jitted` compiled for `args` (arrays or ShapeDtypeStructs)."""
  return int(jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def lm_step_temp_bytes(cfg: ModelConfig, batch: int, seq: int) -> int:
  """The LM/SFT train step (`make_lm_train_step` under `jit_step`) on [batch, seq]."""
  model = DecoderLM(cfg)
  tx, schedule = _optimizer()
  state = jax.eval_shape(lambda k: create_train_state(model, tx, k)[0], jax.random.key(0))
  data = {k: _spec((batch, seq)) for k in ("tokens", "positions", "segment_ids", "targets")}
  data["loss_mask"] = _spec((batch, seq), jnp.bool_)
  step = jit_step(make_lm_train_step(model, tx, schedule), None, None)
  return temp_bytes(step, state, data, jax.random.key(1))


def rm_step_temp_bytes(cfg: ModelConfig, prompts: int, seq: int) -> int:
  """The reward-model step on packed rows [prompts, seq]: a prompt and RM_RESPONSES responses
  per row, shared-prefix attention (the tiny RM config's layout)."""
  model = DecoderLM(cfg, head="scalar")
  tx, schedule = _optimizer()
  state = jax.eval_shape(lambda k: create_train_state(model, tx, k)[0], jax.random.key(0))
  data = {k: _spec((prompts, seq)) for k in ("tokens", "positions", "segment_ids")}
  data.update(k_mask=_spec((prompts, RM_RESPONSES), jnp.bool_),
              last_index=_spec((prompts, RM_RESPONSES)))
  step = jit_step(make_rm_train_step(model, tx, schedule), None, None)
  return temp_bytes(step, state, data, jax.random.key(1))


def ppo_update_temp_bytes(cfg: ModelConfig, rows: int, seq: int) -> int:
  """The PPO-ptx update (rewards, GAE, one epoch of `rows` one-row minibatches of policy and
  value steps) on rollouts of prompt seq // 2 + response seq // 2 tokens, with a ptx batch
  of `rows` [seq] rows."""
  pcfg = ppo.PPOConfig(rollout_batch_size=rows, minibatch_size=1, epochs=1, ptx_coef=0.2)
  models = ppo.PPOModels(policy=DecoderLM(cfg), value=DecoderLM(cfg, head="scalar"),
                         rm=DecoderLM(cfg, head="scalar"))
  policy_tx, _ = _optimizer()
  value_tx, _ = _optimizer()

  def new_state(key):
    params = lambda m: init_params(m, key)[0]
    return ppo.create_ppo_state(models.policy, models.value, models.rm, policy_tx, value_tx,
                            policy_params=params(models.policy),
                            value_params=params(models.value), rm_params=params(models.rm),
                            kl=fixed_kl_controller(0.1))[0]

  state = jax.eval_shape(new_state, jax.random.key(0))
  p, n = seq // 2, seq - seq // 2
  f32 = lambda *s: _spec(s, jnp.float32)
  ro = ppo.Rollout(
      tokens=_spec((rows, p + n)), positions=_spec((rows, p + n)),
      segment_ids=_spec((rows, p + n)), response_tokens=_spec((rows, n)),
      response_mask=_spec((rows, n), jnp.bool_), logprobs=f32(rows, n),
      ref_logprobs=f32(rows, n), sampler_logprobs=f32(rows, n), values=f32(rows, n),
      rm_score=f32(rows), score=f32(rows), finished=_spec((rows,), jnp.bool_),
      lengths=_spec((rows,)), has_prompt=_spec((rows,), jnp.bool_), prompt_len=p)
  ptx = {k: _spec((rows, seq)) for k in ("tokens", "positions", "segment_ids", "targets")}
  ptx["loss_mask"] = _spec((rows, seq), jnp.bool_)

  def update(state, ro, ptx, rng):
    adv = ppo.rewards_and_advantages(pcfg, ro, state.kl.beta)
    return ppo.ppo_update(models, pcfg, policy_tx, value_tx, 1.0, state, ro, adv, ptx, rng)

  return temp_bytes(xla_options.jit(update, donate_argnums=(0,)), state, ro, ptx,
                    jax.random.key(1))


STEPS = {"LM/SFT step [1, T]": lambda cfg, t: lm_step_temp_bytes(cfg, 1, t),
         f"RM step [1, T] ({RM_RESPONSES} packed responses)":
             lambda cfg, t: rm_step_temp_bytes(cfg, 1, t),
         "PPO-ptx update, 2 rows [T/2 + T/2], ptx [2, T]":
             lambda cfg, t: ppo_update_temp_bytes(cfg, 2, t)}


def growth_per_doubling(temp_by_seq: dict[int, int]) -> float:
  """Geometric mean of temp(2T) / temp(T) over the doublings in `temp_by_seq`."""
  seqs = sorted(temp_by_seq)
  ratios = [temp_by_seq[b] / temp_by_seq[a] for a, b in zip(seqs, seqs[1:])]
  return math.prod(ratios) ** (1 / len(ratios))


def measure(cfg: ModelConfig = LONG_CONTEXT_MODEL, seqs: Sequence[int] = (2048, 4096, 8192),
            steps: Optional[Sequence[str]] = None) -> dict[str, dict[int, int]]:
  """{step name: {T: temporary bytes}} for the steps in STEPS (all by default)."""
  return {name: {t: STEPS[name](cfg, t) for t in seqs} for name in (steps or STEPS)}


def table(results: Optional[dict[str, dict[int, int]]] = None) -> str:
  """Markdown: MiB per T and the growth per doubling, for `measure()`'s results."""
  results = results or measure()
  seqs = sorted(next(iter(results.values())))
  lines = ["| step | " + " | ".join(f"T={t}" for t in seqs) + " | x per doubling |",
           "|---|" + "---:|" * (len(seqs) + 1)]
  for name, by_seq in results.items():
    cells = " | ".join(f"{by_seq[t] / 2 ** 20:,.0f} MiB" for t in seqs)
    lines.append(f"| {name} | {cells} | {growth_per_doubling(by_seq):.2f} |")
  return "\n".join(lines)
