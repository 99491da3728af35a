"""config.rm.lm_coef: the reward model's loss adds lm_coef x the per-token NLL of the compared
responses under its own LM head (the log-likelihood term's), checked against the LM's full
logits read directly, in the unpacked and the packed layout."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax.data import batching
from instructjax.models import DecoderLM
from instructjax.models.transformer import positions_from_mask
from instructjax.ops.reward_loss import pairwise_ranking_loss
from instructjax.stages.rm import make_rm_train_step, rm_loss, rm_scores
from instructjax.training.state import TrainState

from tests.stages.test_rm_logprob import CFG, PROMPTS, RESPONSES, lm_and_rm, log_softmax

COEF = 0.6


def direct_nll(lm, lm_params, prompt, responses):
  """-(sum of log p of every response token, EOS included) / their number, each prompt +
  response sequence read alone by the LM."""
  total, count = 0.0, 0
  for r in responses:
    ids = jnp.asarray([prompt + r])
    seg = jnp.ones_like(ids)
    logits, _ = lm.apply({"params": lm_params}, ids, positions_from_mask(seg), seg)
    logp = log_softmax(logits[0])  # [T, V]
    total += sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(r))
    count += len(r)
  return -total / count


def batches():
  """The same comparison (PROMPTS[0] with the three RESPONSES, plus an empty slot) unpacked
  ([1, K_max, T]) and packed ([1, T])."""
  p = PROMPTS[0]
  seqs = [np.array(p + r, np.int32) for r in RESPONSES]
  row = batching.comparison_row(seqs, 4, 16, 0, 0, prompt_len=len(p))
  unpacked = {k: row[k][None] for k in row if k != "group"}
  row = batching.packed_comparison_row(seqs, len(p), 4, 32, 0, 0)
  packed = {k: row[k][None] for k in row if k not in ("group", "response_id")}
  assert unpacked["k_mask"].tolist() == packed["k_mask"].tolist() == [[True] * 3 + [False]]
  return unpacked, packed


@pytest.mark.parametrize("layout", [0, 1], ids=["unpacked", "packed"])
def test_loss_is_ranking_plus_coef_times_the_responses_token_nll(layout):
  lm, lm_params, rm, params = lm_and_rm()
  batch = batches()[layout]
  want_nll = direct_nll(lm, lm_params, PROMPTS[0], RESPONSES)
  ranking, _ = pairwise_ranking_loss(rm_scores(rm, params, batch), batch["k_mask"])
  loss, m = rm_loss(rm, params, batch, lm_coef=COEF)
  np.testing.assert_allclose(float(m["response_nll"]), want_nll, rtol=1e-5)
  np.testing.assert_allclose(float(m["ranking_loss"]), float(ranking), rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(ranking) + COEF * want_nll, rtol=1e-5)
  # Without the coefficient: the ranking loss alone, and no extra metrics.
  plain, m0 = rm_loss(rm, params, batch)
  assert float(plain) == float(ranking) and "response_nll" not in m0


def test_the_train_step_reports_both_parts_and_the_nll_falls_with_its_gradient():
  lm, lm_params, rm, params = lm_and_rm()
  batch = batches()[1]
  tx = optax.sgd(0.05)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  step = jax.jit(make_rm_train_step(rm, tx, lm_coef=COEF))
  new, m = step(state, batch, None)
  np.testing.assert_allclose(float(m["loss"]),
                             float(m["ranking_loss"]) + COEF * float(m["response_nll"]),
                             rtol=1e-6)
  # A step of the NLL alone lowers it (a huge coefficient makes the ranking part negligible).
  nll_step = jax.jit(make_rm_train_step(rm, optax.sgd(0.05 / 1e3), lm_coef=1e3))
  after, _ = nll_step(state, batch, None)
  assert float(rm_loss(rm, after.params, batch, 1.0)[1]["response_nll"]) < float(
      m["response_nll"])


def test_lm_coef_needs_the_loglik_term():
  model = DecoderLM(CFG, head="scalar")
  with pytest.raises(ValueError, match="needs score_logprob > 0"):
    make_rm_train_step(model, optax.sgd(0.1), lm_coef=1.0)
  with pytest.raises(ValueError, match="lm_coef must be >= 0"):
    make_rm_train_step(DecoderLM(CFG.replace(score_logprob=0.5), head="scalar"),
                       optax.sgd(0.1), lm_coef=-1.0)
