"""PPO's config checks, every message naming its key, and the static settings they yield."""
from __future__ import annotations

import logging
from typing import Optional

import jax

from instructjax import model_io
from instructjax import config as config_lib
from instructjax.config import ConfigError
from instructjax.generation import SamplingConfig
from instructjax.models import ModelConfig
from instructjax.ops import adaptive_kl_controller, fixed_kl_controller
from instructjax.ops.kl import KLController
from instructjax.stages import inputs, lengths, runner
from instructjax.stages.ppo import data
from instructjax.stages.ppo.evaluate import EVAL_METRICS
from instructjax.stages.ppo.step import PPOConfig

VALUE_INITS = ("reward_model", "sft")
SOURCES = ("instructworld", "jsonl")

_log = logging.getLogger(__name__)


def ppo_config(config) -> PPOConfig:
  """The static PPOConfig from config.ppo (validated; errors name config.ppo.<key>)."""
  p = config.ppo
  try:
    return PPOConfig(
        rollout_batch_size=int(p.rollout_batch_size), minibatch_size=int(p.minibatch_size),
        micro_batch_size=int(p.get("micro_batch_size", 0)), epochs=int(p.epochs),
        clip_eps=float(p.clip_eps), value_clip_eps=float(p.value_clip_eps),
        vf_coef=float(p.vf_coef), entropy_coef=float(p.entropy_coef), gamma=float(p.gamma),
        lam=float(p.lam), whiten_rewards=bool(p.whiten_rewards),
        kl_estimator=str(p.kl_estimator), ptx_coef=float(p.ptx_coef),
        kl_loss_coef=float(p.kl_loss_coef),
        no_eos_penalty=float(p.no_eos_penalty), ema_decay=float(p.ema_decay),
        advantage_estimator=str(p.get("advantage_estimator", "gae")),
        responses_per_prompt=data.responses_per_prompt(config)).validate()
  except ValueError as e:
    raise ConfigError(str(e)) from e



def sampling_config(config, tokenizer, temperature: Optional[float] = None) -> SamplingConfig:
  p = config.ppo
  return SamplingConfig(max_new_tokens=int(p.max_new_tokens), eos_id=tokenizer.eos_id,
                        pad_id=tokenizer.pad_id,
                        temperature=float(p.temperature if temperature is None else temperature),
                        top_k=int(p.top_k), top_p=float(p.top_p))



def kl_controller(config) -> KLController:
  k = config.ppo.kl
  if k.adaptive:
    return adaptive_kl_controller(float(k.init_beta), float(k.target), float(k.horizon))
  return fixed_kl_controller(float(k.init_beta))



def check_normalization(config) -> None:
  """Warns when the reward model was normalised on samples drawn otherwise than this PPO
  samples: the SFT policy then does not average a score of 0 on its rollouts."""
  if not model_io.is_model_dir(config.reward_model):
    return
  _, _, meta = model_io.read_model_dir_config(config.reward_model)
  drawn = (meta.get("normalization") or {}).get("sampling")
  ours = {"temperature": float(config.ppo.temperature),
          "max_new_tokens": int(config.ppo.max_new_tokens)}
  if drawn and {k: drawn.get(k) for k in ours} != ours:
    _log.warning("config.reward_model was normalised on SFT samples drawn with %s, this PPO "
                 "samples with %s (config.ppo.temperature, config.ppo.max_new_tokens): SFT "
                 "rollouts will not average a score of 0 (set the RM stage's "
                 "rm.norm_temperature / rm.norm_max_new_tokens to match)", drawn, ours)


def check(config) -> tuple[object, PPOConfig, ModelConfig, ModelConfig]:
  """Every PPO check, before any weight is loaded or anything compiled.

  Returns the config with the lengths it leaves to the models filled in (stages/lengths.py),
  the PPOConfig, and the policy's and reward model's ModelConfigs, runtime fields applied.
  """
  if config.stage != "ppo":
    raise ConfigError(f"config.stage: the PPO stage runs 'ppo', not {config.stage!r}")
  mesh_shape = config_lib.validate_common(config, jax.device_count())
  runner.keep_best_mode(config, EVAL_METRICS)
  dp = mesh_shape[0] * mesh_shape[1]
  cfg = ppo_config(config)
  p = config.ppo
  if p.temperature <= 0:
    raise ConfigError(f"config.ppo.temperature: PPO learns from samples; must be > 0, got "
                      f"{p.temperature}")
  try:
    SamplingConfig(max_new_tokens=int(p.max_new_tokens), eos_id=2, pad_id=0,
                   temperature=float(p.temperature), top_k=int(p.top_k), top_p=float(p.top_p))
  except ValueError as e:
    raise ConfigError(f"config.ppo: {e}") from e
  if p.eval_temperature < 0:
    raise ConfigError(f"config.ppo.eval_temperature: must be >= 0 (0 = greedy), got "
                      f"{p.eval_temperature}")
  if p.eval_prompts < 0:
    raise ConfigError(f"config.ppo.eval_prompts: must be >= 0, got {p.eval_prompts}")
  for key in ("rollout_batch_size", "minibatch_size", "micro_batch_size"):
    if p.get(key, 0) % dp:
      raise ConfigError(f"config.ppo.{key}={p[key]} is not divisible by the data-parallel "
                        f"size {dp}")
  if cfg.use_ptx:
    parts = cfg.num_minibatches * cfg.num_micro_batches
    if p.ptx_batch_size < 1 or p.ptx_batch_size % parts:
      raise ConfigError(f"config.ppo.ptx_batch_size={p.ptx_batch_size} must be a positive "
                        f"multiple of the number of minibatches times micro-batches ({parts} = "
                        "rollout_batch_size / micro_batch_size, or / minibatch_size without "
                        "micro-batches)")
    if p.ptx_batch_size % dp:
      raise ConfigError(f"config.ppo.ptx_batch_size={p.ptx_batch_size} is not divisible by the "
                        f"data-parallel size {dp}")
  k = p.kl
  if k.init_beta < 0:
    raise ConfigError(f"config.ppo.kl.init_beta: must be >= 0, got {k.init_beta}")
  if k.adaptive and (k.target <= 0 or k.horizon <= 0):
    raise ConfigError("config.ppo.kl: the adaptive controller needs target > 0 and horizon > 0, "
                      f"got target={k.target}, horizon={k.horizon}")
  if config.value_init not in VALUE_INITS:
    raise ConfigError(f"config.value_init: {config.value_init!r} is not one of {VALUE_INITS}")
  inputs.check_source(config, SOURCES)
  if config.data.source != "instructworld" and cfg.use_ptx and not config.data.ptx_path:
    raise ConfigError("config.data.ptx_path: pretraining texts are required when "
                      f"config.ppo.ptx_coef={cfg.ptx_coef} > 0")
  runtime = runner.runtime_fields(config, dropout=False)  # See stages/ppo/step.py.
  policy_cfg = runner.model_spec(config.init_from, "init_from", "lm").replace(**runtime)
  rm_cfg = runner.model_spec(config.reward_model, "reward_model", "scalar").replace(**runtime)
  config = lengths.with_lengths(config, {
      "prompt_len": (lambda: lengths.auto_prompt_len(int(p.max_new_tokens),
                                                     policy_cfg.max_seq_len, rm_cfg.max_seq_len),
                     f"min({lengths.AUTO_PROMPT_LEN}, room for config.ppo.max_new_tokens="
                     f"{p.max_new_tokens} in config.init_from's max_seq_len "
                     f"{policy_cfg.max_seq_len} and config.reward_model's "
                     f"{rm_cfg.max_seq_len} with EOS)"),
      "seq_len": (lambda: lengths.auto_seq_len(policy_cfg.max_seq_len),
                  f"min({lengths.AUTO_SEQ_LEN}, max_seq_len {policy_cfg.max_seq_len} of "
                  "config.init_from)")})
  if config.data.prompt_len < 1:
    raise ConfigError(f"config.data.prompt_len: must be >= 1 (0 = from the models), got "
                      f"{config.data.prompt_len}")
  check_normalization(config)
  width = config.data.prompt_len + p.max_new_tokens
  what = "config.data.prompt_len + config.ppo.max_new_tokens"
  runner.check_seq_len(width, what, policy_cfg, "init_from")
  # The reward model reads the response with an EOS appended when the policy did not stop.
  runner.check_seq_len(width + 1, what + " + 1 (EOS)", rm_cfg, "reward_model")
  if cfg.use_ptx or config.train.eval_batches:
    runner.check_seq_len(config.data.seq_len, "config.data.seq_len", policy_cfg, "init_from")
  return config, cfg, policy_cfg.validate(), rm_cfg.validate()
