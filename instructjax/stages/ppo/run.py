"""PPO-ptx: SFT policy + reward model -> RL fine-tuned policy, with alignment-tax evaluations.

  python experiments/train.py --config=configs/ppo.py:tiny --workdir=runs/w/ppo \
      --config.init_from=runs/w/sft/model --config.reward_model=runs/w/rm/model

Models: the policy and the frozen reference from `config.init_from` (the SFT model), the frozen
reward model from `config.reward_model`, the value model from the reward model
(`config.value_init="reward_model"`, the paper's choice) or from the SFT trunk with a zero head
("sft"), always a plain scalar head (a reward model's score_logprob term is not carried over). No dropout anywhere (see step.py: PPO must be deterministic at fixed weights). One
iteration (rollout, then ppo.epochs over minibatches) is one jitted step with the state donated;
the KL controller lives in the state, so checkpoints restore it. Writes `<workdir>/model`
(policy), `<workdir>/value_model` and `ppo_results.json` once train.num_steps iterations are
done; before that, checkpoints that a re-run resumes from.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax

from instructjax.config import ConfigError
from instructjax.models import DecoderLM
from instructjax.models.heads import (scalar_model_from_lm, value_model_config,
                                      without_loglik_term)
from instructjax.stages import inputs, runner
from instructjax.stages.ppo import data
from instructjax.stages.ppo.checks import check, kl_controller, sampling_config
from instructjax.stages.ppo.evaluate import EVAL_METRICS, Evaluator, eval_params, log_start_eval
from instructjax.stages.ppo.state import create_ppo_state
from instructjax.stages.ppo.step import PPOConfig, PPOModels, jit_iteration, make_ppo_iteration
from instructjax.training import interrupts, workdir as workdir_lib
from instructjax.training.optim import make_optimizer

RESULTS_FILE = "ppo_results.json"
VALUE_MODEL_DIR = "value_model"

_log = logging.getLogger(__name__)


def run(config, workdir: str) -> dict[str, Any]:
  """Trains the policy with PPO(-ptx); returns its results (also in ppo_results.json)."""
  config, cfg, _, _ = check(config)
  with workdir_lib.claimed(workdir) as workdir, interrupts.handled():
    return _train(config, workdir, cfg)


def load_weights(config):
  """(policy, RM and value params, policy and RM ModelConfigs, tokenizer), the configs with
  the run's runtime fields; the two tokenizers must agree."""
  runtime = runner.runtime_fields(config, dropout=False)
  policy_params, policy_cfg, tokenizer = runner.load_start_model(config.init_from, "init_from",
                                                                 "lm", runtime)
  rm_params, rm_cfg, rm_tokenizer = runner.load_start_model(config.reward_model, "reward_model",
                                                            "scalar", runtime)
  inputs.check_tokenizer(config, tokenizer)
  if (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id) != (
      rm_tokenizer.vocab_size, rm_tokenizer.eos_id, rm_tokenizer.pad_id):
    raise ConfigError("config.reward_model: its tokenizer differs from the policy's "
                      "(config.init_from); the RM must read the policy's tokens")
  if policy_cfg.vocab_size != rm_cfg.vocab_size:
    raise ConfigError(f"config.reward_model: vocabulary {rm_cfg.vocab_size} differs from the "
                      f"policy's {policy_cfg.vocab_size} (config.init_from)")
  # The value model is a plain scalar head: a reward model's log-likelihood term
  # (score_logprob) is not carried over (values are read at every response token).
  value_params = without_loglik_term(rm_params)
  if config.value_init == "sft":
    try:
      value_params = scalar_model_from_lm(policy_params, jax.eval_shape(lambda: value_params))
    except ValueError as e:
      raise ConfigError(f"config.value_init='sft': {e}") from e
  return policy_params, rm_params, value_params, policy_cfg, rm_cfg, tokenizer


def _train(config, workdir: str, cfg: PPOConfig) -> dict[str, Any]:
  t_start = time.time()
  # --- Mesh
  ctx = runner.sharding_context(config)

  # --- Weights and models
  policy_params, rm_params, value_params, policy_cfg, rm_cfg, tokenizer = load_weights(config)
  models = PPOModels(policy=DecoderLM(policy_cfg, head="lm", shard=ctx),
                     value=DecoderLM(value_model_config(rm_cfg), head="scalar", shard=ctx),
                     rm=DecoderLM(rm_cfg, head="scalar", shard=ctx))

  # --- Data: every bad record is reported before anything is compiled.
  data.check_world_prompt_len(config, tokenizer)
  batches = data.PPOBatches(data.prompt_iterator(config, tokenizer),
                            data.ptx_iterator(config, tokenizer) if cfg.use_ptx else None, ctx,
                            repeats=data.responses_per_prompt(config))
  eval_prompts, eval_records, num_eval = data.eval_prompt_batches(
      data.prompt_records(config, "eval"), tokenizer, config, ctx)
  heldout_text = data.heldout_text_batches(config, tokenizer, ctx)

  # --- Optimizers and state (policy, value, frozen reference and RM, KL controller)
  total_updates = config.train.num_steps * cfg.epochs * cfg.num_minibatches
  policy_tx, schedule = make_optimizer(config.optim, total_updates)
  value_tx, _ = make_optimizer(config.value_optim, total_updates)
  kl = kl_controller(config)
  state, shardings = create_ppo_state(
      models.policy, models.value, models.rm, policy_tx, value_tx, policy_params=policy_params,
      value_params=value_params, rm_params=rm_params, kl=kl, ema=cfg.ema_decay > 0, ctx=ctx)
  del policy_params, rm_params, value_params

  # --- Update step: rollout + PPO epochs in one jitted iteration, state donated
  iteration = make_ppo_iteration(cfg, models.policy, models.value, models.rm, policy_tx,
                                 value_tx, sampling_config(config, tokenizer), shard=ctx,
                                 policy_schedule=schedule)
  step_fn = jit_iteration(iteration, ctx, shardings, cfg.use_ptx)

  # --- Evaluation: the SFT policy once (the baseline), then the policy every eval_every steps
  evaluator = Evaluator(models, sampling_config(config, tokenizer, config.ppo.eval_temperature),
                        tokenizer, eval_prompts, eval_records, num_eval, heldout_text, ctx,
                        config.seed, courtesy=config.data.source == "instructworld")
  t0 = time.time()
  sft_eval = evaluator(state.ref_params, state.ref_params, state.rm_params)
  if sft_eval:
    _log.info("SFT policy on held-out data (%.1fs): %s", time.time() - t0, sft_eval)
    log_start_eval(workdir, sft_eval)

  # --- Loop: checkpoints, resume, periodic evaluation
  state, summary = runner.train(
      step_fn, state, batches, jax.random.fold_in(jax.random.key(config.seed), 2), config,
      workdir, eval_fn=((lambda s, step: evaluator(eval_params(s), s.ref_params, s.rm_params))
                        if evaluator else None),
      eval_metrics=EVAL_METRICS, model_config=policy_cfg, tokenizer=tokenizer,
      progress_metrics=("score", "kl", "beta"))
  if not runner.is_finished(summary, config):
    return runner.report_unfinished(summary, config, workdir)

  # --- Final evaluation
  final_eval = summary.eval_metrics or evaluator(eval_params(state), state.ref_params,
                                                 state.rm_params)

  # --- Models out: the value model first, the policy's `model/` (what marks the stage done) last
  done = summary.final_step - summary.start_step
  results = {
      "stage": "ppo", "complete": True, "steps": summary.final_step, "ptx_coef": cfg.ptx_coef,
      "kl_beta": float(jax.device_get(state.kl.beta)), "sft_eval": sft_eval,
      "final_eval": final_eval,
      "train": {"last": summary.train_metrics, "loop_wall_s": summary.wall_time_s,
                "steps_this_run": done,
                "iterations_per_sec": done / max(summary.wall_time_s, 1e-9),
                "resumed_from": summary.resumed_from,
                "skipped_updates": summary.skipped_updates,
                "stop_reason": summary.stop_reason},
      "init_from": os.path.abspath(config.init_from),
      "reward_model": os.path.abspath(config.reward_model)}
  meta = {"stage": "ppo", "steps": summary.final_step, "ptx_coef": cfg.ptx_coef,
          "ema": cfg.ema_decay > 0, "init_from": results["init_from"],
          "reward_model": results["reward_model"],
          **{f"heldout_{k}": final_eval[k] for k in ("score", "kl") if k in final_eval}}
  runner.write_model(os.path.join(workdir, VALUE_MODEL_DIR), state.value_params,
                     value_model_config(rm_cfg),
                     tokenizer, head="scalar", meta={**meta, "stage": "ppo_value"})
  runner.write_model(runner.model_dir(workdir), eval_params(state), policy_cfg, tokenizer,
                     head="lm", meta=meta)
  results["wall_time_s"] = time.time() - t_start
  runner.write_json(os.path.join(workdir, RESULTS_FILE), results)
  _log.info("ppo finished in %.0fs: %s; model in %s", results["wall_time_s"],
            changes(sft_eval, final_eval), runner.model_dir(workdir))
  return results


def changes(before: dict, after: dict) -> str:
  """'held-out score 0.1 -> 0.3, kl 0.0 -> 1.2, ...' for the metrics both evaluations have, or
  what held-out data would give them."""
  keys = [k for k in ("score", "kl", "correctness", "pretrain_heldout_loss")
          if k in after and k in before]
  if not keys:
    return ("no held-out evaluation (config.data.eval_path for prompts, "
            "config.data.ptx_eval_path for pretraining text)")
  return "held-out " + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in keys)
