"""PPO-ptx stage: invariants of the jitted iteration and the driver end to end.

Compilation dominates on CPU, so the tests share a few compiled functions (module fixtures):
the debug iteration, a greedy rollout, and the update on a given rollout.
"""
import dataclasses
import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax.generation import SamplingConfig
from instructjax.model_io import load_model, save_model
from instructjax.config import ConfigError
from instructjax.models import DecoderLM, get_preset, positions_from_mask
from instructjax.ops import MAX_LOG_RATIO, adaptive_kl_controller
from instructjax.parallel.sharding import ShardingContext, get_rules, make_mesh
from instructjax.stages import ppo
from instructjax.stages.ppo import run as ppo_driver
from instructjax.stages.lm import lm_loss
from instructjax.stages.ppo.state import create_ppo_state
from instructjax.tokenizer import CharTokenizer
from instructjax.training import NonFiniteError, read_metrics, run_loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, P, N, M = 8, 8, 6, 4  # Rollout rows, prompt width, new tokens, minibatch.
EOS, PAD = 2, 0
CFG = ppo.PPOConfig(rollout_batch_size=B, minibatch_size=M, epochs=2, ptx_coef=0.5,
                    ema_decay=0.9, entropy_coef=0.01)
# Without ptx, entropy bonus or EMA: a smaller program for the tests that compile their own.
LIGHT = ppo.PPOConfig(rollout_batch_size=B, minibatch_size=M, epochs=1)
SAMPLING = SamplingConfig(max_new_tokens=N, eos_id=EOS, pad_id=PAD, temperature=0.7)
GREEDY = SamplingConfig(max_new_tokens=N, eos_id=EOS, pad_id=PAD, temperature=0.0)
LR = 1e-3


# ------------------------------------------------------------------------------------ set-up


def draw_params(model, seed, scale=0.3):
  """N(0, scale) weights drawn with numpy from the abstract init (norm scales 1 + noise): no
  jax.random init to compile, and peaked, input-dependent next-token distributions."""
  t = jnp.zeros((1, 8), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), t, t, t + 1))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    base = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(base + scale * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def model_cfg(**kw):
  return get_preset("test", vocab_size=74, **kw)


# Dropout in the config on purpose: PPO must ignore it (deterministic=True everywhere).
POLICY = DecoderLM(model_cfg(dropout_rate=0.5))
VALUE = DecoderLM(model_cfg(dropout_rate=0.5), head="scalar")
MODELS = ppo.PPOModels(POLICY, VALUE, VALUE)


def fresh_state(cfg=CFG, rm_bias=0.0):
  policy = draw_params(POLICY, 0)
  value = draw_params(VALUE, 1, scale=0.1)
  rm = dict(draw_params(VALUE, 2, scale=0.1))
  rm["score_bias"] = rm["score_bias"] + rm_bias
  state, _ = create_ppo_state(POLICY, VALUE, VALUE, optax.adam(LR), optax.adam(LR),
                              policy_params=policy, value_params=value, rm_params=rm,
                              kl=adaptive_kl_controller(0.1, 2.0, 100.0),
                              ema=cfg.ema_decay > 0)
  return state


def prompts(width=P, extra_pad=0, seed=0):
  """Left-padded random prompts of 3..width tokens (token ids >= 3: no PAD/BOS/EOS)."""
  rng = np.random.default_rng(seed)
  w = width + extra_pad
  tokens, seg = np.full((B, w), PAD, np.int32), np.zeros((B, w), np.int32)
  for r in range(B):
    n = int(rng.integers(3, width + 1))
    tokens[r, w - n:] = rng.integers(3, 74, n)
    seg[r, w - n:] = 1
  pos = np.maximum(np.cumsum(seg, -1) - 1, 0).astype(np.int32)
  return {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(seg),
          "positions": jnp.asarray(pos)}


def ptx_batch(seed=0, rows=4, t=12):
  rng = np.random.default_rng(100 + seed)
  return {"tokens": jnp.asarray(rng.integers(3, 74, (rows, t)), jnp.int32),
          "positions": jnp.tile(jnp.arange(t, dtype=jnp.int32), (rows, 1)),
          "segment_ids": jnp.ones((rows, t), jnp.int32),
          "targets": jnp.asarray(rng.integers(3, 74, (rows, t)), jnp.int32),
          "loss_mask": jnp.ones((rows, t), bool)}


def batch(seed=0):
  return {"prompts": prompts(seed=seed), "ptx": ptx_batch(seed)}


@pytest.fixture(scope="module")
def iteration():
  fn = ppo.make_ppo_iteration(CFG, POLICY, VALUE, VALUE, optax.adam(LR), optax.adam(LR),
                              SAMPLING, debug=True)
  return jax.jit(fn, donate_argnums=(0,))


@pytest.fixture(scope="module")
def first(iteration):
  """(state before, state after, metrics) of the first iteration."""
  before = fresh_state()
  after, metrics = iteration(fresh_state(), batch(), jax.random.key(0))
  return before, after, jax.device_get(metrics)


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


# ----------------------------------------------------------------------- iteration invariants


def test_first_minibatch_is_exactly_on_policy(first):
  _, _, m = first
  # Rollout log-probs and the update's first minibatch come from the same forward at the
  # same weights and temperature: the ratio is exactly 1, not merely close.
  assert m["minibatch/ratio_max"][0, 0] == 1.0
  assert m["minibatch/ratio_mean"][0, 0] == 1.0
  assert m["minibatch/approx_kl"][0, 0] == 0.0
  assert m["minibatch/clip_fraction"][0, 0] == 0.0
  assert m["minibatch/ratio_max"][1].max() > 1.0  # ...and the updates did move the policy.


def test_kl_is_zero_while_policy_equals_reference(first):
  _, _, m = first
  assert m["kl"] == 0.0 and m["non_score_reward"] == 0.0
  assert m["beta"] == np.float32(0.1)  # The beta this batch's rewards used.


def test_sampler_logprobs_equal_recomputed_at_the_sampling_temperature(first):
  _, _, m = first
  assert m["sampler_logprob_error"] < 1e-5


def test_metrics_are_complete_and_finite(first):
  _, _, m = first
  for k in ("score", "kl", "beta", "non_score_reward", "policy_loss", "value_loss",
            "clip_fraction", "approx_kl", "ratio_mean", "ratio_max", "entropy",
            "value_explained_variance", "response_length", "eos_fraction", "ptx_loss", "loss"):
    assert np.isfinite(m[k]), k
  assert 0 < m["response_length"] <= N and 0 <= m["eos_fraction"] <= 1
  assert m["minibatch/policy_loss"].shape == (CFG.epochs, CFG.num_minibatches)


def test_state_after_one_iteration(first):
  before, after, m = first
  b, a = host(before), host(after)
  assert int(a.step) == 1
  # KL controller (Ziegler): beta * (1 + clip(kl / target - 1, -.2, .2) * B / horizon).
  np.testing.assert_allclose(a.kl.beta, 0.1 * (1 - 0.2 * B / 100.0), rtol=1e-6)
  # Frozen models unchanged, policy and value moved.
  for name in ("ref_params", "rm_params"):
    for x, y in zip(jax.tree.leaves(getattr(b, name)), jax.tree.leaves(getattr(a, name))):
      np.testing.assert_array_equal(x, y)
  for name in ("policy_params", "value_params"):
    assert any(np.abs(x - y).max() > 0 for x, y in zip(jax.tree.leaves(getattr(b, name)),
                                                       jax.tree.leaves(getattr(a, name))))
  # EMA of the policy: d * old + (1 - d) * new.
  d = CFG.ema_decay
  for e0, p1, e1 in zip(jax.tree.leaves(b.ema_params), jax.tree.leaves(a.policy_params),
                        jax.tree.leaves(a.ema_params)):
    np.testing.assert_allclose(e1, d * e0 + (1 - d) * p1, rtol=1e-5, atol=1e-7)


def test_deterministic_although_the_config_has_dropout(iteration, first):
  """Model dropout_rate=0.5, yet the same inputs give bitwise the same iteration: PPO runs
  every forward with deterministic=True (dropout would also break the two tests above)."""
  assert POLICY.cfg.dropout_rate > 0
  _, after, m = first
  again, m2 = iteration(fresh_state(), batch(), jax.random.key(0))
  for x, y in zip(jax.tree.leaves(host(after)), jax.tree.leaves(host(again))):
    np.testing.assert_array_equal(x, y)
  for k in m:
    np.testing.assert_array_equal(m[k], jax.device_get(m2[k]))


def test_nonfinite_loss_stops_the_run_naming_step_and_quantity(iteration, tmp_path):
  state = fresh_state(rm_bias=float("nan"))  # A NaN reward model: every loss goes NaN.
  data = iter([batch(s) for s in range(3)])
  with pytest.raises(NonFiniteError, match=r"step 1: .*policy_loss is nan"):
    run_loop(iteration, state, data, jax.random.key(0), num_steps=3, workdir=str(tmp_path),
             log_every=1, checkpoint=None, progress=False)


def test_nonfinite_loss_with_skip_keeps_the_state_and_counts(tmp_path):
  fn = ppo.make_ppo_iteration(LIGHT, POLICY, VALUE, VALUE, optax.adam(LR), optax.adam(LR),
                              SAMPLING)
  state = fresh_state(LIGHT, rm_bias=float("inf"))
  start = host(state.policy_params)
  data = iter([batch(s) for s in range(2)])
  state, summary = run_loop(fn, state, data, jax.random.key(0), num_steps=2,
                            workdir=str(tmp_path), log_every=1, checkpoint=None,
                            on_nonfinite="skip", progress=False)
  assert summary.skipped_updates == 2 and int(state.step) == 0
  for x, y in zip(jax.tree.leaves(start), jax.tree.leaves(host(state.policy_params))):
    np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ rollout and update parts


@pytest.fixture(scope="module")
def greedy_rollout():
  return jax.jit(lambda state, prompts, rng: ppo.rollout(MODELS, GREEDY, CFG, state, prompts,
                                                         rng))


@pytest.fixture(scope="module")
def update():
  """rewards + GAE + update on a given rollout (logprob temperature 1: greedy rollouts)."""
  def fn(state, ro, rng):
    adv = ppo.rewards_and_advantages(LIGHT, ro, state.kl.beta)
    state, mb = ppo.ppo_update(MODELS, LIGHT, optax.adam(LR), optax.adam(LR), 1.0, state, ro,
                               adv, None, rng)
    return state.policy_params, state.value_params, mb, adv
  return jax.jit(fn)


@pytest.fixture(scope="module")
def rollout0(greedy_rollout):
  return greedy_rollout(fresh_state(), prompts(), jax.random.key(1))


def test_rollout_shapes_and_alignment(rollout0):
  ro = host(rollout0)
  assert ro.tokens.shape == (B, P + N) and ro.logprobs.shape == (B, N)
  np.testing.assert_array_equal(ro.tokens[:, P:], ro.response_tokens)
  # PAD after EOS and nowhere counted; a finished response's last real token is EOS.
  assert np.all(ro.response_tokens[~ro.response_mask] == PAD)
  for r in range(B):
    if ro.finished[r]:
      assert ro.response_tokens[r, ro.lengths[r] - 1] == EOS
  np.testing.assert_array_equal(ro.logprobs, ro.ref_logprobs)  # Policy == reference.
  # Greedy: the sampler scores at temperature 1, as the recomputation does.
  np.testing.assert_allclose(np.where(ro.response_mask, ro.sampler_logprobs, 0),
                             np.where(ro.response_mask, ro.logprobs, 0), atol=1e-5)


def test_the_reward_model_scores_what_it_was_trained_on(rollout0):
  """A response without EOS is scored with the EOS the RM's training data appends to every
  response (read there); a finished one as it is."""
  ro = host(rollout0)
  assert ro.finished.any() and not ro.finished.all()
  rm_params = fresh_state().rm_params
  for r in range(B):
    ids = [int(t) for t, s in zip(ro.tokens[r], ro.segment_ids[r]) if s]
    if not ro.finished[r]:
      ids.append(EOS)
    assert ids[-1] == EOS
    tokens = jnp.asarray([ids], jnp.int32)
    seg = jnp.ones_like(tokens)
    values, _ = VALUE.apply({"params": rm_params}, tokens, positions_from_mask(seg), seg)
    np.testing.assert_allclose(ro.rm_score[r], values[0, -1], rtol=1e-5, atol=1e-6)


def test_rm_inputs_append_eos_only_after_unfinished_responses():
  tokens = jnp.asarray([[0, 5, 6, 7, 2, 0], [4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 0]], jnp.int32)
  seg = jnp.asarray([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], jnp.int32)
  finished = jnp.asarray([True, False, False])  # The last row is batch padding.
  tok, pos, s = jax.device_get(ppo.rm_inputs(tokens, seg, finished, EOS))
  np.testing.assert_array_equal(tok, [[0, 5, 6, 7, 2, 0, 0], [4, 5, 6, 7, 8, 9, EOS],
                                      [0] * 7])
  np.testing.assert_array_equal(s, [[0, 1, 1, 1, 1, 0, 0], [1] * 7, [0] * 7])
  np.testing.assert_array_equal(pos[1], np.arange(7))


def test_logprobs_do_not_depend_on_left_padding(greedy_rollout, rollout0):
  wide = host(greedy_rollout(fresh_state(), prompts(extra_pad=5), jax.random.key(1)))
  ro = host(rollout0)
  np.testing.assert_array_equal(wide.response_tokens, ro.response_tokens)
  for k in ("logprobs", "ref_logprobs", "values"):
    np.testing.assert_allclose(np.where(ro.response_mask, getattr(wide, k), 0),
                               np.where(ro.response_mask, getattr(ro, k), 0), atol=1e-5)
  np.testing.assert_allclose(wide.rm_score, ro.rm_score, atol=1e-5)


def plant(ro, rng):
  """The rollout with nan/inf/garbage wherever it is padding."""
  pad_resp = ~np.asarray(ro.response_mask)
  pad_seq = np.asarray(ro.segment_ids) == 0
  junk = lambda x, mask, v: jnp.where(mask, v, x)
  garbage = jnp.asarray(rng.integers(3, 74, ro.tokens.shape), jnp.int32)
  return ro.replace(
      tokens=junk(ro.tokens, pad_seq, garbage),
      response_tokens=junk(ro.response_tokens, pad_resp, garbage[:, P:]),
      logprobs=junk(ro.logprobs, pad_resp, jnp.nan),
      ref_logprobs=junk(ro.ref_logprobs, pad_resp, -jnp.inf),
      sampler_logprobs=junk(ro.sampler_logprobs, pad_resp, jnp.nan),
      values=junk(ro.values, pad_resp, jnp.inf))


def test_garbage_in_padding_reaches_no_loss_or_gradient(update, rollout0):
  assert not np.all(np.asarray(rollout0.response_mask))  # There is padding to plant in.
  clean = host(update(fresh_state(LIGHT), rollout0, jax.random.key(2)))
  dirty = host(update(fresh_state(LIGHT), plant(rollout0, np.random.default_rng(0)),
                      jax.random.key(2)))
  for x, y in zip(jax.tree.leaves(clean), jax.tree.leaves(dirty)):
    np.testing.assert_array_equal(x, y)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(clean))


def test_log_ratios_are_clamped(update, rollout0):
  far = rollout0.replace(logprobs=rollout0.logprobs - 1e4, ref_logprobs=rollout0.logprobs + 1e4)
  _, _, mb, adv = host(update(fresh_state(LIGHT), far, jax.random.key(2)))
  mask = np.asarray(rollout0.response_mask)
  # Per-token KL clamped at -MAX_LOG_RATIO (k1), summed per episode.
  np.testing.assert_allclose(adv.kl, -MAX_LOG_RATIO * mask.sum(-1), rtol=1e-6)
  np.testing.assert_allclose(mb["ratio_max"][0, 0], np.exp(np.float32(MAX_LOG_RATIO)), rtol=1e-5)
  assert all(np.all(np.isfinite(v)) for v in mb.values())


def test_ptx_gradient_is_added_to_ppo_and_off_at_zero(update, rollout0):
  """ptx_coef=0: the pretraining batch has no effect on the gradient; ptx_coef=c: the gradient
  is PPO's plus c times the LM loss's (one objective, one backward pass)."""
  adv = update(fresh_state(LIGHT), rollout0, jax.random.key(2))[3]
  params = draw_params(POLICY, 0)

  @jax.jit  # One program for the three gradients: one compilation.
  def grads(params, ro, advantages, ptx):
    mb = {"tokens": ro.tokens[:M], "positions": ro.positions[:M],
          "segment_ids": ro.segment_ids[:M], "response_tokens": ro.response_tokens[:M],
          "response_mask": ro.response_mask[:M], "old_logprobs": ro.logprobs[:M],
          "advantages": advantages[:M], "prompt_len": P}

    def objective_grad(coef):
      cfg = ppo.PPOConfig(rollout_batch_size=B, minibatch_size=M, ptx_coef=coef)
      return jax.grad(lambda p: ppo.policy_objective(MODELS, cfg, 1.0, p, mb, ptx)[0])(params)
    lm_grad = jax.grad(lambda p: lm_loss(POLICY, p, ptx)[0])(params)
    return objective_grad(0.0), objective_grad(0.5), lm_grad

  g0a, g1, g_lm = host(grads(params, rollout0, adv.advantages, ptx_batch(0)))
  g0b = host(grads(params, rollout0, adv.advantages, ptx_batch(1)))[0]
  for a, b in zip(jax.tree.leaves(g0a), jax.tree.leaves(g0b)):
    np.testing.assert_array_equal(a, b)
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(g0a), jax.tree.leaves(g1))) > 1e-4
  for a, b, c in zip(jax.tree.leaves(g0a), jax.tree.leaves(g1), jax.tree.leaves(g_lm)):
    np.testing.assert_allclose(b, a + 0.5 * c, rtol=1e-4, atol=1e-6)


def test_ptx_loss_is_logged_only_with_ptx(rollout0):
  mb = {"tokens": rollout0.tokens[:M], "positions": rollout0.positions[:M],
        "segment_ids": rollout0.segment_ids[:M], "response_tokens": rollout0.response_tokens[:M],
        "response_mask": rollout0.response_mask[:M], "old_logprobs": rollout0.logprobs[:M],
        "advantages": jnp.zeros_like(rollout0.logprobs[:M]), "prompt_len": P}
  params = draw_params(POLICY, 0)
  for coef in (0.0, 0.5):
    cfg = ppo.PPOConfig(rollout_batch_size=B, minibatch_size=M, ptx_coef=coef)
    metrics = jax.eval_shape(lambda p: ppo.policy_objective(MODELS, cfg, 1.0, p, mb,
                                                            ptx_batch(0))[1], params)
    assert ("ptx_loss" in metrics) == (coef > 0)  # No ptx: no loss of 0 in the curves.


def test_exact_kl_term_adds_its_gradient_and_is_zero_on_policy(rollout0):
  """kl_loss_coef=c: the gradient is PPO's plus c times that of the mean exact KL to the
  reference, computed here from the two models' full logits; with the policy equal to the
  reference the term is exactly 0 and moves nothing."""
  mb = {"tokens": rollout0.tokens[:M], "positions": rollout0.positions[:M],
        "segment_ids": rollout0.segment_ids[:M], "response_tokens": rollout0.response_tokens[:M],
        "response_mask": rollout0.response_mask[:M], "old_logprobs": rollout0.logprobs[:M],
        "advantages": jnp.linspace(-1.0, 1.0, M * N).reshape(M, N), "prompt_len": P}
  ref = draw_params(POLICY, 0)
  params = draw_params(POLICY, 5)  # A policy that has moved away from the reference.
  temperature = 0.7

  def direct_kl(p):  # Mean over valid response tokens of KL(policy || ref), full logits.
    def dist(w):
      logits, _ = POLICY.apply({"params": w}, mb["tokens"], mb["positions"],
                               mb["segment_ids"], deterministic=True)
      return jax.nn.log_softmax(logits[:, P - 1:-1].astype(jnp.float32) / temperature)
    logp, logq = dist(p), dist(jax.lax.stop_gradient(ref))
    per_token = (jnp.exp(logp) * (logp - logq)).sum(-1)  # [M, N]
    return jnp.where(mb["response_mask"], per_token, 0.0).sum() / mb["response_mask"].sum()

  @jax.jit
  def run(params, ref):
    def objective(coef):
      cfg = ppo.PPOConfig(rollout_batch_size=B, minibatch_size=M, kl_loss_coef=coef)
      return lambda p: ppo.policy_objective(MODELS, cfg, temperature, p, mb, None,
                                            ref_params=ref)
    g0 = jax.grad(lambda p: objective(0.0)(p)[0])(params)
    (_, metrics), g1 = jax.value_and_grad(objective(0.3), has_aux=True)(params)
    kl_value, g_kl = jax.value_and_grad(direct_kl)(params)
    on_policy = objective(0.3)(ref)[1]["kl_exact"]
    g_on = jax.grad(lambda p: objective(0.3)(p)[0])(ref)
    g_on_base = jax.grad(lambda p: objective(0.0)(p)[0])(ref)
    return g0, g1, g_kl, metrics["kl_exact"], kl_value, on_policy, g_on, g_on_base

  g0, g1, g_kl, kl_exact, kl_value, on_policy, g_on, g_on_base = host(run(params, ref))
  np.testing.assert_allclose(kl_exact, kl_value, rtol=1e-4)
  assert kl_value > 0.05  # The policies differ: the comparison has teeth.
  for a, b, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), jax.tree.leaves(g_kl)):
    np.testing.assert_allclose(b, a + 0.3 * c, rtol=1e-3, atol=1e-6)
  assert on_policy == 0.0
  for a, b in zip(jax.tree.leaves(g_on_base), jax.tree.leaves(g_on)):
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_micro_batches_give_the_minibatch_update(rollout0):
  """micro_batch_size=2: each minibatch of 4 in two passes (its ptx rows split alike), one
  optimizer step: the parameters and metrics of one pass per minibatch, although the rows
  hold different numbers of valid tokens (means are over the minibatch's tokens). With the
  exact KL term too, which reads the reference per micro-batch."""
  lengths = np.asarray(rollout0.response_mask).sum(-1)
  assert lengths.min() < lengths.max()
  whole = dataclasses.replace(CFG, kl_loss_coef=0.3)
  micro = dataclasses.replace(whole, micro_batch_size=2)
  assert micro.num_micro_batches == 2

  @jax.jit
  def both(ro, ptx):
    out = []
    for cfg in (whole, micro):
      state = fresh_state(cfg)
      adv = ppo.rewards_and_advantages(cfg, ro, state.kl.beta)
      state, mb = ppo.ppo_update(MODELS, cfg, optax.adam(LR), optax.adam(LR), 1.0, state, ro,
                                 adv, ptx, jax.random.key(2))
      out.append((state.policy_params, state.value_params, mb))
    return out

  (p1, v1, m1), (p2, v2, m2) = host(both(rollout0, ptx_batch(0)))
  for a, b in zip(jax.tree.leaves((p1, v1)), jax.tree.leaves((p2, v2))):
    np.testing.assert_allclose(a, b, atol=1e-4)  # Adam steps are ~LR = 1e-3 per weight.
  assert set(m1) == set(m2) and "ptx_loss" in m1 and "kl_exact" in m1
  assert m1["kl_exact"][0, 0] == 0.0 and m1["kl_exact"][1].min() > 0  # Once the policy moved.
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_sharded_iteration_equals_single_device():
  """One iteration with every policy-loss term (ptx, entropy bonus, exact KL to the
  reference), on a (data 2, fsdp 2, tensor 2) mesh by the fsdp_tp rules, equals the
  single-device one. Greedy rollouts (the same tokens either way) and SGD (Adam's first step
  would turn float-summation differences of near-zero gradients into +-lr)."""
  cfg = dataclasses.replace(CFG, kl_loss_coef=0.3, ema_decay=0.0)
  ctx = ShardingContext(make_mesh(2, 2, 2), get_rules("fsdp_tp"))
  out = []
  for shard in (None, ctx):
    policy = DecoderLM(model_cfg(), shard=shard)
    value = DecoderLM(model_cfg(), head="scalar", shard=shard)
    state, shardings = create_ppo_state(
        policy, value, value, optax.sgd(0.1), optax.sgd(0.1),
        policy_params=draw_params(POLICY, 0), value_params=draw_params(VALUE, 1, scale=0.1),
        rm_params=draw_params(VALUE, 2, scale=0.1), kl=adaptive_kl_controller(0.1, 2.0, 100.0),
        ctx=shard)
    iteration = ppo.make_ppo_iteration(cfg, policy, value, value, optax.sgd(0.1),
                                       optax.sgd(0.1), GREEDY, shard=shard)
    step = ppo.jit_iteration(iteration, shard, shardings, cfg.use_ptx)
    state, metrics = step(state, batch(), jax.random.key(0))
    out.append(host((state.policy_params, state.value_params, metrics)))
  (p1, v1, m1), (p2, v2, m2) = out
  assert m1["kl_exact"] > 0 and m1["ptx_loss"] > 0  # Both terms were live.
  for a, b in zip(jax.tree.leaves((p1, v1)), jax.tree.leaves((p2, v2))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  for k in m1:
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_micro_batched_iteration_is_exactly_on_policy_at_first():
  """The rollout's forwards run in micro-batch chunks: the first minibatch's ratio is still
  exactly 1."""
  cfg = dataclasses.replace(LIGHT, micro_batch_size=2)
  fn = ppo.make_ppo_iteration(cfg, POLICY, VALUE, VALUE, optax.adam(LR), optax.adam(LR),
                              SAMPLING, debug=True)
  _, m = jax.jit(fn)(fresh_state(cfg), batch(), jax.random.key(0))
  m = jax.device_get(m)
  assert m["minibatch/ratio_max"][0, 0] == 1.0 and m["minibatch/approx_kl"][0, 0] == 0.0
  assert m["minibatch/ratio_max"][0, 1] > 1.0


def test_rloo_advantages_match_a_numpy_reference():
  """Leave-one-out: each response's summed reward (score - beta * sum of log-ratios) minus
  the mean of the other responses to its prompt, on every token of it, scaled to unit
  variance over the valid tokens; the batch-padding row counts in no baseline."""
  cfg = dataclasses.replace(LIGHT, advantage_estimator="rloo", responses_per_prompt=4)
  rng = np.random.default_rng(7)
  lengths = rng.integers(1, N + 1, B)
  mask = np.arange(N)[None, :] < lengths[:, None]  # [B, N]
  logp, ref = (rng.normal(size=(B, N)).astype(np.float32) for _ in range(2))
  score = rng.normal(size=B).astype(np.float32)
  has_prompt = np.ones(B, bool)
  has_prompt[5] = False
  z = jnp.zeros((B, N), jnp.float32)
  ro = ppo.Rollout(tokens=z, positions=z, segment_ids=z, response_tokens=z,
                   response_mask=jnp.asarray(mask), logprobs=jnp.asarray(logp),
                   ref_logprobs=jnp.asarray(ref), sampler_logprobs=z, values=z + np.nan,
                   rm_score=jnp.asarray(score), score=jnp.asarray(score), finished=z[:, 0],
                   lengths=jnp.asarray(lengths), has_prompt=jnp.asarray(has_prompt))
  beta = 0.1
  adv = host(ppo.rewards_and_advantages(cfg, ro, jnp.float32(beta)).advantages)
  total = score - beta * np.where(mask, logp - ref, 0.0).sum(1)  # [B]
  seq = np.zeros(B)
  for i in range(B):
    others = [total[j] for j in range(i // 4 * 4, i // 4 * 4 + 4) if j != i and has_prompt[j]]
    seq[i] = total[i] - np.mean(others) if has_prompt[i] else 0.0
  tok = np.where(mask, seq[:, None], 0.0)
  expected = tok / np.sqrt(tok[mask].var() + 1e-8)
  np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-5)


def test_rloo_iteration_is_on_policy_at_first_and_leaves_the_value_model():
  cfg = dataclasses.replace(LIGHT, advantage_estimator="rloo", responses_per_prompt=2)
  fn = ppo.make_ppo_iteration(cfg, POLICY, VALUE, VALUE, optax.adam(LR), optax.adam(LR),
                              SAMPLING, debug=True)
  pr = {k: jnp.repeat(v[:B // 2], 2, axis=0) for k, v in prompts().items()}  # Pairs.
  before = host(fresh_state(cfg))
  after, m = jax.jit(fn)(fresh_state(cfg), {"prompts": pr}, jax.random.key(0))
  after, m = host(after), jax.device_get(m)
  assert m["minibatch/ratio_max"][0, 0] == 1.0 and m["minibatch/approx_kl"][0, 0] == 0.0
  assert m["minibatch/ratio_max"][0, 1] > 1.0  # The policy moved.
  assert m["advantage_abs_mean"] > 0
  assert not any(k.startswith("value") or "/value" in k for k in m), sorted(m)
  for x, y in zip(jax.tree.leaves(before.value_params), jax.tree.leaves(after.value_params)):
    np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------------- driver


def small_config(steps, **ppo_kw):
  spec = importlib.util.spec_from_file_location("ppo_cfg", os.path.join(ROOT, "configs",
                                                                        "ppo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("tiny")
  c.model.dropout_rate = 0.1  # Ignored by PPO (warned).
  c.data.world.update(num_sft=20, num_rm=20, num_ppo=64, num_heldout=8, num_pretrain=40,
                      num_pretrain_heldout=8)
  c.data.seq_len = 32
  c.train.update(batch_size=8, num_steps=steps, log_every=1, eval_every=steps, eval_batches=1,
                 save_every=2)
  c.optim.warmup_steps = 1
  c.value_optim.warmup_steps = 1
  c.ppo.update(rollout_batch_size=16, minibatch_size=8, epochs=1, ptx_batch_size=16,
               max_new_tokens=6, eval_prompts=8, **ppo_kw)
  return c


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  """A tiny random 'SFT' model dir and a 'reward model' dir, CharTokenizer."""
  root = tmp_path_factory.mktemp("models")
  tok = CharTokenizer()
  cfg = model_cfg()
  sft = str(root / "sft")
  save_model(sft, draw_params(DecoderLM(cfg), 0), cfg, tok, head="lm")
  rm = str(root / "rm")
  save_model(rm, draw_params(DecoderLM(cfg, head="scalar"), 2, scale=0.1), cfg, tok,
             head="scalar")
  return sft, rm


def run_driver(model_dirs, workdir, steps, stop_after=0):
  c = small_config(steps)
  c.init_from, c.reward_model = model_dirs
  c.train.stop_after = stop_after
  return ppo_driver.run(c, workdir)


def test_driver_resume_is_bitwise_identical(model_dirs, tmp_path):
  straight = str(tmp_path / "straight")
  out = run_driver(model_dirs, straight, 4)
  resumed = str(tmp_path / "resumed")
  first = run_driver(model_dirs, resumed, 4, stop_after=2)
  assert first == {"stage": "ppo", "complete": False, "steps": 2, "stop_reason": "num_steps"}
  assert not os.path.exists(os.path.join(resumed, "model"))
  assert not os.path.exists(os.path.join(resumed, "value_model"))
  out2 = run_driver(model_dirs, resumed, 4)
  assert out2["train"]["resumed_from"] == 2 and out2["steps"] == 4
  # The KL controller came back too (it moved away from its initial beta).
  assert out["kl_beta"] == out2["kl_beta"] != small_config(4).ppo.kl.init_beta
  for d in ("model", "value_model"):
    a, b = load_model(os.path.join(straight, d))[0], load_model(os.path.join(resumed, d))[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
  with open(os.path.join(straight, "ppo_results.json")) as f:
    results = json.load(f)
  for ev in (results["sft_eval"], results["final_eval"]):
    for k in ("score", "kl", "correctness", "pretrain_heldout_loss", "eos_fraction",
              "hallucination_rate"):
      assert np.isfinite(ev[k]), k
    assert 0 <= ev["hallucination_rate"] <= 1
  assert results["sft_eval"]["kl"] == 0.0
  # The SFT evaluation is the eval record of step 0, once, also in the resumed workdir.
  for w in (straight, resumed):
    evals = read_metrics(w, split="eval")
    assert [r["step"] for r in evals if r["step"] == 0] == [0]
    assert evals[0]["correctness"] == results["sft_eval"]["correctness"]
  _, cfg, _, head, meta = load_model(os.path.join(straight, "value_model"))
  assert head == "scalar" and meta["stage"] == "ppo_value"
  assert load_model(os.path.join(straight, "model"))[1].dropout_rate == 0.0


def test_driver_reads_jsonl_prompts_and_texts(model_dirs, tmp_path):
  """Prompts (with a gold answer in their metadata) and ptx texts from JSONL files."""
  from instructjax.world import splits, write_jsonl
  world = splits.WorldConfig(num_ppo=32, num_heldout=8, num_pretrain=40, num_pretrain_heldout=8)
  heldout = splits.heldout_prompts(world)
  paths = {k: str(tmp_path / f"{k}.jsonl") for k in ("train", "eval", "ptx", "ptx_eval")}
  write_jsonl(paths["train"], [{"prompt": p} for p in splits.ppo_prompts(world)])
  write_jsonl(paths["eval"], [{"prompt": p, "gold": "owl"} for p in heldout])
  write_jsonl(paths["ptx"], [{"text": t} for t in splits.pretrain_documents(world)])
  write_jsonl(paths["ptx_eval"], [{"text": t} for t in splits.pretrain_heldout_documents(world)])
  c = small_config(1)
  c.init_from, c.reward_model = model_dirs
  c.data.update(source="jsonl", train_path=paths["train"], eval_path=paths["eval"],
                ptx_path=paths["ptx"], ptx_eval_path=paths["ptx_eval"])
  out = ppo_driver.run(c, str(tmp_path / "w"))
  assert out["steps"] == 1 and out["final_eval"]["num_prompts"] == 8
  assert np.isfinite(out["final_eval"]["pretrain_heldout_loss"])
  assert 0 <= out["final_eval"]["correctness"] <= 1  # Against the "gold" field.


def test_responses_per_prompt_repeats_each_prompt_of_a_distinct_batch():
  """k responses to each of B / k distinct prompts: the prompt rows repeat k times in a row,
  and the iterator draws B / k prompts a batch (its state moves as with B / k)."""
  from instructjax.stages.ppo import data
  c = small_config(1)
  c.ppo.responses_per_prompt = 4
  tok = CharTokenizer()
  it = data.prompt_iterator(c, tok)
  batches = data.PPOBatches(it, None, None, repeats=data.responses_per_prompt(c))
  b = next(batches)["prompts"]
  rows = np.asarray(b["tokens"])
  assert rows.shape == (16, c.data.prompt_len)
  groups = rows.reshape(4, 4, -1)
  np.testing.assert_array_equal(groups, np.repeat(groups[:, :1], 4, axis=1))
  assert len({r.tobytes() for r in groups[:, 0]}) == 4  # Four distinct prompts.
  for key in ("segment_ids", "positions"):
    g = np.asarray(b[key]).reshape(4, 4, -1)
    np.testing.assert_array_equal(g, np.repeat(g[:, :1], 4, axis=1))
  # The same prompts, in the same order, as a plain iterator with a batch of B / k.
  c1 = small_config(1)
  c1.ppo.rollout_batch_size = 4
  plain = np.asarray(next(data.prompt_iterator(c1, tok))["tokens"])
  np.testing.assert_array_equal(groups[:, 0], plain)


def test_driver_with_several_responses_per_prompt(model_dirs, tmp_path):
  c = small_config(1)
  c.init_from, c.reward_model = model_dirs
  c.ppo.responses_per_prompt = 2
  c.ppo.advantage_estimator = "rloo"  # The pairs are each other's baseline.
  out = ppo_driver.run(c, str(tmp_path / "w"))
  assert out["complete"] and out["steps"] == 1
  last = out["train"]["last"]
  assert np.isfinite(last["score"]) and np.isfinite(last["policy_loss"])
  assert "value_loss" not in last


@pytest.mark.parametrize("key,value,match", [
    ("ppo.minibatch_size", 5, r"config\.ppo\.minibatch_size"),
    ("ppo.micro_batch_size", 3, r"config\.ppo\.micro_batch_size"),
    ("ppo.responses_per_prompt", 3, r"config\.ppo\.responses_per_prompt=3 must be a positive "
     r"divisor of config\.ppo\.rollout_batch_size=16"),
    ("ppo.temperature", 0.0, r"config\.ppo\.temperature"),
    ("ppo.kl_estimator", "k9", r"config\.ppo\.kl_estimator"),
    ("ppo.advantage_estimator", "vtrace", r"config\.ppo\.advantage_estimator: 'vtrace'"),
    ("ppo.advantage_estimator", "rloo", r"config\.ppo\.advantage_estimator: 'rloo' compares "
     r"the responses to one prompt: it needs config\.ppo\.responses_per_prompt >= 2, got 1"),
    ("ppo.kl_loss_coef", -0.1, r"config\.ppo\.kl_loss_coef: must be >= 0"),
    ("ppo.ptx_batch_size", 12, r"config\.ppo\.ptx_batch_size"),
    ("ppo.max_new_tokens", 60, r"config\.data\.prompt_len \+ config\.ppo\.max_new_tokens"),
    ("value_init", "random", r"config\.value_init"),
    ("data.prompt_len", 20, r"config\.data\.prompt_len=20 is shorter"),
    ("reward_model", "", r"config\.reward_model"),
])
def test_bad_configs_fail_before_compiling_naming_the_key(model_dirs, tmp_path, key, value,
                                                          match):
  c = small_config(2)
  c.init_from, c.reward_model = model_dirs
  section, _, name = key.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(ConfigError, match=match):
    ppo_driver.run(c, str(tmp_path))


def test_reward_model_must_have_a_scalar_head(model_dirs, tmp_path):
  c = small_config(2)
  c.init_from, c.reward_model = model_dirs[0], model_dirs[0]
  with pytest.raises(ConfigError, match=r"config\.reward_model: .* \(head 'lm'\)"):
    ppo_driver.run(c, str(tmp_path))
