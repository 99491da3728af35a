"""Pretraining corpus: templates state the transformations correctly, without the prompt format."""
import re

import numpy as np
import pytest

from instructjax.tokenizer import CharTokenizer
from instructjax.world import corpus, prompts
from instructjax.world.lexicon import DIGITS, LEXICON_SET
from instructjax.world.partition import is_heldout
from tests.world.stats import assert_rate


def _template_regex(template):
  parts = re.split(r"(\{[agk]\})", template)
  groups = {"{a}": r"(?P<a>[a-z0-9 ]+?)", "{g}": r"(?P<g>[A-Za-z0-9 ]+?)", "{k}": r"(?P<k>[2-4])"}
  return re.compile("^" + "".join(groups.get(p, re.escape(p)) for p in parts) + "$")


REGEXES = [(fam, _template_regex(t)) for fam, ts in corpus.TEMPLATES.items() for t in ts]


def _parse_statement(line):
  """(family, Instruction, stated answer) for a statement line, or None for filler."""
  for fam, rx in REGEXES:
    m = rx.match(line)
    if m:
      items = tuple(m["a"].split(" "))
      k = int(m["k"]) if fam == "repeat" else None
      return prompts.Instruction(fam, items, k), m["g"]
  return None


def test_at_least_three_templates_per_family():
  assert set(corpus.TEMPLATES) == set(prompts.FAMILIES)
  for fam, ts in corpus.TEMPLATES.items():
    assert len(set(ts)) >= 3, fam


@pytest.mark.parametrize("fam,items,k,expected", [
    ("reverse", ("cat", "dog", "owl"), None, "the words cat dog owl in reverse order are owl dog cat."),
    ("sort", ("5", "2", "8"), None, "sorted, 5 2 8 reads 2 5 8."),
])
def test_spec_example_sentences(fam, items, k, expected):
  assert corpus.statement(prompts.Instruction(fam, items, k), 0) == expected


def test_documents_state_transformations_correctly():
  rng = np.random.default_rng(0)
  tok = CharTokenizer()
  docs = corpus.documents(rng, 300)
  n_lines = n_statements = 0
  fams = set()
  for doc in docs:
    tok.encode(doc)  # Whole alphabet; no EOS inside the string.
    assert doc.endswith(".\n") and "\n\n" not in doc
    lines = doc[:-1].split("\n")
    assert 3 <= len(lines) <= 10
    for line in lines:
      n_lines += 1
      with pytest.raises(ValueError):
        prompts.parse_prompt(line)  # Never the instruction format.
      parsed = _parse_statement(line)
      if parsed is None:
        words = line[:-1].split(" ")
        assert line.endswith(".") and 3 <= len(words) <= 8
        assert all(w in LEXICON_SET or w in DIGITS for w in words), line
        continue
      inst, stated = parsed
      prompts.parse_prompt(inst.prompt)  # Arguments within the family's ranges.
      assert stated == inst.gold, line
      assert not is_heldout(inst.prompt)  # Held-out prompts are unseen in pretraining too.
      n_statements += 1
      fams.add(inst.family)
  assert fams == set(prompts.FAMILIES)
  assert_rate(n_statements, n_lines, 0.6, "statement share")  # The documented mix.


def test_documents_exclude():
  a = corpus.documents(np.random.default_rng(1), 5)
  b = corpus.documents(np.random.default_rng(1), 5, exclude=a[:2])
  assert b[:3] == a[2:5] and not set(b) & set(a[:2])
