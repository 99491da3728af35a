"""lm_loss.py against a loop-based numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops.lm_loss import cross_entropy_loss


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
