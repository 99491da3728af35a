"""The reward model's config checks: everything that reads no data and compiles nothing, each
message naming its key."""
from __future__ import annotations

import jax

from instructjax import config as config_lib
from instructjax.config import ConfigError
from instructjax.models import ModelConfig
from instructjax.stages import inputs, lengths, runner
from instructjax.stages.rm.data import packed_len
from instructjax.stages.rm.evaluate import EVAL_METRICS

NORMALIZE_MODES = ("bias", "gain_bias", "none")
NORM_PROMPTS = ("train", "heldout")


def check(config) -> tuple[object, ModelConfig]:
  """Returns the config with the lengths it leaves to the model filled in (stages/lengths.py)
  and the reward model's ModelConfig: the SFT model's (config.init_from), with the run's
  runtime fields, no dropout (its noise would leak into the ranking targets) and
  score_logprob = config.rm.score_logprob (the log-likelihood term, DecoderLM)."""
  if config.stage != "rm":
    raise ConfigError(f"config.stage: the reward-model stage runs 'rm', not {config.stage!r}")
  mesh_shape = config_lib.validate_common(config, jax.device_count())
  dp = mesh_shape[0] * mesh_shape[1]
  runner.keep_best_mode(config, EVAL_METRICS)
  if not config.init_from:
    raise ConfigError("config.init_from: the reward model starts from an SFT model directory; "
                      "none given")
  model_cfg = runner.model_spec(config.init_from, "init_from", head="lm")
  config = lengths.with_lengths(config, {"seq_len": (
      lambda: lengths.auto_seq_len(model_cfg.max_seq_len),
      f"min({lengths.AUTO_SEQ_LEN}, max_seq_len {model_cfg.max_seq_len} of config.init_from)")})
  rm = config.rm
  if rm.normalize not in NORMALIZE_MODES:
    raise ConfigError(f"config.rm.normalize: {rm.normalize!r} is not one of {NORMALIZE_MODES}")
  if rm.norm_prompts not in NORM_PROMPTS:
    raise ConfigError(f"config.rm.norm_prompts: {rm.norm_prompts!r} is not one of {NORM_PROMPTS}")
  for key in ("norm_samples", "max_new_tokens", "sample_batch_size"):
    if rm[key] < 1:
      raise ConfigError(f"config.rm.{key}: must be >= 1, got {rm[key]}")
  if rm.temperature < 0:
    raise ConfigError(f"config.rm.temperature: must be >= 0, got {rm.temperature}")
  if rm.get("norm_max_new_tokens", 0) < 0:
    raise ConfigError(f"config.rm.norm_max_new_tokens: must be >= 0 (0 = rm.max_new_tokens), "
                      f"got {rm.norm_max_new_tokens}")
  if rm.get("score_logprob", 0.0) < 0:
    raise ConfigError(f"config.rm.score_logprob: must be >= 0 (0 = the scalar head alone), got "
                      f"{rm.score_logprob}")
  if rm.get("lm_coef", 0.0) < 0:
    raise ConfigError(f"config.rm.lm_coef: must be >= 0 (0 = no LM loss), got {rm.lm_coef}")
  if rm.get("lm_coef", 0.0) and not rm.get("score_logprob", 0.0):
    raise ConfigError(f"config.rm.lm_coef={rm.lm_coef} trains the LM of the score's "
                      "log-likelihood term: it needs config.rm.score_logprob > 0")
  if rm.sample_batch_size % dp:
    raise ConfigError(f"config.rm.sample_batch_size={rm.sample_batch_size} is not divisible by "
                      f"the data-parallel size {dp}")
  packed = packed_len(config)
  if packed and packed < config.data.seq_len:
    raise ConfigError(f"config.data.packed_len={packed}: a packed row holds a prompt with all "
                      f"its responses, it cannot be shorter than config.data.seq_len "
                      f"{config.data.seq_len} (0 = no packing)")
  if packed and config.data.get("pack_bucket", 64) < 1:
    raise ConfigError(f"config.data.pack_bucket must be >= 1, got {config.data.pack_bucket}")
  if config.data.k_max and config.data.k_max < 2:
    raise ConfigError(f"config.data.k_max: a comparison needs K >= 2 slots, got "
                      f"{config.data.k_max} (0 = the largest K in the data)")
  inputs.check_source(config)
  if rm.norm_prompts == "heldout" and not inputs.has_eval(config):
    raise ConfigError("config.rm.norm_prompts='heldout' needs held-out comparisons "
                      "(config.data.eval_path)")
  if config.train.keep_best_metric and not inputs.has_eval(config):
    raise ConfigError(f"config.train.keep_best_metric={config.train.keep_best_metric!r} needs "
                      "held-out comparisons: set config.data.eval_path")
  runner.check_seq_len(config.data.seq_len, "config.data.seq_len", model_cfg, "init_from")
  return config, model_cfg.replace(**runner.runtime_fields(config, dropout=False),
                                   score_logprob=float(rm.get("score_logprob", 0.0))).validate()
