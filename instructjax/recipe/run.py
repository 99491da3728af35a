"""The whole recipe in one run: pretrain -> SFT -> RM (SFT samples ranked by the simulated
labelers) -> PPO and PPO-ptx -> group-conditioned RM and PPO-ptx -> evaluation.

Each stage trains in `<workdir>/<stage>` with its own config (config.<stage>); a stage whose
model directory is complete is reused, and an interrupted one resumes from its checkpoint, so
re-running the same command continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax

from instructjax import config as config_lib
from instructjax.model_io import MODEL_CONFIG_FILE
from instructjax.stages.registry import run_stage

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # Sub-config of the pipeline config and sub-directory of the workdir.
  inputs: dict  # Config key -> name of the stage whose model it reads.


STAGES = (
    Stage("pretrain", {}),
    Stage("sft", {"init_from": "pretrain"}),
    Stage("rm", {"init_from": "sft"}),
    Stage("ppo", {"init_from": "sft", "reward_model": "rm"}),
    Stage("ppo_ptx", {"init_from": "sft", "reward_model": "rm"}),
    Stage("rm_group", {"init_from": "sft"}),
    Stage("ppo_group", {"init_from": "sft", "reward_model": "rm_group"}),
)


def model_path(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, "model")


def is_done(workdir: str, stage: str) -> bool:
  # model_config.json is written last by model_io.save_model: its presence means complete.
  return os.path.isfile(os.path.join(model_path(workdir, stage), MODEL_CONFIG_FILE))


def stage_config(config, stage: Stage, workdir: str):
  """The stage's config with its inputs pointed at earlier stages and the shared world."""
  c = config[stage.name]
  with c.unlocked():
    for key, source in stage.inputs.items():
      c[key] = model_path(workdir, source)
    # One world for every stage (seed and split sizes), so held-out prompts and documents are
    # the same everywhere; per-stage world settings (group conditioning) stay the stage's.
    for key, value in config.world.items():
      c.data.world[key] = value
  return c


def enabled_stages(config) -> list[Stage]:
  return [s for s in STAGES if s.name not in config.skip_stages]


def run_pipeline(config, workdir: str,
                 evaluate: Callable[[Any, str], dict] | None = None) -> dict:
  """Runs every stage not yet done, then `evaluate(config, workdir)`; returns timings."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  timings_path = os.path.join(workdir, "pipeline_timings.json")
  timings = {}
  if os.path.exists(timings_path):
    with open(timings_path) as f:
      timings = json.load(f)
  stages = enabled_stages(config)
  # Every stage's own checks before the first compile: a typo in the last stage's config must
  # not surface after the first ones have trained.
  for stage in stages:
    config_lib.validate_common(config[stage.name], jax.device_count())
  t_all = time.time()
  for i, stage in enumerate(stages, 1):
    if is_done(workdir, stage.name):
      _log.info("[%d/%d] %s: done earlier, reusing %s", i, len(stages), stage.name,
                model_path(workdir, stage.name))
      continue
    _log.info("[%d/%d] %s: starting in %s", i, len(stages), stage.name,
              os.path.join(workdir, stage.name))
    t0 = time.time()
    run_stage(stage_config(config, stage, workdir), os.path.join(workdir, stage.name))
    timings[stage.name] = time.time() - t0
    _log.info("[%d/%d] %s: finished in %.0f s", i, len(stages), stage.name, timings[stage.name])
    with open(timings_path, "w") as f:
      json.dump(timings, f, indent=2)
  if evaluate is not None:
    t0 = time.time()
    _log.info("evaluation: starting")
    evaluate(config, workdir)
    timings["evaluate"] = time.time() - t0
    _log.info("evaluation: finished in %.0f s", timings["evaluate"])
  timings["this_invocation_s"] = time.time() - t_all
  with open(timings_path, "w") as f:
    json.dump(timings, f, indent=2)
  return timings
