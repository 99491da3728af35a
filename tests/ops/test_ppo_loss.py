"""ppo_loss.py against numpy loops, plus on-policy and garbage-padding invariants."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops import ppo_loss as ppo
from instructjax.ops.logprobs import masked_mean

_policy = jax.jit(ppo.policy_loss, static_argnames=("max_log_ratio",))
_policy_grad = jax.jit(
    jax.grad(lambda lp, old, a, m, eps: ppo.policy_loss(lp, old, a, m, eps)[0]))
_value = jax.jit(ppo.value_loss, static_argnames=("clip_eps",))


def _np_policy(logp, old, adv, mask, eps):
  losses, clipped, kls, ratios = [], [], [], []
  for idx in zip(*np.nonzero(mask)):
    lr = float(logp[idx]) - float(old[idx])
    ratio = math.exp(lr)
    a = float(adv[idx])
    l1, l2 = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
    losses.append(max(l1, l2))
    clipped.append(l2 > l1)
    kls.append((ratio - 1) - lr)
    ratios.append(ratio)
  return (np.mean(losses), {"clip_fraction": np.mean(clipped), "approx_kl": np.mean(kls),
                            "ratio_mean": np.mean(ratios), "ratio_max": np.max(ratios)})


def _batch(seed, b=4, t=7):
  rng = np.random.default_rng(seed)
  old = -rng.exponential(size=(b, t)).astype(np.float32)
  logp = (old + rng.normal(scale=0.3, size=(b, t))).astype(np.float32)
  adv = rng.normal(size=(b, t)).astype(np.float32)
  mask = rng.random((b, t)) < 0.7
  mask[0, 0] = True
  return logp, old, adv, mask


def _poison(x, mask, value=np.nan):
  return np.where(mask, x, value).astype(np.float32)


@pytest.mark.parametrize("seed,eps", [(0, 0.2), (1, 0.1), (2, 0.3)])
def test_policy_loss_matches_numpy(seed, eps):
  logp, old, adv, mask = _batch(seed)
  loss, metrics = _policy(_poison(logp, mask), _poison(old, mask, np.inf),
                          _poison(adv, mask, -np.inf), mask, eps)
  ref_loss, ref_metrics = _np_policy(logp, old, adv, mask, eps)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
  for key, value in ref_metrics.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  assert 0 < float(metrics["clip_fraction"]) < 1  # the test exercises both branches


def test_on_policy_invariants_are_exact():
  _, old, adv, mask = _batch(3)
  loss, metrics = _policy(_poison(old, mask), _poison(old, mask), adv, mask, 0.2)
  assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["ratio_max"]) == 1.0
  assert float(metrics["approx_kl"]) == 0.0
  assert float(metrics["clip_fraction"]) == 0.0
  expected = -(adv[mask].astype(np.float32).sum(dtype=np.float32) / np.float32(mask.sum()))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert float(loss) == -float(jax.jit(lambda a, m: masked_mean(a, m))(adv, mask))


def test_on_policy_gradient_is_minus_advantage_over_n():
  _, old, adv, mask = _batch(4)
  grad = _policy_grad(jnp.asarray(old), old, adv, mask, 0.2)
  np.testing.assert_allclose(grad, np.where(mask, -adv / mask.sum(), 0.0), rtol=1e-5,
                             atol=1e-7)


def test_clipped_tokens_have_zero_gradient():
  old = np.zeros((1, 4), np.float32)
  # ratio 1.5 with A > 0 and ratio 0.5 with A < 0: clipped, no gradient.
  # ratio 1.5 with A < 0 and ratio 0.5 with A > 0: unclipped (pessimistic) branch.
  logp = np.log(np.array([[1.5, 0.5, 1.5, 0.5]], np.float32))
  adv = np.array([[1.0, -1.0, -1.0, 1.0]], np.float32)
  mask = np.ones((1, 4), bool)
  grad = _policy_grad(jnp.asarray(logp), old, adv, mask, 0.2)
  np.testing.assert_allclose(grad, [[0.0, 0.0, 1.5 / 4, -0.5 / 4]], rtol=1e-5)
  _, metrics = _policy(logp, old, adv, mask, 0.2)
  assert float(metrics["clip_fraction"]) == 0.5


def test_policy_gradient_finite_with_garbage_and_huge_ratios():
  logp, old, adv, mask = _batch(5)
  logp[0, 0] = 50.0  # ratio e^50 before the clamp
  lp = _poison(logp, mask, np.nan)
  grad = _policy_grad(jnp.asarray(lp), _poison(old, mask, np.inf),
                      _poison(adv, mask, np.nan), mask, 0.2)
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~mask] == 0)
  loss, metrics = _policy(lp, old, adv, mask, 0.2)
  assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())


def _np_value(values, old, ret, mask, eps):
  losses, clipped = [], []
  for idx in zip(*np.nonzero(mask)):
    v, o, r = float(values[idx]), float(old[idx]), float(ret[idx])
    l1 = (v - r) ** 2
    l2 = (min(max(v, o - eps), o + eps) - r) ** 2 if eps is not None else l1
    losses.append(max(l1, l2))
    clipped.append(l2 > l1)
  return 0.5 * np.mean(losses), np.mean(clipped)


@pytest.mark.parametrize("eps", [0.2, None])
def test_value_loss_matches_numpy(eps):
  rng = np.random.default_rng(6)
  values, old, ret = (rng.normal(size=(4, 7)).astype(np.float32) for _ in range(3))
  mask = rng.random((4, 7)) < 0.7
  loss, metrics = _value(_poison(values, mask), _poison(old, mask, np.inf),
                         _poison(ret, mask), mask, clip_eps=eps)
  ref_loss, ref_clip = _np_value(values, old, ret, mask, eps)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_fraction"], ref_clip, rtol=1e-6)
  if eps is not None:
    assert ref_clip > 0
  old_g, ret_g = _poison(old, mask, np.inf), _poison(ret, mask)
  grad_fn = jax.jit(jax.grad(lambda v: ppo.value_loss(v, old_g, ret_g, mask, eps)[0]))
  grad = grad_fn(jnp.asarray(_poison(values, mask)))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0)


def test_explained_variance():
  rng = np.random.default_rng(7)
  ret = rng.normal(size=(3, 8)).astype(np.float32)
  values = (ret + rng.normal(scale=0.5, size=(3, 8))).astype(np.float32)
  mask = rng.random((3, 8)) < 0.8
  ev = jax.jit(ppo.explained_variance)
  r, v = ret[mask].astype(np.float64), values[mask].astype(np.float64)
  np.testing.assert_allclose(ev(_poison(values, mask), _poison(ret, mask), mask),
                             1 - np.var(r - v) / np.var(r), rtol=1e-5)
  np.testing.assert_allclose(ev(ret, ret, mask), 1.0, rtol=1e-6)
  np.testing.assert_allclose(ev(np.full_like(ret, r.mean()), ret, mask), 0.0, atol=1e-6)
  assert np.isnan(ev(values, np.ones_like(ret), mask))


def test_entropy_bonus_matches_numpy_and_ignores_padding():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(2, 3, 6)).astype(np.float32)
  mask = np.array([[True, True, False], [False, True, True]])
  ref = []
  for b, t in zip(*np.nonzero(mask)):
    p = np.exp(logits[b, t] / 0.8 - np.max(logits[b, t] / 0.8))
    p /= p.sum()
    ref.append(-(p * np.log(p)).sum())
  poisoned = logits.copy()
  poisoned[~mask] = np.nan
  fn = jax.jit(ppo.entropy_bonus)
  np.testing.assert_allclose(fn(poisoned, mask, 0.8), np.mean(ref), rtol=1e-5)
  grad = jax.jit(jax.grad(lambda x: ppo.entropy_bonus(x, mask)))(jnp.asarray(poisoned))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0)


def test_losses_with_the_batch_count_add_up_over_row_splits():
  """count= the whole batch's valid tokens: the row parts' losses and metrics (ratio_max a
  max) sum to the batch's, though the parts hold different numbers of valid tokens."""
  logp, old, adv, mask = _batch(4, b=6)
  values, returns = old + 0.5, adv
  parts = (slice(0, 2), slice(2, 3), slice(3, 6))
  assert len({int(mask[p].sum()) for p in parts}) > 1  # Unequal parts: the weights matter.
  count = jnp.float32(mask.sum())
  whole, whole_m = _policy(logp, old, adv, mask, 0.2)
  split = [_policy(logp[p], old[p], adv[p], mask[p], 0.2, count=count) for p in parts]
  np.testing.assert_allclose(sum(s[0] for s in split), whole, rtol=1e-5)
  for key in ("clip_fraction", "approx_kl", "ratio_mean"):
    np.testing.assert_allclose(sum(s[1][key] for s in split), whole_m[key], rtol=1e-5,
                               err_msg=key)
  # Without the batch's count each part averages over its own tokens: not the batch's loss.
  own = [_policy(logp[p], old[p], adv[p], mask[p], 0.2)[0] for p in parts]
  assert abs(float(np.mean(own)) - float(whole)) > 1e-3
  whole_v, _ = _value(values, old, returns, mask, clip_eps=0.2)
  split_v = [_value(values[p], old[p], returns[p], mask[p], clip_eps=0.2, count=count)[0]
             for p in parts]
  np.testing.assert_allclose(sum(split_v), whole_v, rtol=1e-5)
  logits = np.random.default_rng(5).normal(size=mask.shape + (11,)).astype(np.float32)
  whole_e = ppo.entropy_bonus(logits, mask)
  split_e = [ppo.entropy_bonus(logits[p], mask[p], count=count) for p in parts]
  np.testing.assert_allclose(sum(split_e), whole_e, rtol=1e-5)
