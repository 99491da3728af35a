"""Demonstrators and random edits: 0.8 gold, 1-2 edits otherwise, 0.5 prefix."""
import collections

import numpy as np
import pytest

from instructjax.tokenizer import CharTokenizer
from instructjax.world import demonstrator, prompts
from instructjax.world.correctness import content, has_courtesy_prefix, levenshtein
from instructjax.world.edits import random_edits
from tests.world.stats import assert_distribution, assert_rate


def test_random_edits_distance_and_alphabet():
  rng = np.random.default_rng(0)
  tok = CharTokenizer()
  dist = collections.Counter()
  for _ in range(3000):
    n = int(rng.integers(1, 4))
    out = random_edits("owl dog cat", n, rng)
    d = levenshtein(out, "owl dog cat")
    assert 1 <= d <= n  # n edits change the text, by at most n.
    tok.encode(out)
    dist[(n, d)] += 1
  assert dist[(1, 1)] == sum(v for (n, _), v in dist.items() if n == 1)
  assert dist[(2, 2)] > 0.8 * sum(v for (n, _), v in dist.items() if n == 2)
  assert random_edits("abc", 0, rng) == "abc"
  with pytest.raises(ValueError):
    random_edits("abc", -1, rng)


def test_edit_ops_are_uniform():
  rng = np.random.default_rng(1)
  ops = collections.Counter()
  for _ in range(6000):
    out = random_edits("abcdef", 1, rng)
    ops[{7: "insert", 5: "delete", 6: "substitute"}[len(out)]] += 1
  assert_distribution([ops["insert"], ops["delete"], ops["substitute"]], [1 / 3] * 3, "edit ops")


def test_demonstrator_rates():
  rng = np.random.default_rng(2)
  n = 6000
  gold_hits = prefixed = 0
  n_edits = collections.Counter()
  for _ in range(n):
    prompt = prompts.sample_prompt(rng)
    gold = prompts.gold_answer(prompt)
    response = demonstrator.demonstrate(prompt, rng)
    prefixed += has_courtesy_prefix(response)
    body = content(response)
    if body == gold:
      gold_hits += 1
    else:
      d = levenshtein(body, gold)
      assert 1 <= d <= 2
      n_edits[d] += 1
  assert_rate(gold_hits, n, 0.8, "demonstrator gold rate")
  assert_rate(prefixed, n, 0.5, "demonstrator prefix rate")
  assert n_edits[1] > 0 and n_edits[2] > 0


def test_demonstrations_records():
  rng = np.random.default_rng(3)
  ps = [prompts.sample_prompt(rng) for _ in range(5)]
  demos = demonstrator.demonstrations(ps, np.random.default_rng(4))
  assert [d.prompt for d in demos] == ps
  assert demos == demonstrator.demonstrations(ps, np.random.default_rng(4))
  d = demos[0]
  assert demonstrator.Demonstration.from_json(d.to_json()) == d
  assert set(d.to_json()) == {"prompt", "response"}
