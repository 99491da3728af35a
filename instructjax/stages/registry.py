"""config.stage -> the function that runs it. Imported lazily so a stage's dependencies load
only when that stage runs."""
from __future__ import annotations

import importlib

from instructjax.config import ConfigError

STAGES = {
    "pretrain": "instructjax.stages.lm.run",
    "sft": "instructjax.stages.lm.run",
    "rm": "instructjax.stages.rm.run",
    "ppo": "instructjax.stages.ppo.run",
}


def run_stage(config, workdir: str):
  if config.stage not in STAGES:
    raise ConfigError(f"config.stage: {config.stage!r} is not one of {sorted(STAGES)}")
  return importlib.import_module(STAGES[config.stage]).run(config, workdir)
