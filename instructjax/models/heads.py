"""Parameter surgery for the scalar head (reward and value models).

A scalar-head model is the LM's trunk plus `score_kernel`/`score_bias`: the reward model starts
from the SFT model's trunk with a zero head (every response scores 0, the ranking loss starts at
log 2), the value model of PPO likewise when it does not start from the reward model, and the
reward model's normalisation is an affine map folded into that head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

HEAD_PARAMS = ("score_kernel", "score_bias")  # The scalar head; everything else is the trunk.


def scalar_model_from_lm(lm_params: dict, abstract: dict) -> dict:
  """A scalar-head model's initial parameters: the LM's trunk and a zero score head.

  Args:
    lm_params: the LM's parameters (with `lm_head` unless embeddings are tied).
    abstract: ShapeDtypeStructs of the scalar-head model's parameters.
  """
  out = {}
  for name, spec in abstract.items():
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
  return out
