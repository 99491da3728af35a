"""TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) for the model's masks.

Splash takes a static mask (here causal) and segment ids compared for equality. Padding is
segment 0 in the model and must see nothing, so queries' 0 becomes -1 and keys' 0 becomes -2
(never equal). What splash cannot express goes to the blocked kernel (`dispatch.py`):
`shared_prefix` (segment 1 visible to every segment: not an equality) and the KV cache (query
slots offset from key slots). Grouped-query heads: one multi-query kernel per KV head (vmap).

Off TPU the Pallas kernels run in interpret mode (slow; for tests on CPU). Under a mesh the
kernel runs per shard (shard_map over batch and heads): a Pallas call is not partitioned by
XLA's SPMD pass.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from instructjax.models.attention.mask import AttentionMask

Array = jax.Array

_MIN_BLOCK = 128  # Splash's blocks are multiples of 128 positions.


def _splash():
  # Imported when first used: Pallas' TPU modules are not needed by the other kernels.
  from jax.experimental.pallas.ops.tpu import splash_attention  # pylint: disable=import-outside-toplevel
  return splash_attention


def _block(t: int) -> int:
  return next(b for b in (512, 256, _MIN_BLOCK) if t % b == 0)


def _kernel(t: int, heads: int, interpret: bool):
  """One multi-query splash kernel for `heads` query heads over t padded positions (built in
  the trace that uses it: its mask-info arrays are constants of that trace; splash caches the
  NumPy mask processing itself)."""
  splash, b = _splash(), _block(t)
  sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                            block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * heads)
  return splash.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)


def _attend(q: Array, k: Array, v: Array, segment_ids: Array, interpret: bool) -> Array:
  """q [B, Hkv, G, T, D] (scaled), k/v [B, Hkv, T, D], segment_ids [B, T] -> like q.

  T a multiple of 128; padding tokens (segment 0) see nothing and are seen by nothing.
  """
  kernel = _kernel(q.shape[3], q.shape[2], interpret)
  ids = _splash().SegmentIds(q=jnp.where(segment_ids == 0, -1, segment_ids),
                             kv=jnp.where(segment_ids == 0, -2, segment_ids))
  per_kv_head = jax.vmap(lambda qh, kh, vh, ids: kernel(qh, kh, vh, ids),
                         in_axes=(0, 0, 0, None))
  return jax.vmap(per_kv_head)(q, k, v, ids)


def splash_attention(q: Array, k: Array, v: Array, mask: AttentionMask,
                     batch_axes=None, head_axes=None, mesh=None,
                     interpret: Optional[bool] = None) -> Array:
  """Self-attention (no cache, no shared prefix) with splash kernels.

  q: [B, T, H, Dh]; k, v: [B, T, Hkv, Dh]; returns [B, T, H, Dh] in v's dtype.
  batch_axes / head_axes: mesh axes the batch and the heads are split over (with `mesh`); the
  kernel then runs on each device's shard.
  """
  if mask.shared_prefix or not mask.self_attention:
    raise ValueError("splash attention handles causal self-attention with segment ids only")
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  b, t, h, dh = q.shape
  hkv = k.shape[2]
  tp = -(-t // _MIN_BLOCK) * _MIN_BLOCK
  seg = mask.q_segments.astype(jnp.int32)
  # [B, Hkv, G, T, D]; splash does not scale the scores.
  qh = jnp.moveaxis((q / math.sqrt(dh)).astype(k.dtype).reshape(b, t, hkv, h // hkv, dh), 1, 3)
  kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, Hkv, T, D]
  if tp > t:  # Padding at the end: segment 0.
    qh = jnp.pad(qh, ((0, 0),) * 3 + ((0, tp - t), (0, 0)))
    kh = jnp.pad(kh, ((0, 0), (0, 0), (0, tp - t), (0, 0)))
    vh = jnp.pad(vh, ((0, 0), (0, 0), (0, tp - t), (0, 0)))
    seg = jnp.pad(seg, ((0, 0), (0, tp - t)))
  attend = functools.partial(_attend, interpret=interpret)
  if mesh is not None:
    heads = P(batch_axes, head_axes)
    attend = jax.shard_map(attend, mesh=mesh, in_specs=(heads, heads, heads, P(batch_axes)),
                           out_specs=heads, check_vma=False)
  out = attend(qh, kh, vh, seg)[:, :, :, :t]
  out = jnp.moveaxis(out, 3, 1).reshape(b, t, h, dh).astype(v.dtype)
  # Without a cache every real token sees itself; padding gets the reference's uniform average.
  uniform = jnp.mean(v.astype(jnp.float32), axis=1)  # [B, Hkv, Dh]
  uniform = jnp.repeat(uniform, h // hkv, axis=1).astype(out.dtype)  # [B, H, Dh]
  return jnp.where((mask.q_segments != 0)[:, :, None, None], out, uniform[:, None])


__all__ = ["splash_attention"]
