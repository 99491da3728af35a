"""kl.py against numpy formulas and a loop reference of Ziegler's controller."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.ops import kl
from instructjax.ops.logprobs import logprobs_from_hidden

_kl = jax.jit(kl.kl_estimate, static_argnames=("estimator", "max_log_ratio"))


def _np_kl(logp, ref, estimator):
  out = np.zeros(logp.shape)
  for idx in np.ndindex(logp.shape):
    lr = float(logp[idx]) - float(ref[idx])
    if estimator == "k1":
      out[idx] = lr
    elif estimator == "k2":
      out[idx] = 0.5 * lr * lr
    else:
      out[idx] = math.exp(-lr) - 1 + lr
  return out


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_estimators_match_numpy(estimator):
  rng = np.random.default_rng(0)
  logp = -rng.exponential(size=(3, 8)).astype(np.float32)
  ref = -rng.exponential(size=(3, 8)).astype(np.float32)
  got = _kl(logp, ref, estimator=estimator)
  np.testing.assert_allclose(got, _np_kl(logp, ref, estimator), rtol=1e-5, atol=1e-7)
  if estimator != "k1":
    assert np.all(np.asarray(got) >= 0)


def test_estimators_are_exactly_zero_when_equal():
  logp = -np.random.default_rng(1).exponential(size=(2, 5)).astype(np.float32)
  for est in kl.KL_ESTIMATORS:
    assert np.all(np.asarray(_kl(logp, logp, estimator=est)) == 0.0)


def test_k1_and_k3_are_unbiased_for_the_true_kl():
  # Categorical q (policy) and p (ref): E_q[k1] = E_q[k3] = KL(q || p).
  q = np.array([0.5, 0.3, 0.15, 0.05])
  p = np.array([0.25, 0.25, 0.25, 0.25])
  true_kl = np.sum(q * np.log(q / p))
  samples = np.random.default_rng(2).choice(4, size=(1, 200_000), p=q)
  logp, ref = np.log(q)[samples].astype(np.float32), np.log(p)[samples].astype(np.float32)
  for est in ["k1", "k3"]:
    np.testing.assert_allclose(float(jnp.mean(_kl(logp, ref, estimator=est))), true_kl,
                               rtol=0.03)


def test_log_ratio_is_clamped_and_masked_garbage_ignored():
  logp = np.array([[0.0, -100.0, np.nan, -np.inf]], np.float32)
  ref = np.array([[-100.0, 0.0, 0.0, 0.0]], np.float32)
  mask = np.array([[True, True, False, False]])
  k3 = _kl(logp, ref, estimator="k3", mask=mask)
  c = kl.MAX_LOG_RATIO
  np.testing.assert_allclose(k3, [[math.exp(-c) - 1 + c, math.exp(c) - 1 - c, 0, 0]],
                             rtol=1e-5)
  k1 = _kl(logp, ref, estimator="k1", mask=mask, max_log_ratio=None)
  np.testing.assert_allclose(k1, [[100.0, -100.0, 0, 0]])
  grad = jax.grad(lambda x: jnp.sum(kl.kl_estimate(x, ref, "k3", mask)))(jnp.asarray(logp))
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~mask] == 0.0)


def test_unknown_estimator_raises():
  with pytest.raises(ValueError):
    kl.kl_estimate(jnp.zeros(2), jnp.zeros(2), estimator="k4")


def _np_exact_kl(logits, ref_logits, temperature):
  """sum_v p_v (log p_v - log q_v) per position, one position at a time in float64."""
  out = np.zeros(logits.shape[:-1])
  for idx in np.ndindex(out.shape):
    a = logits[idx].astype(np.float64) / temperature
    b = ref_logits[idx].astype(np.float64) / temperature
    logp = a - a.max() - np.log(np.exp(a - a.max()).sum())
    logq = b - b.max() - np.log(np.exp(b - b.max()).sum())
    out[idx] = float((np.exp(logp) * (logp - logq)).sum())
  return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_exact_kl_matches_numpy_and_is_chunk_free(temperature):
  rng = np.random.default_rng(3)
  hidden, ref_hidden = rng.normal(size=(2, 2, 7, 8)).astype(np.float32)
  head, ref_head = rng.normal(size=(2, 8, 11)).astype(np.float32)
  want = _np_exact_kl(hidden @ head, ref_hidden @ ref_head, temperature)
  got = kl.exact_kl_from_logits(jnp.asarray(hidden @ head), jnp.asarray(ref_hidden @ ref_head),
                                temperature)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert (want > 0.01).all()  # Different distributions everywhere: the check has teeth.
  for chunk in (0, 3, 7):  # 3 leaves a ragged last chunk.
    np.testing.assert_allclose(kl.exact_kl_from_hidden(hidden, head, ref_hidden, ref_head,
                                                       temperature, chunk), want,
                               rtol=1e-4, atol=1e-6)


def test_exact_kl_with_targets_gives_the_policys_logprobs_and_entropies_too():
  """One pass of the head for PPO's loss: the same log-probs and entropies as
  `logprobs_from_hidden`, the same KL as without targets."""
  rng = np.random.default_rng(5)
  hidden, ref_hidden = rng.normal(size=(2, 2, 7, 8)).astype(np.float32)
  head, ref_head = rng.normal(size=(2, 8, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (2, 7))
  for chunk in (0, 3):
    logp, ent, kl_tok = kl.exact_kl_from_hidden(hidden, head, ref_hidden, ref_head, 0.7, chunk,
                                                targets=targets)
    want_logp, want_ent = logprobs_from_hidden(hidden, head, targets, 0.7, chunk=chunk,
                                               with_entropy=True)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kl_tok, kl.exact_kl_from_hidden(hidden, head, ref_hidden,
                                                               ref_head, 0.7, chunk),
                               rtol=1e-5, atol=1e-6)


def test_exact_kl_is_zero_and_flat_where_the_models_agree():
  """Policy == reference (PPO's first minibatch): exactly 0, and a zero gradient, so the
  term changes nothing until the policy has moved."""
  rng = np.random.default_rng(4)
  hidden = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(8, 11)), jnp.float32)
  assert (kl.exact_kl_from_hidden(hidden, head, hidden, head, 0.7) == 0.0).all()
  grad = jax.grad(lambda h: kl.exact_kl_from_hidden(h, head, hidden, head, 0.7).sum())(hidden)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def _np_controller(beta, target, horizon, kls, n_steps):
  out = []
  for current in kls:
    err = min(max(current / target - 1, -0.2), 0.2)
    beta *= 1 + err * n_steps / horizon
    out.append(beta)
  return out


def test_adaptive_controller_matches_ziegler_loop():
  kls = [0.0, 3.0, 6.0, 5.9, 100.0, 6.1, 4.0]
  state = kl.adaptive_kl_controller(0.1, target=6.0, horizon=10_000)
  update = jax.jit(kl.update_kl_controller)
  got = []
  for current in kls:
    state = update(state, current, 512)
    got.append(float(state.beta))
  np.testing.assert_allclose(got, _np_controller(0.1, 6.0, 10_000, kls, 512), rtol=1e-6)
  assert got[0] < 0.1  # KL below target -> beta decreases


def test_adaptive_controller_under_scan():
  kls = jnp.array([1.0, 10.0, 20.0, 7.0])
  state = kl.adaptive_kl_controller(0.2, target=6.0, horizon=1000)

  def step(s, current):
    s = kl.update_kl_controller(s, current, 100)
    return s, s.beta

  final, betas = jax.lax.scan(step, state, kls)
  np.testing.assert_allclose(betas, _np_controller(0.2, 6.0, 1000, kls.tolist(), 100),
                             rtol=1e-6)
  assert final.target == 6.0 and final.horizon == 1000


def test_fixed_controller_never_changes():
  state = kl.fixed_kl_controller(0.02)
  new = jax.jit(kl.update_kl_controller)(state, 123.0, 512)
  assert float(new.beta) == np.float32(0.02)
  assert new.target is None
  assert len(jax.tree_util.tree_leaves(new)) == 1


def test_adaptive_controller_validates_config():
  with pytest.raises(ValueError):
    kl.adaptive_kl_controller(0.1, target=0.0)
