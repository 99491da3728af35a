"""Which attention implementation runs, chosen at trace time from static facts.

`model.attention`:
  reference  the whole [B, H, T, S] score array (quadratic memory);
  blocked    pure-JAX online softmax over key blocks with a blocked backward (any backend);
  splash     TPU Pallas splash attention (interpret mode elsewhere, for tests);
  cudnn      cuDNN flash attention via jax.nn.dot_product_attention (GPU);
  auto       splash on TPU, cuDNN on GPU where the dtype allows, blocked elsewhere; on CPU
             the reference while the keys fit one block (`CPU_REFERENCE_MAX_KEYS`, measured:
             README "Performance"), and everywhere the reference for decode steps
             (T <= `DECODE_MAX_QUERIES` queries against a cache: [B, H, T, S] is linear in S).
What splash or cuDNN cannot express goes to `blocked` (documented in their modules): shared
prefixes and KV caches for splash; float32, KV caches and shapes cuDNN refuses for cuDNN.
"""
from __future__ import annotations

import logging
from typing import Optional

import jax

from instructjax.models.attention.blocked import BLOCK_K, blocked_attention
from instructjax.models.attention.cudnn import cudnn_attention, cudnn_supported
from instructjax.models.attention.mask import AttentionMask
from instructjax.models.attention.reference import reference_attention
from instructjax.models.attention.splash import splash_attention
from instructjax.models.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS

Array = jax.Array

DECODE_MAX_QUERIES = 16
CPU_REFERENCE_MAX_KEYS = BLOCK_K

_log = logging.getLogger(__name__)


def splash_supported(self_attention: bool, shared_prefix: bool) -> bool:
  return self_attention and not shared_prefix


def select(implementation: str, num_queries: int, num_keys: int, dtype, head_dim: int, *,
           self_attention: bool, shared_prefix: bool = False,
           backend: Optional[str] = None) -> str:
  """The implementation that runs for `model.attention = implementation` (module docstring).

  Static facts only: T, S, the compute dtype, the head dim, whether queries and keys are the
  same tokens (no cache) and whether a shared prefix is visible (AttentionMask's flags).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r} is not one of "
                     f"{IMPLEMENTATIONS}")
  backend = backend or jax.default_backend()
  if implementation in ("reference", "blocked"):
    return implementation
  splash = splash_supported(self_attention, shared_prefix)
  cudnn = cudnn_supported(dtype, head_dim, self_attention)
  if implementation == "splash":
    return "splash" if splash else "blocked"
  if implementation == "cudnn":
    return "cudnn" if cudnn else "blocked"
  if not self_attention and num_queries <= DECODE_MAX_QUERIES:
    return "reference"
  if backend == "tpu" and splash:
    return "splash"
  if backend == "gpu" and cudnn:
    return "cudnn"
  if backend == "cpu" and num_keys <= CPU_REFERENCE_MAX_KEYS:
    return "reference"
  return "blocked"


def attend(q: Array, k: Array, v: Array, mask: AttentionMask, implementation: str = "auto",
           heads_first: bool = False, shard=None, dense_mask: Optional[Array] = None) -> Array:
  """Grouped-query attention of q [B, T, H, Dh] over k, v [B, S, Hkv, Dh] ([B, Hkv, S, Dh] with
  `heads_first`: the KV cache) -> [B, T, H, Dh] in v's dtype, by `select`.

  shard: the model's ShardingContext (splash runs per shard under it). dense_mask: the
  [B, T, S] mask if the caller already built it (the reference path; else built here).
  """
  s = k.shape[2 if heads_first else 1]
  chosen = select(implementation, q.shape[1], s, q.dtype, q.shape[-1],
                  self_attention=mask.self_attention, shared_prefix=mask.shared_prefix)
  if chosen == "reference":
    return reference_attention(q, k, v, mask.dense() if dense_mask is None else dense_mask,
                               heads_first=heads_first)
  if chosen == "splash":
    mesh = batch_axes = head_axes = None
    if shard is not None:
      hkv = k.shape[2]
      spec = shard.sharding(("act_batch", "act_heads"), (q.shape[0], hkv)).spec
      mesh, batch_axes, head_axes = shard.mesh, spec[0], spec[1]
    return splash_attention(q, k, v, mask, batch_axes, head_axes, mesh)
  if chosen == "cudnn":
    try:
      return cudnn_attention(q, k, v, mask)
    except (NotImplementedError, RuntimeError, ValueError) as e:  # Refused when traced.
      _log.warning("cuDNN attention unavailable (%s): using the blocked kernel", e)
  return blocked_attention(q, k, v, mask, heads_first=heads_first)


def attend_cache(q: Array, k_layers: Array, v_layers: Array, layer: Array,
                 mask: AttentionMask, implementation: str = "auto",
                 dense_mask: Optional[Array] = None) -> Array:
  """Attention of q [B, T, H, Dh] over layer `layer` of the stacked KV cache k/v_layers
  [L, B, Hkv, S, Dh] (already holding this call's keys and values), read in the cache's
  dtype: q is cast to it, the cache is not converted.
  """
  t, s = q.shape[1], k_layers.shape[3]
  k = jax.lax.dynamic_index_in_dim(k_layers, layer, 0, keepdims=False)  # [B, Hkv, S, Dh]
  v = jax.lax.dynamic_index_in_dim(v_layers, layer, 0, keepdims=False)
  if select(implementation, t, s, q.dtype, q.shape[-1], self_attention=mask.self_attention,
            shared_prefix=mask.shared_prefix) == "reference":
    return reference_attention(q, k, v, mask.dense() if dense_mask is None else dense_mask,
                               heads_first=True)
  return blocked_attention(q, k, v, mask, heads_first=True)
