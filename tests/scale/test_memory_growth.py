"""Memory linear in the sequence length: XLA's temporary memory of the compiled LM step, RM
step and PPO-ptx update from T=2048 to 8192 (compiled on abstract inputs, nothing runs), and
the memory plan's formulas against XLA's memory analysis of the compiled LM step."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from instructjax import config as config_lib
from instructjax.parallel import memory
from instructjax.benchmarking import memory_growth
from instructjax.models import DecoderLM, get_preset
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext, get_rules, make_mesh
from instructjax.stages.jit import jit_step
from instructjax.stages.lm import make_lm_train_step

GIB = 2 ** 30


@pytest.mark.slow
@pytest.mark.parametrize("step", list(memory_growth.STEPS))
def test_temporary_memory_grows_linearly_with_the_sequence(step):
  # Quadratic attention or [B, T, vocab] logits would give x4 per doubling (x3.3-3.8 before).
  temp = memory_growth.measure(steps=[step])[step]
  assert memory_growth.growth_per_doubling(temp) <= 2.3, temp
  assert temp[8192] < 2 * GIB, temp


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["test", "tiny", "tiny-gpt2"])
def test_memory_plan_matches_xla_memory_analysis(preset):
  # At T=1024 the blocked kernel runs on CPU; the plan's per-device total against what XLA
  # allocates for the compiled LM step: arguments (state, batch; outputs alias the donated
  # state) plus temporaries.
  b, t = 4, 1024
  cfg = get_preset(preset, max_seq_len=t)
  ctx = ShardingContext(make_mesh(1, 1, 1, devices=jax.devices()[:1]), get_rules("dp"))
  model = DecoderLM(cfg, shard=ctx)
  tx, schedule = make_optimizer(ml_collections.ConfigDict(config_lib.optim_config()), 100)
  plan = memory.plan(model, tx, ctx, b, t)
  assert "attention blocked" in plan.table()
  state = memory.abstract_train_state(model, tx, ctx)
  data = {k: jax.ShapeDtypeStruct((b, t), jnp.int32)
          for k in ("tokens", "positions", "segment_ids", "targets")}
  data["loss_mask"] = jax.ShapeDtypeStruct((b, t), jnp.bool_)
  step = jit_step(make_lm_train_step(model, tx, schedule), ctx,
                  jax.tree.map(lambda x: x.sharding, state), data)
  xla = step.lower(state, data, jax.random.key(0)).compile().memory_analysis()
  actual = xla.argument_size_in_bytes + xla.temp_size_in_bytes
  assert 0.8 < plan.per_device_total / actual < 1.2, (plan.per_device_total, actual)
