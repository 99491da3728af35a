"""Parameter surgery for the scalar head (reward and value models).

A scalar-head model is the LM's trunk plus `score_kernel`/`score_bias`: the reward model starts
from the SFT model's trunk with a zero head (every response scores 0, the ranking loss starts at
log 2), the value model of PPO likewise when it does not start from the reward model, and the
reward model's normalisation is an affine map folded into that head.

A reward model with ModelConfig.score_logprob > 0 also holds an LM head (`lm_head`, copied
from the LM like the trunk; nothing extra with tied embeddings) and `score_logprob_weight`
(initialised to score_logprob): its score adds the weighted log-likelihood of the response.
The value model is a plain scalar head: `without_loglik_term` drops both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.models.config import ModelConfig
from instructjax.models.transformer import LOGPROB_WEIGHT

HEAD_PARAMS = ("score_kernel", "score_bias")  # The scalar head; everything else is the trunk.
# What only a reward model with score_logprob > 0 has beyond the trunk and scalar head.
LOGLIK_TERM_PARAMS = (LOGPROB_WEIGHT, "lm_head")


def scalar_model_from_lm(lm_params: dict, abstract: dict, logprob_weight: float = 0.0) -> dict:
  """A scalar-head model's initial parameters: the LM's trunk and a zero score head.

  Args:
    lm_params: the LM's parameters (with `lm_head` unless embeddings are tied).
    abstract: ShapeDtypeStructs of the scalar-head model's parameters.
    logprob_weight: the initial `score_logprob_weight` (model.score_logprob) when the model
      has one; its LM head, if it has its own, is the LM's like the trunk.
  """
  out = {}
  for name, spec in abstract.items():
    if name == LOGPROB_WEIGHT:
      out[name] = jax.tree.map(lambda s: jnp.full(s.shape, logprob_weight, s.dtype), spec)
      continue
    if name in HEAD_PARAMS:
      out[name] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
      continue
    if name not in lm_params:
      raise ValueError(f"the LM has no parameter {name!r} for the scalar model's trunk")
    got = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), lm_params[name])
    want = jax.tree.map(lambda s: (tuple(s.shape), jnp.dtype(s.dtype)), spec)
    if got != want:
      raise ValueError(f"parameter {name!r} has shapes {got}, the scalar model expects {want}")
    out[name] = lm_params[name]
  return out


def fold_affine(params: dict, gain: float, bias: float) -> dict:
  """Params whose scores are `gain * score + bias`: the affine map folded into the head."""
  out = dict(params)
  out["score_kernel"] = params["score_kernel"] * jnp.asarray(gain, params["score_kernel"].dtype)
  out["score_bias"] = (params["score_bias"] * jnp.asarray(gain, params["score_bias"].dtype)
                       + jnp.asarray(bias, params["score_bias"].dtype))
  if LOGPROB_WEIGHT in params:  # score = head + weight * loglik: both parts scale by the gain.
    out[LOGPROB_WEIGHT] = params[LOGPROB_WEIGHT] * jnp.asarray(gain, params[LOGPROB_WEIGHT].dtype)
  return out


def without_loglik_term(params: dict) -> dict:
  """A scalar-head model's parameters without the log-likelihood term's (LOGLIK_TERM_PARAMS):
  the trunk and head of a reward model, as the value model starts (values are read at every
  response token, not once after a whole response)."""
  return {k: v for k, v in params.items() if k not in LOGLIK_TERM_PARAMS}


def value_model_config(rm_cfg: ModelConfig) -> ModelConfig:
  """The value model's config: the reward model's, as a plain scalar head."""
  return rm_cfg.replace(score_logprob=0.0)
