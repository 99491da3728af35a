"""The whole recipe in one run: pretrain -> SFT -> RM (SFT samples ranked by the simulated
labelers) -> PPO and PPO-ptx -> group-conditioned RM and PPO-ptx -> evaluation.

Each stage trains in `<workdir>/<stage>` with its own config (config.<stage>); a stage that
completed (its `model/` written by `stages.runner.write_model`) is reused, and one that stopped
early (train.stop_after, a signal, a preemption) resumes from its checkpoint, so re-running the
same command continues where it stopped. A stage that stops early stops the recipe: the next
stage would start from an unfinished model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional

import jax

from instructjax import config as config_lib
from instructjax.config import ConfigError
from instructjax.stages import runner
from instructjax.stages.registry import run_stage
from instructjax.training import compile_cache, interrupts, workdir as workdir_lib

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


COMPILE_CACHE_DIR = "compile_cache"  # In the workdir (config.compile_cache).


def model_path(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, "model")


def is_done(workdir: str, stage: str) -> bool:
  return runner.is_complete(model_path(workdir, stage))


def stage_config(config, stage: Stage, workdir: str, stages=STAGES):
  """The stage's config with its inputs pointed at earlier stages and the shared world; a
  reward model's normalisation sampling set to that of the PPO stages that use it."""
  c = config[stage.name]
  with c.unlocked():
    for key, source in stage.inputs.items():
      c[key] = model_path(workdir, source)
    # One world for every stage (seed and split sizes), so held-out prompts and documents are
    # the same everywhere; per-stage world settings (group conditioning) stay the stage's.
    for key, value in config.world.items():
      c.data.world[key] = value
    sampling = ppo_sampling(config, stage.name, stages)
    if sampling is not None:
      c.rm.norm_temperature, c.rm.norm_max_new_tokens = sampling
  return c


def enabled_stages(config) -> list[Stage]:
  return [s for s in STAGES if s.name not in config.skip_stages]


def ppo_sampling(config, rm_stage: str, stages) -> Optional[tuple[float, int]]:
  """(temperature, max_new_tokens) of the PPO stages that read `rm_stage`'s reward model (None
  when none does); they must agree, since one normalisation serves them all."""
  drawn = {(float(config[s.name].ppo.temperature), int(config[s.name].ppo.max_new_tokens)): s.name
           for s in stages if s.inputs.get("reward_model") == rm_stage}
  if len(drawn) > 1:
    raise ConfigError(f"the PPO stages {sorted(drawn.values())} read config.{rm_stage}'s reward "
                      "model but sample differently (ppo.temperature, ppo.max_new_tokens: "
                      f"{sorted(drawn)}); its normalisation can match only one")
  return next(iter(drawn), None)


def check_normalization_sampling(config, stages) -> None:
  """A reward model's normalisation samples are drawn as the PPO stages that use it sample
  (`stage_config` sets rm.norm_temperature / norm_max_new_tokens so); an explicit setting that
  differs is refused."""
  for stage in stages:
    wanted = ppo_sampling(config, stage.name, stages)
    if wanted is None:
      continue
    rm = config[stage.name].rm
    for key, value in zip(("norm_temperature", "norm_max_new_tokens"), wanted):
      if rm[key] not in (-1.0, 0) and rm[key] != value:
        raise ConfigError(f"config.{stage.name}.rm.{key}={rm[key]}, but the PPO stages that "
                          f"use this reward model sample with {value}: it must be normalised "
                          "on samples drawn as PPO draws them (leave it unset to follow PPO)")


def run_pipeline(config, workdir: str,
                 evaluate: Callable[[Any, str], dict] | None = None) -> dict:
  """Runs every stage not yet done, then `evaluate(config, workdir)`; returns timings, and
  "stopped" (the stage's results) when a stage stopped before it completed."""
  stages = enabled_stages(config)
  # Every stage's own checks before the first compile: a typo in the last stage's config must
  # not surface after the first ones have trained.
  for stage in stages:
    config_lib.validate_common(config[stage.name], jax.device_count())
  check_normalization_sampling(config, stages)
  with workdir_lib.claimed(workdir) as workdir, interrupts.handled():
    if config.get("compile_cache", False):
      compile_cache.enable(os.path.join(workdir, COMPILE_CACHE_DIR))
    return _run(config, workdir, stages, evaluate)


def _run(config, workdir: str, stages: list[Stage], evaluate) -> dict:
  timings_path = os.path.join(workdir, "pipeline_timings.json")
  timings = {}
  if os.path.exists(timings_path):
    with open(timings_path) as f:
      timings = json.load(f)
  t_all = time.time()
  for i, stage in enumerate(stages, 1):
    stage_dir = os.path.join(workdir, stage.name)
    if is_done(workdir, stage.name):
      _log.info("[%d/%d] %s: done earlier, reusing %s", i, len(stages), stage.name,
                model_path(workdir, stage.name))
      continue
    if not os.path.isdir(stage_dir):
      timings.pop(stage.name, None)  # A stage started afresh: no earlier time to add to.
    interrupts.check()
    _log.info("[%d/%d] %s: starting in %s", i, len(stages), stage.name, stage_dir)
    t0 = time.time()
    results = run_stage(stage_config(config, stage, workdir, stages), stage_dir)
    # Wall time over every invocation that worked on the stage (resumed ones included).
    timings[stage.name] = timings.get(stage.name, 0.0) + time.time() - t0
    runner.write_json(timings_path, timings)
    if not results.get("complete"):
      _log.warning("[%d/%d] %s stopped before it completed; the recipe stops here (run the "
                   "same command again to resume)", i, len(stages), stage.name)
      return {**timings, "stopped": results}
    _log.info("[%d/%d] %s: finished in %.0f s", i, len(stages), stage.name, timings[stage.name])
  if evaluate is not None:
    t0 = time.time()
    _log.info("evaluation: starting")
    evaluate(config, workdir)
    timings["evaluate"] = time.time() - t0
    _log.info("evaluation: finished in %.0f s", timings["evaluate"])
  timings["this_invocation_s"] = time.time() - t_all
  runner.write_json(timings_path, timings)
  return timings
