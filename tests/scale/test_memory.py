"""Memory plans: sharded init traces without allocating, per-device bytes follow the mesh, and
the activation formula matches the residuals JAX actually saves."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import config as config_lib
from instructjax.parallel import memory
from instructjax.models import PRESET_NAMES, DecoderLM, get_preset
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext, get_rules, make_mesh
from instructjax.stages.lm import lm_loss
from instructjax.training.state import boxed_param_init

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIB = 2 ** 30


def adamw():
  return make_optimizer(config_lib.optim_config(), total_steps=100)[0]


def fsdp_ctx(n=8):
  return ShardingContext(make_mesh(1, n, 1), get_rules("fsdp"))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_traces_sharded_without_allocating(name):
  ctx = fsdp_ctx()
  before = {id(x) for x in jax.live_arrays()}
  state = memory.abstract_train_state(DecoderLM(get_preset(name), shard=ctx), adamw(), ctx)
  leaves = jax.tree.leaves(state)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  new = [x for x in jax.live_arrays() if id(x) not in before]
  assert sum(x.nbytes for x in new) < 2 ** 20  # At most the rng key, never a weight.
  assert all(x.sharding.mesh.size == 8 for x in leaves)

  total, per_device = memory.tree_bytes(state.params)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  assert total == n * jnp.dtype(get_preset(name).param_dtype).itemsize
  # fsdp=8 splits every matrix along embed; only norms and biases stay whole.
  assert total / 8 <= per_device <= total / 8 * 1.1, (per_device, total)
  opt_total, opt_local = memory.tree_bytes(state.opt_state)
  assert opt_total >= 2 * total and opt_local <= 2.2 * per_device  # AdamW's two moments.


def test_llama_8b_plan_on_fsdp8():
  ctx = fsdp_ctx()
  cfg = get_preset("llama-8b")
  plan = memory.plan(DecoderLM(cfg, shard=ctx), adamw(), ctx, batch=8, seq=2048,
                     rules_name="fsdp", label="llama-8b", capacity=95 * GIB)
  assert plan.num_params == pytest.approx(cfg.num_params(), rel=1e-4)  # Norms add a little.
  params = plan.row("parameters (float32)")
  assert params.total == plan.num_params * 4
  assert params.per_device == pytest.approx(params.total / 8, rel=0.01)
  assert plan.row("optimizer state").per_device == pytest.approx(2 * params.per_device, rel=0.01)
  # remat "full": one [1, 2048, 4096] bf16 block input per layer and device.
  assert plan.row("activations: 32 layers saved").per_device == 32 * 2048 * 4096 * 2
  assert plan.fits and "fits" in plan.table() and "llama-8b" in plan.table()
  small = memory.plan(DecoderLM(cfg, shard=ctx), adamw(), ctx, batch=8, seq=2048,
                      capacity=16 * GIB)
  assert small.fits is False and "DOES NOT FIT" in small.table()


def test_batch_must_divide_the_data_parallel_size():
  ctx = fsdp_ctx()
  with pytest.raises(ValueError, match="data-parallel"):
    memory.plan(DecoderLM(get_preset("test"), shard=ctx), adamw(), ctx, batch=6, seq=16)


def test_activations_shard_over_batch_and_tensor():
  cfg = get_preset("test")
  dp = ShardingContext(make_mesh(8, 1, 1), get_rules("dp"))
  tp = ShardingContext(make_mesh(4, 1, 2), get_rules("fsdp_tp"))
  none = memory.sum_bytes(memory.layer_tensors(cfg, 8, 64, "none"), None)[1]
  assert memory.sum_bytes(memory.layer_tensors(cfg, 8, 64, "none"), dp)[1] * 8 == none
  # Heads and MLP split over tensor=2 as well; the [B, T, d] stream is not.
  local_tp = memory.sum_bytes(memory.layer_tensors(cfg, 8, 64, "none"), tp)[1]
  assert none / 8 < local_tp < none / 4
  full = memory.sum_bytes(memory.layer_tensors(cfg, 8, 64, "full"), None)[0]
  assert full == 8 * 64 * cfg.d_model * 4


@pytest.mark.parametrize("family,dtype,attention", [
    ("test", "float32", "reference"), ("test", "bfloat16", "reference"),
    ("tiny-gpt2", "bfloat16", "reference"), ("qwen2", "float32", "reference"),
    ("test", "float32", "blocked"), ("tiny-gpt2", "bfloat16", "blocked")])
def test_formula_matches_jax_saved_residuals(family, dtype, attention):
  ad_checkpoint = pytest.importorskip("jax._src.ad_checkpoint")
  b, t = 4, 64
  for remat in memory.REMAT_POLICIES:
    if family == "qwen2":
      cfg = get_preset("test", family="qwen2", remat=remat, dtype=dtype, attention=attention)
    else:
      cfg = get_preset(family, remat=remat, dtype=dtype, n_layers=3, attention=attention)
    model = DecoderLM(cfg)
    params = nn.meta.unbox(jax.eval_shape(boxed_param_init(model), jax.random.key(0)))
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.int32)
             for k in ("tokens", "positions", "segment_ids", "targets", "loss_mask")}
    residuals = ad_checkpoint.saved_residuals(lambda p, x: lm_loss(model, p, x)[0], params, batch)
    actual = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, src in residuals
                 if "argument" not in src)  # Parameters and inputs are not activations.
    rows = memory.activation_rows(cfg, None, b, t, params, attention)
    estimate = sum(r.total for r in rows if "recomputed" not in r.name
                   and "attention blocks" not in r.name)  # Transients, not residuals.
    assert 0.9 < estimate / actual < 1.1, (family, dtype, remat, estimate, actual)


def test_memory_plan_cli_prints_the_table():
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "memory_plan.py"), "--preset=llama-8b",
       "--mesh=data=1,fsdp=8,tensor=1", "--rules=fsdp", "--batch=8", "--seq=2048",
       "--hbm_gib=95"], capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
      check=True, timeout=120).stdout
  assert "| parameters (float32) | 3.74 GiB | 29.92 GiB |" in out
  assert "fits" in out and "mesh data=1 fsdp=8 tensor=1" in out
