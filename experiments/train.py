"""Trains one stage of the recipe.

  python experiments/train.py --config=configs/pretrain.py:tiny --workdir=runs/pretrain \
      [--config.train.num_steps=100 ...] [--distributed.mode=auto]

The stage is config.stage (pretrain, sft, rm, ppo); each stage's config names its inputs.
Re-running with the same workdir resumes from its latest checkpoint.
Multi-host: run the same command on every host with `--distributed.*` (or INSTRUCTJAX_* env
variables, or `--distributed.mode=auto` on TPU VMs/SLURM); see instructjax/parallel/distributed.py.
A mistake in the config or the data is one `error:` line naming the key or the file and line
(INSTRUCTJAX_TRACEBACK=1 shows the traceback), exit status 2.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from instructjax.cli import config_value, parse_flags, run_main, setup_logging
from instructjax.parallel import distributed
from instructjax.stages.registry import run_stage

_CONFIG = config_flags.DEFINE_config_file("config", None, "stage config file[:arg]",
                                          lock_config=True)
_DISTRIBUTED = config_flags.DEFINE_config_dict("distributed", distributed.config_section())
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and the model go")
flags.mark_flags_as_required(["config", "workdir"])


def train() -> dict:
  config = config_value(_CONFIG)
  # Before the stage touches a device: the runtime must be up when the backend starts.
  distributed.initialize(distributed.merge_sections(config.get("distributed"),
                                                    _DISTRIBUTED.value))
  return run_stage(config, _WORKDIR.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  sys.exit(run_main(train))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
