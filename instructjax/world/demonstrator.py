"""Demonstrators, the SFT data (exact): gold w.p. 0.8, else gold with 1 or 2 random edits;
the `sure! ` prefix w.p. 0.5, whatever the group. The number of edits (1 or 2) is drawn uniformly
(free choice).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from instructjax.world.edits import random_edits
from instructjax.world.lexicon import COURTESY_PREFIX
from instructjax.world.prompts import gold_answer

P_GOLD = 0.8
P_PREFIX = 0.5


@dataclasses.dataclass(frozen=True)
class Demonstration:
  prompt: str
  response: str  # Without EOS; tokenization appends it.

  def to_json(self) -> dict:
    return {"prompt": self.prompt, "response": self.response}

  @classmethod
  def from_json(cls, d: dict) -> "Demonstration":
    return cls(d["prompt"], d["response"])


def demonstrate(prompt: str, rng: np.random.Generator) -> str:
  """One demonstrator's response to `prompt` (without EOS)."""
  gold = gold_answer(prompt)
  if rng.random() < P_GOLD:
    body = gold
  else:
    body = random_edits(gold, int(rng.integers(1, 3)), rng)
  prefix = COURTESY_PREFIX if rng.random() < P_PREFIX else ""
  return prefix + body


def demonstrations(prompts: Sequence[str], rng: np.random.Generator) -> list[Demonstration]:
  return [Demonstration(p, demonstrate(p, rng)) for p in prompts]
