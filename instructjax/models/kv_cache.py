"""Key/value cache for incremental decoding, a plain pytree passed in and out of the model."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from instructjax.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, written slot by slot.

  All rows write at the same slot `index` (prompts are left padded), so `index` is a scalar;
  per-row validity lives in `segment_ids` (0 = empty slot or padding token).
  """
  # Slots after heads: attention reads a layer's [batch, kv_heads, max_len, head_dim] block
  # as is (batch dims leading), with no transposed copy per decode step.
  k: jax.Array  # [layers, batch, kv_heads, max_len, head_dim]
  v: jax.Array  # [layers, batch, kv_heads, max_len, head_dim]
  segment_ids: jax.Array  # [batch, max_len] int32
  index: jax.Array  # [] int32, next slot to write

  LOGICAL_AXES = {"k": ("layers", "act_batch", "act_kv_heads", "act_length", None),
                  "v": ("layers", "act_batch", "act_kv_heads", "act_length", None),
                  "segment_ids": ("act_batch", "act_length"), "index": ()}

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
    """Empty cache in `dtype` (default `cfg.kv_cache_dtype`, itself the compute dtype by
    default: bf16 for bf16 models). The model reads it in this dtype, with no converted copy."""
    if max_len > cfg.max_seq_len and cfg.learned_positions:
      raise ValueError(f"cache length {max_len} exceeds model.max_seq_len={cfg.max_seq_len}")
    dtype = dtype or cfg.jnp_kv_cache_dtype
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.resolved_head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               segment_ids=jnp.zeros((batch, max_len), jnp.int32),
               index=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.segment_ids.shape[1]
