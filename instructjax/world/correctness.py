"""The gold judgement: content, correctness and exact match of a response (spec, exact).

`response_text` is the generated text without the EOS token; `finished` says whether the
generation ended with EOS within its limit. An unfinished response scores 0 whatever its text.
"""
from __future__ import annotations

from instructjax.world.lexicon import COURTESY_PREFIX


def has_courtesy_prefix(response_text: str) -> bool:
  return response_text.startswith(COURTESY_PREFIX)


def content(response_text: str) -> str:
  """The response with one leading courtesy prefix `sure! ` removed, if present."""
  if has_courtesy_prefix(response_text):
    return response_text[len(COURTESY_PREFIX):]
  return response_text


def levenshtein(a: str, b: str) -> int:
  """Character Levenshtein distance (unit-cost insert, delete, substitute)."""
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def correctness(response_text: str, finished: bool, gold: str) -> float:
  """c = 1 - lev(content, gold) / max(len(content), len(gold), 1), clipped at 0; 0 if unfinished."""
  if not finished:
    return 0.0
  text = content(response_text)
  score = 1.0 - levenshtein(text, gold) / max(len(text), len(gold), 1)
  return max(score, 0.0)


def exact_match(response_text: str, finished: bool, gold: str) -> bool:
  """True iff the response finished with EOS and its content is exactly the gold answer."""
  return bool(finished) and content(response_text) == gold
