"""Pretraining and SFT: config -> data -> sharded state -> jitted step -> loop -> model dir."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from instructjax import config as config_lib
from instructjax.parallel import memory
from instructjax.data import make_lm_iterator
from instructjax.parallel.distributed import host_batch_size
from instructjax.model_io import load_any_model, save_model
from instructjax.models import DecoderLM, ModelConfig
from instructjax.config import ConfigError
from instructjax.training.optim import make_optimizer
from instructjax.parallel.sharding import ShardingContext, get_rules, mesh_from_config
from instructjax.stages import inputs
from instructjax.stages.device_data import DeviceIterator, to_device_batch
from instructjax.stages.jit import jit_step
from instructjax.stages.lm import make_lm_eval_step, make_lm_train_step
from instructjax.training.state import create_train_state
from instructjax.training import CheckpointConfig, run_loop

LM_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask")
# Fields of the model config that describe how to run, not what the weights are: a stage that
# starts from a saved model takes these from its own config and the rest from the model.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers", "dropout_rate")

_log = logging.getLogger(__name__)


def model_dir(workdir: str) -> str:
  return os.path.join(workdir, "model")


def resolve_start(config, head: str = "lm"):
  """(ModelConfig, tokenizer, params or None) from config.init_from or config.model."""
  if config.init_from:
    params, saved_cfg, tokenizer, saved_head, _ = load_any_model(config.init_from)
    if saved_head != head:
      raise ConfigError(f"config.init_from: {config.init_from} has a {saved_head!r} head; "
                        f"this stage needs {head!r}")
    runtime = {k: config.model[k] for k in RUNTIME_FIELDS}
    return saved_cfg.replace(**runtime).validate(), tokenizer, params
  model_cfg = config_lib.to_model_config(config.model)
  tokenizer = inputs.default_tokenizer(config)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ConfigError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the "
                      f"tokenizer's vocabulary ({tokenizer.vocab_size})")
  return model_cfg, tokenizer, None


def loop_steps(config) -> int:
  """Where this invocation stops: num_steps, or earlier with train.stop_after."""
  stop = config.train.stop_after
  return min(stop, config.train.num_steps) if stop else config.train.num_steps


def sharding_context(config) -> ShardingContext:
  return ShardingContext(mesh_from_config(config.mesh), get_rules(config.mesh.rules))


def fixed_eval_batches(records, tokenizer, config, mode: str, ctx) -> list[dict]:
  it = make_lm_iterator(records, tokenizer, batch_size=host_batch_size(config.train.batch_size),
                        seq_len=config.data.seq_len, seed=0, pack=config.data.pack, mode=mode,
                        num_epochs=1, shuffle=False, drop_remainder=False,
                        on_error=config.data.on_error, log=False)
  batches = []
  for batch in it:
    batches.append(to_device_batch({k: batch[k] for k in LM_KEYS}, ctx))
    if len(batches) >= config.train.eval_batches:
      break
  return batches


def make_evaluator(model: DecoderLM, batches: list[dict]):
  """eval(state, step) -> {"loss"}: token-weighted mean loss over fixed batches."""
  evaluate = jax.jit(make_lm_eval_step(model))

  def eval_fn(state, step):
    del step
    total, tokens = 0.0, 0.0
    for batch in batches:
      m = evaluate(state.params, batch)
      total += float(m["loss"]) * float(m["tokens"])
      tokens += float(m["tokens"])
    return {"loss": total / max(tokens, 1.0)}
  return eval_fn


def run(config, workdir: str) -> dict[str, Any]:
  """Trains the LM stage named by config.stage ("pretrain" or "sft"); returns final metrics."""
  mode = config.stage
  if mode not in ("pretrain", "sft"):
    raise ConfigError(f"config.stage: lm_driver runs 'pretrain' or 'sft', not {mode!r}")
  config_lib.validate_common(config, jax.device_count())
  model_cfg, tokenizer, start_params = resolve_start(config)
  ctx = sharding_context(config)
  model = DecoderLM(model_cfg, shard=ctx)
  tx, schedule = make_optimizer(config.optim, config.train.num_steps)

  # Data first: every bad record is reported before anything is compiled.
  host_iter = make_lm_iterator(
      inputs.lm_records(config, mode, "train"), tokenizer,
      batch_size=host_batch_size(config.train.batch_size),
      seq_len=config.data.seq_len, seed=config.seed, pack=config.data.pack, mode=mode,
      on_error=config.data.on_error)
  eval_batches = fixed_eval_batches(inputs.lm_records(config, mode, "eval"), tokenizer, config,
                                    mode, ctx)

  memory.log_plan(model, tx, ctx, config.train.batch_size, config.data.seq_len,
                  rules_name=config.mesh.rules, label=mode)
  rng = jax.random.key(config.seed)
  state, shardings = create_train_state(model, tx, jax.random.fold_in(rng, 1), ctx,
                                        params=start_params)
  batch_spec = {k: jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len), jnp.int32)
                for k in LM_KEYS}
  step_fn = jit_step(make_lm_train_step(model, tx, schedule), ctx, shardings, batch_spec)
  best = config.train.keep_best_metric or None
  evaluator = make_evaluator(model, eval_batches)  # One compiled eval for the loop and the end.
  state, summary = run_loop(
      step_fn, state, DeviceIterator(host_iter, ctx, LM_KEYS), jax.random.fold_in(rng, 2),
      num_steps=loop_steps(config), workdir=workdir, log_every=config.train.log_every,
      eval_every=config.train.eval_every, eval_fn=evaluator,
      save_every=config.train.save_every,
      checkpoint=CheckpointConfig(max_to_keep=config.train.max_to_keep, best_metric=best),
      on_nonfinite=config.train.on_nonfinite, model_config=model_cfg, tokenizer=tokenizer)
  final_eval = evaluator(state, None)
  save_model(model_dir(workdir), state.params, model_cfg, tokenizer, head="lm",
             meta={"stage": mode, "steps": int(config.train.num_steps),
                   "eval_loss": final_eval["loss"]})
  _log.info("%s finished: eval loss %.4f; model in %s", mode, final_eval["loss"],
            model_dir(workdir))
  return {"eval_loss": final_eval["loss"], "summary": summary}
