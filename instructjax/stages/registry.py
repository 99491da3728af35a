"""config.stage -> the function that runs it. Imported lazily so a stage's dependencies load
only when that stage runs."""
from __future__ import annotations

import importlib

from instructjax.models.config import ConfigError

STAGES = {
    "pretrain": "instructjax.stages.lm_driver",
    "sft": "instructjax.stages.lm_driver",
    "rm": "instructjax.stages.rm_driver",
    "ppo": "instructjax.stages.ppo_driver",
}


def run_stage(config, workdir: str):
  if config.stage not in STAGES:
    raise ConfigError(f"config.stage: {config.stage!r} is not one of {sorted(STAGES)}")
  return importlib.import_module(STAGES[config.stage]).run(config, workdir)
