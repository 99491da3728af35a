"""The package re-exports the public ops, and each one traces under jax.jit."""
import jax
import jax.numpy as jnp
import numpy as np

import instructjax.ops as ops


def test_one_ppo_step_of_math_end_to_end_under_jit():
  """Chains the ops as the PPO trainer will, jitted, on a tiny batch."""
  b, t, v = 2, 5, 7
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(b, t, v)).astype(np.float32)
  ref_logits = rng.normal(size=(b, t, v)).astype(np.float32)
  tokens = rng.integers(0, v, size=(b, t))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  values = rng.normal(size=(b, t)).astype(np.float32)

  @jax.jit
  def step(logits, ref_logits, tokens, mask, values, score, finished):
    logp = ops.token_logprobs(logits, tokens, 0.7)
    ref_logp = ops.token_logprobs(ref_logits, tokens, 0.7)
    score = ops.apply_no_eos_penalty(score, finished, 1.0)
    out = ops.compute_rewards(score, logp, ref_logp, mask, 0.05, "k3")
    adv, ret = ops.gae(out.rewards, values, mask, 1.0, 0.95, whiten_advantages=True)
    pl, pm = ops.policy_loss(logp, logp, adv, mask)
    vl, _ = ops.value_loss(values, values, ret, mask)
    state = ops.update_kl_controller(ops.adaptive_kl_controller(0.05, 6.0),
                                     jnp.mean(out.kl), b)
    ent = ops.entropy_bonus(logits, mask, 0.7)
    return pl, vl, pm, state.beta, ent, ret

  pl, vl, pm, beta, ent, ret = step(logits, ref_logits, tokens, mask, values,
                                    np.array([1.0, -1.0], np.float32),
                                    np.array([True, False]))
  # On-policy: loss is -mean(whitened advantages) = 0, ratio exactly 1.
  np.testing.assert_allclose(pl, 0.0, atol=1e-6)
  assert float(pm["ratio_max"]) == 1.0
  assert np.isfinite(vl) and np.isfinite(beta) and 0 < float(ent) < np.log(v)
  assert np.all(np.asarray(ret)[~mask] == 0)
