"""Next-token cross-entropy averaged over masked tokens (pretraining, SFT and the PPO-ptx term)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.ops.head_chunks import map_head

Array = jax.Array


def _token_nll(logits: Array, targets: Array, mask: Array, z_loss: float) -> Array:
  """[B, T] float32 cross-entropy (+ z-loss) per position; whatever at masked positions."""
  # Sanitize padding logits first: a where on the output alone would still send
  # nan cotangents through log-sum-exp of garbage logits.
  logits = jnp.where(mask[..., None], logits.astype(jnp.float32), 0.0)  # [B, T, V]
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                     axis=-1)[..., 0]  # [B, T]
  nll = lse - target_logit
  if z_loss:
    nll = nll + z_loss * jnp.square(lse)
  return nll


def _masked_mean(nll: Array, mask: Array) -> tuple[Array, Array]:
  num_tokens = jnp.sum(mask).astype(jnp.float32)
  loss = jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(num_tokens, 1.0)
  return loss, num_tokens


def cross_entropy_loss(logits: Array, targets: Array, loss_mask: Array,
                       z_loss: float = 0.0) -> tuple[Array, Array]:
  """Mean token cross-entropy over positions where loss_mask is True.

  Targets are already aligned with logits (targets[:, t] is the token predicted at t).

  Args:
    logits: [B, T, V] any float dtype; computed in float32.
    targets: [B, T] int ids.
    loss_mask: [B, T] bool/0-1; padding and prompt tokens are False.
    z_loss: coefficient of the auxiliary z-loss `z_loss * logsumexp(logits)^2`
      (PaLM), which keeps the softmax normalizer near 1; 0 disables it.

  Returns:
    (mean_loss, num_tokens): scalar float32 mean over valid tokens (0 if none), and
    the float32 number of valid tokens, so callers can re-weight across micro-batches.
  """
  mask = jnp.asarray(loss_mask).astype(bool)
  return _masked_mean(_token_nll(logits, targets, mask, z_loss), mask)


def cross_entropy_from_hidden(hidden: Array, head: Array, targets: Array, loss_mask: Array,
                              z_loss: float = 0.0, chunk: int = 0) -> tuple[Array, Array]:
  """`cross_entropy_loss(hidden @ head, ...)` chunk by chunk: no [B, T, V] array, forward or
  backward (`head_chunks.map_head`), same value and gradients.

  Args:
    hidden: [B, T, d] final-norm hidden states (`DecoderLM(..., return_hidden=True)`).
    head: [d, V] the LM head (`models.lm_head_weight`).
    targets, loss_mask, z_loss: as in `cross_entropy_loss`.
    chunk: positions per chunk; 0 (or >= T) computes the logits at once.
  """
  mask = jnp.asarray(loss_mask).astype(bool)
  nll = map_head(lambda logits, tgt, m: _token_nll(logits, tgt, m, z_loss), hidden, head,
                 (targets.astype(jnp.int32), mask), chunk)
  return _masked_mean(nll, mask)
