"""cuDNN flash attention through `jax.nn.dot_product_attention(..., implementation="cudnn")`.

What the public API can express of the model's masks: causal (cuDNN skips the blocks above
the diagonal) and a boolean mask, which JAX turns into a [B, 1, T, S] additive bias in the
compute dtype: segment ids (left padding, packed documents) and `shared_prefix` go there. That
bias is shared by every head (2 bytes a pair, against 4 x heads for the reference's scores)
and the backward pass returns its gradient buffer too, so memory still grows with T^2, at a
small constant. cuDNN needs bf16/fp16 inputs and a head dim that is a multiple of 8 (at most
128, 256 from Hopper on); `cudnn_supported` says when to try it, and `dispatch.py` falls back
to the blocked kernel otherwise (float32, a KV cache, a CPU/TPU backend, or a shape cuDNN
refuses when the call is traced).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.models.attention.mask import AttentionMask

Array = jax.Array

DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_supported(dtype, head_dim: int, self_attention: bool) -> bool:
  """Whether the cuDNN path applies (the backend aside): self-attention, half precision."""
  return (self_attention and jnp.dtype(dtype) in [jnp.dtype(d) for d in DTYPES]
          and head_dim % 8 == 0 and head_dim <= 256)


def cudnn_attention(q: Array, k: Array, v: Array, mask: AttentionMask,
                    implementation: str = "cudnn") -> Array:
  """Self-attention with the model's masks; q [B, T, H, Dh], k/v [B, T, Hkv, Dh].

  `implementation="xla"` runs the same call through XLA's own attention (how the argument
  preparation is tested without a GPU).
  """
  if not mask.self_attention:
    raise ValueError("the cuDNN path handles self-attention without a KV cache only")
  visible = mask.dense()[:, None]  # [B, 1, T, T]: one mask for every head.
  out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=visible,
                                     is_causal=True, implementation=implementation)
  # Without a cache every real token sees itself; padding gets the reference's uniform average.
  h, hkv = q.shape[2], k.shape[2]
  uniform = jnp.repeat(jnp.mean(v.astype(jnp.float32), axis=1), h // hkv, axis=1)  # [B, H, Dh]
  return jnp.where((mask.q_segments != 0)[:, :, None, None], out,
                   uniform[:, None].astype(out.dtype)).astype(v.dtype)
