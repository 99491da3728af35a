"""Trains one stage of the recipe.

  python experiments/train.py --config=configs/pretrain.py:tiny --workdir=runs/pretrain \
      [--config.train.num_steps=100 ...] [--distributed.mode=auto]

The stage is config.stage (pretrain, sft, rm, ppo); each stage's config names its inputs.
Re-running with the same workdir resumes from its latest checkpoint.
Multi-host: run the same command on every host with `--distributed.*` (or INSTRUCTJAX_* env
variables, or `--distributed.mode=auto` on TPU VMs/SLURM); see instructjax/distributed.py.
"""
from absl import app, flags
from ml_collections import config_flags

from instructjax.parallel import distributed
from instructjax.cli import setup_logging
from instructjax.stages.registry import run_stage

_CONFIG = config_flags.DEFINE_config_file("config", None, "stage config file[:arg]",
                                          lock_config=True)
_DISTRIBUTED = config_flags.DEFINE_config_dict("distributed", distributed.config_section())
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and the model go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  # Before the stage touches a device: the runtime must be up when the backend starts.
  distributed.initialize(distributed.merge_sections(_CONFIG.value.get("distributed"),
                                                    _DISTRIBUTED.value))
  run_stage(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
