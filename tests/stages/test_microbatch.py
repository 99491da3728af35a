"""Gradient accumulation over micro-batches: the row split, and the accumulated gradient and
metrics against one pass over the whole batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops import masked_count, masked_mean
from instructjax.training.microbatch import accumulate_gradients, merge_rows, split_rows


def test_split_rows_is_row_strided_and_merge_inverts_it():
  x = jnp.arange(12).reshape(6, 2)
  parts = split_rows({"x": x, "none": None}, 3)
  assert parts["none"] is None
  np.testing.assert_array_equal(parts["x"][:, :, 0], [[0, 6], [2, 8], [4, 10]])  # Rows j, j+3.
  np.testing.assert_array_equal(merge_rows(parts["x"]), x)
  with pytest.raises(ValueError, match="7 rows do not split into 3"):
    split_rows(jnp.zeros((7, 2)), 3)


def _objective(count):
  """A masked mean-squared error with a max metric, over the batch's token count."""
  def fn(w, batch):
    pred = batch["x"] @ w  # [R, T]
    err = jnp.square(pred - batch["y"])
    loss = masked_mean(err, batch["mask"], count=count(batch))
    return loss, {"err": jax.lax.stop_gradient(loss),
                  "err_max": jnp.max(jnp.where(batch["mask"], err, -jnp.inf))}
  return jax.value_and_grad(fn, has_aux=True)


def test_accumulated_gradient_equals_the_whole_batch_gradient():
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(8, 5, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
           "mask": jnp.asarray(rng.random((8, 5)) < 0.6)}
  w = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
  total = masked_count(batch["mask"])
  (loss, metrics), grad = _objective(lambda b: None)(w, batch)
  for n in (2, 4):
    (l_n, m_n), g_n = jax.jit(lambda w, b: accumulate_gradients(
        _objective(lambda _: total), w, b, n, max_metrics=("err_max",)))(w, batch)
    np.testing.assert_allclose(l_n, loss, rtol=1e-5)
    np.testing.assert_allclose(g_n, grad, rtol=1e-5)
    np.testing.assert_allclose(m_n["err"], metrics["err"], rtol=1e-5)
    np.testing.assert_allclose(m_n["err_max"], metrics["err_max"], rtol=1e-6)  # Max, not sum.
  # Each micro-batch normalised by its own count instead: a different (wrong) gradient.
  (_, _), g_own = accumulate_gradients(
      _objective(lambda b: masked_count(b["mask"])), w, batch, 4)
  assert np.abs(np.asarray(g_own) / 4 - np.asarray(grad)).max() > 1e-3


def test_one_micro_batch_is_the_plain_call():
  w = jnp.ones((3,))
  batch = {"x": jnp.ones((4, 2, 3)), "y": jnp.zeros((4, 2)), "mask": jnp.ones((4, 2), bool)}
  fn = _objective(lambda b: None)
  out, direct = accumulate_gradients(fn, w, batch, 1), fn(w, batch)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(a, b)
