"""Kill and signal trials: a stage killed at a random moment resumes bitwise; a recipe told to
stop in each stage finishes with the same table as an uninterrupted one.

  python experiments/reliability.py --mode=kill --stages=sft,rm,ppo --trials=4 --output=/tmp/rel
  python experiments/reliability.py --mode=signal --output=/tmp/rel

kill:   for each stage (small configs, one CPU device, a checkpoint at every step so kills land
        during orbax saves too), one uninterrupted reference run; then per trial a run killed
        with SIGKILL at a uniformly random moment of the reference's wall time, and the same
        command again until it completes. Passed when the final model's weights equal the
        reference's bitwise.
signal: the whole recipe (experiments/pipeline.py, miniature sizes) uninterrupted, then again
        in a fresh workdir, sending SIGTERM and SIGINT alternately once into each stage (when its
        directory appears) and re-running after each stop. Passed when the final results.json
        rows equal the uninterrupted run's.
Writes <output>/reliability.json and prints a markdown table.
"""
from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


SMALL_MODEL = {"model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2,
               "model.n_kv_heads": 1, "model.d_ff": 64}
STEPS = 10  # Per stage run, a checkpoint at each.
LOOP = {"train.batch_size": 8, "train.log_every": 1, "train.save_every": 1,
        "train.eval_batches": 1, "mesh.data": 1}


def stage_command(stage: str, workdir: str, models: dict, steps: int = 6) -> list[str]:
  """experiments/train.py for a small `stage` run (sft, rm or ppo)."""
  from instructjax.recipe import sweeps  # Imported here: the module must load without jax.
  loop = {**LOOP, "train.num_steps": steps, "train.eval_every": steps}
  if stage == "sft":
    config, over = "configs/sft.py:tiny", {
        **SMALL_MODEL, **loop, "data.seq_len": 64, "optim.warmup_steps": 1,
        "data.world.num_sft": 200, "data.world.num_heldout": 16}
  elif stage == "rm":
    config, over = "configs/rm.py:tiny", {
        **loop, "init_from": models["sft"], "data.seq_len": 64, "data.packed_len": 0,
        "optim.warmup_steps": 1, "data.world.num_rm": 64, "data.world.num_heldout": 8,
        "rm.norm_samples": 16, "rm.sample_batch_size": 16, "rm.max_new_tokens": 8}
  elif stage == "ppo":
    config, over = "configs/ppo.py:tiny", {
        **loop, "init_from": models["sft"], "reward_model": models["rm"], "data.seq_len": 32,
        "optim.warmup_steps": 1, "value_optim.warmup_steps": 1, "ppo.rollout_batch_size": 8,
        "ppo.minibatch_size": 8, "ppo.epochs": 1, "ppo.ptx_batch_size": 8,
        "ppo.max_new_tokens": 8, "ppo.eval_prompts": 8, "data.world.num_ppo": 64,
        "data.world.num_heldout": 8, "data.world.num_pretrain": 40,
        "data.world.num_pretrain_heldout": 8}
  else:
    raise ValueError(stage)
  return [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"--config={config}",
          f"--workdir={workdir}", *sweeps.override_flags(over)]


def cpu_env() -> dict:
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3", TOKENIZERS_PARALLELISM="false")
  return env


def make_models(root: str) -> dict:
  """A small random 'SFT' LM and a reward model (the PPO and RM stages' inputs)."""
  import jax  # pylint: disable=import-outside-toplevel
  from instructjax.model_io import save_model
  from instructjax.models import DecoderLM, get_preset
  from instructjax.tokenizer import CharTokenizer
  from instructjax.training.state import init_params
  tok = CharTokenizer()
  cfg = get_preset("test", vocab_size=tok.vocab_size, max_seq_len=96)
  out = {}
  for name, head in (("sft", "lm"), ("rm", "scalar")):
    out[name] = os.path.join(root, "inputs", name)
    if not os.path.isdir(out[name]):
      params = init_params(DecoderLM(cfg, head=head), jax.random.key(1))[0]
      save_model(out[name], params, cfg, tok, head=head, meta={"complete": True})
  return out


def run(cmd: list[str], log: str, kill_after: Optional[float] = None,
        kill_when: Optional[str] = None, signum: int = signal.SIGKILL) -> tuple[int, float, bool]:
  """(exit status, seconds, whether it was killed) of `cmd`: killed `kill_after` seconds after
  it started, or after a path matching the glob `kill_when` appears when that is given."""
  t0 = time.time()
  with open(log, "a") as f:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=f, stderr=subprocess.STDOUT)
    if kill_when is not None:
      while proc.poll() is None and not glob.glob(kill_when):
        time.sleep(0.01)
      start = time.time()
    else:
      start = t0
    killed = False
    try:
      proc.wait(timeout=max(0.0, start + (kill_after or 0.0) - time.time())
                if kill_after is not None else None)
    except subprocess.TimeoutExpired:
      proc.send_signal(signum)
      killed = True
      proc.wait()
  return proc.returncode, time.time() - t0, killed


def params_bytes(model_dir: str) -> list[bytes]:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np
  from instructjax.model_io import load_model
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(load_model(model_dir)[0])]


def kill_trials(stage: str, trials: int, root: str, rng: random.Random) -> list[dict]:
  """One reference run and `trials` killed-and-resumed runs of `stage`."""
  models = make_models(root)
  ref_dir = os.path.join(root, stage, "reference")
  shutil.rmtree(ref_dir, ignore_errors=True)
  os.makedirs(os.path.dirname(ref_dir), exist_ok=True)
  status, ref_s, _ = run(stage_command(stage, ref_dir, models, STEPS), ref_dir + ".log")
  if status != 0:
    raise RuntimeError(f"reference {stage} run failed: see {ref_dir}.log")
  reference = params_bytes(os.path.join(ref_dir, "model"))
  rows = []
  for trial in range(trials):
    workdir = os.path.join(root, stage, f"trial{trial}")
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = stage_command(stage, workdir, models, STEPS)
    if trial % 2 == 0:  # Any moment: loading, compiling, training, saving, writing the model.
      when, at = None, rng.uniform(0.1, 0.8) * ref_s
    else:  # Within 0.3 s of a checkpoint directory appearing: during an orbax save.
      step = rng.randint(1, STEPS - 1)
      # Orbax writes a step under a temporary name and renames it on commit: either counts.
      when, at = os.path.join(workdir, "checkpoints", f"{step}*"), rng.uniform(0.0, 0.3)
    _, _, killed = run(cmd, workdir + ".log", kill_after=at, kill_when=when)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    checkpoints = sorted(int(d) for d in os.listdir(ckpt_dir)
                         if d.isdigit()) if os.path.isdir(ckpt_dir) else []
    status, _, _ = run(cmd, workdir + ".log")
    same = status == 0 and params_bytes(os.path.join(workdir, "model")) == reference
    rows.append({"stage": stage, "trial": trial,
                 "kill": (f"{at:.2f} s after start" if when is None
                          else f"{at:.2f} s after checkpoint {step} started"),
                 "killed": killed, "checkpoints_at_kill": checkpoints, "resume_status": status,
                 "bitwise_equal": same})
    print(rows[-1], flush=True)
  return rows


def signal_trials(root: str) -> list[dict]:
  """The miniature recipe uninterrupted, then stopped once in each stage and re-run."""
  from instructjax.recipe import sweeps
  from instructjax.recipe.run import STAGES
  over = {}
  for s in (st.name for st in STAGES):
    over.update({f"{s}.{k}": v for k, v in SMALL_MODEL.items()})
    over.update({f"{s}.train.num_steps": 4, f"{s}.train.save_every": 2,
                 f"{s}.train.eval_every": 4, f"{s}.train.eval_batches": 1,
                 f"{s}.train.batch_size": 8, f"{s}.mesh.data": 1})
  over.update({"world.num_sft": 64, "world.num_rm": 16, "world.num_ppo": 32,
               "world.num_heldout": 8, "world.num_pretrain": 64, "world.num_pretrain_heldout": 8,
               "pretrain.data.seq_len": 64, "eval.num_prompts": 8, "eval.max_new_tokens": 12,
               "eval.batch_size": 8})
  for s in ("rm", "rm_group"):
    over.update({f"{s}.rm.norm_samples": 8, f"{s}.rm.sample_batch_size": 16})
  for s in ("ppo", "ppo_ptx", "ppo_group"):
    over.update({f"{s}.ppo.rollout_batch_size": 8, f"{s}.ppo.minibatch_size": 8,
                 f"{s}.ppo.epochs": 1, f"{s}.ppo.ptx_batch_size": 8,
                 f"{s}.ppo.eval_prompts": 8})

  def command(workdir):
    return [sys.executable, os.path.join(ROOT, "experiments", "pipeline.py"),
            "--config=configs/pipeline.py:tiny", f"--workdir={workdir}",
            *sweeps.override_flags(over)]

  def rows_of(workdir):
    with open(os.path.join(workdir, "eval", "results.json")) as f:
      return json.load(f)["rows"]

  ref = os.path.join(root, "recipe_reference")
  shutil.rmtree(ref, ignore_errors=True)
  if run(command(ref), ref + ".log")[0] != 0:
    raise RuntimeError(f"reference recipe failed: see {ref}.log")
  work = os.path.join(root, "recipe_signalled")
  shutil.rmtree(work, ignore_errors=True)
  out = []
  for i, stage in enumerate(st.name for st in STAGES):
    signum = (signal.SIGTERM, signal.SIGINT)[i % 2]
    log = work + ".log"
    with open(log, "a") as f:
      proc = subprocess.Popen(command(work), cwd=ROOT, env=cpu_env(), stdout=f,
                              stderr=subprocess.STDOUT)
      while proc.poll() is None and not os.path.isdir(os.path.join(work, stage)):
        time.sleep(0.05)
      time.sleep(random.uniform(0.0, 3.0))  # Somewhere in the stage: loading, sampling, loop.
      if proc.poll() is None:
        proc.send_signal(signum)
      status = proc.wait()
    out.append({"stage": stage, "signal": signal.Signals(signum).name, "exit_status": status})
    print(out[-1], flush=True)
  status, _, _ = run(command(work), work + ".log")
  same = status == 0 and rows_of(work) == rows_of(ref)
  out.append({"stage": "final run", "exit_status": status, "same_table": same})
  print(out[-1], flush=True)
  return out


def main(argv):
  del argv
  from instructjax.cli import setup_logging  # Here: the module must load without jax.
  setup_logging()  # It saves and loads model directories: orbax would log every file.
  f = flags.FLAGS
  os.makedirs(f.output, exist_ok=True)
  rng = random.Random(f.seed)
  random.seed(f.seed)  # The signal moments.
  if f.mode == "kill":
    rows = [r for s in f.stages for r in kill_trials(s, f.trials, f.output, rng)]
    print("\n| stage | trial | SIGKILL | checkpoints on disk then | resumed bitwise |")
    print("|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['stage']} | {r['trial']} | {r['kill']} | {r['checkpoints_at_kill']} | "
            f"{'yes' if r['bitwise_equal'] else 'NO'} |")
  else:
    rows = signal_trials(f.output)
  with open(os.path.join(f.output, f"reliability_{f.mode}.json"), "w") as out:
    json.dump(rows, out, indent=2)


if __name__ == "__main__":
  # Defined here, not at import: the tests import this module's trials.
  flags.DEFINE_enum("mode", "kill", ["kill", "signal"], "which trials")
  flags.DEFINE_list("stages", ["sft", "rm", "ppo"], "stages for --mode=kill")
  flags.DEFINE_integer("trials", 4, "kill trials per stage")
  flags.DEFINE_integer("seed", 0, "seed of the kill and signal moments")
  flags.DEFINE_string("output", "/tmp/instructjax_reliability", "where runs and results go")
  app.run(main)
