"""The pretraining corpus (the web): plain sentences stating the four transformations without the
instruction format, mixed with filler sentences of lexicon words and digits.

A document is a string of sentences, one per line, each ending in `.` and a newline (free
choice: line breaks let the base model learn to end an answer with a newline, which the few-shot
rule relies on). The string holds no EOS: documents are separated by EOS when tokenized (the
tokenizer's eos_id appended after each document's tokens). Free choices: 3 to 10 sentences per
document, each a transformation statement with probability 0.6, else filler of 3 to 8 tokens
(each a lexicon word or a digit, equally likely). Statements use arguments from the spec's ranges,
drawn only from prompts in the training partition, so held-out evaluation prompts are unseen
even here. Train and held-out corpora come from different random streams, and held-out documents
equal to a train document are dropped.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from instructjax.world.lexicon import DIGITS, LEXICON
from instructjax.world.partition import sample_instruction_in
from instructjax.world.prompts import Instruction

SENTENCES_PER_DOC = (3, 10)
P_STATEMENT = 0.6
FILLER_LEN = (3, 8)

# At least three templates per family; {a} is the argument, {g} the gold answer, {k} the count.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "reverse": (
        "the words {a} in reverse order are {g}.",
        "{a} backwards is {g}.",
        "read from the end, {a} becomes {g}.",
    ),
    "sort": (
        "sorted, {a} reads {g}.",
        "the digits {a} in order are {g}.",
        "from small to big, {a} is {g}.",
    ),
    "repeat": (
        "{a} said {k} times is {g}.",
        "if you repeat {a} {k} times you get {g}.",
        "{k} times {a} makes {g}.",
    ),
    "upper": (
        "{a} in capitals is {g}.",
        "the loud way to write {a} is {g}.",
        "in upper case, {a} becomes {g}.",
    ),
}


def statement(inst: Instruction, template_index: int) -> str:
  """The plain sentence stating `inst`'s transformation with one of its family's templates."""
  template = TEMPLATES[inst.family][template_index]
  return template.format(a=" ".join(inst.items), g=inst.gold, k=inst.k)


def filler(rng: np.random.Generator) -> str:
  n = int(rng.integers(FILLER_LEN[0], FILLER_LEN[1] + 1))
  tokens = [LEXICON[int(rng.integers(0, len(LEXICON)))] if rng.random() < 0.5
            else DIGITS[int(rng.integers(0, 10))] for _ in range(n)]
  return " ".join(tokens) + "."


def sentence(rng: np.random.Generator) -> str:
  if rng.random() < P_STATEMENT:
    inst = sample_instruction_in(rng, "train")
    return statement(inst, int(rng.integers(0, len(TEMPLATES[inst.family]))))
  return filler(rng)


def document(rng: np.random.Generator) -> str:
  n = int(rng.integers(SENTENCES_PER_DOC[0], SENTENCES_PER_DOC[1] + 1))
  return "".join(sentence(rng) + "\n" for _ in range(n))


def documents(rng: np.random.Generator, n: int,
              exclude: Optional[Iterable[str]] = None) -> list[str]:
  """n documents (without EOS), none equal to a document in `exclude`."""
  banned = set(exclude or ())
  out = []
  while len(out) < n:
    doc = document(rng)
    if doc not in banned:
      out.append(doc)
  return out
