"""Who attends to whom, kept as per-token ids that every kernel reads block by block.

The rule (one for every attention implementation): query t sees key s when
  * s is not later: slot(s) <= q_slots[t] (causal by slot; key s sits at slot s),
  * s is not padding: k_segments[s] != 0,
  * s is in t's segment: k_segments[s] == q_segments[t], or, with `shared_prefix`, s is in
    segment 1 and t is not padding (a prompt followed by several continuations packed in one
    row, each continuation attending to the prompt and to itself only).
Segment ids express left padding, packed documents and empty cache slots alike (0 = padding).
A query that sees no key (a padding token) gets uniform weights over all S keys, as a softmax
of equal masked scores gives; every implementation reproduces that.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

SHARED_PREFIX_SEGMENT = 1  # With shared_prefix: the segment every other segment of its row sees.


def attention_mask(q_segments: Array, k_segments: Array, q_slots: Array,
                   shared_prefix: bool = False) -> Array:
  """[B, T, S] bool, True = may attend (module docstring).

  q_segments: [B, T]; k_segments: [B, S]; q_slots: [T] slot index of each query.
  """
  k_slots = jnp.arange(k_segments.shape[1])
  return block_mask(q_segments, k_segments, q_slots, k_slots, shared_prefix)


@flax.struct.dataclass
class AttentionMask:
  """The inputs of `attention_mask`, passed to the kernels instead of the [B, T, S] array.

  q_slots must be non-decreasing (the model's are consecutive): the kernels skip key blocks
  after a query block's last slot.
  """
  q_segments: Array  # [B, T] int32
  k_segments: Array  # [B, S] int32
  q_slots: Array  # [T] int32
  shared_prefix: bool = flax.struct.field(pytree_node=False, default=False)
  # True when queries and keys are the same T tokens in order (no cache): q_slots = arange(T).
  self_attention: bool = flax.struct.field(pytree_node=False, default=False)

  @classmethod
  def for_sequence(cls, segment_ids: Array, shared_prefix: bool = False) -> "AttentionMask":
    """Self-attention over one [B, T] sequence."""
    t = segment_ids.shape[1]
    return cls(segment_ids, segment_ids, jnp.arange(t, dtype=jnp.int32), shared_prefix, True)

  @classmethod
  def for_cache(cls, q_segments: Array, k_segments: Array, index: Array) -> "AttentionMask":
    """T new tokens written at slots [index, index + T) of a cache with k_segments [B, S]."""
    t = q_segments.shape[1]
    return cls(q_segments, k_segments, index + jnp.arange(t, dtype=jnp.int32))

  def dense(self) -> Array:
    """The whole [B, T, S] bool mask (reference attention only)."""
    return attention_mask(self.q_segments, self.k_segments, self.q_slots, self.shared_prefix)

  def block(self, q_start: Array, q_len: int, k_start: Array, k_len: int) -> Array:
    """[B, q_len, k_len] bool: the mask of queries [q_start, +q_len) x keys [k_start, +k_len)."""
    q_seg = jax.lax.dynamic_slice_in_dim(self.q_segments, q_start, q_len, axis=1)
    k_seg = jax.lax.dynamic_slice_in_dim(self.k_segments, k_start, k_len, axis=1)
    q_slots = jax.lax.dynamic_slice_in_dim(self.q_slots, q_start, q_len)
    return block_mask(q_seg, k_seg, q_slots, k_start + jnp.arange(k_len), self.shared_prefix)


def block_mask(q_seg: Array, k_seg: Array, q_slots: Array, k_slots: Array,
               shared_prefix: bool) -> Array:
  """`attention_mask` of a block: q_seg [B, Tq], k_seg [B, Sk], q_slots [Tq], k_slots [Sk]."""
  causal = k_slots[None, :] <= q_slots[:, None]
  same = q_seg[:, :, None] == k_seg[:, None, :]
  if shared_prefix:
    same = same | ((k_seg == SHARED_PREFIX_SEGMENT)[:, None, :] & (q_seg != 0)[:, :, None])
  return causal[None] & same & (k_seg != 0)[:, None, :]
