"""lm_loss.py against a loop-based numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops.head_chunks import positions_per_chunk
from instructjax.ops.lm_loss import cross_entropy_from_hidden, cross_entropy_loss


def _np_ce(logits, targets, mask, z_loss):
  total, n = 0.0, 0
  for b in range(logits.shape[0]):
    for t in range(logits.shape[1]):
      if not mask[b, t]:
        continue
      row = logits[b, t].astype(np.float64)
      lse = np.log(np.sum(np.exp(row - row.max()))) + row.max()
      total += lse - row[targets[b, t]] + z_loss * lse**2
      n += 1
  return total / max(n, 1), n


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("jit", [False, True])
def test_cross_entropy_matches_numpy_with_garbage_padding(z_loss, jit):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(3, 6, 13)) * 4).astype(np.float32)
  targets = rng.integers(0, 13, size=(3, 6))
  mask = rng.random((3, 6)) < 0.6
  mask[0, 0] = True
  ref, n = _np_ce(logits, targets, mask, z_loss)
  logits[~mask] = np.nan
  logits[~mask, 0] = np.inf
  fn = jax.jit(cross_entropy_loss, static_argnames="z_loss") if jit else cross_entropy_loss
  loss, num = fn(logits, targets, mask, z_loss=z_loss)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  assert num == n

  grad = jax.jit(jax.grad(lambda x: cross_entropy_loss(x, targets, mask, z_loss=z_loss)[0]))(
      jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~mask] == 0.0)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 2, 5)).astype(np.float32)
  targets = np.array([[1, 3]])
  mask = np.array([[True, True]])
  grad = jax.jit(jax.grad(lambda x: cross_entropy_loss(x, targets, mask)[0]))(
      jnp.asarray(logits))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = p - np.eye(5)[targets]
  np.testing.assert_allclose(grad, ref / 2, rtol=1e-5, atol=1e-6)


def test_cross_entropy_empty_mask_and_bf16():
  logits = jnp.ones((2, 3, 4), jnp.bfloat16)
  loss, n = cross_entropy_loss(logits, jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), bool))
  assert loss == 0.0 and n == 0
  loss, n = cross_entropy_loss(logits, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3), bool))
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)


@pytest.mark.parametrize("chunk", [0, 4, 5])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_cross_entropy_from_hidden_equals_full_logits(chunk, z_loss):
  # Chunks of 4 and 5 positions over T=11 (5 leaves a padded last chunk): same loss, same
  # gradients w.r.t. the hidden states and the head as the whole [B, T, V] logits.
  rng = np.random.default_rng(1)
  b, t, d, v = 3, 11, 8, 29
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, size=(b, t)))
  mask = jnp.asarray(rng.random((b, t)) < 0.7)

  def full(h, w):
    logits = jnp.dot(h, w, precision=jax.lax.Precision.HIGHEST)
    return cross_entropy_loss(logits, targets, mask, z_loss)

  def chunked(h, w):
    return cross_entropy_from_hidden(h, w, targets, mask, z_loss, chunk=chunk)

  (loss, n), grads = jax.jit(jax.value_and_grad(full, argnums=(0, 1), has_aux=True))(hidden, head)
  (loss_c, n_c), grads_c = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(
      hidden, head)
  np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
  assert float(n_c) == float(n) == float(mask.sum())
  for a, e in zip(grads_c, grads):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)


def test_chunked_cross_entropy_holds_no_full_logits():
  # What XLA allocates for the loss and its gradients: the [B, T, V] float32 logits (and their
  # gradient) without chunks, a chunk's worth with them.
  b, t, d, v = 2, 512, 16, 4096
  args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.bool_))

  def temp_bytes(chunk):
    fn = jax.grad(lambda h, w, y, m: cross_entropy_from_hidden(h, w, y, m, chunk=chunk)[0],
                  argnums=(0, 1))
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = b * t * v * 4
  assert temp_bytes(0) >= logits_bytes
  # Chunks of 32 positions (1/16 of the logits): a few chunk-sized arrays at a time.
  assert temp_bytes(positions_per_chunk(b, t, 64)) < logits_bytes / 4


def test_positions_per_chunk():
  assert positions_per_chunk(4, 100, 0) == 0  # Chunking off.
  assert positions_per_chunk(4, 100, 400) == 0  # Everything fits one chunk.
  assert positions_per_chunk(4, 100, 128) == 32
  assert positions_per_chunk(512, 100, 128) == 1  # At least one position.
