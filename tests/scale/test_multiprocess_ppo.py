"""PPO-ptx iterations as two JAX processes (2 x 4 CPU devices) equal the one-process run.

Exact equality needs a global batch whose rows do not depend on their position: greedy
rollouts (top_k=1), one minibatch per epoch and unpacked ptx rows. (With sampling, two hosts
give the same prompts in a different row order, so the noise, and the minibatches, differ.)
"""
import inspect
import json
import os

import jax
import numpy as np
import pytest

from instructjax.model_io import save_model
from instructjax.models import DecoderLM, get_preset
from instructjax.stages.ppo import run as ppo_driver
from instructjax.training.state import init_params
from instructjax.tokenizer import CharTokenizer

from tests.scale import proc

PPO = "configs/ppo.py:tiny"
TINY_PPO = {
    "data.world.num_sft": 20, "data.world.num_rm": 20, "data.world.num_ppo": 64,
    "data.world.num_heldout": 8, "data.world.num_pretrain": 40,
    "data.world.num_pretrain_heldout": 8, "data.seq_len": 32, "data.pack": False,
    "train.batch_size": 8, "train.num_steps": 2, "train.log_every": 1, "train.eval_every": 2,
    "train.eval_batches": 1, "train.save_every": 2, "optim.warmup_steps": 1,
    "value_optim.warmup_steps": 1, "ppo.rollout_batch_size": 16, "ppo.minibatch_size": 16,
    "ppo.epochs": 2, "ppo.ptx_batch_size": 16, "ppo.max_new_tokens": 6, "ppo.eval_prompts": 8,
    "ppo.top_k": 1,
    "mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 1, "mesh.rules": "fsdp"}
KEYS = ("loss", "policy_loss", "value_loss", "ptx_loss", "score", "kl", "beta",
        "pretrain_heldout_loss")


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k in KEYS + ("step", "split")}
            for line in f]


def multihost_ready() -> bool:
  """Whether ppo_driver feeds each host its slice of the global batches (the first of the
  fixes multi-host PPO needs; the test then shows whether the others are in)."""
  return "host_batch_size" in inspect.getsource(ppo_driver)


@pytest.mark.slow  # About 80 s on 2 idle cores: three processes compile the PPO iteration.
@pytest.mark.skipif(not multihost_ready(), reason=(
    "multi-host PPO needs: ppo_driver batching host_batch_size(...) rows per host and "
    "gathering eval rows (replicated outputs, all-gathered example ids); model_io.load_model "
    "restoring onto local devices when no shardings are given; ppo_state placing loaded "
    "weights from host values"))
def test_two_process_ppo_matches_one_process(tmp_path):
  cfg = get_preset("test", vocab_size=74)
  tok = CharTokenizer()
  sft, rm = str(tmp_path / "sft"), str(tmp_path / "rm")
  save_model(sft, init_params(DecoderLM(cfg), jax.random.key(0))[0], cfg, tok, head="lm")
  save_model(rm, init_params(DecoderLM(cfg, head="scalar"), jax.random.key(1))[0], cfg, tok,
             head="scalar")
  overrides = {"init_from": sft, "reward_model": rm, **TINY_PPO}
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  # The reference as a third process of the same launch: any failure ends all three at once.
  proc.Launch([*proc.multi_runs(PPO, two, overrides, num_processes=2, devices_per_process=4),
               (proc.train_command(PPO, one, overrides), proc.cpu_env(8))],
              "two-process and one-process PPO").wait(timeout=500)
  a, b = records(one), records(two)
  print("\n" + "\n".join(f"{x['split']} {x['step']}: one {x}\n{' ' * 9}two {y}"
                         for x, y in zip(a, b)))
  assert [(r["split"], r["step"]) for r in b] == [(r["split"], r["step"]) for r in a]
  for x, y in zip(a, b):
    for k in x:
      if k not in ("split", "step"):
        np.testing.assert_allclose(y[k], x[k], rtol=1e-4, atol=1e-6, err_msg=k)
