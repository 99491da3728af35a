"""Random character edits, the noise of demonstrators and of static comparison responses.

One edit is an insert, delete or substitute (drawn uniformly) at a uniform position, with the new
character drawn uniformly from the world alphabet (the spec's, newline included). Free choices,
made so that "n edits" means what it says: a substitution always changes the character, a delete
is not drawn on empty text, and when n > 0 the edits are redrawn in the rare case that they cancel
out (e.g. insert then delete the same character) so the result always differs from the input.
"""
from __future__ import annotations

import numpy as np

from instructjax.world.lexicon import ALPHABET

EDIT_OPS = ("insert", "delete", "substitute")


def _one_edit(text: str, rng: np.random.Generator, alphabet: str) -> str:
  ops = EDIT_OPS if text else ("insert",)
  op = ops[int(rng.integers(0, len(ops)))]
  if op == "insert":
    pos = int(rng.integers(0, len(text) + 1))
    return text[:pos] + alphabet[int(rng.integers(0, len(alphabet)))] + text[pos:]
  pos = int(rng.integers(0, len(text)))
  if op == "delete":
    return text[:pos] + text[pos + 1:]
  others = alphabet.replace(text[pos], "")
  return text[:pos] + others[int(rng.integers(0, len(others)))] + text[pos + 1:]


def random_edits(text: str, n: int, rng: np.random.Generator, alphabet: str = ALPHABET) -> str:
  """Applies n random character edits to text; for n > 0 the result always differs from text."""
  if n < 0:
    raise ValueError(f"number of edits must be >= 0, got {n}")
  if n == 0:
    return text
  for _ in range(1000):
    out = text
    for _ in range(n):
      out = _one_edit(out, rng, alphabet)
    if out != text:
      return out
  raise RuntimeError(f"could not draw {n} edits of {text!r} that change it")  # Unreachable in practice.
