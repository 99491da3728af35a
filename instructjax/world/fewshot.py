"""Few-shot prompting of the base model (the paper's "GPT (prompted)" baseline), exact:
k exemplars, each `prompt + gold + "\n\n"`, then the query prompt; the base model's response ends
at its first newline or EOS. Exemplars should come from training prompts (see `draw_exemplars`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from instructjax.world.partition import sample_prompts
from instructjax.world.prompts import gold_answer


def few_shot_prompt(query_prompt: str, exemplar_prompts: Sequence[str]) -> str:
  """Exemplars `prompt + gold + "\n\n"` in order, then the query prompt."""
  shots = "".join(p + gold_answer(p) + "\n\n" for p in exemplar_prompts)
  return shots + query_prompt


def draw_exemplars(rng: np.random.Generator, k: int, query_prompt: str) -> list[str]:
  """k training-partition prompts, none equal to the query (so no exemplar gives its answer)."""
  out = []
  while len(out) < k:
    p = sample_prompts(rng, 1, "train")[0]
    if p != query_prompt:
      out.append(p)
  return out


def cut_response(text: str, finished: bool) -> tuple[str, bool]:
  """Cuts a base model's text at its first newline; reaching a newline counts as finished.

  `text` is the generation without EOS and `finished` whether it ended with EOS; returns the
  response and whether it ended (at a newline or EOS) within the generation limit.
  """
  pos = text.find("\n")
  if pos >= 0:
    return text[:pos], True
  return text, finished


def cut_token_ids(ids: Sequence[int], newline_id: int, eos_id: int) -> tuple[list[int], bool]:
  """Token-level cut: ids before the first newline or EOS, and whether either occurred."""
  out = []
  for t in ids:
    t = int(t)
    if t == newline_id or t == eos_id:
      return out, True
    out.append(t)
  return out, False
