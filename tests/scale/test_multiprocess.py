"""One run as two JAX processes (2 x 4 CPU devices, gloo) equals the same run in one process
with 8 devices: each host feeds its half of the global batch, the mesh spans both processes,
and host 0 alone writes the logs while both write the checkpoint."""
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from instructjax.recipe import sweeps
from instructjax.model_io import load_model, read_model_dir_config
from instructjax.models import DecoderLM
from instructjax.stages.lm import run as lm_driver
from instructjax.training.state import boxed_param_init
from instructjax.training import read_metrics

from tests.scale import proc

SFT = "configs/sft.py:tiny"
TINY_SFT = {
    "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.n_kv_heads": 1,
    "model.d_ff": 64, "data.world.num_sft": 64, "data.world.num_heldout": 16,
    "data.seq_len": 64, "train.batch_size": 8, "train.num_steps": 3, "train.log_every": 1,
    "train.eval_every": 3, "train.eval_batches": 1, "train.save_every": 3,
    "optim.warmup_steps": 1,
    # fsdp over all 8 devices: parameters and batch both span the two processes.
    "mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 1, "mesh.rules": "fsdp"}


def params_of(workdir):
  """The model dir's weights on this process's first device. Explicit shardings: the saved
  ones name a topology (2 processes) this process does not have."""
  directory = os.path.join(workdir, "model")
  cfg = read_model_dir_config(directory)[0]
  abstract = nn.meta.unbox(jax.eval_shape(boxed_param_init(DecoderLM(cfg)), jax.random.key(0)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return load_model(directory, shardings=jax.tree.map(lambda _: device, abstract))[0]


def losses(workdir, split):
  return [(r["step"], r["loss"]) for r in read_metrics(workdir, split=split)]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
  two = str(tmp_path_factory.mktemp("two_processes"))
  one = str(tmp_path_factory.mktemp("one_process"))
  launch = proc.start_multi(SFT, two, TINY_SFT, num_processes=2, devices_per_process=4)
  # The reference meanwhile, in this process on its 8 devices (tests/conftest.py).
  config = sweeps.apply_overrides(sweeps.load_config(os.path.join(proc.ROOT, SFT.split(":")[0])
                                                     + ":tiny"), TINY_SFT)
  lm_driver.run(config, one)
  outputs = launch.wait(timeout=400)
  return one, two, outputs


def test_two_process_sft_matches_one_process(sft_runs):
  one, two, outputs = sft_runs
  assert all("process 1 of 2" in o or "process 0 of 2" in o for o in outputs)
  train_one, train_two = losses(one, "train"), losses(two, "train")
  print("\nstep  one-process  two-process")
  for (s, a), (_, b) in zip(train_one, train_two):
    print(f"{s:4d}  {a:.7f}    {b:.7f}")
  assert [s for s, _ in train_two] == [1, 2, 3]  # Host 0 logs once per step.
  np.testing.assert_allclose([l for _, l in train_two], [l for _, l in train_one], rtol=2e-5)
  np.testing.assert_allclose([l for _, l in losses(two, "eval")],
                             [l for _, l in losses(one, "eval")], rtol=2e-5)
  p_one, p_two = params_of(one), params_of(two)
  for a, b in zip(jax.tree.leaves(p_one), jax.tree.leaves(p_two)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert os.listdir(os.path.join(two, "checkpoints", "3", "state"))
