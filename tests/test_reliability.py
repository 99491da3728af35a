"""Killed and signalled runs, in fresh processes (experiments/reliability.py has the longer
trials): a SIGKILL at a random moment, during orbax saves included, resumes bitwise; SIGTERM to
one host of a two-process run saves on both and stops without a final model."""
import importlib.util
import os
import random
import signal
import time

import pytest

from instructjax.stages import runner
from tests.scale import proc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
  spec = importlib.util.spec_from_file_location(
      "reliability", os.path.join(ROOT, "experiments", "reliability.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
@pytest.mark.parametrize("stage,seed", [("sft", 1), ("rm", 2), ("ppo", 3)])
def test_a_killed_stage_resumes_bitwise(stage, seed, tmp_path):
  rel = load_script()
  rows = rel.kill_trials(stage, 1, str(tmp_path), random.Random(seed))
  print(rows)
  assert rows[0]["resume_status"] == 0 and rows[0]["bitwise_equal"]


@pytest.mark.slow
def test_sigterm_to_one_host_saves_on_both_and_leaves_no_model(tmp_path):
  overrides = {
      "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.n_kv_heads": 1,
      "model.d_ff": 64, "data.world.num_sft": 64, "data.world.num_heldout": 16,
      "data.seq_len": 64, "train.batch_size": 8, "train.num_steps": 400, "train.log_every": 1,
      "train.eval_every": 400, "train.eval_batches": 1, "train.save_every": 400,
      "optim.warmup_steps": 1, "mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 1,
      "mesh.rules": "fsdp"}
  workdir = str(tmp_path / "w")
  launch = proc.start_multi("configs/sft.py:tiny", workdir, overrides, num_processes=2,
                            devices_per_process=2)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and not (
      os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3):
    time.sleep(0.5)
  launch.procs[0].send_signal(signal.SIGTERM)  # A preempted VM: one host hears it first.
  deadline = time.time() + 240
  while time.time() < deadline and any(p.poll() is None for p in launch.procs):
    time.sleep(0.5)
  outputs = [open(log.name).read() for log in launch.logs]
  codes = [p.poll() for p in launch.procs]
  for p in launch.procs:
    if p.poll() is None:
      p.kill()
  assert codes == [128 + signal.SIGTERM] * 2, (codes, [o[-2000:] for o in outputs])
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert len(steps) == 1 and 3 <= steps[0] < 400  # Saved where the hosts agreed to stop.
  assert not runner.is_complete(os.path.join(workdir, "model"))
  assert not os.path.exists(os.path.join(workdir, "model"))
