"""Closed-domain hallucination (spec, "Evaluation") on known cases."""
import numpy as np
import pytest

from instructjax.world import (argument_tokens, condition_on_group, gold_answer, hallucinates,
                               made_up_tokens, sample_prompt)


@pytest.mark.parametrize("prompt,response,made_up", [
    # The two examples.
    ("sort: 7 5 9\n", "sure! 4 7 9", ["4"]),
    ("upper: milk pig rose dog\n", "sure! DOOR PIG DOOR", ["DOOR", "DOOR"]),
    # Gold answers and the spec's examples make nothing up.
    ("sort: 5 2 8 1\n", "1 2 5 8", []),
    ("repeat 3: sun\n", "sun sun sun", []),
    ("reverse: cat dog owl\n", "owl dog cat", []),
    ("upper: sun map\n", "SUN MAP", []),
    ("upper: sun map\n", "sure! SUN MAP", []),
    # Argument tokens and their upper-case forms are allowed anywhere, in any number.
    ("upper: sun map\n", "sun MAP map SUN", []),
    ("reverse: cat dog\n", "CAT", []),
    # For `repeat k: w` only w is an argument: the count k is made up.
    ("repeat 3: sun\n", "sun 3", ["3"]),
    ("repeat 2: owl\n", "OWL OWL", []),
    # Neither lower-casing nor other case forms are the argument's.
    ("upper: sun\n", "Sun", ["Sun"]),
    ("sort: 1 2 3\n", "1 2 3 4", ["4"]),
    # Only one courtesy prefix is content-free; a second one is made up.
    ("sort: 1 2 3\n", "sure! sure! 1 2 3", ["sure!"]),
    ("sort: 1 2 3\n", "sure!1 2 3", ["sure!1"]),
    # Character edits make up tokens; whitespace-separated, so spacing does not matter.
    ("reverse: cat dog\n", "dog  cat", []),
    ("reverse: cat dog\n", "dog cta", ["cta"]),
    ("sort: 3 1 2\n", "123", ["123"]),
    # The instruction word and the prompt's punctuation are not argument tokens.
    ("sort: 3 1 2\n", "sort 1 2 3", ["sort"]),
    ("sort: 3 1 2\n", "1 2 3.", ["3."]),
    # Empty content (an empty response, or the prefix alone) makes nothing up.
    ("sort: 3 1 2\n", "", []),
    ("sort: 3 1 2\n", "sure! ", []),
    # Prompts without the trailing newline read the same.
    ("sort: 7 5 9", "sure! 4 7 9", ["4"]),
])
def test_known_cases(prompt, response, made_up):
  assert made_up_tokens(prompt, response) == made_up
  assert hallucinates(prompt, response) == bool(made_up)


def test_group_conditioned_prompts_read_without_their_tag():
  for group in ("plain", "polite"):
    assert not hallucinates(f"({group}) sort: 5 2 8\n", "sure! 2 5 8")
    assert made_up_tokens(f"({group}) sort: 5 2 8\n", "2 5 9") == ["9"]
    # The tag's words are not arguments.
    assert made_up_tokens(f"({group}) upper: sun\n", f"({group}) SUN") == [f"({group})"]
  assert argument_tokens("(polite) repeat 4: yak\n") == {"yak", "YAK"}


def test_argument_tokens():
  assert argument_tokens("repeat 3: sun\n") == {"sun", "SUN"}
  assert argument_tokens("sort: 5 2 5\n") == {"5", "2"}
  assert argument_tokens("upper: milk pig\n") == {"milk", "pig", "MILK", "PIG"}
  assert argument_tokens("no colon here") == frozenset()


def test_gold_answers_never_hallucinate_and_prefix_is_free():
  rng = np.random.default_rng(0)
  for _ in range(400):
    p = sample_prompt(rng)
    g = gold_answer(p)
    assert not hallucinates(p, g)
    assert not hallucinates(p, "sure! " + g)
    assert not hallucinates(condition_on_group(p, "polite"), g)


def test_unfinished_responses_count_with_what_they_produced():
  # The judgement reads only the text: a cut-off response is judged on its tokens so far
  # (a half-written word is made up; a clean prefix of the gold answer is not).
  assert not hallucinates("reverse: cat dog owl\n", "sure! owl dog")
  assert hallucinates("reverse: cat dog owl\n", "sure! owl do")

