"""Pretraining and SFT: config -> data -> sharded state -> jitted step -> loop -> model dir.

  python experiments/train.py --config=configs/pretrain.py:tiny --workdir=runs/w/pretrain
  python experiments/train.py --config=configs/sft.py:tiny --workdir=runs/w/sft \
      --config.init_from=runs/w/pretrain/model

Writes `<workdir>/model` (head "lm") and `<workdir>/lm_results.json` once train.num_steps
steps are done; before that, checkpoints that a re-run resumes from.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax

from instructjax import config as config_lib
from instructjax.config import ConfigError
from instructjax.models import DecoderLM, ModelConfig
from instructjax.parallel import memory
from instructjax.stages import inputs, lengths, runner
from instructjax.stages.jit import jit_step
from instructjax.stages.lm import data
from instructjax.stages.lm.evaluate import EVAL_METRICS, make_evaluator
from instructjax.stages.lm.step import make_lm_train_step
from instructjax.training import interrupts, workdir as workdir_lib
from instructjax.training.optim import make_optimizer
from instructjax.training.state import create_train_state

STAGES = ("pretrain", "sft")
RESULTS_FILE = "lm_results.json"

_log = logging.getLogger(__name__)


def check(config) -> tuple[Any, ModelConfig]:
  """Every check that reads no data and compiles nothing. Returns the config with the lengths
  it leaves to the model filled in (stages/lengths.py) and the model's ModelConfig."""
  if config.stage not in STAGES:
    raise ConfigError(f"config.stage: the LM stage runs {STAGES}, not {config.stage!r}")
  config_lib.validate_common(config, jax.device_count())
  runner.keep_best_mode(config, EVAL_METRICS)
  if config.init_from:
    key = "init_from"
    model_cfg = runner.model_spec(config.init_from, key, head="lm").replace(
        **runner.runtime_fields(config)).validate()
  elif config_lib.is_runtime_only(config.model):
    raise ConfigError("config.init_from: required: config.model names no architecture (this "
                      "variant takes it from the checkpoint it starts from)")
  else:
    key = "model"
    model_cfg = config_lib.to_model_config(config.model)
  config = lengths.with_lengths(config, {"seq_len": (
      lambda: lengths.auto_seq_len(model_cfg.max_seq_len),
      f"min({lengths.AUTO_SEQ_LEN}, max_seq_len {model_cfg.max_seq_len} of config.{key})")})
  inputs.check_source(config)
  data.check_pretrain_mix(config)
  runner.check_seq_len(config.data.seq_len, "config.data.seq_len", model_cfg, key)
  if config.train.keep_best_metric and not inputs.has_eval(config):
    raise ConfigError(f"config.train.keep_best_metric={config.train.keep_best_metric!r} needs "
                      "held-out data: set config.data.eval_path")
  return config, model_cfg


def run(config, workdir: str) -> dict[str, Any]:
  """Trains the stage named by config.stage ("pretrain" or "sft"); returns its results."""
  config, model_cfg = check(config)
  with workdir_lib.claimed(workdir) as workdir, interrupts.handled():
    return _train(config, workdir, model_cfg)


def _train(config, workdir: str, model_cfg: ModelConfig) -> dict[str, Any]:
  # --- Mesh
  ctx = runner.sharding_context(config)

  # --- Start model and tokenizer
  params = None
  if config.init_from:
    params, model_cfg, tokenizer = runner.load_start_model(
        config.init_from, "init_from", "lm", runner.runtime_fields(config))
    inputs.check_tokenizer(config, tokenizer)
  else:
    tokenizer = inputs.default_tokenizer(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
      raise ConfigError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the "
                        f"tokenizer's vocabulary ({tokenizer.vocab_size})")

  # --- Data: every bad record is reported before anything compiles.
  train_batches = data.train_batches(config, tokenizer, ctx)
  eval_batches = data.eval_batches(config, tokenizer, ctx)

  # --- Model, optimizer and state
  model = DecoderLM(model_cfg, shard=ctx)
  tx, schedule = make_optimizer(config.optim, config.train.num_steps)
  memory.log_plan(model, tx, ctx, config.train.batch_size, config.data.seq_len,
                  rules_name=config.mesh.rules, label=config.stage)
  rng = jax.random.key(config.seed)
  state, shardings = create_train_state(model, tx, jax.random.fold_in(rng, 1), ctx,
                                        params=params)
  del params

  # --- Update step (state donated) and evaluation
  step_fn = jit_step(make_lm_train_step(model, tx, schedule), ctx, shardings,
                     data.batch_spec(config))
  evaluate = make_evaluator(model, eval_batches) if eval_batches else None

  # --- Loop: checkpoints, resume, periodic evaluation
  state, summary = runner.train(
      step_fn, state, train_batches, jax.random.fold_in(rng, 2), config, workdir,
      eval_fn=(lambda s, step: evaluate(s.params)) if evaluate else None,
      eval_metrics=EVAL_METRICS, model_config=model_cfg, tokenizer=tokenizer)
  if not runner.is_finished(summary, config):
    return runner.report_unfinished(summary, config, workdir)

  # --- Final evaluation (when there are held-out records)
  final = {"eval_loss": evaluate(state.params)["loss"]} if evaluate else {}

  # --- Model out
  results = {"stage": config.stage, "complete": True, "steps": summary.final_step,
             "stop_reason": summary.stop_reason, **final,
             "train": {"last": summary.train_metrics, "loop_wall_s": summary.wall_time_s,
                       "resumed_from": summary.resumed_from}}
  runner.write_model(runner.model_dir(workdir), state.params, model_cfg, tokenizer, head="lm",
                     meta={"stage": config.stage, "steps": summary.final_step, **final})
  runner.write_json(os.path.join(workdir, RESULTS_FILE), results)
  _log.info("%s finished: %s; model in %s", config.stage,
            f"eval loss {final['eval_loss']:.4f}" if final else
            "no held-out records (config.data.eval_path), no eval loss",
            runner.model_dir(workdir))
  return {**results, "summary": summary}
