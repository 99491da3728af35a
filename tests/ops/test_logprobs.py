"""logprobs.py against direct numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops import logprobs as lp


def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
@pytest.mark.parametrize("jit", [False, True])
def test_token_logprobs_matches_numpy(temperature, jit):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(3, 5))
  fn = jax.jit(lp.token_logprobs) if jit else lp.token_logprobs
  got = fn(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), targets, temperature)
  ref_logits = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
  ref = np.zeros((3, 5))
  for b in range(3):
    for t in range(5):
      ref[b, t] = _np_log_softmax(ref_logits[b, t] / temperature)[targets[b, t]]
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_token_logprobs_bf16_input_is_upcast():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 7)), jnp.bfloat16)
  targets = jnp.zeros((2, 3), jnp.int32)
  got = lp.token_logprobs(logits, targets)
  assert got.dtype == jnp.float32
  ref = jax.nn.log_softmax(logits.astype(jnp.float32))[..., 0]
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_entropy_matches_numpy_and_handles_neg_inf(temperature):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 4, 9)).astype(np.float32)
  logits[0, 0, 3:] = -np.inf  # filtered logits, as after top-k
  got = jax.jit(lp.entropy_from_logits)(logits, temperature)
  ref = np.zeros((2, 4))
  for b in range(2):
    for t in range(4):
      logp = _np_log_softmax(logits[b, t] / temperature)
      p = np.exp(logp)
      ref[b, t] = -sum(pi * li for pi, li in zip(p, logp) if pi > 0)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  # Uniform over 3 kept tokens -> log 3 exactly.
  uniform = jnp.array([[0.0, 0.0, 0.0, -jnp.inf]])
  np.testing.assert_allclose(lp.entropy_from_logits(uniform), [np.log(3)], rtol=1e-6)


def _garbage(x, mask, rng):
  """Put inf/-inf/nan in masked positions: results must not change."""
  x = x.copy()
  bad = np.array([np.inf, -np.inf, np.nan])
  idx = np.argwhere(~mask)
  for k, i in enumerate(idx):
    x[tuple(i)] = bad[k % 3]
  return x


def test_masked_reductions_match_numpy_and_ignore_garbage():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  mask = rng.random((4, 6)) < 0.6
  mask[0] = False  # an empty row
  mask[1, :2] = True
  xg = _garbage(x, mask, rng)
  valid = x[mask].astype(np.float64)

  np.testing.assert_allclose(jax.jit(lp.masked_sum)(xg, mask), valid.sum(), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lp.masked_mean)(xg, mask), valid.mean(), rtol=1e-5)
  np.testing.assert_allclose(lp.masked_var(xg, mask), valid.var(), rtol=1e-5)
  np.testing.assert_allclose(lp.masked_var(xg, mask, unbiased=True), valid.var(ddof=1),
                             rtol=1e-5)
  np.testing.assert_allclose(lp.masked_max(xg, mask), valid.max(), rtol=1e-6)

  # Per-row reductions, empty row -> 0.
  row_mean = jax.jit(lp.masked_mean, static_argnames="axis")(xg, mask, axis=1)
  row_var = lp.masked_var(xg, mask, axis=1)
  for b in range(4):
    v = x[b][mask[b]].astype(np.float64)
    exp_mean = v.mean() if v.size else 0.0
    exp_var = v.var() if v.size else 0.0
    np.testing.assert_allclose(row_mean[b], exp_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(row_var[b], exp_var, rtol=1e-5, atol=1e-7)
  assert lp.masked_mean(xg, np.zeros_like(mask)) == 0.0
  assert lp.masked_max(xg, np.zeros_like(mask)) == 0.0


def test_masked_mean_broadcasts_mask_and_accepts_01():
  x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
  mask = np.array([[1, 0, 1], [0, 0, 1]], np.int32)[..., None]  # [2, 3, 1]
  ref = x[np.broadcast_to(mask.astype(bool), x.shape)].mean()
  np.testing.assert_allclose(lp.masked_mean(x, mask), ref, rtol=1e-6)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten(shift_mean):
  rng = np.random.default_rng(4)
  x = (rng.normal(size=(5, 7)) * 3 + 2).astype(np.float32)
  mask = rng.random((5, 7)) < 0.7
  xg = _garbage(x, mask, rng)
  got = np.asarray(jax.jit(lp.masked_whiten, static_argnames="shift_mean")(
      xg, mask, shift_mean=shift_mean))
  valid = x[mask].astype(np.float64)
  ref = (valid - valid.mean()) / np.sqrt(valid.var() + 1e-8)
  if not shift_mean:
    ref = ref + valid.mean()
  np.testing.assert_allclose(got[mask], ref, rtol=1e-4, atol=1e-5)
  assert np.all(got[~mask] == 0.0)
  if shift_mean:
    assert abs(got[mask].mean()) < 1e-5 and abs(got[mask].std() - 1) < 1e-4


def test_masked_mean_gradient_is_finite_with_garbage():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 4)).astype(np.float32)
  mask = rng.random((3, 4)) < 0.5
  mask[0, 0] = True
  xg = _garbage(x, mask, rng)
  g = jax.jit(jax.grad(lambda v: lp.masked_mean(v, mask) + lp.masked_var(v, mask)))(
      jnp.asarray(xg))
  assert np.all(np.isfinite(g))
  assert np.all(np.asarray(g)[~mask] == 0.0)
