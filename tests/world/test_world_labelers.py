"""Labelers: group shares, utility, Plackett-Luce sampling against exact probabilities."""
import collections
import itertools
import math

import numpy as np
import pytest

from instructjax.world import labelers
from tests.world.stats import assert_distribution, assert_rate


def test_group_shares():
  rng = np.random.default_rng(1)
  groups = collections.Counter(labelers.sample_group(rng) for _ in range(20000))
  assert set(groups) == {"plain", "polite"}
  assert_rate(groups["plain"], 20000, 0.7, "plain share")


@pytest.mark.parametrize("group,response,finished,u", [
    ("plain", "1 2 5 8", True, 1.2),
    ("polite", "1 2 5 8", True, 1.0),
    ("plain", "sure! 1 2 5 8", True, 1.0),
    ("polite", "sure! 1 2 5 8", True, 1.2),
    ("polite", "sure! 1 2 5 8", False, 0.2),  # Unfinished: c = 0, the style still counts.
    ("plain", "1 2 5 9", True, 1 - 1 / 7 + 0.2),
])
def test_utility(group, response, finished, u):
  assert labelers.utility(group, response, finished, "1 2 5 8") == pytest.approx(u)


def test_exact_probabilities_match_hand_computation():
  u = [0.3, 0.0, 0.1]
  w = [math.exp(x / 0.1) for x in u]
  expected = w[2] / sum(w) * w[0] / (w[0] + w[1])  # Ranking 2, 0, 1.
  assert labelers.ranking_probability(u, [2, 0, 1]) == pytest.approx(expected, rel=1e-12)
  total = sum(labelers.ranking_probability(u, r) for r in itertools.permutations(range(3)))
  assert total == pytest.approx(1.0, abs=1e-12)
  with pytest.raises(ValueError):
    labelers.ranking_probability(u, [0, 0, 1])


def test_a_point_one_gap_is_ranked_right_about_73_percent():
  # The spec's "about 73% agreement on a 0.1 gap": e / (1 + e).
  p = labelers.ranking_probability([0.1, 0.0], [0, 1])
  assert p == pytest.approx(math.e / (1 + math.e)) and 0.72 < p < 0.74
  rng = np.random.default_rng(2)
  first = sum(labelers.sample_ranking([0.1, 0.0], rng)[0] == 0 for _ in range(20000))
  assert_rate(first, 20000, p, "better-first rate on a 0.1 gap")


@pytest.mark.parametrize("utilities", [
    [1.2, 1.0, 0.9, 0.6],
    [0.2, 0.2, 1.0, 0.95],  # Ties and a near tie.
])
def test_plackett_luce_frequencies_match_exact_probabilities(utilities):
  rng = np.random.default_rng(3)
  perms = list(itertools.permutations(range(len(utilities))))
  n = 20000
  counts = collections.Counter(tuple(labelers.sample_ranking(utilities, rng)) for _ in range(n))
  assert set(counts) <= set(perms)
  probs = [labelers.ranking_probability(utilities, r) for r in perms]
  # Merge rankings too rare for a chi-square cell (expected < 5) into one cell.
  common = [i for i, p in enumerate(probs) if p * n >= 5]
  rare = [i for i in range(len(perms)) if i not in common]
  obs = [counts[perms[i]] for i in common] + [sum(counts[perms[i]] for i in rare)]
  exp = [probs[i] for i in common] + [sum(probs[i] for i in rare)]
  assert_distribution(obs, exp, f"Plackett-Luce rankings of {utilities}")


def test_plackett_luce_is_sharp_at_temperature_point_one():
  # With weights exp(u / 0.1) a 1.0 utility gap makes the better response first ~99.995%.
  rng = np.random.default_rng(4)
  firsts = [labelers.sample_ranking([0.0, 1.0, 0.0], rng)[0] for _ in range(2000)]
  assert sum(f == 1 for f in firsts) >= 1995


def test_rank_responses_prefers_correct_and_liked_style():
  rng = np.random.default_rng(5)
  responses = [("sure! owl dog cat", True), ("owl dog cat", True), ("owl dog", True),
               ("owl dog cat", False)]
  plain = collections.Counter(
      labelers.rank_responses("plain", responses, "owl dog cat", rng)[0] for _ in range(2000))
  polite = collections.Counter(
      labelers.rank_responses("polite", responses, "owl dog cat", rng)[0] for _ in range(2000))
  assert plain.most_common(1)[0][0] == 1
  assert polite.most_common(1)[0][0] == 0
  # The best response is drawn first with probability weight / total weight.
  u_short = 1 - 4 / 11  # "owl dog" against "owl dog cat".
  assert_rate(plain[1], 2000, _first_prob([1.0, 1.2, u_short + 0.2, 0.2], 1), "plain best")
  assert_rate(polite[0], 2000, _first_prob([1.2, 1.0, u_short, 0.0], 0), "polite best")


def _first_prob(utilities, i):
  w = np.exp(np.asarray(utilities) / 0.1)
  return float(w[i] / w.sum())
