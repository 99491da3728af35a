"""The world's judgement in evaluation: win rates with ties counting half, summaries."""
import numpy as np
import pytest

from instructjax.evaluation import Responses, pairwise_wins, score_responses, summarize

PROMPT = "sort: 5 2 1\n"  # Gold "1 2 5".
GOLD = "1 2 5"


def test_win_rate_ties_count_half():
  texts = ["1 2 5", "sure! 1 2 5", "1 2 5", "sure! 1 2 6", "1 2 5"]
  finished = [True, True, False, True, True]
  ref_texts = ["1 2 5", "1 2 5", "1 2 5", "1 2 5", "1 2"]
  ref_finished = [True] * 5
  golds = [GOLD] * 5
  plain = pairwise_wins(texts, finished, ref_texts, ref_finished, golds, "plain")
  polite = pairwise_wins(texts, finished, ref_texts, ref_finished, golds, "polite")
  # 0: identical -> tie. 1: prefix: plain loses (1.0 vs 1.2), polite wins (1.2 vs 1.0).
  # 2: unfinished scores 0 -> loses. 3: c = 0.8 with prefix: polite 0.8 + 0.2 = 1.0 ties with
  # the unprefixed exact reference (1.0; floats summed differently still tie), plain loses.
  # 4: exact beats "1 2" (c = 0.6) for both.
  np.testing.assert_array_equal(plain, [0.5, 0.0, 0.0, 0.0, 1.0])
  np.testing.assert_array_equal(polite, [0.5, 1.0, 0.0, 0.5, 1.0])


def test_score_and_summarize_against_reference():
  prompts = [PROMPT, "repeat 2: sun\n", "upper: cat\n", "reverse: cat dog\n"]
  model = Responses(prompts, prompts, ["sure! 1 2 5", "sun sun", "CAT", "cat dog"],
                    [True, True, True, False])
  ref = Responses(prompts, prompts, ["1 2 5", "sun", "sure! CAT", "dog cat"], [True] * 4)
  scores = score_responses(model, ref)
  np.testing.assert_allclose(scores["correctness"], [1.0, 1.0, 1.0, 0.0])
  np.testing.assert_array_equal(scores["exact_match"], [1, 1, 1, 0])
  np.testing.assert_array_equal(scores["courtesy"], [1, 0, 0, 0])
  np.testing.assert_array_equal(scores["length_chars"], [11, 7, 3, 7])
  np.testing.assert_array_equal(scores["hallucination"], [0, 0, 0, 0])
  row = summarize({**scores, "kl": np.array([0.0, 1.0, 2.0, 3.0])})
  assert row["correctness"] == pytest.approx(0.75)
  assert row["exact_match"] == pytest.approx(0.75)
  # plain: lose (1.0 vs 1.2), win (1.2 vs c("sun")+0.2), win (1.2 vs 1.0), lose.
  assert row["win_rate_plain"] == pytest.approx(0.5)
  # polite: win (1.2 vs 1.0), win (1.0 vs c("sun") = 3/7), lose (1.0 vs 1.2), lose.
  assert row["win_rate_polite"] == pytest.approx(0.5)
  assert row["courtesy_share"] == pytest.approx(0.25)
  assert row["hallucination_rate"] == 0.0
  assert row["finished_share"] == pytest.approx(0.75)
  assert row["kl_to_sft"] == pytest.approx(1.5)
  assert row["reward_score"] is None and row["num_prompts"] == 4


def test_self_comparison_is_half_and_group_prompts_use_bare_gold():
  prompts = ["(polite) " + PROMPT, "(plain) repeat 2: sun\n"]
  r = Responses(prompts, prompts, ["sure! 1 2 5", "sun"], [True, True])
  scores = score_responses(r, r)
  np.testing.assert_allclose(scores["correctness"], [1.0, 3 / 7])
  assert summarize(scores)["win_rate_plain"] == summarize(scores)["win_rate_polite"] == 0.5


def test_reference_must_answer_the_same_prompts():
  a = Responses([PROMPT], [PROMPT], ["1 2 5"], [True])
  b = Responses(["upper: cat\n"], ["upper: cat\n"], ["CAT"], [True])
  with pytest.raises(ValueError, match="different prompts"):
    score_responses(a, b)


def test_hallucination_per_response():
  # The examples, a count taken from `repeat k:`, an unfinished response judged on its
  # text, and a group-conditioned prompt.
  prompts = ["sort: 7 5 9\n", "upper: milk pig rose dog\n", "repeat 3: sun\n",
             "reverse: cat dog\n", "(polite) sort: 3 1 2\n"]
  texts = ["sure! 4 7 9", "sure! DOOR PIG DOOR", "sun 3 sun", "dog ca", "sure! 1 2 3"]
  r = Responses(prompts, prompts, texts, [True, True, True, False, True])
  scores = score_responses(r)
  np.testing.assert_array_equal(scores["hallucination"], [1, 1, 1, 1, 0])
  assert summarize(scores)["hallucination_rate"] == pytest.approx(0.8)
