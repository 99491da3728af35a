"""What every stage runner does, in one place, so that `stages/<stage>/run.py` tells only its
own story.

  models in     `model_spec` (config only, for the checks) and `load_start_model` (weights): one
                path for instructjax model directories and Hugging Face ones, for every config
                key that names a model (`init_from`, `reward_model`, ...), head checked
  the loop      `train`: `run_loop` up to `train.stop_after` or `train.num_steps`, one keep-best
                rule (`keep_best_mode`), then whether the stage completed (`is_finished`)
  evaluation    `weighted_mean` of per-batch means
  outputs       `write_json` (results), `write_model` (atomic; only for a completed stage), and
                `is_complete`, which is what the recipe reads to reuse a stage
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax

from instructjax import model_io
from instructjax.config import RUNTIME_MODEL_FIELDS, ConfigError
from instructjax.models import ModelConfig
from instructjax.parallel.sharding import ShardingContext, get_rules, mesh_from_config
from instructjax.training import CheckpointConfig, LoopSummary, interrupts, run_loop

# Fields of the model config that describe how to run, not what the weights are: a stage that
# starts from a saved model takes those its config sets from there and the rest from the model.
RUNTIME_FIELDS = tuple(RUNTIME_MODEL_FIELDS)
MODEL_DIR = "model"
# Metrics computed with InstructWorld's gold judge: evaluation only, never model selection.
GOLD_METRICS = ("correctness", "exact_match", "hallucination_rate")
KEEP_BEST_MODES = ("auto", "min", "max")

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Config


def sharding_context(config) -> ShardingContext:
  return ShardingContext(mesh_from_config(config.mesh), get_rules(config.mesh.rules))


def loop_steps(config) -> int:
  """Where this invocation stops: num_steps, or earlier with train.stop_after."""
  stop = config.train.stop_after
  return min(stop, config.train.num_steps) if stop else config.train.num_steps


def runtime_fields(config, dropout: bool = True) -> dict[str, Any]:
  """The run-time model fields config.model sets (None: as the start model has it); dropout
  off where the stage forbids it."""
  out = {k: config.model[k] for k in RUNTIME_FIELDS if config.model.get(k) is not None}
  if not dropout:
    if out.get("dropout_rate"):
      _log.warning("config.model.dropout_rate=%s is ignored: config.stage=%r runs without "
                   "dropout", out["dropout_rate"], config.stage)
    out["dropout_rate"] = 0.0
  return out


def keep_best_mode(config, eval_metrics: Sequence[str]) -> Optional[str]:
  """"min" or "max" for config.train.keep_best_metric ("" = keep-best off: None).

  One rule for every stage: "auto" minimises losses and KLs and maximises everything else
  (accuracies, scores); `train.keep_best_mode` says it outright. The metric must be one the
  stage's evaluation reports, and not one of the gold judge's.
  """
  metric = config.train.keep_best_metric
  if not metric:
    return None
  if metric in GOLD_METRICS:
    raise ConfigError(f"config.train.keep_best_metric={metric!r} is judged against gold "
                      "answers, which are for evaluation only; choose one of "
                      f"{sorted(set(eval_metrics) - set(GOLD_METRICS))}")
  if metric not in eval_metrics:
    raise ConfigError(f"config.train.keep_best_metric={metric!r} is not an evaluation metric of "
                      f"config.stage={config.stage!r}: {sorted(eval_metrics)}")
  mode = config.train.get("keep_best_mode", "auto")
  if mode not in KEEP_BEST_MODES:
    raise ConfigError(f"config.train.keep_best_mode: {mode!r} is not one of {KEEP_BEST_MODES}")
  if mode != "auto":
    return mode
  return "min" if "loss" in metric or metric == "kl" or metric.endswith("_kl") else "max"


def check_seq_len(length: int, what: str, model_cfg: ModelConfig, model_key: str) -> None:
  """The same length check in every stage: `what` (config keys) fits the model's positions."""
  if length > model_cfg.max_seq_len:
    raise ConfigError(f"{what} = {length} exceeds the max_seq_len {model_cfg.max_seq_len} of "
                      f"config.{model_key}")


# ---------------------------------------------------------------------------------------------
# Models in


def model_spec(path: str, key: str, head: Optional[str] = None) -> ModelConfig:
  """The ModelConfig of the model config.`key` points at, from its config file only (no
  weights): an instructjax model directory or a Hugging Face one. Checks the head."""
  if not path:
    raise ConfigError(f"config.{key}: required (a model directory)")
  if not os.path.isdir(path):
    raise ConfigError(f"config.{key}: {path} is not a directory")
  if model_io.is_model_dir(path):
    try:
      cfg, saved_head, _ = model_io.read_model_dir_config(path)
    except (OSError, ValueError) as e:
      raise ConfigError(f"config.{key}: {e}") from e
  else:
    cfg, saved_head = _hf_spec(path, key)
  _check_head(saved_head, head, path, key)
  return cfg


def _hf_spec(path: str, key: str) -> tuple[ModelConfig, str]:
  from instructjax.hf import HFConversionError, is_hf_dir, read_hf_config, spec_from_hf
  from instructjax.hf.config import stored_dtype
  if not is_hf_dir(path):
    raise ConfigError(f"config.{key}: {path} is neither an instructjax model directory "
                      f"({model_io.MODEL_CONFIG_FILE} + {model_io.PARAMS_DIR}/) nor a Hugging "
                      "Face one (config.json)")
  try:
    hf = read_hf_config(path)
    # As model_io.load_any_model imports it: computing in the stored dtype, float32 weights.
    spec = spec_from_hf(hf, os.path.join(path, "config.json"), dtype=stored_dtype(hf))
  except (HFConversionError, OSError, ValueError) as e:
    raise ConfigError(f"config.{key}: {e}") from e
  return spec.config, spec.head


def _check_head(saved: str, wanted: Optional[str], path: str, key: str) -> None:
  if wanted is None or saved == wanted:
    return
  kinds = {"lm": "a language model (head 'lm')", "scalar": "a reward/value model (head 'scalar')"}
  raise ConfigError(f"config.{key}: {path} holds {kinds.get(saved, repr(saved))}; this stage "
                    f"needs {kinds.get(wanted, repr(wanted))} there")


def load_start_model(path: str, key: str, head: Optional[str] = None,
                     runtime: Optional[Mapping[str, Any]] = None):
  """(params, ModelConfig with `runtime` fields applied, tokenizer) of config.`key`."""
  try:
    params, cfg, tokenizer, saved_head, _ = model_io.load_any_model(path, key)
  except ConfigError:
    raise
  except Exception as e:  # A damaged directory: name the key and the path, not a traceback.
    raise ConfigError(f"config.{key}: cannot load the model in {path}: "
                      f"{type(e).__name__}: {e}") from e
  _check_head(saved_head, head, path, key)
  if runtime:
    cfg = cfg.replace(**runtime).validate()
  interrupts.check()  # A signal whose exception got lost while loading stops the run here.
  return params, cfg, tokenizer


# ---------------------------------------------------------------------------------------------
# The loop


def train(step_fn: Callable, state: Any, batches: Iterable, rng: jax.Array, config, workdir: str,
          *, eval_fn: Optional[Callable], eval_metrics: Sequence[str],
          model_config: ModelConfig, tokenizer,
          progress_metrics: Optional[Sequence[str]] = None) -> tuple[Any, LoopSummary]:
  """`run_loop` as every stage runs it: to `loop_steps(config)`, checkpoints and keep-best from
  config.train, eval every train.eval_every steps when there is an `eval_fn`."""
  t = config.train
  best = t.keep_best_metric or None
  checkpoint = CheckpointConfig(max_to_keep=t.max_to_keep, best_metric=best,
                                best_mode=keep_best_mode(config, eval_metrics) or "min")
  return run_loop(step_fn, state, batches, rng, num_steps=loop_steps(config), workdir=workdir,
                  log_every=t.log_every, eval_every=t.eval_every if eval_fn else 0,
                  eval_fn=eval_fn, save_every=t.save_every, checkpoint=checkpoint,
                  on_nonfinite=t.on_nonfinite, model_config=model_config, tokenizer=tokenizer,
                  progress_metrics=progress_metrics)


def is_finished(summary: LoopSummary, config) -> bool:
  """Did the stage complete: num_steps reached, or the data ran out and the config allows it.

  Anything else (train.stop_after, a preemption signal, data exhausted early) leaves a
  resumable checkpoint and no final model.
  """
  if summary.stop_reason == "preempted":
    return False  # Told to stop: it stops, even at the last step (a re-run writes the model).
  if summary.final_step >= config.train.num_steps:
    return True
  return summary.stop_reason == "data_exhausted" and bool(config.train.allow_early_end)


def report_unfinished(summary: LoopSummary, config, workdir: str) -> dict[str, Any]:
  """The log line and return value of a stage that stopped before it completed."""
  reason = summary.stop_reason
  if reason == "num_steps":
    reason = f"train.stop_after={config.train.stop_after}"
  elif reason == "data_exhausted":
    reason += " (set train.allow_early_end=True to accept the model there)"
  _log.warning("%s stopped at step %d of %d (%s): no model written; run the same command again "
               "to resume from the checkpoint in %s", config.stage, summary.final_step,
               config.train.num_steps, reason, workdir)
  return {"stage": config.stage, "complete": False, "steps": summary.final_step,
          "stop_reason": summary.stop_reason}


# ---------------------------------------------------------------------------------------------
# Evaluation


def weighted_mean(parts: Iterable[tuple[float, float]]) -> float:
  """sum(value * weight) / sum(weight) of (value, weight) pairs: per-batch means (token- or
  prompt-weighted) combined into the mean over every batch; nan when nothing was counted."""
  total, weight = 0.0, 0.0
  for value, w in parts:
    total += float(value) * float(w)
    weight += float(w)
  return total / weight if weight > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Outputs


def model_dir(workdir: str, name: str = MODEL_DIR) -> str:
  return os.path.join(os.path.abspath(workdir), name)


def write_json(path: str, record: Mapping[str, Any]) -> None:
  """`record` as JSON at `path`, written by host 0 through a temporary file (never half)."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True, default=float)
  os.replace(tmp, path)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # Only multi-host runs need it.
    multihost_utils.sync_global_devices(name)


def write_model(path: str, params: Any, model_config: ModelConfig, tokenizer, head: str,
                meta: Mapping[str, Any]) -> str:
  """The final model directory of a completed stage, whole or not at all.

  Written beside the target (`<path>.partial`) and renamed into place, so a kill at any moment
  leaves either the previous directory or the new one: never a model_config.json without its
  weights, which `is_complete` would otherwise take for a finished stage.
  """
  interrupts.check()  # A stopped run writes no model.
  path = os.path.abspath(path)
  partial, old = path + ".partial", path + ".old"
  if jax.process_index() == 0:
    for leftover in (partial, old):
      shutil.rmtree(leftover, ignore_errors=True)
  _barrier("instructjax_model_partial_clean")
  model_io.save_model(partial, params, model_config, tokenizer, head=head,
                      meta={**meta, "complete": True})
  _barrier("instructjax_model_partial_written")
  if jax.process_index() == 0:
    if os.path.exists(path):
      os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)
  _barrier("instructjax_model_in_place")
  return path


def is_complete(path: str) -> bool:
  """`path` holds the model of a stage that completed (written by `write_model`)."""
  if not model_io.is_model_dir(path):
    return False
  try:
    _, _, meta = model_io.read_model_dir_config(path)
  except (OSError, ValueError):
    return False
  return bool(meta.get("complete"))
