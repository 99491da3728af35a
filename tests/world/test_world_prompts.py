"""Prompts: spec examples, parsing errors, argument ranges, uniform families, group tags."""
import collections

import numpy as np
import pytest

from instructjax.tokenizer import CharTokenizer
from instructjax.world import lexicon, prompts
from tests.world.stats import assert_distribution


@pytest.mark.parametrize("prompt,gold", [
    ("sort: 5 2 8 1\n", "1 2 5 8"),
    ("repeat 3: sun\n", "sun sun sun"),
    ("reverse: cat dog owl\n", "owl dog cat"),
    ("upper: sun map\n", "SUN MAP"),
    ("sort: 9 0 9 0 1\n", "0 0 1 9 9"),
    ("repeat 2: yak\n", "yak yak"),
    ("repeat 4: ant\n", "ant ant ant ant"),
    ("reverse: zoo zoo ant\n", "ant zoo zoo"),
    ("upper: cake\n", "CAKE"),
    ("(polite) sort: 5 2 8\n", "2 5 8"),
    ("(plain) reverse: bee hen\n", "hen bee"),
    ("sort: 3 1 2", "1 2 3"),  # The trailing newline may be omitted.
])
def test_gold_answer_known_cases(prompt, gold):
  assert prompts.gold_answer(prompt) == gold


@pytest.mark.parametrize("prompt,why", [
    ("upper: red fox\n", "red"),  # The spec's invalid example.
    ("upper: cat dog owl pig hen\n", "5 words"),
    ("reverse: cat\n", "1 words"),
    ("reverse: a b c\n", "not in the lexicon"),
    ("sort: 5 2\n", "2 digits"),
    ("sort: 1 2 3 4 5 6 7 8 9\n", "9 digits"),
    ("sort: 5 12 3\n", "single digits"),
    ("repeat 5: sun\n", "repeat count"),
    ("repeat 1: sun\n", "repeat count"),
    ("repeat 2: sun moon\n", "exactly one word"),
    ("repeat 2: sunny\n", "not in the lexicon"),
    ("shout: cat dog\n", "unknown instruction"),
    ("reverse:  cat dog\n", "single spaces"),
    ("reverse cat dog\n", "expected"),
    ("reverse: cat dog\n\n", "single line"),
    ("(rude) sort: 1 2 3\n", "unknown instruction"),
])
def test_invalid_prompts_raise_clear_errors(prompt, why):
  with pytest.raises(ValueError, match="invalid InstructWorld prompt") as e:
    prompts.gold_answer(prompt)
  assert why in str(e.value)


def test_lexicon_is_the_specs():
  assert len(lexicon.LEXICON) == 64
  assert lexicon.LEXICON[:3] == ("ant", "bag", "bat") and lexicon.LEXICON[-3:] == ("wolf", "yak", "zoo")
  assert list(lexicon.LEXICON) == sorted(lexicon.LEXICON)  # The spec lists it alphabetically.
  assert "fox" in lexicon.LEXICON_SET and "red" not in lexicon.LEXICON_SET


def test_sampled_prompts_ranges_families_and_alphabet():
  rng = np.random.default_rng(0)
  tok = CharTokenizer()
  n = 4000
  fams = collections.Counter()
  lengths = collections.defaultdict(collections.Counter)
  for _ in range(n):
    inst = prompts.sample_instruction(rng)
    p = inst.prompt
    assert p.endswith("\n") and p.count("\n") == 1
    assert prompts.parse_prompt(p) == inst  # Sampling and parsing agree; parse checks ranges.
    tok.encode(p + inst.gold)
    fams[inst.family] += 1
    lengths[inst.family][inst.k if inst.family == "repeat" else len(inst.items)] += 1
  assert_distribution([fams[f] for f in prompts.FAMILIES], [0.25] * 4, "families")
  # Every value of each argument range occurs, and nothing outside it.
  assert set(lengths["reverse"]) == set(range(2, 7))
  assert set(lengths["sort"]) == set(range(3, 9))
  assert set(lengths["repeat"]) == {2, 3, 4}
  assert set(lengths["upper"]) == set(range(1, 5))
  for fam, counts in lengths.items():
    vals = sorted(counts)
    assert_distribution([counts[v] for v in vals], [1 / len(vals)] * len(vals), f"{fam} length")


def test_sampling_is_deterministic_for_a_seed():
  a = [prompts.sample_prompt(np.random.default_rng(7)) for _ in range(3)]
  b = [prompts.sample_prompt(np.random.default_rng(7)) for _ in range(3)]
  assert a == b
  seq = np.random.default_rng(7)
  assert len({prompts.sample_prompt(seq) for _ in range(20)}) > 10


def test_group_conditioning():
  p = "sort: 5 2 8\n"
  assert prompts.condition_on_group(p, "polite") == "(polite) sort: 5 2 8\n"
  assert prompts.split_group("(plain) sort: 5 2 8\n") == ("plain", p)
  assert prompts.split_group(p) == (None, p)
  with pytest.raises(ValueError):
    prompts.condition_on_group(p, "rude")
