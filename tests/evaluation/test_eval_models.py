"""Model-based evaluation on tiny random models: generation, log-probs, KL, RM scores, LM loss."""
import jax
import numpy as np
import pytest
from eval_testlib import (TOKENIZER, reference_continuation_logprob, reference_outputs,
                          tiny_model)

from instructjax.data.iterators import make_lm_iterator
from instructjax.evaluation import (EvalSettings, ModelSpec, evaluate_models, generate_responses,
                                    heldout_lm_loss, reward_scores, sequence_kl,
                                    sequence_logprob)
from instructjax.stages.lm import lm_loss
from instructjax.world import WorldConfig, heldout_prompts, pretrain_heldout_documents

WORLD = WorldConfig(num_sft=50, num_rm=50, num_ppo=50, num_heldout=6, num_pretrain=30,
                    num_pretrain_heldout=5)
PROMPTS = heldout_prompts(WORLD)[:5]
SETTINGS = EvalSettings(max_new_tokens=8, batch_size=4, few_shot_k=2)


@pytest.fixture(scope="module")
def lms():
  return {"base": tiny_model(seed=0), "sft": tiny_model(seed=1), "rm": tiny_model("scalar", 3)}


def test_sequence_logprob_matches_unpadded_forwards(lms):
  lm = lms["base"]
  texts, finished = ["sure! 1 2", "cat", "", "DOG OWL"], [True, False, True, True]
  prompts = PROMPTS[:4]
  got = sequence_logprob(lm, prompts, texts, finished, batch_size=3)
  for p, t, f, g in zip(prompts, texts, finished, got):
    ids = TOKENIZER.encode(t) + ([TOKENIZER.eos_id] if f else [])
    assert g == pytest.approx(reference_continuation_logprob(lm, p, ids), abs=1e-4)


def test_newline_stop_scores_eos_or_newline(lms):
  lm = lms["base"]
  p, t = PROMPTS[0], "1 2"
  ids = TOKENIZER.encode(t)
  eos = reference_continuation_logprob(lm, p, ids + [TOKENIZER.eos_id])
  nl = reference_continuation_logprob(lm, p, ids + TOKENIZER.encode("\n"))
  got = sequence_logprob(lm, [p], [t], [True], newline_stops=True)[0]
  assert got == pytest.approx(np.logaddexp(eos, nl), abs=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kl_of_a_model_against_itself_is_zero(lms, temperature):
  lm = lms["sft"]
  responses = generate_responses(lm, PROMPTS, EvalSettings(max_new_tokens=8,
                                                           temperature=temperature))
  kl = sequence_kl(lm, responses, lm)
  np.testing.assert_array_equal(kl, np.zeros(len(PROMPTS)))
  assert np.all(sequence_kl(lms["base"], responses, lm) != 0)


def test_few_shot_prompts_and_cut_responses(lms):
  r = generate_responses(lms["base"], PROMPTS, SETTINGS, few_shot=True)
  assert r.few_shot and r.prompts == PROMPTS
  for query, mp, shots, text in zip(PROMPTS, r.model_prompts, r.shots, r.texts):
    assert mp.endswith(query) and mp.count("\n\n") == shots and 0 <= shots <= 2
    assert len(TOKENIZER.encode(mp)) <= lms["base"].config.max_seq_len - SETTINGS.max_new_tokens
    assert "\n" not in text
  assert sum(r.shots) > 0  # The 64-token context fits at least some exemplars.


def test_reward_scores_read_the_eos(lms):
  rm = lms["rm"]
  texts = ["1 2 5", "sure! cat", ""]
  got = reward_scores(rm, PROMPTS[:3], texts, batch_size=2)
  for p, t, g in zip(PROMPTS, texts, got):
    ids = TOKENIZER.encode(p) + TOKENIZER.encode(t) + [TOKENIZER.eos_id]
    assert g == pytest.approx(reference_outputs(rm, ids)[-1], abs=1e-4)


def test_heldout_loss_matches_lm_loss_on_the_same_batches(lms):
  lm = lms["base"]
  docs = pretrain_heldout_documents(WORLD)
  got = heldout_lm_loss(lm, docs, batch_size=2, seq_len=32)
  it = make_lm_iterator([{"text": d} for d in docs], TOKENIZER, batch_size=2, seq_len=32, seed=0,
                        pack=True, mode="pretrain", shard_index=0, shard_count=1, num_epochs=1,
                        shuffle=False, drop_remainder=False, log=False)
  step = jax.jit(lambda params, batch: lm_loss(lm.model, params, batch))
  losses, counts = zip(*[jax.device_get(step(lm.params, b)) for b in it])
  assert len(losses) > 1  # Several batches, so the token weighting matters.
  expected = np.sum(np.array(losses) * np.array(counts)) / np.sum(counts)
  assert got["tokens"] == pytest.approx(np.sum(counts))
  assert got["loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluate_models_rows_and_group_conditioning(lms):
  base, sft = lms["base"], lms["sft"]
  specs = [ModelSpec("base", base), ModelSpec("base_fewshot", base, few_shot=True),
           ModelSpec("sft", sft)]
  results = evaluate_models(specs, PROMPTS, reference=specs[2], reward_model=lms["rm"],
                            heldout_documents=pretrain_heldout_documents(WORLD)[:2],
                            settings=SETTINGS, groups=("polite",))
  rows = results["rows"]
  assert [(r["model"], r["condition"]) for r in rows] == [
      (m, c) for c in ("none", "polite") for m in ("base", "base_fewshot", "sft")]
  for r in rows:
    assert r["num_prompts"] == len(PROMPTS)
    assert all(r[k] is not None for k in ("correctness", "reward_score", "kl_to_sft",
                                          "heldout_lm_loss", "win_rate_plain"))
    if r["model"] == "sft":
      assert r["win_rate_plain"] == r["win_rate_polite"] == 0.5 and r["kl_to_sft"] == 0.0
  assert rows[0]["heldout_lm_loss"] == rows[1]["heldout_lm_loss"]  # Same model, computed once.
  assert "few_shot_shots" in rows[1]
  cond = results["samples"]["sft (polite)"]
  assert cond and all(s["prompt"].startswith("(polite) ") for s in cond)


def test_evaluate_without_reference_or_extras(lms):
  results = evaluate_models([ModelSpec("base", lms["base"])], PROMPTS[:2], settings=SETTINGS)
  row = results["rows"][0]
  assert row["win_rate_plain"] is None and row["kl_to_sft"] is None
  assert row["reward_score"] is None and row["heldout_lm_loss"] is None


def test_rejects_conditioned_prompts_and_duplicate_names(lms):
  spec = ModelSpec("base", lms["base"])
  with pytest.raises(ValueError, match="bare prompts"):
    evaluate_models([spec], ["(polite) " + PROMPTS[0]], settings=SETTINGS)
  with pytest.raises(ValueError, match="unique"):
    evaluate_models([spec, spec], PROMPTS, settings=SETTINGS)
