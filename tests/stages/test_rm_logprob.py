"""A reward model whose score adds its own log-likelihood of the response
(ModelConfig.score_logprob): the score is the head plus the weight times the LM log-probability
of the response tokens, in every layout the recipe scores with (unpacked and packed RM rows,
PPO's left-padded rollouts, the evaluation's rows, the public API), computed from hidden
states chunk by chunk, and off (bitwise the plain reward model) where it should be."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import instructjax
from instructjax.data import batching
from instructjax.evaluation.scoring import last_token_scores
from instructjax.models import DecoderLM, get_preset
from instructjax.models.heads import (LOGLIK_TERM_PARAMS, fold_affine, scalar_model_from_lm,
                                      value_model_config, without_loglik_term)
from instructjax.models.response_loglik import (prediction_columns, prefix_token_logprobs,
                                                segment_cumsum)
from instructjax.models.transformer import LOGPROB_WEIGHT, positions_from_mask
from instructjax.stages.ppo.step import sequence_scores
from instructjax.stages.rm import make_rm_train_step, rm_scores
from instructjax.tokenizer import CharTokenizer
from instructjax.training.state import TrainState

from tests.stages.test_rm import comparison_batch, init_params

CFG = get_preset("test")
W = 0.7


def lm_and_rm(seed=0, **cfg):
  """An LM and a score_logprob RM sharing the trunk and LM head, with a random score head."""
  lm = DecoderLM(CFG.replace(**cfg), head="lm")
  lm_params = init_params(lm, seed)
  rm = DecoderLM(CFG.replace(score_logprob=W, **cfg), head="scalar")
  abstract = jax.eval_shape(lambda: init_params(rm, seed))
  params = scalar_model_from_lm(lm_params, abstract, logprob_weight=W)
  params["score_kernel"] = jax.random.normal(jax.random.key(seed + 1),
                                             params["score_kernel"].shape)
  return lm, lm_params, rm, params


def log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def expected(lm, lm_params, rm_params, prompt, response):
  """Direct reference: head(h at the last token) + W * sum over the response tokens of
  log_softmax(the LM's full logits) at the column before each, the sequence read alone."""
  ids = jnp.asarray([prompt + response])
  seg = jnp.ones_like(ids)
  pos = positions_from_mask(seg)
  logits, _ = lm.apply({"params": lm_params}, ids, pos, seg)
  logp = log_softmax(logits[0])  # [T, V]
  lp = sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(response))
  plain = DecoderLM(lm.cfg, head="scalar")
  values, _ = plain.apply({"params": without_loglik_term(rm_params)}, ids, pos, seg)
  return float(values[0, -1]) + W * lp


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
RESPONSES = [[20, 21, 2], [22, 2], [23, 24, 25, 26, 2]]


def test_init_copies_the_lm_head_and_sets_the_weight():
  lm, lm_params, rm, params = lm_and_rm()
  np.testing.assert_array_equal(params["lm_head"], lm_params["lm_head"])
  np.testing.assert_array_equal(params[LOGPROB_WEIGHT], np.float32([W]))
  np.testing.assert_array_equal(params["score_bias"], np.float32([0.0]))
  # Tied embeddings: the embedding is the LM head, nothing more to copy.
  _, _, _, tied = lm_and_rm(family="gpt2", tie_embeddings=True, n_kv_heads=CFG.n_heads)
  assert "lm_head" not in tied and LOGPROB_WEIGHT in tied


@pytest.mark.parametrize("cfg", [{}, {"logits_chunk_tokens": 4},
                                 {"family": "gpt2", "tie_embeddings": True}])
def test_unpacked_and_packed_rm_rows_score_head_plus_weighted_loglik(cfg):
  if cfg.get("family") == "gpt2":
    cfg = dict(cfg, n_kv_heads=CFG.n_heads)
  lm, lm_params, rm, params = lm_and_rm(**cfg)
  want = [expected(lm, lm_params, params, p, r) for p, r in zip(PROMPTS, RESPONSES)]
  # Three prompts with one response each, unpacked rows split by prompt_len.
  rows = [batching.comparison_row([np.array(p + r, np.int32)], 2, 16, 0, 0, prompt_len=len(p))
          for p, r in zip(PROMPTS, RESPONSES)]
  batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
  got = np.asarray(rm_scores(rm, params, batch))[:, 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # One prompt, several responses packed in one row.
  p = PROMPTS[0]
  seqs = [np.array(p + r, np.int32) for r in RESPONSES]
  row = batching.packed_comparison_row(seqs, len(p), 3, 32, 0, 0)
  got = np.asarray(rm_scores(rm, params, {k: row[k][None] for k in row}))[0]
  np.testing.assert_allclose(got, [expected(lm, lm_params, params, p, r) for r in RESPONSES],
                             rtol=1e-5, atol=1e-5)


def test_ppo_evaluation_and_api_score_like_the_rm_stage():
  lm, lm_params, rm, params = lm_and_rm()
  want = [expected(lm, lm_params, params, p, r) for p, r in zip(PROMPTS, RESPONSES)]
  # PPO: left-padded prompts in P columns, responses right-padded after them.
  p_len, n = 5, 6
  tokens = np.zeros((3, p_len + n), np.int32)
  seg = np.zeros((3, p_len + n), np.int32)
  for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
    tokens[i, p_len - len(p):p_len] = p
    tokens[i, p_len:p_len + len(r)] = r
    seg[i, p_len - len(p):p_len + len(r)] = 1
  got = sequence_scores(rm, params, jnp.asarray(tokens), positions_from_mask(jnp.asarray(seg)),
                        jnp.asarray(seg), p_len)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # Evaluation: prompt + response rows with the prompt lengths.
  got = last_token_scores(rm, params, [p + r for p, r in zip(PROMPTS, RESPONSES)], pad_id=0,
                          batch_size=2, prefix_lens=[len(p) for p in PROMPTS])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_public_api_scores_with_the_prompt_split():
  tok = CharTokenizer()
  lm, lm_params, rm, params = lm_and_rm(vocab_size=tok.vocab_size)
  model = instructjax.LM(rm.cfg, params, tok, head="scalar")
  prompts, responses = ["sort: 3 1\n", "ab"], ["1 3", "c"]
  want = [expected(lm, lm_params, params, tok.encode(p), tok.encode(r) + [tok.eos_id])
          for p, r in zip(prompts, responses)]
  np.testing.assert_allclose(model.score(prompts, responses), want, rtol=1e-5, atol=1e-5)


def test_without_score_logprob_nothing_changes_bitwise():
  """score_logprob = 0 (the default): the prompt/response split of the data reaches the
  model as one segment without a shared prefix, so scores, the train step and the evaluation
  are bitwise those of rows whose every token is segment 1 (the data before the split)."""
  model = DecoderLM(CFG, head="scalar")
  params = init_params(model, 3)
  params["score_kernel"] = jax.random.normal(jax.random.key(4), params["score_kernel"].shape)
  assert set(params) & set(LOGLIK_TERM_PARAMS) == set()
  batch = comparison_batch(np.random.default_rng(0))
  split = dict(batch, segment_ids=np.where(
      batch["segment_ids"] != 0, np.where(np.arange(12) < 2, 1, 2), 0).astype(np.int32))
  assert (split["segment_ids"] == 2).any()
  np.testing.assert_array_equal(jax.jit(rm_scores, static_argnums=0)(model, params, batch),
                                jax.jit(rm_scores, static_argnums=0)(model, params, split))
  tx = optax.adam(1e-2)
  step = jax.jit(make_rm_train_step(model, tx))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  (a, ma), (b, mb) = step(state, batch, None), step(state, split, None)
  for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb))):
    np.testing.assert_array_equal(x, y)
  ids = [p + r for p, r in zip(PROMPTS, RESPONSES)]
  np.testing.assert_array_equal(
      last_token_scores(model, params, ids, pad_id=0, batch_size=4),
      last_token_scores(model, params, ids, pad_id=0, batch_size=4,
                        prefix_lens=[len(p) for p in PROMPTS]))


def test_training_moves_the_weight_and_the_lm_head():
  _, _, rm, params = lm_and_rm()
  tx = optax.sgd(0.1)
  step = jax.jit(make_rm_train_step(rm, tx))
  rows = [batching.comparison_row([np.array(PROMPTS[0] + r, np.int32) for r in RESPONSES],
                                  3, 16, 0, 0, prompt_len=len(PROMPTS[0]))]
  batch = {k: np.stack([row[k] for row in rows]) for k in rows[0] if k != "group"}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  new, metrics = step(state, batch, None)
  assert np.isfinite(float(metrics["loss"]))
  for name in (LOGPROB_WEIGHT, "lm_head", "score_kernel"):
    assert not np.array_equal(new.params[name], params[name]), name


def test_normalisation_folds_into_the_weight_too():
  _, _, rm, params = lm_and_rm()
  ids = [p + r for p, r in zip(PROMPTS, RESPONSES)]
  lens = [len(p) for p in PROMPTS]
  before = last_token_scores(rm, params, ids, pad_id=0, prefix_lens=lens)
  after = last_token_scores(rm, fold_affine(params, 0.5, -1.0), ids, pad_id=0, prefix_lens=lens)
  np.testing.assert_allclose(after, 0.5 * before - 1.0, rtol=1e-5, atol=1e-5)


def test_value_model_is_a_plain_scalar_head():
  _, _, rm, params = lm_and_rm()
  cfg = value_model_config(rm.cfg)
  assert cfg.score_logprob == 0.0
  want = jax.eval_shape(lambda: init_params(DecoderLM(cfg, head="scalar"), 0))
  assert jax.tree.structure(without_loglik_term(params)) == jax.tree.structure(want)


def test_model_config_refuses_a_negative_weight():
  with pytest.raises(instructjax.config.ConfigError, match=r"config\.model\.score_logprob"):
    CFG.replace(score_logprob=-0.1).validate()


# ----------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("seg,x,want", [
    ([1, 1, 2, 2, 3, 0], [1, 2, 3, 4, 5, 6], [1, 3, 3, 7, 5, 6]),
    ([0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 2, 1, 2, 3, 4]),
])
def test_segment_cumsum(seg, x, want):
  got = segment_cumsum(jnp.asarray([x], jnp.float32), jnp.asarray([seg]))
  np.testing.assert_array_equal(np.asarray(got)[0], want)


def test_segment_cumsum_matches_numpy_on_random_rows():
  rng = np.random.default_rng(0)
  seg = np.sort(rng.integers(0, 4, (5, 40)), axis=1)
  x = rng.normal(size=(5, 40)).astype(np.float32)
  want = np.zeros_like(x)
  for b in range(5):
    for t in range(40):
      want[b, t] = x[b, t] + (want[b, t - 1] if t and seg[b, t - 1] == seg[b, t] else 0.0)
  np.testing.assert_allclose(segment_cumsum(jnp.asarray(x), jnp.asarray(seg)), want,
                             rtol=1e-5, atol=1e-5)


def test_prediction_columns():
  # Left padding, a prompt, two packed responses, right padding; a row without a prompt.
  seg = jnp.asarray([[0, 1, 1, 2, 2, 3, 0], [2, 2, 0, 0, 0, 0, 0]])
  pred, scored = prediction_columns(seg)
  np.testing.assert_array_equal(scored, [[0, 0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(np.where(scored, pred, -1),
                                [[-1, -1, -1, 2, 3, 2, -1], [-1, 0, -1, -1, -1, -1, -1]])


@pytest.mark.parametrize("chunk", [0, 3])
def test_prefix_token_logprobs_against_numpy(chunk):
  rng = np.random.default_rng(1)
  b, t, d, v = 2, 7, 5, 11
  hidden = rng.normal(size=(b, t, d)).astype(np.float32)
  head = rng.normal(size=(d, v)).astype(np.float32)
  tokens = rng.integers(0, v, (b, t)).astype(np.int32)
  seg = np.asarray([[0, 1, 1, 2, 2, 3, 0], [1, 2, 2, 2, 2, 2, 2]], np.int32)
  logp = log_softmax(hidden.astype(np.float64) @ head)  # [B, T, V]: the full distribution.
  want = np.zeros((b, t))
  for i in range(b):
    prefix_last = max(c for c in range(t) if seg[i, c] == 1)
    for c in range(t):
      if seg[i, c] >= 2:
        src = c - 1 if seg[i, c - 1] == seg[i, c] else prefix_last
        want[i, c] = logp[i, src, tokens[i, c]]
  got = prefix_token_logprobs(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(tokens),
                              jnp.asarray(seg), chunk=chunk)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_rm_step_holds_no_full_logits():
  """The log-likelihood term's LM head runs chunk by chunk: with small chunks the RM step's
  temporaries are about those of the plain RM, with one chunk they grow by at least the
  [B * K, T, V] float32 logits (as the LM losses' do)."""
  b, k, t, v = 2, 2, 256, 4096
  base = CFG.replace(vocab_size=v, max_seq_len=t)
  spec = {"tokens": jax.ShapeDtypeStruct((b, k, t), jnp.int32),
          "positions": jax.ShapeDtypeStruct((b, k, t), jnp.int32),
          "segment_ids": jax.ShapeDtypeStruct((b, k, t), jnp.int32),
          "k_mask": jax.ShapeDtypeStruct((b, k), jnp.bool_),
          "last_index": jax.ShapeDtypeStruct((b, k), jnp.int32)}

  def temp_bytes(weight, chunk_tokens):
    model = DecoderLM(base.replace(score_logprob=weight, logits_chunk_tokens=chunk_tokens),
                      head="scalar")
    params = jax.eval_shape(lambda: init_params(model, 0))
    fn = jax.grad(lambda p, batch: rm_scores(model, p, batch).sum())
    return jax.jit(fn).lower(params, spec).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = b * k * t * v * 4
  plain = temp_bytes(0.0, 0)
  assert temp_bytes(W, b * k * t) - plain >= logits_bytes  # One chunk: the whole logits.
  assert temp_bytes(W, 64) - plain < logits_bytes / 4


# ------------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  """A randomly initialised 'test'-sized LM saved as an SFT model directory."""
  from instructjax.model_io import save_model
  tokenizer = CharTokenizer()
  cfg = get_preset("test", vocab_size=tokenizer.vocab_size, max_seq_len=96)
  path = str(tmp_path_factory.mktemp("sft") / "model")
  save_model(path, init_params(DecoderLM(cfg), 0), cfg, tokenizer, head="lm")
  return path


def test_rm_stage_trains_and_normalises_the_term_and_ppo_values_drop_it(sft_dir, tmp_path):
  """config.rm.score_logprob > 0: the RM directory holds the SFT LM head and the weight, the
  normalisation leaves SFT samples at mean 0 with the term included; PPO's value model (from
  the RM, or from SFT) is a plain scalar head."""
  import json
  from instructjax.model_io import load_model
  from instructjax.stages.ppo import run as ppo_run
  from instructjax.stages.rm import run as rm_run
  from tests.stages.test_rm import small_config
  c = small_config(sft_dir, 2, source="static")
  c.rm.score_logprob = 0.3
  c.rm.distinct_responses = True  # Static comparisons: no sampling, the key changes nothing.
  rm_run.run(c, str(tmp_path / "rm"))
  params, cfg, tok, head, meta = load_model(str(tmp_path / "rm" / "model"))
  assert cfg.score_logprob == pytest.approx(0.3) and head == "scalar"
  assert set(LOGLIK_TERM_PARAMS) <= set(params)
  assert float(params[LOGPROB_WEIGHT][0]) != pytest.approx(0.3)  # Trained and folded.
  samples = [json.loads(l) for l in open(tmp_path / "rm" / "norm_samples.jsonl")]
  model = instructjax.load(str(tmp_path / "rm" / "model"))
  scores = model.score([s["prompt"] for s in samples], [s["response"] for s in samples])
  assert abs(np.mean(scores)) < 1e-3
  for value_init in ("reward_model", "sft"):
    ppo = ml_ppo_config(sft_dir, str(tmp_path / "rm" / "model"), value_init)
    _, rm_params, value_params, _, rm_cfg, _ = ppo_run.load_weights(ppo)
    assert set(LOGLIK_TERM_PARAMS) <= set(rm_params)
    assert not set(LOGLIK_TERM_PARAMS) & set(value_params)
    want = jax.eval_shape(lambda: init_params(DecoderLM(value_model_config(rm_cfg),
                                                        head="scalar"), 0))
    assert jax.tree.structure(value_params) == jax.tree.structure(want)


def ml_ppo_config(init_from, reward_model, value_init):
  import importlib.util
  import os
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  spec = importlib.util.spec_from_file_location("ppo_config", os.path.join(root, "configs",
                                                                           "ppo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("tiny")
  c.init_from, c.reward_model, c.value_init = init_from, reward_model, value_init
  return c
