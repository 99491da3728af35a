"""The decoder-only transformer, with a language-model head or a scalar head.

One Linen module for every family; layers are stacked with `nn.scan` so parameters carry a
leading [layers] axis whatever `scan_layers` says: with scan_layers=False the scan is fully
unrolled (the compiled program grows with depth), with True it is a loop (compile time flat in
depth). One parameter layout means checkpoints and HF conversion do not depend on that choice.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from instructjax.models import attention
from instructjax.models.attention import AttentionMask
# Re-exported: the mask rule used to live here.
from instructjax.models.attention import SHARED_PREFIX_SEGMENT, attention_mask  # pylint: disable=unused-import
from instructjax.models.config import ModelConfig
from instructjax.models.kv_cache import KVCache
from instructjax.models.layers import MLP, Attention, Norm, declare
from instructjax.models.response_loglik import response_loglik
from instructjax.ops.head_chunks import positions_per_chunk
from instructjax.parallel.sharding import ShardingContext, constrain

Array = jax.Array

_REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole block in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

HEADS = ("lm", "scalar")
LOGPROB_WEIGHT = "score_logprob_weight"  # The scalar head's weight of the log-likelihood term.
RESPONSE_LOGLIK = "response_loglik"  # The term's [B, T] log-likelihoods (sown).


def positions_from_mask(mask: Array) -> Array:
  """Position ids from a [B, T] validity mask: left padding shifts nothing in the real tokens."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


class Block(nn.Module):
  cfg: ModelConfig
  shard: Optional[ShardingContext] = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, carry, positions, mask, dense_mask, cache_index):
    """carry: (x [B, T, d], every layer's (k, v) caches or None, this layer's index)."""
    x, caches, layer = carry
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic or cfg.dropout_rate == 0)
    h, caches = Attention(cfg, self.shard, name="attn")(
        Norm(cfg, name="attn_norm")(x), positions, mask, dense_mask, caches, layer, cache_index)
    x = x + drop(h)
    x = x + drop(MLP(cfg, self.shard, name="mlp")(Norm(cfg, name="mlp_norm")(x)))
    x = constrain(self.shard, x, ("act_batch", "act_length", "act_embed"))
    return (x, caches, layer + 1), None


class DecoderLM(nn.Module):
  """tokens [B, T] -> logits [B, T, vocab] float32 ("lm") or values [B, T] float32 ("scalar").

  With `cfg.score_logprob` > 0 the scalar head also holds an LM head (`lm_head`, or the tied
  embedding) and a learned scalar `score_logprob_weight`: value_t = head(h_t) + weight * the
  log-likelihood of the tokens s <= t of t's segment after the shared prefix
  (models/response_loglik.py). Read at a response's last token, the score is the head plus the
  weighted log-likelihood the model gives the response: a reward model that can use what its
  language model knows about the answer. Callers give the prompt as segment 1 and the response
  as segment 2 with shared_prefix=True (the attention of one sequence); a row with one segment
  gets no log-likelihood term.

  `segment_ids` [B, T]: 0 marks padding; tokens attend only within their own segment, so packed
  documents and left padding are both expressed by it. `positions` [B, T] are position ids
  (for left padding use `positions_from_mask`). With `cache`, the call appends T tokens at
  `cache.index` and returns the updated cache.
  """
  cfg: ModelConfig
  head: str = "lm"
  shard: Optional[ShardingContext] = None

  def setup_block_stack(self, deterministic: bool):
    cfg = self.cfg
    block = Block
    if cfg.remat != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    return nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.n_layers,
        unroll=1 if cfg.scan_layers else cfg.n_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, self.shard, deterministic, name="layers")

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, segment_ids: Array,
               cache: Optional[KVCache] = None, deterministic: bool = True,
               return_hidden: bool = False, shared_prefix: bool = False):
    """Returns (logits or values, new cache or None).

    With `return_hidden` (lm head only) the first output is instead the final-norm hidden
    state [B, T, d_model] in float32, the input of the LM head (`lm_head_weight` gives the
    head's [d_model, vocab] matrix): log-probabilities can then be computed chunk by chunk
    (`ops.logprobs.logprobs_from_hidden`) without a [B, T, vocab] array. The parameters are
    the same either way.

    With `shared_prefix` (no cache) segment 1 of each row is a prefix that every other segment
    of the row attends to (`attention_mask`): a prompt with K responses packed in one row,
    positions of each response continuing from the prompt's end.
    """
    cfg = self.cfg
    if shared_prefix and cache is not None:
      raise ValueError("shared_prefix packs whole sequences: it cannot be used with a cache")
    if return_hidden and self.head != "lm":
      raise ValueError("return_hidden needs the lm head")
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
    dt, pdt = cfg.jnp_dtype, cfg.jnp_param_dtype
    segment_ids = segment_ids.astype(jnp.int32)
    embed = declare(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                    nn.initializers.normal(cfg.init_std), pdt)
    x = jnp.take(embed, tokens, axis=0).astype(dt)
    if cfg.learned_positions:
      pos_table = declare(self, "pos_embed", (cfg.max_seq_len, cfg.d_model), (None, "embed"),
                          nn.initializers.normal(cfg.init_std / 2), pdt)
      x = x + jnp.take(pos_table, positions, axis=0).astype(dt)
    x = constrain(self.shard, x, ("act_batch", "act_length", "act_embed"))

    t = tokens.shape[1]
    if cache is None:
      mask = AttentionMask.for_sequence(segment_ids, shared_prefix)
      caches, cache_index = None, None
    else:
      k_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, cache.index))
      mask = AttentionMask.for_cache(segment_ids, k_segments, cache.index)
      caches, cache_index = (cache.k, cache.v), cache.index
    # The reference implementation's [B, T, S] mask is built once, outside the layer loop.
    chosen = attention.select(cfg.attention, t, mask.k_segments.shape[1], cfg.jnp_dtype,
                              cfg.resolved_head_dim, self_attention=mask.self_attention,
                              shared_prefix=shared_prefix)
    dense_mask = mask.dense() if chosen == "reference" else None

    # The caches ride in the layer loop's carry (not as scanned inputs/outputs, which would
    # rebuild the stacked arrays every call): each layer updates its slots in place.
    (x, new_caches, _), _ = self.setup_block_stack(deterministic)(
        (x, caches, jnp.zeros((), jnp.int32)), positions, mask, dense_mask, cache_index)
    x = Norm(cfg, name="final_norm")(x)

    new_cache = None
    if cache is not None:
      new_cache = KVCache(k=new_caches[0], v=new_caches[1], segment_ids=k_segments,
                          index=cache.index + t)

    # Heads in float32: log-probabilities and scores must not inherit bf16 rounding.
    xf = x.astype(jnp.float32)
    if self.head == "lm":
      if cfg.tie_embeddings:
        w = embed.astype(jnp.float32).T
      else:
        w = declare(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                    nn.initializers.normal(cfg.init_std), pdt).astype(jnp.float32)
      if return_hidden:
        return xf, new_cache
      logits = jnp.dot(xf, w, precision=jax.lax.Precision.HIGHEST)
      out = constrain(self.shard, logits, ("act_batch", "act_length", "act_vocab"))
    else:
      w = declare(self, "score_kernel", (cfg.d_model, 1), ("embed", None),
                  nn.initializers.normal(cfg.init_std), pdt)
      b = declare(self, "score_bias", (1,), (None,), nn.initializers.zeros, pdt)
      out = (jnp.dot(xf, w.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
             + b.astype(jnp.float32))[..., 0]
      if cfg.score_logprob:
        out = out + self._loglik_term(xf, embed, tokens, segment_ids)
    return out, new_cache

  def _loglik_term(self, xf: Array, embed: Array, tokens: Array, segment_ids: Array) -> Array:
    """weight * response log-likelihood [B, T] (cfg.score_logprob; class docstring), the LM
    head applied to the hidden states xf [B, T, d] chunk by chunk."""
    cfg, pdt = self.cfg, self.cfg.jnp_param_dtype
    if cfg.tie_embeddings:
      head = embed.astype(jnp.float32).T
    else:
      head = declare(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                     nn.initializers.normal(cfg.init_std), pdt).astype(jnp.float32)
    weight = declare(self, LOGPROB_WEIGHT, (1,), (None,),
                     nn.initializers.constant(cfg.score_logprob), pdt)
    b, t = tokens.shape
    chunk = positions_per_chunk(b, t, cfg.resolved_logits_chunk_tokens)
    loglik = response_loglik(xf, head, tokens, segment_ids, chunk)  # [B, T]
    # Kept for the reward model's auxiliary LM loss (stages/rm/step.py), read with
    # `mutable=["intermediates"]`; a no-op otherwise.
    self.sow("intermediates", RESPONSE_LOGLIK, loglik)
    return weight.astype(jnp.float32)[0] * loglik


def lm_head_weight(cfg: ModelConfig, params) -> Array:
  """The LM head of an "lm" DecoderLM's params as a float32 [d_model, vocab] matrix: what
  `DecoderLM(..., return_hidden=True)`'s hidden states are multiplied by to give logits."""
  if cfg.tie_embeddings:
    return params["embed"].astype(jnp.float32).T
  return params["lm_head"].astype(jnp.float32)


def gather_at(values: Array, index: Array) -> Array:
  """values [B, T, ...] read at index [B] (or [B, N]) along T -> [B, ...] (or [B, N, ...])."""
  squeeze = index.ndim == 1
  idx = index[:, None] if squeeze else index
  idx = idx.reshape(idx.shape + (1,) * (values.ndim - 2))
  out = jnp.take_along_axis(values, idx, axis=1)
  return out[:, 0] if squeeze else out


def last_token_index(segment_ids: Array) -> Array:
  """Index of the last non-padding token of each row ([B, T] -> [B]); 0 for an empty row."""
  t = segment_ids.shape[-1]
  idx = jnp.where(segment_ids != 0, jnp.arange(t), -1).max(axis=-1)
  return jnp.maximum(idx, 0)
