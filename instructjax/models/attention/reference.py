"""Reference attention: the whole [B, H, T, S] float32 score array at once.

Quadratic in memory when T == S; the kernels of this package are checked against it, and it is
what short sequences on CPU and single-token decode steps (T == 1: [B, H, 1, S], linear) use.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def reference_attention(q: Array, k: Array, v: Array, mask: Array,
                        heads_first: bool = False) -> Array:
  """Grouped-query attention.

  q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh], or [B, Hkv, S, Dh] with `heads_first` (the KV
  cache's layout); mask: [B, T, S] bool (True = may attend).
  Returns [B, T, H, Dh] in v's dtype. Scores and softmax in float32; a fully masked row (a
  padding query) gets uniform weights rather than NaN.

  q is cast to k's dtype, so a cache kept in another dtype than the compute dtype (bf16 cache,
  float32 model) is read as it is, not converted (copied) at every decode step.
  """
  b, t, h, dh = q.shape
  hkv = k.shape[1 if heads_first else 2]
  kv = "bksd" if heads_first else "bskd"
  q = q.reshape(b, t, hkv, h // hkv, dh).astype(k.dtype)
  scores = jnp.einsum(f"btkgd,{kv}->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(dh)
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum(f"bkgts,{kv}->btkgd", probs, v)
  return out.reshape(b, t, h, dh)
