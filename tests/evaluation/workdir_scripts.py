"""Running an evaluation-only experiments script (paired.py, prefix_effect.py) as a subprocess on
a pipeline workdir made of the tiny model directories, in a tiny InstructWorld."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pipeline_workdir(root, model_dirs) -> str:
  """A pipeline workdir layout (<stage>/model): sft and ppo_ptx over two tiny models."""
  for stage, name in (("sft", "sft"), ("ppo_ptx", "ppo")):
    os.makedirs(root / stage)
    os.symlink(model_dirs[name], root / stage / "model")
  return str(root)


def run_script(script: str, args, max_new_tokens: int) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  small_world = [f"--config.world.{k}={v}" for k, v in dict(
      num_sft=30, num_rm=30, num_ppo=30, num_heldout=4, num_pretrain=20,
      num_pretrain_heldout=2).items()]
  cmd = [sys.executable, os.path.join(ROOT, "experiments", script),
         "--config=configs/pipeline.py:tiny", f"--config.eval.max_new_tokens={max_new_tokens}",
         *small_world, "--batch_size=8", *args]
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                        check=False)
