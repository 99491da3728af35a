"""Comparisons: K range, rankings, static responses, the policy source plug-in."""
import collections

import numpy as np
import pytest

from instructjax.world import comparisons, prompts
from instructjax.world.correctness import content, has_courtesy_prefix, levenshtein
from tests.world.stats import assert_distribution, assert_rate


def _prompts(n, seed=0):
  rng = np.random.default_rng(seed)
  return [prompts.sample_prompt(rng) for _ in range(n)]


def test_static_comparisons():
  ps = _prompts(1000)
  recs = comparisons.static_comparisons(ps, np.random.default_rng(1))
  assert [r.prompt for r in recs] == ps
  ks = collections.Counter(len(r.responses) for r in recs)
  assert set(ks) == set(range(4, 10))
  assert_distribution([ks[k] for k in range(4, 10)], [1 / 6] * 6, "K")
  groups = collections.Counter(r.group for r in recs)
  assert_rate(groups["plain"], len(recs), 0.7, "plain share in comparisons")
  n_resp = prefixed = 0
  dists = collections.Counter()
  for r in recs:
    assert sorted(r.ranking) == list(range(len(r.responses)))
    assert all(r.finished_flags)
    gold = prompts.gold_answer(r.prompt)
    for t in r.responses:
      n_resp += 1
      prefixed += has_courtesy_prefix(t)
      dists[min(levenshtein(content(t), gold), 4)] += 1
      assert t.strip()
  assert_rate(prefixed, n_resp, 0.5, "static prefix rate")
  assert set(dists) == {0, 1, 2, 3}  # 0 to 3 edits, never more.
  # 0 edits (one in four responses) gives the gold; nothing else does.
  assert_rate(dists[0], n_resp, 0.25, "static gold rate")


def test_rankings_favour_better_responses():
  # Across many records, the best-ranked response is more correct than the worst on average.
  recs = comparisons.static_comparisons(_prompts(300, 2), np.random.default_rng(3))
  best = np.mean([levenshtein(content(r.responses[r.ranking[0]]), prompts.gold_answer(r.prompt))
                  for r in recs])
  worst = np.mean([levenshtein(content(r.responses[r.ranking[-1]]), prompts.gold_answer(r.prompt))
                   for r in recs])
  assert best + 1 < worst, (best, worst)


def test_policy_comparisons_calls_sampler_per_k_and_handles_unfinished():
  ps = _prompts(60, 4)
  calls = []

  def sampler(batch, k):
    calls.append((list(batch), k))
    # Response 0: exact but unfinished; response 1: exact and finished; others: junk.
    return [[(prompts.gold_answer(p), False), (prompts.gold_answer(p), True)] +
            [("x", True)] * (k - 2) for p in batch]

  recs = comparisons.policy_comparisons(ps, sampler, np.random.default_rng(5))
  assert [r.prompt for r in recs] == ps
  ks = [k for _, k in calls]
  assert len(ks) == len(set(ks)) and set(ks) <= set(range(4, 10))
  assert sum(len(b) for b, _ in calls) == len(ps)
  for r in recs:
    assert 4 <= len(r.responses) <= 9
    assert r.finished_flags[0] is False and all(r.finished_flags[1:])
    # The finished exact answer (utility >= 1) beats the unfinished one (utility <= 0.2)
    # with probability about 1 - e^-8.
    assert r.ranking.index(1) < r.ranking.index(0)
    d = r.to_json()
    assert d["finished"][0] is False
    assert comparisons.Comparison.from_json(d) == r


def test_policy_sampler_shape_is_checked():
  with pytest.raises(ValueError, match="sample_responses must return"):
    comparisons.policy_comparisons(_prompts(3), lambda b, k: [[("a", True)]] * len(b),
                                   np.random.default_rng(0))


def test_comparison_validation_and_json():
  with pytest.raises(ValueError):
    comparisons.Comparison("sort: 1 2 3\n", ("a", "b"), (0, 0), "plain")
  c = comparisons.Comparison("sort: 1 2 3\n", ("a", "b"), (1, 0), "polite", (True, True))
  assert c.to_json() == {"prompt": "sort: 1 2 3\n", "responses": ["a", "b"], "ranking": [1, 0],
                         "group": "polite"}
  assert comparisons.Comparison.from_json(c.to_json()) == c
