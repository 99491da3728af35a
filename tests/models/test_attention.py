"""Attention kernels against the reference: forward outputs and gradients for every mask kind
(causal, left padding, packed segments, shared prefix, KV-cache slots), grouped-query heads,
fully masked rows; which implementation `model.attention` selects."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.models import attention
from instructjax.models.attention import (AttentionMask, blocked_attention, cudnn_attention,
                                          reference_attention, select, splash_attention)

RTOL = 1e-5  # float32: relative to the largest magnitude of the reference.


def segments(kind, b, t, seed=0):
  """[B, T] segment ids of one mask kind."""
  rng = np.random.default_rng(seed)
  seg = np.ones((b, t), np.int32)
  if kind == "left_padding":
    for r in range(b):
      seg[r, :int(rng.integers(0, t // 2))] = 0
  elif kind in ("packed", "shared_prefix"):  # Documents (or a prompt and responses), padding.
    for r in range(b):
      cuts = np.sort(rng.choice(np.arange(1, t - 2), 3, replace=False))
      for i, (a, z) in enumerate(zip([0, *cuts], [*cuts, t])):
        seg[r, a:z] = i + 1
      seg[r, t - int(rng.integers(0, 4)):] = 0
  seg[-1, :] = 0 if kind == "left_padding" else seg[-1, :]  # A row of padding only.
  return jnp.asarray(seg)


def qkv(b, t, h, hkv, d, s=None, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 4)
  s = s or t
  return (jax.random.normal(ks[0], (b, t, h, d), dtype), jax.random.normal(ks[1], (b, s, hkv, d), dtype),
          jax.random.normal(ks[2], (b, s, hkv, d), dtype), jax.random.normal(ks[3], (b, t, h, d), dtype))


def assert_close(actual, expected, rtol=RTOL):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert np.all(np.isfinite(actual))
  scale = max(np.abs(expected).max(), 1e-6)
  assert np.abs(actual - expected).max() <= rtol * scale, np.abs(actual - expected).max() / scale


def check_against_reference(fn, q, k, v, w, mask, heads_first=False, rtol=RTOL):
  """fn's output and its gradients w.r.t. q, k, v (of sum(out * w)) equal the reference's."""
  ref = lambda q, k, v: reference_attention(q, k, v, mask.dense(), heads_first=heads_first)

  @jax.jit
  def out_and_grads(q, k, v):
    return [jax.value_and_grad(lambda *x, f=f: jnp.sum(f(*x) * w), argnums=(0, 1, 2))(q, k, v)
            + (f(q, k, v),) for f in (fn, ref)]

  (_, grads, out), (_, grads_ref, out_ref) = out_and_grads(q, k, v)
  assert_close(out, out_ref, rtol)
  for a, b in zip(grads, grads_ref):
    assert_close(a, b, rtol)


@pytest.mark.parametrize("kind", ["causal", "left_padding", "packed", "shared_prefix"])
@pytest.mark.parametrize("heads", [(4, 2), (2, 2)])
def test_blocked_equals_reference(kind, heads):
  h, hkv = heads
  b, t = 3, 37  # Not a multiple of the blocks: padded queries and keys.
  q, k, v, w = qkv(b, t, h, hkv, 8)
  mask = AttentionMask.for_sequence(segments(kind, b, t), shared_prefix=kind == "shared_prefix")
  fn = lambda q, k, v: blocked_attention(q, k, v, mask, block_q=8, block_k=16)
  check_against_reference(fn, q, k, v, w, mask)


def test_blocked_cache_slots_equal_reference():
  # Prefill of 5 tokens at slots [3, 8) of a 20-slot cache whose first slots hold a left-padded
  # prompt, then one decode query at slot 8: keys after the query's slot are never seen.
  b, s, h, hkv, d = 2, 20, 4, 2, 8
  k_seg = np.zeros((b, s), np.int32)
  k_seg[0, 1:9] = 1
  k_seg[1, 0:9] = 1
  k_seg[1, 5] = 0  # A finished row's padding token.
  k_seg = jnp.asarray(k_seg)
  for start, t in ((3, 5), (8, 1)):
    q, k, v, w = qkv(b, t, h, hkv, d, s=s, seed=start)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # The cache's [B, Hkv, S, Dh].
    mask = AttentionMask.for_cache(k_seg[:, start:start + t], k_seg, jnp.int32(start))
    fn = lambda q, k, v, m=mask: blocked_attention(q, k, v, m, heads_first=True, block_q=2,
                                                   block_k=4)
    check_against_reference(fn, q, k, v, w, mask, heads_first=True)


def test_fully_masked_rows_equal_the_reference_and_are_finite():
  # Padding queries see no key: the reference gives them uniform weights over all S keys.
  b, t = 2, 24
  seg = jnp.asarray(np.array([[0] * 10 + [1] * 14, [1] * 20 + [0] * 4]))
  q, k, v, w = qkv(b, t, 4, 2, 8, seed=3)
  mask = AttentionMask.for_sequence(seg)
  fn = lambda q, k, v: blocked_attention(q, k, v, mask, block_q=8, block_k=8)
  check_against_reference(fn, q, k, v, w, mask)
  out = jax.jit(fn)(q, k, v)
  np.testing.assert_allclose(out[0, 0, 0], jnp.mean(v[0, :, 0], axis=0), rtol=1e-5, atol=1e-6)


def test_blocked_bfloat16_is_close_to_float32():
  b, t = 2, 40
  q, k, v, _ = qkv(b, t, 4, 2, 16)
  mask = AttentionMask.for_sequence(segments("packed", b, t))
  bf = lambda x: x.astype(jnp.bfloat16)
  out = jax.jit(lambda *x: blocked_attention(*x, mask, block_q=16, block_k=16))(bf(q), bf(k), bf(v))
  assert out.dtype == jnp.bfloat16
  ref = reference_attention(q, k, v, mask.dense())
  assert float(jnp.abs(out.astype(jnp.float32) - ref).max()) < 0.05


@pytest.mark.parametrize("kind", ["left_padding", "packed"])
def test_splash_equals_reference(kind):
  # Pallas interpret mode on CPU: the TPU kernel's own code, with T padded to 128.
  b, t = 2, 100
  q, k, v, w = qkv(b, t, 4, 2, 16, seed=5)
  mask = AttentionMask.for_sequence(segments(kind, b, t))
  fn = lambda q, k, v: splash_attention(q, k, v, mask)
  check_against_reference(fn, q, k, v, w, mask)


def test_splash_refuses_what_it_cannot_express():
  seg = segments("shared_prefix", 2, 16)
  q, k, v, _ = qkv(2, 16, 4, 2, 8)
  with pytest.raises(ValueError, match="segment ids only"):
    splash_attention(q, k, v, AttentionMask.for_sequence(seg, shared_prefix=True))


@pytest.mark.parametrize("kind", ["left_padding", "shared_prefix"])
def test_cudnn_call_equals_reference_through_xla(kind):
  # Without a GPU: the same jax.nn.dot_product_attention call, run by its XLA implementation.
  b, t = 3, 32
  q, k, v, w = qkv(b, t, 4, 2, 8, seed=7)
  mask = AttentionMask.for_sequence(segments(kind, b, t), shared_prefix=kind == "shared_prefix")
  fn = lambda q, k, v: cudnn_attention(q, k, v, mask, implementation="xla")
  check_against_reference(fn, q, k, v, w, mask)


def test_selection_by_backend_dtype_and_mask():
  bf16, f32 = jnp.bfloat16, jnp.float32
  long = 4 * attention.dispatch.CPU_REFERENCE_MAX_KEYS
  seq = lambda impl, dtype=bf16, backend="cpu", t=long, head_dim=64, shared=False: select(
      impl, t, t, dtype, head_dim, self_attention=True, shared_prefix=shared, backend=backend)
  cache = lambda impl, t, backend="cpu", dtype=bf16: select(
      impl, t, long, dtype, 64, self_attention=False, backend=backend)
  assert seq("auto", backend="tpu") == "splash"
  assert seq("auto", backend="tpu", shared=True) == "blocked"
  assert seq("auto", backend="gpu") == "cudnn"
  assert seq("auto", backend="gpu", shared=True) == "cudnn"  # A boolean mask: cuDNN takes it.
  assert seq("auto", backend="gpu", dtype=f32) == "blocked"
  assert seq("auto", backend="gpu", head_dim=12) == "blocked"  # Not a multiple of 8.
  assert seq("auto", dtype=f32, t=128) == "reference"
  assert seq("auto", dtype=f32) == "blocked"
  for backend in ("cpu", "gpu", "tpu"):
    assert cache("auto", 1, backend) == "reference"  # Decode steps: [B, H, 1, S] scores.
    assert cache("auto", 64, backend) == "blocked"  # A prefill into the cache.
  assert cache("splash", 1) == "blocked"
  assert seq("cudnn", dtype=f32, backend="gpu") == "blocked"
  assert cache("blocked", 1) == "blocked"
  with pytest.raises(ValueError, match="not one of"):
    seq("flash")
