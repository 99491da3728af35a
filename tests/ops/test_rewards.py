"""rewards.py against a loop-based numpy reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops import rewards as rw

_compute = jax.jit(rw.compute_rewards, static_argnames=("kl_estimator",))


def _np_rewards(score, logp, ref, mask, beta, estimator):
  b_size, t_size = logp.shape
  rewards = np.zeros((b_size, t_size))
  kl_sum = np.zeros(b_size)
  for b in range(b_size):
    last = None
    for t in range(t_size):
      if not mask[b, t]:
        continue
      lr = float(logp[b, t]) - float(ref[b, t])
      kl_t = {"k1": lr, "k2": 0.5 * lr * lr, "k3": math.exp(-lr) - 1 + lr}[estimator]
      rewards[b, t] = -beta * kl_t
      kl_sum[b] += kl_t
      last = t
    if last is not None:
      rewards[b, last] += score[b]
  return rewards, -beta * kl_sum, kl_sum


def _batch(seed, b=5, t=9):
  rng = np.random.default_rng(seed)
  logp = -rng.exponential(size=(b, t)).astype(np.float32)
  ref = -rng.exponential(size=(b, t)).astype(np.float32)
  score = rng.normal(size=b).astype(np.float32)
  mask = np.zeros((b, t), bool)
  for i in range(b):
    start, length = rng.integers(0, 3), rng.integers(1, t - 2)
    mask[i, start:start + length] = True  # left and right padding
  mask[-1] = False  # an empty response
  mask[0, -1] = True  # response ending on the last column
  return score, logp, ref, mask


def _poison(x, mask):
  x = x.copy()
  x[~mask] = np.nan
  return x


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_compute_rewards_matches_numpy(estimator, seed):
  score, logp, ref, mask = _batch(seed)
  beta = 0.05
  out = _compute(score, _poison(logp, mask), _poison(ref, mask), mask, beta,
                 kl_estimator=estimator)
  exp_r, exp_ns, exp_kl = _np_rewards(score, logp, ref, mask, beta, estimator)
  np.testing.assert_allclose(out.rewards, exp_r, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.non_score_reward, exp_ns, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.kl, exp_kl, rtol=1e-5, atol=1e-6)
  # The score sums back out exactly where a row has a valid token.
  np.testing.assert_allclose(np.asarray(out.rewards).sum(1) - exp_ns,
                             np.where(mask.any(1), score, 0.0), rtol=1e-4, atol=1e-5)


def test_score_goes_to_last_true_with_holes():
  mask = np.array([[True, False, True, True, False, False],
                   [False, False, False, False, False, True]])
  logp = np.zeros((2, 6), np.float32)
  out = rw.compute_rewards(np.array([2.0, -3.0]), logp, logp, mask, 0.1)
  np.testing.assert_array_equal(out.rewards, [[0, 0, 0, 2.0, 0, 0], [0, 0, 0, 0, 0, -3.0]])


def test_last_valid_index():
  mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]])
  idx, has_any = jax.jit(rw.last_valid_index)(mask)
  np.testing.assert_array_equal(idx, [1, 0, 3])
  np.testing.assert_array_equal(has_any, [True, False, True])


def test_beta_can_be_traced():
  score, logp, ref, mask = _batch(3)
  betas = jnp.array([0.0, 0.1, 0.2])
  outs = jax.vmap(lambda b: rw.compute_rewards(score, logp, ref, mask, b).rewards)(betas)
  np.testing.assert_allclose(outs[0], _np_rewards(score, logp, ref, mask, 0.0, "k1")[0],
                             atol=1e-6)
  np.testing.assert_allclose(outs[2], _np_rewards(score, logp, ref, mask, 0.2, "k1")[0],
                             rtol=1e-5, atol=1e-6)


def test_whiten_rewards_keeps_mean():
  rng = np.random.default_rng(4)
  r = (rng.normal(size=(4, 6)) * 5 + 1).astype(np.float32)
  mask = rng.random((4, 6)) < 0.7
  got = np.asarray(rw.whiten_rewards(_poison(r, mask), mask))
  valid = r[mask].astype(np.float64)
  np.testing.assert_allclose(got[mask], (valid - valid.mean()) / valid.std() + valid.mean(),
                             rtol=1e-4, atol=1e-5)
  assert np.all(got[~mask] == 0)


def test_no_eos_penalty():
  score = np.array([1.0, 2.0, -1.0], np.float32)
  finished = np.array([True, False, False])
  np.testing.assert_allclose(jax.jit(rw.apply_no_eos_penalty)(score, finished, 1.5),
                             [1.0, 0.5, -2.5])
  np.testing.assert_allclose(
      rw.apply_no_eos_penalty(score, finished, -1.0, replace=True), [1.0, -1.0, -1.0])
