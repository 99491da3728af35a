"""The whole recipe over several seeds, then mean and 95% confidence interval per model and
number, each seed's row, the targets seed by seed, and plots with error bars.

  python experiments/seeds.py --seeds=0,1,2 --root=runs/seeds
  python experiments/seeds.py --seeds=0,1,2 --root=runs/seeds --processes=3 \
      --override=--config.ppo.train.num_steps=60

Seed s runs `experiments/pipeline.py` in <root>/seed_<s> with every stage's seed and the
evaluation's set to s (`--world_seed=seed` also draws another InstructWorld sample per seed;
by default the world, and so the held-out prompts, are the same for every seed). A seed whose
pipeline finished is reused; an unfinished one resumes; a workdir made with other settings is
refused. Results: <root>/seeds.md, seeds.json, seeds.png, seeds_curves.png.
"""
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from typing import Sequence

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The recipe's stages (instructjax/recipe/run.py STAGES), named here so that this script
# starts without importing jax.
STAGES = ("pretrain", "sft", "rm", "ppo", "ppo_ptx", "rm_group", "ppo_group")
SETTINGS_FILE = "seed_settings.json"

def define_flags() -> None:
  """Defined when run as a script only: tests import this module beside other scripts that
  define flags of the same names (--config)."""
  flags.DEFINE_string("config", "configs/pipeline.py:tiny", "pipeline config file[:arg]")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds to run")
  flags.DEFINE_string("root", "runs/seeds", "one sub-directory per seed, and the tables")
  flags.DEFINE_integer(
      "processes", max(1, (os.cpu_count() or 1) // 2),
      "seeds run at once (each pipeline uses several cores; default: half the cores)")
  flags.DEFINE_enum("world_seed", "same", ["same", "seed"],
                    "same: one InstructWorld for all seeds; seed: one per seed")
  flags.DEFINE_multi_string("override", [],
                            "a --config.<key>=<value> given to every seed's pipeline")


def settings_of(seed: int, config: str, world_seed: str = "same",
                overrides: Sequence[str] = ()) -> dict:
  """What makes a seed's run what it is (not where it lives)."""
  return {"config": config, "seed": seed, "world_seed": world_seed,
          "overrides": list(overrides)}


def seed_command(settings: dict, workdir: str) -> list[str]:
  seed = settings["seed"]
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "pipeline.py"),
         f"--config={settings['config']}", f"--workdir={workdir}", f"--config.seed={seed}"]
  cmd += [f"--config.{stage}.seed={seed}" for stage in STAGES]
  if settings["world_seed"] == "seed":
    cmd.append(f"--config.world.seed={seed}")
  return cmd + settings["overrides"]


def check_workdir(workdir: str, settings: dict) -> None:
  path = os.path.join(workdir, SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    if before != settings:
      raise app.UsageError(f"{workdir} was run with other settings ({before}, now {settings}): "
                           "use another --root")


def is_finished(workdir: str) -> bool:
  """The pipeline ended: its evaluation is written after every stage completed."""
  return os.path.exists(os.path.join(workdir, "eval", "results.json"))


def run_seed(settings: dict, workdir: str) -> tuple[int, int, float]:
  """(seed, exit status, seconds); the pipeline's output goes to <workdir>.log."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, SETTINGS_FILE), "w") as f:
    json.dump(settings, f, indent=2)
  t0 = time.time()
  with open(workdir + ".log", "a") as log:
    status = subprocess.call(seed_command(settings, workdir), stdout=log,
                             stderr=subprocess.STDOUT, cwd=ROOT)
  return settings["seed"], status, time.time() - t0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  seeds = [int(s) for s in f.seeds]
  root = os.path.abspath(f.root)
  workdirs = {s: os.path.join(root, f"seed_{s}") for s in seeds}
  settings = {s: settings_of(s, f.config, f.world_seed, f.override) for s in seeds}
  for s, d in workdirs.items():
    check_workdir(d, settings[s])
  todo = [s for s in seeds if not is_finished(workdirs[s])]
  reused = [s for s in seeds if s not in todo]
  if reused:
    print(f"reusing finished seeds {reused}")
  failed = []
  with concurrent.futures.ThreadPoolExecutor(max(1, f.processes)) as pool:
    futures = [pool.submit(run_seed, settings[s], workdirs[s]) for s in todo]
    for future in concurrent.futures.as_completed(futures):
      seed, status, seconds = future.result()
      print(f"seed {seed}: exit {status} after {seconds:.0f} s (log {workdirs[seed]}.log)")
      if status != 0 or not is_finished(workdirs[seed]):
        failed.append(seed)
  from instructjax.recipe.seeds import write_report  # pylint: disable=g-import-not-at-top
  done = {s: d for s, d in workdirs.items() if s not in failed}
  if not done:
    print(f"no seed finished: see the logs in {root}")
    return 1
  paths = write_report(done, root, missing=sorted(failed))
  with open(paths["markdown"]) as f:
    print(f.read())
  print("written: " + ", ".join(paths.values()))
  return 1 if failed else 0


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
