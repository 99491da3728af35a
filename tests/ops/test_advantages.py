"""GAE against numpy loop references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops.advantages import gae, leave_one_out_advantages

_gae = jax.jit(gae, static_argnames=("whiten_advantages",))


def _np_gae_right_padded(rewards, values, lengths, gamma, lam):
  """Textbook GAE per row: tokens 0..L-1 valid, V after the last token is 0."""
  adv = np.zeros(rewards.shape)
  for b, length in enumerate(lengths):
    last = 0.0
    for t in reversed(range(length)):
      next_v = values[b, t + 1] if t + 1 < length else 0.0
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  returns = np.where(np.arange(rewards.shape[1])[None] < np.array(lengths)[:, None],
                     adv + values, 0.0)
  return adv, returns


def _np_gae_skip(rewards, values, mask, gamma, lam):
  """General masks: run textbook GAE on each row's valid tokens, scatter back."""
  adv = np.zeros(rewards.shape)
  ret = np.zeros(rewards.shape)
  for b in range(rewards.shape[0]):
    idx = np.flatnonzero(mask[b])
    a, r = _np_gae_right_padded(rewards[b:b + 1, idx], values[b:b + 1, idx], [len(idx)],
                                gamma, lam)
    adv[b, idx], ret[b, idx] = a[0], r[0]
  return adv, ret


def _data(seed, b=6, t=12):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, t)).astype(np.float32),
          rng.normal(size=(b, t)).astype(np.float32), rng)


@pytest.mark.parametrize("seed,gamma,lam", [(0, 1.0, 0.95), (1, 0.99, 0.9), (2, 0.9, 1.0),
                                            (3, 1.0, 0.0)])
def test_gae_right_padded_matches_textbook_loop(seed, gamma, lam):
  rewards, values, rng = _data(seed)
  lengths = rng.integers(0, 13, size=6)
  lengths[0] = 12
  mask = np.arange(12)[None] < lengths[:, None]
  garbage_r = np.where(mask, rewards, np.nan).astype(np.float32)
  garbage_v = np.where(mask, values, np.inf).astype(np.float32)
  adv, ret = _gae(garbage_r, garbage_v, mask, gamma, lam)
  exp_adv, exp_ret = _np_gae_right_padded(rewards, values, lengths, gamma, lam)
  np.testing.assert_allclose(adv, exp_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, exp_ret, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_gae_general_masks_skip_padding(seed):
  rewards, values, rng = _data(seed)
  mask = rng.random((6, 12)) < 0.6  # left padding, holes, right padding
  adv, ret = _gae(np.where(mask, rewards, np.nan), values, mask, 0.97, 0.93)
  exp_adv, exp_ret = _np_gae_skip(rewards, values, mask, 0.97, 0.93)
  np.testing.assert_allclose(adv, exp_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, exp_ret, rtol=1e-5, atol=1e-5)


def test_gamma_lam_one_is_monte_carlo_return_minus_value():
  rewards, values, _ = _data(7, b=2, t=5)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  adv, ret = _gae(rewards, values, mask, 1.0, 1.0)
  for b in range(2):
    n = mask[b].sum()
    for t in range(n):
      np.testing.assert_allclose(ret[b, t], rewards[b, t:n].sum(), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(adv[b, t], rewards[b, t:n].sum() - values[b, t], rtol=1e-5,
                                 atol=1e-6)


def test_lam_zero_is_one_step_td():
  rewards, values, _ = _data(8, b=1, t=4)
  mask = np.ones((1, 4), bool)
  adv, _ = _gae(rewards, values, mask, 0.9, 0.0)
  next_v = np.append(values[0, 1:], 0.0)
  np.testing.assert_allclose(adv[0], rewards[0] + 0.9 * next_v - values[0], rtol=1e-5,
                             atol=1e-6)


def test_whitened_advantages_and_unwhitened_returns():
  rewards, values, rng = _data(9)
  mask = rng.random((6, 12)) < 0.7
  adv_raw, ret_raw = _gae(rewards, values, mask, 1.0, 0.95)
  adv, ret = _gae(rewards, values, mask, 1.0, 0.95, whiten_advantages=True)
  np.testing.assert_allclose(ret, ret_raw)
  valid = np.asarray(adv_raw)[mask].astype(np.float64)
  np.testing.assert_allclose(np.asarray(adv)[mask], (valid - valid.mean()) / valid.std(),
                             rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(adv)[~mask] == 0)


def test_traced_gamma_lam_and_finite_gradients():
  rewards, values, rng = _data(10, b=3, t=6)
  mask = rng.random((3, 6)) < 0.6
  vals = jnp.asarray(np.where(mask, values, np.nan))
  gamma_lams = jnp.array([[1.0, 0.95], [0.9, 0.5]])
  advs = jax.vmap(lambda gl: gae(rewards, vals, mask, gl[0], gl[1])[0])(gamma_lams)
  np.testing.assert_allclose(advs[1], _np_gae_skip(rewards, values, mask, 0.9, 0.5)[0],
                             rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda v: jnp.sum(gae(rewards, v, mask, 0.99, 0.95)[0]))(vals)
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~mask] == 0)


def _np_leave_one_out(returns, valid, k):
  """Each valid row minus the mean of the other valid rows of its group of k, by loops."""
  adv = np.zeros(len(returns))
  for i in range(len(returns)):
    g = i // k
    others = [returns[j] for j in range(g * k, g * k + k) if j != i and valid[j]]
    if valid[i] and others:
      adv[i] = returns[i] - np.mean(others)
  return adv


@pytest.mark.parametrize("k", [2, 3, 4])
def test_leave_one_out_matches_loop_and_ignores_invalid_rows(k):
  rng = np.random.default_rng(k)
  returns = rng.normal(size=6 * k).astype(np.float32)
  valid = rng.random(6 * k) < 0.75
  valid[:k] = False  # A group with no valid row,
  valid[k:2 * k] = np.arange(k) == 0  # and one with a single valid row: both get 0.
  garbage = np.where(valid, returns, np.nan).astype(np.float32)
  adv = jax.jit(leave_one_out_advantages, static_argnums=2)(garbage, valid, k)
  np.testing.assert_allclose(adv, _np_leave_one_out(returns, valid, k), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(adv)[:2 * k] == 0)
  # Full groups: A_i = R_i - (S - R_i) / (k - 1) sums to 0 over a group.
  full = jax.jit(leave_one_out_advantages, static_argnums=2)(returns, np.ones(6 * k, bool), k)
  np.testing.assert_allclose(np.asarray(full).reshape(-1, k).sum(1), 0.0, atol=1e-5)


def test_leave_one_out_needs_groups_of_two_that_divide_the_batch():
  with pytest.raises(ValueError, match="group_size=1"):
    leave_one_out_advantages(jnp.zeros(4), jnp.ones(4, bool), 1)
  with pytest.raises(ValueError, match="group_size=3"):
    leave_one_out_advantages(jnp.zeros(4), jnp.ones(4, bool), 3)
