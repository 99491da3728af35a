"""sampling.py: filters against brute-force numpy, greedy, and empirical frequencies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops import sampling as sp

_top_k = jax.jit(sp.top_k_filter, static_argnames="k")
_top_p = jax.jit(sp.top_p_filter)  # p traced
_sample = jax.jit(sp.sample_token, static_argnames=("temperature", "top_k"))


def _np_softmax(x):
  x = x.astype(np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def _np_nucleus(row, p):
  """Minimal prefix of the descending-sorted probabilities with sum >= p (>= 1 token)."""
  probs = _np_softmax(row)
  order = np.argsort(-probs, kind="stable")
  kept, total = set(), 0.0
  for i in order:
    kept.add(int(i))
    total += probs[i]
    if total >= p:
      break
  return kept


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_keeps_exactly_k_largest(k):
  logits = np.random.default_rng(0).normal(size=(2, 3, 10)).astype(np.float32)
  out = np.asarray(_top_k(logits, k=k))
  for idx in np.ndindex(2, 3):
    kept = set(np.flatnonzero(np.isfinite(out[idx])))
    assert kept == set(np.argsort(-logits[idx])[:k])
    np.testing.assert_array_equal(out[idx][list(kept)], logits[idx][list(kept)])
    assert np.all(out[idx][~np.isfinite(out[idx])] == -np.inf)


def test_top_k_with_ties_keeps_exactly_k_and_zero_disables():
  logits = np.zeros((2, 6), np.float32)
  out = np.asarray(_top_k(logits, k=3))
  assert np.all(np.isfinite(out).sum(-1) == 3)
  np.testing.assert_array_equal(_top_k(logits, k=0), logits)
  np.testing.assert_array_equal(_top_k(logits, k=6), logits)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p", [0.0, 0.3, 0.75, 0.9, 0.999])
def test_top_p_keeps_minimal_prefix(seed, p):
  logits = (np.random.default_rng(seed).normal(size=(4, 12)) * 2).astype(np.float32)
  out = np.asarray(_top_p(logits, p))
  for b in range(4):
    assert set(np.flatnonzero(np.isfinite(out[b]))) == _np_nucleus(logits[b], p)


def test_top_p_one_disables_static_and_traced():
  logits = np.array([[10.0, -30.0, -40.0, 0.0]], np.float32)  # tiny tail probabilities
  np.testing.assert_array_equal(sp.top_p_filter(logits, 1.0), logits)
  np.testing.assert_array_equal(_top_p(logits, 1.0), logits)


def test_top_p_after_top_k_and_filter_logits():
  logits = np.array([[2.0, 1.0, 0.5, 0.0, -1.0]], np.float32)
  out = np.asarray(jax.jit(sp.filter_logits, static_argnames="top_k")(
      logits, 0.5, top_k=3, top_p=0.9))
  probs3 = _np_softmax(logits[0, :3] / 0.5)  # [0.84, 0.11, 0.04]: first two reach 0.9
  assert probs3[0] < 0.9 <= probs3[:2].sum()
  np.testing.assert_allclose(out[0, :2], logits[0, :2] / 0.5)
  assert np.all(out[0, 2:] == -np.inf)


def test_greedy_is_argmax():
  logits = np.random.default_rng(1).normal(size=(16, 9)).astype(np.float32)
  tokens = _sample(jax.random.key(0), logits, temperature=0.0, top_k=3)
  np.testing.assert_array_equal(tokens, logits.argmax(-1))
  assert tokens.dtype == jnp.int32


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0),
                                                      (1.5, 3, 1.0), (1.0, 0, 0.8)])
def test_empirical_frequencies_match_filtered_softmax(temperature, top_k, top_p):
  logits = np.array([1.0, 0.5, 0.0, -0.5, -2.0], np.float32)
  n = 40_000
  tokens = np.asarray(_sample(jax.random.key(42), np.broadcast_to(logits, (n, 5)),
                              temperature=temperature, top_k=top_k, top_p=top_p))
  probs = _np_softmax(logits / temperature)
  keep = np.ones(5, bool)
  if top_k:
    keep[np.argsort(-logits)[top_k:]] = False
  if top_p < 1.0:
    keep[list(set(range(5)) - _np_nucleus(logits / temperature, top_p))] = False
  target = np.where(keep, probs, 0.0)
  target /= target.sum()
  freq = np.bincount(tokens, minlength=5) / n
  sigma = np.sqrt(target * (1 - target) / n)
  assert np.all(np.abs(freq - target) <= 5 * sigma + 1e-12), (freq, target)
  assert np.all(freq[~keep] == 0)


def test_sampling_rows_are_independent_and_never_pick_filtered():
  logits = np.random.default_rng(2).normal(size=(64, 50)).astype(np.float32)
  tokens = np.asarray(_sample(jax.random.key(3), logits, temperature=1.0, top_k=5,
                              top_p=0.9))
  for b in range(64):
    allowed = set(np.argsort(-logits[b])[:5]) & _np_nucleus_after_k(logits[b], 5, 0.9)
    assert tokens[b] in allowed


def _np_nucleus_after_k(row, k, p):
  filtered = np.full_like(row, -np.inf)
  top = np.argsort(-row)[:k]
  filtered[top] = row[top]
  return _np_nucleus(filtered, p)
