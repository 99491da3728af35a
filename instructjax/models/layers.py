"""Building blocks of the decoder: norms, rotary embeddings, attention and MLPs.

Parameters are declared with logical axis names (see instructjax/sharding.py); compute happens
in `cfg.dtype` with parameters stored in `cfg.param_dtype`. Softmax and norms run in float32.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from instructjax.models.attention import AttentionMask, attend, attend_cache
from instructjax.models.config import ModelConfig
from instructjax.parallel.sharding import ShardingContext, constrain

Array = jax.Array


def declare(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[Optional[str]],
            init, dtype) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class Norm(nn.Module):
  """LayerNorm (gpt2) or RMSNorm (llama, qwen2), computed in float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    d = x.shape[-1]
    scale = declare(self, "scale", (d,), ("norm",), nn.initializers.ones, cfg.jnp_param_dtype)
    xf = x.astype(jnp.float32)
    if cfg.norm_type == "layernorm":
      bias = declare(self, "bias", (d,), ("norm",), nn.initializers.zeros, cfg.jnp_param_dtype)
      mean = xf.mean(-1, keepdims=True)
      var = jnp.square(xf - mean).mean(-1, keepdims=True)
      y = (xf - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
      return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(cfg.jnp_dtype)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + cfg.norm_eps)
    # As in HF Llama: normalise in float32, cast back, then scale.
    return scale.astype(cfg.jnp_dtype) * y.astype(cfg.jnp_dtype)


def rope_inv_freq(cfg: ModelConfig) -> Array:
  """Inverse frequencies [head_dim // 2], with Llama-3 scaling when configured."""
  dim = cfg.resolved_head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  if not cfg.rope_scaling_factor:
    return inv_freq
  factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
  old_len = cfg.rope_original_max_len
  low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
  wavelen = 2 * math.pi / inv_freq
  # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
  scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotates halves (HF convention). x: [B, T, H, Dh]; positions: [B, T]."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, Dh/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  cfg: ModelConfig
  shard: Optional[ShardingContext] = None

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: AttentionMask,
               dense_mask: Optional[Array], caches: Optional[tuple[Array, Array]],
               layer: Optional[Array], cache_index: Optional[Array]):
    """Returns (output [B, T, d], updated caches or None).

    mask: who attends to whom; dense_mask: its [B, T, S] array when the reference
    implementation runs (built once for all layers), else None. `cfg.attention` picks the
    implementation (models/attention/dispatch.py).

    caches: every layer's keys and values, ([L, B, Hkv, S, Dh], [L, B, Hkv, S, Dh]); this
    layer (index `layer`) writes its T new ones at slots [cache_index, cache_index + T) in
    place and attends over its whole slice. The stacked arrays travel through the layer
    loop as carry, so XLA updates them in place: a decode step writes B x T new slots per
    layer instead of copying the cache.
    """
    cfg = self.cfg
    d, h, hkv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    dt, pdt = cfg.jnp_dtype, cfg.jnp_param_dtype
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def project(name, n, axes_heads):
      w = declare(self, f"{name}_kernel", (d, n, dh), ("embed", axes_heads, "head_dim"), init, pdt)
      y = jnp.einsum("btd,dnh->btnh", x, w.astype(dt))
      if cfg.qkv_bias:
        y = y + declare(self, f"{name}_bias", (n, dh), (axes_heads, "head_dim"),
                        nn.initializers.zeros, pdt).astype(dt)
      return y

    q = constrain(self.shard, project("q", h, "heads"), ("act_batch", "act_length", "act_heads", None))
    k = constrain(self.shard, project("k", hkv, "kv_heads"),
                  ("act_batch", "act_length", "act_kv_heads", None))
    v = constrain(self.shard, project("v", hkv, "kv_heads"),
                  ("act_batch", "act_length", "act_kv_heads", None))
    if not cfg.learned_positions:
      inv_freq = rope_inv_freq(cfg)
      q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

    new_caches = None
    if caches is None:
      out = attend(q, k, v, mask, cfg.attention, shard=self.shard, dense_mask=dense_mask)
    else:
      # Write this call's keys/values at slots [cache_index, cache_index + T) of this layer
      # in place and attend over the layer's whole cache, in the cache's dtype; `mask`
      # already excludes empty and future slots.
      ck, cv = caches
      start = (layer, 0, 0, cache_index, 0)
      to_cache = lambda x, c: jnp.swapaxes(x, 1, 2)[None].astype(c.dtype)  # [1, B, Hkv, T, Dh]
      ck = jax.lax.dynamic_update_slice(ck, to_cache(k, ck), start)
      cv = jax.lax.dynamic_update_slice(cv, to_cache(v, cv), start)
      new_caches = (ck, cv)
      out = attend_cache(q, ck, cv, layer, mask, cfg.attention, dense_mask=dense_mask)
    out = out.astype(dt)  # [B, T, H, Dh]
    wo = declare(self, "o_kernel", (h, dh, d), ("heads", "head_dim", "embed"), out_init, pdt)
    y = jnp.einsum("bthk,hkd->btd", out, wo.astype(dt))
    if cfg.out_bias:
      y = y + declare(self, "o_bias", (d,), ("norm",), nn.initializers.zeros, pdt).astype(dt)
    return y, new_caches


class MLP(nn.Module):
  """SwiGLU (llama, qwen2) or GELU-tanh with biases (gpt2)."""
  cfg: ModelConfig
  shard: Optional[ShardingContext] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    d, f, dt, pdt = cfg.d_model, cfg.d_ff, cfg.jnp_dtype, cfg.jnp_param_dtype
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.n_layers))
    hidden_axes = ("act_batch", "act_length", "act_mlp")
    if cfg.gated_mlp:
      gate = declare(self, "gate_kernel", (d, f), ("embed", "mlp"), init, pdt)
      up = declare(self, "up_kernel", (d, f), ("embed", "mlp"), init, pdt)
      hidden = jax.nn.silu(x @ gate.astype(dt)) * (x @ up.astype(dt))
      hidden = constrain(self.shard, hidden, hidden_axes)
      down = declare(self, "down_kernel", (f, d), ("mlp", "embed"), out_init, pdt)
      return hidden @ down.astype(dt)
    fc = declare(self, "fc_kernel", (d, f), ("embed", "mlp"), init, pdt)
    fc_b = declare(self, "fc_bias", (f,), ("mlp",), nn.initializers.zeros, pdt)
    hidden = jax.nn.gelu(x @ fc.astype(dt) + fc_b.astype(dt), approximate=True)
    hidden = constrain(self.shard, hidden, hidden_axes)
    proj = declare(self, "proj_kernel", (f, d), ("mlp", "embed"), out_init, pdt)
    proj_b = declare(self, "proj_bias", (d,), ("norm",), nn.initializers.zeros, pdt)
    return hidden @ proj.astype(dt) + proj_b.astype(dt)
