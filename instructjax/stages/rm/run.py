"""Reward model: SFT model -> comparisons -> ranking-loss training -> normalised RM dir.

  python experiments/train.py --config=configs/rm.py:tiny --workdir=runs/w/rm \
      --config.init_from=runs/w/sft/model

The RM is the SFT model's trunk (every parameter but `lm_head`) with a fresh scalar head (zero
kernel and bias: every response starts at score 0, the loss at log 2); with
config.rm.score_logprob > 0 it keeps the SFT model's LM head too and the score adds a learned
weight (starting at that value) times the response's log-likelihood. After training, the
map under which `config.rm.norm_samples` SFT samples score mean 0 (and std 1 for "gain_bias")
is folded into the head. Writes `<workdir>/model` (head "scalar") and `rm_results.json` once
train.num_steps steps are done; before that, checkpoints that a re-run resumes from.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax

from instructjax.config import ConfigError
from instructjax.models import DecoderLM, ModelConfig
from instructjax.models.heads import scalar_model_from_lm
from instructjax.stages import inputs, runner
from instructjax.stages.device_data import DeviceIterator
from instructjax.stages.jit import jit_step
from instructjax.stages.rm import data, evaluate
from instructjax.stages.rm.checks import check
from instructjax.stages.rm.sampling import Sft, abstract_params
from instructjax.stages.rm.step import RM_KEYS, make_rm_eval_step, make_rm_train_step
from instructjax.training import interrupts, workdir as workdir_lib
from instructjax.training.optim import make_optimizer
from instructjax.training.state import create_train_state

RESULTS_FILE = "rm_results.json"

_log = logging.getLogger(__name__)


def run(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and normalises the reward model; returns its results."""
  config, model_cfg = check(config)
  with workdir_lib.claimed(workdir) as workdir, interrupts.handled():
    return _train(config, workdir, model_cfg)


def _train(config, workdir: str, model_cfg: ModelConfig) -> dict[str, Any]:
  t_start = time.time()
  # --- Mesh
  ctx = runner.sharding_context(config)

  # --- Data, sampling included: every bad record is reported before the step compiles.
  sft = Sft(config, ctx)
  _, sft_params, tokenizer = sft.load()
  inputs.check_tokenizer(config, tokenizer)
  rm_data = data.load_data(config, workdir, tokenizer, sft, ctx)

  # --- Model, optimizer and state: the SFT trunk with a zero score head.
  model = DecoderLM(model_cfg, head="scalar", shard=ctx)
  try:
    start_params = scalar_model_from_lm(sft_params, nn.meta.unbox(abstract_params(model)),
                                        logprob_weight=model_cfg.score_logprob)
  except ValueError as e:
    raise ConfigError(f"config.init_from: {e}") from e
  del sft_params
  sft.release()
  tx, schedule = make_optimizer(config.optim, config.train.num_steps)
  rng = jax.random.key(config.seed)
  state, shardings = create_train_state(model, tx, jax.random.fold_in(rng, 1), ctx,
                                        params=start_params)
  del start_params

  # --- Update step (state donated) and evaluation (outputs replicated: every host reads the
  # whole batch's scores and none gathers).
  step_fn = jit_step(make_rm_train_step(model, tx, schedule,
                                        lm_coef=float(config.rm.get("lm_coef", 0.0))),
                     ctx, shardings,
                     data.batch_spec(config, rm_data.k_max))
  evaluate_step = jax.jit(make_rm_eval_step(model),
                          out_shardings=ctx.replicated() if ctx is not None else None)
  periodic = rm_data.eval_batches[:config.train.eval_batches]
  eval_fn = ((lambda s, step: evaluate.evaluate_batches(evaluate_step, s.params, periodic))
             if periodic else None)

  # --- Loop: checkpoints, resume, periodic held-out accuracy
  state, summary = runner.train(
      step_fn, state, DeviceIterator(rm_data.train_iter, ctx, RM_KEYS),
      jax.random.fold_in(rng, 2), config, workdir, eval_fn=eval_fn,
      eval_metrics=evaluate.EVAL_METRICS, model_config=model_cfg, tokenizer=tokenizer)
  if not runner.is_finished(summary, config):
    return runner.report_unfinished(summary, config, workdir)

  # --- Final evaluation (all held-out comparisons) and normalisation
  heldout = (evaluate.evaluate_batches(evaluate_step, state.params, rm_data.eval_batches)
             if rm_data.eval_batches else {})
  params, normalization = evaluate.normalize(evaluate_step, state.params,
                                             rm_data.norm_batches, config)
  if heldout:
    heldout["score_mean_normalized"] = (normalization["gain"] * heldout["score_mean"]
                                        + normalization["bias"])
    heldout["score_std_normalized"] = abs(normalization["gain"]) * heldout["score_std"]
  ceiling = (evaluate.labeler_ceiling(rm_data.world_heldout)
             if rm_data.world_heldout is not None else None)

  # --- Model out
  meta = {"stage": "rm", "steps": summary.final_step, "normalization": normalization,
          "comparison_source": rm_data.info.get("comparison_source"),
          "init_from": os.path.abspath(config.init_from)}
  if heldout:
    meta["heldout_accuracy"] = heldout["accuracy"]
  runner.write_model(runner.model_dir(workdir), params, model_cfg, tokenizer, head="scalar",
                     meta=meta)
  steps_done = summary.final_step - summary.start_step
  results = {
      "stage": "rm", "complete": True, "steps": summary.final_step, "k_max": rm_data.k_max,
      "num_train_comparisons": len(rm_data.train_iter.records), "heldout": heldout,
      "normalization": normalization, **rm_data.info,
      "train": {"last": summary.train_metrics, "loop_wall_s": summary.wall_time_s,
                "steps_this_run": steps_done, "resumed_from": summary.resumed_from,
                "steps_per_sec_loop": steps_done / max(summary.wall_time_s, 1e-9)},
      "wall_time_s": time.time() - t_start}
  if ceiling is not None:
    results["labeler_ceiling"] = ceiling
  runner.write_json(os.path.join(workdir, RESULTS_FILE), results)
  _log.info("rm finished: %s; SFT samples score %.3g -> %.2g after normalisation; model in %s",
            heldout_line(heldout, ceiling), normalization["score_mean_before"],
            normalization["score_mean_after"], runner.model_dir(workdir))
  return results


def heldout_line(heldout: dict, ceiling) -> str:
  """What the held-out evaluation found, in the terms the data has."""
  if not heldout:
    return "no held-out comparisons (config.data.eval_path), no held-out accuracy"
  line = f"held-out pairwise accuracy {heldout['accuracy']:.3f}"
  if ceiling is not None:  # InstructWorld's labelers: the gold utility gives a ceiling.
    line += (f" (labeler ceiling {ceiling['group_utility_pair_accuracy']:.3f}, group-blind "
             f"{ceiling['mixed_utility_pair_accuracy']:.3f})")
  return line
