"""reward_loss.py against a brute-force numpy loop over all C(K_b, 2) pairs."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops import reward_loss as rl

K_MAX = 9
# Jitted once per shape: much faster than eager op-by-op dispatch on CPU.
_loss = jax.jit(rl.pairwise_ranking_loss)
_grad = jax.jit(jax.grad(lambda r, m: rl.pairwise_ranking_loss(r, m)[0]))


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _np_reference(rewards, k_mask):
  """Loops over prompts and their valid pairs, best-to-worst order."""
  losses, accs, margins, n_pairs = [], [], [], 0
  for b in range(rewards.shape[0]):
    valid = [i for i in range(rewards.shape[1]) if k_mask[b, i]]
    pairs = list(itertools.combinations(valid, 2))  # i < j: i ranked better
    if not pairs:
      continue
    d = np.array([rewards[b, i] - rewards[b, j] for i, j in pairs], np.float64)
    losses.append(np.mean(-_np_log_sigmoid(d)))
    accs.append(np.mean(d > 0))
    margins.append(np.mean(d))
    n_pairs += len(pairs)
  all_valid = rewards[k_mask].astype(np.float64)
  return {"loss": np.mean(losses), "accuracy": np.mean(accs), "margin": np.mean(margins),
          "reward_mean": all_valid.mean(), "reward_std": all_valid.std(),
          "num_prompts": len(losses), "num_pairs": n_pairs}


def _random_batch(seed, batch=6, contiguous=True):
  rng = np.random.default_rng(seed)
  rewards = (rng.normal(size=(batch, K_MAX)) * 2).astype(np.float32)
  k_mask = np.zeros((batch, K_MAX), bool)
  for b in range(batch):
    k = rng.integers(2, K_MAX + 1)
    if contiguous:
      k_mask[b, :k] = True
    else:
      k_mask[b, rng.choice(K_MAX, size=k, replace=False)] = True
  k_mask[-1] = False  # a prompt with no responses
  k_mask[-1, 3] = True  # ... or only one: no pairs, must be left out
  return rewards, k_mask


def _poison(rewards, k_mask):
  out = rewards.copy()
  bad = [np.nan, np.inf, -np.inf]
  for n, idx in enumerate(np.argwhere(~k_mask)):
    out[tuple(idx)] = bad[n % 3]
  return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("contiguous", [True, False])
def test_pairwise_ranking_loss_matches_brute_force(seed, contiguous):
  rewards, k_mask = _random_batch(seed, contiguous=contiguous)
  ref = _np_reference(rewards, k_mask)
  loss, metrics = _loss(_poison(rewards, k_mask), k_mask)
  np.testing.assert_allclose(loss, ref["loss"], rtol=1e-5)
  for key in ["accuracy", "margin", "reward_mean", "reward_std", "num_prompts", "num_pairs"]:
    np.testing.assert_allclose(metrics[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_prompts_are_weighted_equally_not_pairs():
  # Prompt 0: 2 responses (1 pair); prompt 1: 4 responses (6 pairs).
  rewards = np.array([[1.0, 0.0, 0, 0], [0.0, 0, 0, 0]], np.float32)
  k_mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  loss, metrics = _loss(rewards, k_mask)
  per_prompt = [-_np_log_sigmoid(1.0), -_np_log_sigmoid(0.0)]
  np.testing.assert_allclose(loss, np.mean(per_prompt), rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], 0.5)  # ties count as wrong


def test_order_matters_reversed_ranking_gives_higher_loss():
  rewards = np.array([[3.0, 2.0, 1.0]], np.float32)
  k_mask = np.ones((1, 3), bool)
  good, m_good = _loss(rewards, k_mask)
  bad, m_bad = _loss(rewards[:, ::-1], k_mask)
  assert good < bad
  assert m_good["accuracy"] == 1.0 and m_bad["accuracy"] == 0.0


def test_ranks_form_equals_ordered_form_after_shuffle():
  rewards, k_mask = _random_batch(7)
  rng = np.random.default_rng(7)
  ranks = np.tile(np.arange(K_MAX), (rewards.shape[0], 1))
  perm = np.stack([rng.permutation(K_MAX) for _ in range(rewards.shape[0])])
  take = lambda x: np.take_along_axis(x, perm, axis=1)
  loss_a, met_a = _loss(rewards, k_mask)
  loss_b, met_b = jax.jit(rl.ranked_pairwise_loss)(take(rewards), take(ranks), take(k_mask))
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  np.testing.assert_allclose(met_a["accuracy"], met_b["accuracy"], rtol=1e-6)


def test_tied_ranks_give_no_pair():
  rewards = np.array([[0.0, 5.0, 1.0]], np.float32)
  ranks = np.array([[0, 0, 1]])
  loss, metrics = rl.ranked_pairwise_loss(rewards, ranks, np.ones((1, 3), bool))
  assert metrics["num_pairs"] == 2
  np.testing.assert_allclose(
      loss, np.mean([-_np_log_sigmoid(-1.0), -_np_log_sigmoid(4.0)]), rtol=1e-6)


def test_large_margins_are_stable_and_gradients_finite():
  rewards = np.array([[1000.0, -1000.0, np.nan], [-500.0, 500.0, np.inf]], np.float32)
  k_mask = np.array([[1, 1, 0], [1, 1, 0]], bool)
  loss, _ = _loss(rewards, k_mask)
  np.testing.assert_allclose(loss, 1000.0 / 2, rtol=1e-6)  # (0 + 1000) / 2 prompts
  grad = _grad(jnp.asarray(rewards), k_mask)
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~k_mask] == 0.0)
  # d/dr of -log sigmoid(r0 - r1) for prompt 1 at diff = -1000 is (-1, +1), / 2 prompts.
  np.testing.assert_allclose(grad[1, :2], [-0.5, 0.5], atol=1e-6)


def test_gradient_matches_numpy():
  rewards, k_mask = _random_batch(3, batch=3)
  grad = _grad(jnp.asarray(rewards), k_mask)
  ref = np.zeros_like(rewards, np.float64)
  n_prompts = sum(k_mask[b].sum() >= 2 for b in range(3))
  for b in range(3):
    pairs = list(itertools.combinations(np.flatnonzero(k_mask[b]), 2))
    for i, j in pairs:
      # d/dd -log sigmoid(d) = -(1 - sigmoid(d)) = -sigmoid(-d)
      g = -1.0 / (1.0 + np.exp(rewards[b, i] - rewards[b, j])) / len(pairs) / n_prompts
      ref[b, i] += g
      ref[b, j] -= g
  np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-7)


def test_no_valid_prompt_gives_zero_loss():
  loss, metrics = _loss(np.full((2, 3), np.nan, np.float32),
                                           np.array([[1, 0, 0], [0, 0, 0]], bool))
  assert loss == 0.0 and metrics["num_prompts"] == 0


@pytest.mark.parametrize("mode", ["bias", "gain_bias"])
def test_reward_normalization(mode):
  rng = np.random.default_rng(0)
  scores = (rng.normal(size=64) * 3 + 1.5).astype(np.float32)
  mask = rng.random(64) < 0.8
  poisoned = np.where(mask, scores, np.nan).astype(np.float32)
  gain, bias = jax.jit(rl.reward_normalization, static_argnames="mode")(
      poisoned, mask, mode=mode)
  normed = np.asarray(rl.normalize_rewards(scores, gain, bias))[mask]
  assert abs(normed.mean()) < 1e-5
  valid = scores[mask].astype(np.float64)
  if mode == "bias":
    assert gain == 1.0
    np.testing.assert_allclose(bias, -valid.mean(), rtol=1e-5)
    np.testing.assert_allclose(normed.std(), valid.std(), rtol=1e-5)
  else:
    np.testing.assert_allclose(gain, 1 / valid.std(), rtol=1e-5)
    np.testing.assert_allclose(normed.std(), 1.0, rtol=1e-5)


def test_reward_normalization_rejects_unknown_mode():
  with pytest.raises(ValueError):
    rl.reward_normalization(jnp.zeros(3), mode="std")
