"""Blocked attention in pure JAX (flash-attention style), forward and backward, any backend.

Queries are taken block_q at a time; for each query block the keys are read block_k at a
time with an online softmax (running max m, normaliser l, float32 accumulator), so at most
[B, H, block_q, block_k] scores exist at once. Key blocks after a query block's last slot are
skipped (causal). The backward pass (custom VJP, FlashAttention-2) recomputes each block's
probabilities from the saved log-sum-exp instead of keeping them: the residuals are q, k, v,
the output (in the layout the output projection reads, so it is kept once) and the
[B, H, T] log-sum-exp, all linear in T.

Masking follows `mask.attention_mask` exactly, with masked scores set to the float32 minimum
as the reference does. A query that sees no key (padding) would see a uniform average over the
key blocks it visited; the reference averages over all S keys, so such rows are recognised by
their log-sum-exp (it stays at the float32 minimum) and given the mean of v over all keys,
whose gradient the backward pass spreads back over v.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

from instructjax.models.attention.mask import AttentionMask, block_mask

Array = jax.Array

MASKED = float(jnp.finfo(jnp.float32).min)
BLOCK_Q = 512
BLOCK_K = 512


def blocked_attention(q: Array, k: Array, v: Array, mask: AttentionMask,
                      heads_first: bool = False, block_q: Optional[int] = None,
                      block_k: Optional[int] = None) -> Array:
  """Same contract as `reference_attention`, with the mask given as an AttentionMask.

  q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh] (or [B, Hkv, S, Dh] with `heads_first`).
  Returns [B, T, H, Dh] in v's dtype. T and S need not divide the block sizes (padded).
  block_q, block_k: default BLOCK_Q, BLOCK_K (read at call time).
  """
  t, s = q.shape[1], k.shape[2 if heads_first else 1]
  bq, bk = min(block_q or BLOCK_Q, t), min(block_k or BLOCK_K, s)
  return _flash(bq, bk, heads_first, mask.shared_prefix, q.astype(k.dtype), k, v,
                mask.q_segments.astype(jnp.int32), mask.k_segments.astype(jnp.int32),
                mask.q_slots.astype(jnp.int32))


def _q_blocks(x: Array, bq: int, hkv: int) -> Array:
  """[B, T, H, D] -> [B, Hkv, G, Tp, D]: the G query heads sharing a KV head side by side, T
  padded to whole blocks with zeros."""
  b, t, h, d = x.shape
  x = jnp.moveaxis(x.reshape(b, t, hkv, h // hkv, d), 1, 3)
  tp = -(-t // bq) * bq
  return jnp.pad(x, ((0, 0),) * 3 + ((0, tp - t), (0, 0))) if tp > t else x


def _to_blocks(bq, bk, heads_first, q, k, v, q_seg, k_seg, q_slots):
  """The kernel's layout: q [B, Hkv, G, Tp, D], k, v [B, Hkv, Sp, D], T and S padded to whole
  blocks; padding is segment 0 (padded queries see nothing and sit at the last real slot,
  padded keys are never seen)."""
  if not heads_first:
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  t, s = q.shape[1], k.shape[2]
  tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
  q = _q_blocks(q, bq, k.shape[1])
  if tp > t:
    q_seg = jnp.pad(q_seg, ((0, 0), (0, tp - t)))
    q_slots = jnp.pad(q_slots, (0, tp - t), mode="edge")
  if sp > s:
    k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, sp - s), (0, 0))) for x in (k, v))
    k_seg = jnp.pad(k_seg, ((0, 0), (0, sp - s)))
  return q, k, v, q_seg, k_seg, q_slots


def _from_blocks(x: Array, t: int) -> Array:
  """[B, Hkv, G, Tp, D] -> [B, T, H, D]."""
  b, hkv, g, _, d = x.shape
  return jnp.moveaxis(x[:, :, :, :t], 3, 1).reshape(b, t, hkv * g, d)


def _scores(q: Array, k: Array, visible: Array) -> Array:
  """Masked float32 scores of one block: q [B, K, G, bq, D], k [B, K, bk, D] -> [B, K, G, bq, bk]."""
  s = jnp.einsum("bkgqd,bksd->bkgqs", q, k, preferred_element_type=jnp.float32)
  s = s / math.sqrt(q.shape[-1])
  return jnp.where(visible[:, None, None], s, MASKED)


def _key_blocks_seen(q_slots: Array, bq: int, bk: int, nk: int) -> Array:
  """[nq] number of leading key blocks each query block needs (keys up to its last slot)."""
  last = q_slots.reshape(-1, bq).max(axis=1)
  return jnp.minimum(last // bk + 1, nk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _flash(bq: int, bk: int, heads_first: bool, shared_prefix: bool, q: Array, k: Array,
           v: Array, q_seg: Array, k_seg: Array, q_slots: Array) -> Array:
  """Attention output [B, T, H, D] in v's dtype (q, k, v in the caller's layouts)."""
  return _flash_fwd(bq, bk, heads_first, shared_prefix, q, k, v, q_seg, k_seg, q_slots)[0]


def _forward(bq, bk, shared_prefix, s_real, q, k, v, q_seg, k_seg, q_slots):
  """(out [B, K, G, Tp, D] in v's dtype, log-sum-exp [B, K, G, Tp] float32), blocked layout."""
  b, hkv, g, tp, dh = q.shape
  nq, nk = tp // bq, k.shape[2] // bk
  seen = _key_blocks_seen(q_slots, bq, bk, nk)
  # A query that sees no key gets the mean of v over the real keys (padded keys are 0).
  uniform = (jnp.sum(v.astype(jnp.float32), axis=2) / s_real)[:, :, None, None, :]

  def query_block(i, carry):
    out, lse = carry
    q0 = i * bq
    qi = jax.lax.dynamic_slice_in_dim(q, q0, bq, axis=3)
    q_seg_i = jax.lax.dynamic_slice_in_dim(q_seg, q0, bq, axis=1)
    q_slot_i = jax.lax.dynamic_slice_in_dim(q_slots, q0, bq)

    def key_block(j, state):
      m, l, acc = state
      k0 = j * bk
      kj = jax.lax.dynamic_slice_in_dim(k, k0, bk, axis=2)
      vj = jax.lax.dynamic_slice_in_dim(v, k0, bk, axis=2)
      k_seg_j = jax.lax.dynamic_slice_in_dim(k_seg, k0, bk, axis=1)
      visible = block_mask(q_seg_i, k_seg_j, q_slot_i, k0 + jnp.arange(bk), shared_prefix)
      s = _scores(qi, kj, visible)  # [B, K, G, bq, bk]
      m_new = jnp.maximum(m, s.max(axis=-1))
      alpha = jnp.exp(m - m_new)  # Rescales what was summed under the old maximum.
      p = jnp.exp(s - m_new[..., None])
      l = alpha * l + p.sum(axis=-1)
      pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), vj,
                      preferred_element_type=jnp.float32)
      return m_new, l, alpha[..., None] * acc + pv

    init = (jnp.full((b, hkv, g, bq), MASKED, jnp.float32),
            jnp.zeros((b, hkv, g, bq), jnp.float32),
            jnp.zeros((b, hkv, g, bq, dh), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, seen[i], key_block, init)
    lse_i = m + jnp.log(l)
    out_i = jnp.where((lse_i > MASKED / 2)[..., None], acc / l[..., None], uniform)
    out = jax.lax.dynamic_update_slice_in_dim(out, out_i.astype(out.dtype), q0, axis=3)
    lse = jax.lax.dynamic_update_slice_in_dim(lse, lse_i, q0, axis=3)
    return out, lse

  init = (jnp.zeros(q.shape[:-1] + (v.shape[-1],), v.dtype),
          jnp.zeros((b, hkv, g, tp), jnp.float32))
  return jax.lax.fori_loop(0, nq, query_block, init)


def _flash_fwd(bq, bk, heads_first, shared_prefix, q, k, v, q_seg, k_seg, q_slots):
  s_real = k.shape[2 if heads_first else 1]
  blocks = _to_blocks(bq, bk, heads_first, q, k, v, q_seg, k_seg, q_slots)
  out, lse = _forward(bq, bk, shared_prefix, s_real, *blocks)
  out = _from_blocks(out, q.shape[1])
  return out, (q, k, v, q_seg, k_seg, q_slots, out, lse)


def _flash_bwd(bq, bk, heads_first, shared_prefix, residuals, d_out):
  q, k, v, q_seg, k_seg, q_slots, out, lse = residuals
  t, s_real = q.shape[1], k.shape[2 if heads_first else 1]
  q, k, v, q_seg, k_seg, q_slots = _to_blocks(bq, bk, heads_first, q, k, v, q_seg, k_seg,
                                              q_slots)
  hkv = k.shape[1]
  d_out, out = _q_blocks(d_out.astype(v.dtype), bq, hkv), _q_blocks(out, bq, hkv)
  tp, nk = q.shape[3], k.shape[2] // bk
  nq = tp // bq
  scale = 1.0 / math.sqrt(q.shape[-1])
  # ds = p * (dp - delta) with delta = rowsum(d_out * out).
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  # Key block j is seen by the query blocks whose last slot reaches it: a suffix [first[j], nq).
  last = q_slots.reshape(nq, bq).max(axis=1)
  first = jnp.sum(last[None, :] < (jnp.arange(nk) * bk)[:, None], axis=1)

  def key_block(j, carry):
    dq, dk, dv = carry
    k0 = j * bk
    kj = jax.lax.dynamic_slice_in_dim(k, k0, bk, axis=2)
    vj = jax.lax.dynamic_slice_in_dim(v, k0, bk, axis=2)
    k_seg_j = jax.lax.dynamic_slice_in_dim(k_seg, k0, bk, axis=1)

    def query_block(i, state):
      dq, dk_j, dv_j = state
      q0 = i * bq
      qi = jax.lax.dynamic_slice_in_dim(q, q0, bq, axis=3)
      d_out_i = jax.lax.dynamic_slice_in_dim(d_out, q0, bq, axis=3)
      lse_i = jax.lax.dynamic_slice_in_dim(lse, q0, bq, axis=3)
      delta_i = jax.lax.dynamic_slice_in_dim(delta, q0, bq, axis=3)
      visible = block_mask(jax.lax.dynamic_slice_in_dim(q_seg, q0, bq, axis=1), k_seg_j,
                           jax.lax.dynamic_slice_in_dim(q_slots, q0, bq),
                           k0 + jnp.arange(bk), shared_prefix)
      s = _scores(qi, kj, visible)
      # Rows that see no key have no visible entry: p = 0, they add nothing here.
      p = jnp.where(visible[:, None, None], jnp.exp(s - lse_i[..., None]), 0.0)
      dv_j = dv_j + jnp.einsum("bkgqs,bkgqd->bksd", p.astype(v.dtype), d_out_i,
                               preferred_element_type=jnp.float32)
      dp = jnp.einsum("bkgqd,bksd->bkgqs", d_out_i, vj, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_i[..., None]) * scale  # Cotangent of q.k before the scale.
      dq_i = jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(k.dtype), kj,
                        preferred_element_type=jnp.float32)
      dq = jax.lax.dynamic_update_slice_in_dim(
          dq, jax.lax.dynamic_slice_in_dim(dq, q0, bq, axis=3) + dq_i, q0, axis=3)
      dk_j = dk_j + jnp.einsum("bkgqs,bkgqd->bksd", ds.astype(q.dtype), qi,
                               preferred_element_type=jnp.float32)
      return dq, dk_j, dv_j

    zeros = jnp.zeros(kj.shape, jnp.float32)
    dq, dk_j, dv_j = jax.lax.fori_loop(first[j], nq, query_block, (dq, zeros, zeros))
    dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_j, k0, axis=2)
    dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_j, k0, axis=2)
    return dq, dk, dv

  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32),
          jnp.zeros(v.shape, jnp.float32))
  dq, dk, dv = jax.lax.fori_loop(0, nk, key_block, init)
  # The uniform average of rows that see no key: d v_s += their d_out / S for every real key.
  blind = (lse <= MASKED / 2)[..., None]
  d_uniform = jnp.sum(jnp.where(blind, d_out.astype(jnp.float32), 0.0), axis=(2, 3)) / s_real
  dv = dv + jnp.where(jnp.arange(dv.shape[2])[:, None] < s_real, d_uniform[:, :, None], 0.0)
  dq = _from_blocks(dq, t).astype(q.dtype)
  dk, dv = dk[:, :, :s_real], dv[:, :, :s_real]
  if not heads_first:
    dk, dv = jnp.swapaxes(dk, 1, 2), jnp.swapaxes(dv, 1, 2)
  return dq, dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
