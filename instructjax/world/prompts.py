"""The four instruction families: prompt sampling, parsing and gold answers.

A prompt is one line ending in a newline, e.g. `sort: 5 2 8 1\n`; the families and argument
ranges are the spec's (reverse 2-6 words, sort 3-8 digits, repeat k in 2-4, upper 1-4 words; words
from the lexicon, repeats allowed). Families are drawn uniformly, then each argument uniformly.

Parsing is strict about the format (single spaces, argument ranges, lexicon words) so that a
malformed prompt fails loudly instead of silently getting a wrong gold answer. The trailing
newline may be omitted when parsing, since callers often hold the prompt line without it.
Group-conditioned prompts (`(polite) sort: 5 2 8\n`) are parsed by dropping the group tag.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from instructjax.world.lexicon import DIGITS, LEXICON, LEXICON_SET

FAMILIES: tuple[str, ...] = ("reverse", "sort", "repeat", "upper")
GROUPS: tuple[str, ...] = ("plain", "polite")

# Inclusive argument ranges (spec table).
REVERSE_LEN = (2, 6)
SORT_LEN = (3, 8)
REPEAT_K = (2, 4)
UPPER_LEN = (1, 4)


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One instruction: its family and argument (`items`: words or digits; `k`: repeat count)."""
  family: str
  items: tuple[str, ...]
  k: Optional[int] = None

  @property
  def prompt(self) -> str:
    if self.family == "repeat":
      return f"repeat {self.k}: {self.items[0]}\n"
    return f"{self.family}: {' '.join(self.items)}\n"

  @property
  def gold(self) -> str:
    if self.family == "reverse":
      return " ".join(reversed(self.items))
    if self.family == "sort":
      return " ".join(sorted(self.items))
    if self.family == "repeat":
      return " ".join([self.items[0]] * self.k)
    if self.family == "upper":
      return " ".join(w.upper() for w in self.items)
    raise ValueError(f"unknown family {self.family!r}")


def _uniform_int(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
  return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _words(rng: np.random.Generator, n: int) -> tuple[str, ...]:
  return tuple(LEXICON[i] for i in rng.integers(0, len(LEXICON), size=n))


def sample_instruction(rng: np.random.Generator, family: Optional[str] = None) -> Instruction:
  """Draws an instruction: family uniformly (unless given), then its argument uniformly."""
  if family is None:
    family = FAMILIES[int(rng.integers(0, len(FAMILIES)))]
  if family == "reverse":
    return Instruction("reverse", _words(rng, _uniform_int(rng, REVERSE_LEN)))
  if family == "sort":
    n = _uniform_int(rng, SORT_LEN)
    return Instruction("sort", tuple(DIGITS[i] for i in rng.integers(0, 10, size=n)))
  if family == "repeat":
    k = _uniform_int(rng, REPEAT_K)
    return Instruction("repeat", _words(rng, 1), k)
  if family == "upper":
    return Instruction("upper", _words(rng, _uniform_int(rng, UPPER_LEN)))
  raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def sample_prompt(rng: np.random.Generator, family: Optional[str] = None) -> str:
  return sample_instruction(rng, family).prompt


def condition_on_group(prompt: str, group: str) -> str:
  """Group-conditioned prompt: `(polite) sort: 5 2 8\n`."""
  if group not in GROUPS:
    raise ValueError(f"unknown labeler group {group!r}; expected one of {GROUPS}")
  return f"({group}) {prompt}"


def split_group(prompt: str) -> tuple[Optional[str], str]:
  """Splits a possibly group-conditioned prompt into (group or None, bare prompt)."""
  for group in GROUPS:
    tag = f"({group}) "
    if prompt.startswith(tag):
      return group, prompt[len(tag):]
  return None, prompt


def _invalid(prompt: str, why: str) -> ValueError:
  return ValueError(f"invalid InstructWorld prompt {prompt!r}: {why}")


def _check_len(prompt: str, n: int, lo_hi: tuple[int, int], what: str) -> None:
  if not lo_hi[0] <= n <= lo_hi[1]:
    raise _invalid(prompt, f"{n} {what}, expected {lo_hi[0]} to {lo_hi[1]}")


def _check_words(prompt: str, words: list[str]) -> None:
  unknown = [w for w in words if w not in LEXICON_SET]
  if unknown:
    raise _invalid(prompt, f"words not in the lexicon: {', '.join(unknown)}")


def parse_prompt(prompt: str) -> Instruction:
  """Parses a prompt (optionally group-conditioned) into its Instruction; ValueError if invalid."""
  _, line = split_group(prompt)
  if line.endswith("\n"):
    line = line[:-1]
  if "\n" in line:
    raise _invalid(prompt, "a prompt is a single line")
  head, sep, arg = line.partition(": ")
  if not sep or not arg:
    raise _invalid(prompt, "expected '<family>: <argument>'")
  items = arg.split(" ")
  if any(not x for x in items):
    raise _invalid(prompt, "argument items must be separated by single spaces")
  if head in ("reverse", "upper"):
    _check_len(prompt, len(items), REVERSE_LEN if head == "reverse" else UPPER_LEN, "words")
    _check_words(prompt, items)
    return Instruction(head, tuple(items))
  if head == "sort":
    _check_len(prompt, len(items), SORT_LEN, "digits")
    bad = [x for x in items if x not in DIGITS]
    if bad:
      raise _invalid(prompt, f"sort takes single digits 0-9, got {', '.join(bad)}")
    return Instruction("sort", tuple(items))
  fam, _, k = head.partition(" ")
  if fam == "repeat":
    if k not in [str(i) for i in range(REPEAT_K[0], REPEAT_K[1] + 1)]:
      raise _invalid(prompt, f"repeat count must be {REPEAT_K[0]} to {REPEAT_K[1]}, got {k!r}")
    if len(items) != 1:
      raise _invalid(prompt, "repeat takes exactly one word")
    _check_words(prompt, items)
    return Instruction("repeat", tuple(items), int(k))
  raise _invalid(prompt, f"unknown instruction {head!r}; families are {FAMILIES}")


def gold_answer(prompt: str) -> str:
  """The gold answer to a prompt (e.g. `sort: 5 2 8 1\n` -> `1 2 5 8`); ValueError if invalid."""
  return parse_prompt(prompt).gold


def family_of(prompt: str) -> str:
  return parse_prompt(prompt).family
