"""Trains one stage of the recipe.

  python experiments/train.py --config=configs/pretrain.py:tiny --workdir=runs/pretrain \
      [--config.train.num_steps=100 ...]

The stage is config.stage (pretrain, sft, rm, ppo); each stage's config names its inputs.
Re-running with the same workdir resumes from its latest checkpoint.
"""
from absl import app, flags
from ml_collections import config_flags

from instructjax.logging_setup import setup_logging
from instructjax.stages.registry import run_stage

_CONFIG = config_flags.DEFINE_config_file("config", None, "stage config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and the model go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  run_stage(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
