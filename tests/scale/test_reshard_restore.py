"""A checkpoint written on 8 devices with fsdp restores onto 4 devices as data x tensor.

The run trains on an fsdp=8 mesh (this process, 8 CPU devices); then (a) the Checkpointer
restores it onto a data=2 x tensor=2 mesh of 4 of the devices with the fsdp_tp rules, and (b)
train.py resumes the same workdir in a fresh 4-device process on that mesh. Both must give
back exactly the saved weights.
"""
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from instructjax import config as config_lib
from instructjax.parallel import memory
from instructjax.recipe import sweeps
from instructjax.model_io import load_model, read_model_dir_config
from instructjax.models import DecoderLM
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext, get_rules, make_mesh
from instructjax.stages.lm import run as lm_driver
from instructjax.training.state import boxed_param_init
from instructjax.training import Checkpointer, checkpoint_dir

from tests.scale import proc

PRETRAIN = "configs/pretrain.py:tiny"
STEPS = 2
TINY = {
    # Heads, KV heads and d_ff divisible by tensor=2.
    "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 4, "model.n_kv_heads": 2,
    "model.d_ff": 64, "data.world.num_pretrain": 64, "data.world.num_pretrain_heldout": 16,
    "data.seq_len": 64, "train.batch_size": 8, "train.num_steps": STEPS, "train.log_every": 1,
    "train.eval_every": STEPS, "train.eval_batches": 1, "train.save_every": STEPS,
    "optim.warmup_steps": 1}
FSDP8 = {"mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 1, "mesh.rules": "fsdp"}
DP2_TP2 = {"mesh.data": 2, "mesh.fsdp": 1, "mesh.tensor": 2, "mesh.rules": "fsdp_tp"}


def model_params(workdir):
  """The model dir's weights, placed on one device whatever topology wrote them."""
  directory = os.path.join(workdir, "model")
  cfg = read_model_dir_config(directory)[0]
  abstract = nn.meta.unbox(jax.eval_shape(boxed_param_init(DecoderLM(cfg)), jax.random.key(0)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return load_model(directory, shardings=jax.tree.map(lambda _: device, abstract))[0]


@pytest.fixture(scope="module")
def fsdp8_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fsdp8"))
  config = sweeps.apply_overrides(sweeps.load_config(os.path.join(proc.ROOT, "configs",
                                                                  "pretrain.py") + ":tiny"),
                                  {**TINY, **FSDP8})
  lm_driver.run(config, workdir)
  return workdir, config


def test_checkpointer_restores_fsdp8_state_onto_data_x_tensor(fsdp8_run):
  workdir, config = fsdp8_run
  saved = model_params(workdir)
  ctx = ShardingContext(make_mesh(2, 1, 2, devices=jax.devices()[:4]), get_rules("fsdp_tp"))
  model = DecoderLM(config_lib.to_model_config(config.model), shard=ctx)
  tx, _ = make_optimizer(config.optim, config.train.num_steps)
  target = memory.abstract_train_state(model, tx, ctx)  # Restore target: nothing allocated.
  with Checkpointer(checkpoint_dir(workdir)) as ckpt:
    assert ckpt.latest_step() == STEPS
    restored = ckpt.restore(target=target).state
  assert int(restored.step) == STEPS
  q = restored.params["layers"]["attn"]["q_kernel"]
  assert q.sharding.mesh.devices.size == 4 and q.sharding.spec[2] == "tensor"
  assert {d.id for d in q.sharding.device_set} == {d.id for d in jax.devices()[:4]}
  assert q.addressable_shards[0].data.shape == (2, 32, 2, 8)  # Heads halved, embed whole.
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moments = [x for x in jax.tree.leaves(restored.opt_state) if x.ndim]
  assert moments and any(float(np.abs(np.asarray(m)).max()) > 0 for m in moments)


def test_train_py_resumes_on_a_4_device_data_x_tensor_mesh(fsdp8_run, tmp_path):
  workdir, _ = fsdp8_run
  saved = model_params(workdir)
  # Same workdir, same step count: the stage restores the fsdp=8 checkpoint onto the new mesh
  # and writes its model dir from the restored state.
  out = proc.start_single(PRETRAIN, workdir, {**TINY, **DP2_TP2}, num_devices=4).wait()[0]
  assert f"resumed from checkpoint step {STEPS}" in out
  assert "mesh data=2 fsdp=1 tensor=2, rules fsdp_tp" in out  # The memory plan's header.
  for a, b in zip(jax.tree.leaves(model_params(workdir)), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(a, b)
