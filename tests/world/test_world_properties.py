"""Property tests: Levenshtein is a metric, correctness is bounded, prompts round trip."""
import itertools

from hypothesis import given, settings, strategies as st
import numpy as np

from instructjax.world import labelers, prompts
from instructjax.world.correctness import content, correctness, levenshtein
from instructjax.world.lexicon import ALPHABET

text = st.text(alphabet=ALPHABET, max_size=12)


@settings(max_examples=150, deadline=None)
@given(text, text, text)
def test_levenshtein_is_a_metric(a, b, c):
  assert levenshtein(a, b) == levenshtein(b, a)
  assert (levenshtein(a, b) == 0) == (a == b)
  assert levenshtein(a, c) <= levenshtein(a, b) + levenshtein(b, c)
  assert abs(len(a) - len(b)) <= levenshtein(a, b) <= max(len(a), len(b))


@settings(max_examples=150, deadline=None)
@given(text, text, st.booleans())
def test_correctness_bounds(resp, gold, finished):
  c = correctness(resp, finished, gold)
  assert 0.0 <= c <= 1.0
  assert (c == 1.0) == (finished and content(resp) == gold)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_prompt_round_trip(seed):
  inst = prompts.sample_instruction(np.random.default_rng(seed))
  assert prompts.parse_prompt(inst.prompt) == inst
  assert prompts.parse_prompt(prompts.condition_on_group(inst.prompt, "plain")) == inst


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.2), min_size=1, max_size=5))
def test_ranking_probabilities_sum_to_one(utilities):
  perms = itertools.permutations(range(len(utilities)))
  total = sum(labelers.ranking_probability(utilities, p) for p in perms)
  assert abs(total - 1.0) < 1e-9
