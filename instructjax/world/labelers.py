"""Simulated labelers: two groups with shared correctness but different taste in style (exact).

plain (share 0.7) likes responses without the courtesy prefix, polite (0.3) likes `sure! `.
utility_g = c + 0.2 * [style liked by g]. A labeler ranks K responses by a Plackett-Luce draw with
weights exp(utility_g / 0.1): best first with probability proportional to weight, then the next
among the rest. Weights are computed relative to the largest utility (a constant factor that
cancels in every draw) so that they never overflow.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from instructjax.world.correctness import correctness, has_courtesy_prefix
from instructjax.world.prompts import GROUPS

GROUP_SHARES: dict[str, float] = {"plain": 0.7, "polite": 0.3}
STYLE_BONUS = 0.2
TEMPERATURE = 0.1


def likes_style(group: str, response_text: str) -> bool:
  """Whether the response's style (prefix or not) is the one `group` likes."""
  if group == "plain":
    return not has_courtesy_prefix(response_text)
  if group == "polite":
    return has_courtesy_prefix(response_text)
  raise ValueError(f"unknown labeler group {group!r}; expected one of {GROUPS}")


def utility(group: str, response_text: str, finished: bool, gold: str) -> float:
  """utility_g = correctness + 0.2 * [style liked by g]."""
  return correctness(response_text, finished, gold) + STYLE_BONUS * likes_style(group, response_text)


def sample_group(rng: np.random.Generator) -> str:
  """Draws a labeler's group by the shares (plain 0.7, polite 0.3)."""
  return "plain" if rng.random() < GROUP_SHARES["plain"] else "polite"


def _weights(utilities: Sequence[float]) -> np.ndarray:
  u = np.asarray(utilities, dtype=np.float64)
  return np.exp((u - u.max()) / TEMPERATURE)


def sample_ranking(utilities: Sequence[float], rng: np.random.Generator) -> list[int]:
  """Plackett-Luce ranking (best to worst, response indices) with weights exp(u / 0.1)."""
  w = _weights(utilities)
  remaining = list(range(len(w)))
  ranking = []
  while remaining:
    rw = w[remaining]
    cdf = np.cumsum(rw)
    pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    ranking.append(remaining.pop(min(pick, len(remaining) - 1)))
  return ranking


def ranking_log_probability(utilities: Sequence[float], ranking: Sequence[int]) -> float:
  """Exact log-probability of `ranking` (best to worst) under the Plackett-Luce labeler."""
  if sorted(ranking) != list(range(len(utilities))):
    raise ValueError(f"ranking {list(ranking)} is not a permutation of 0..{len(utilities) - 1}")
  logw = np.asarray(utilities, dtype=np.float64) / TEMPERATURE
  total = 0.0
  for i in range(len(ranking)):
    rest = logw[list(ranking[i:])]
    m = rest.max()
    total += logw[ranking[i]] - (m + math.log(np.exp(rest - m).sum()))
  return total


def ranking_probability(utilities: Sequence[float], ranking: Sequence[int]) -> float:
  return math.exp(ranking_log_probability(utilities, ranking))


def rank_responses(
    group: str, responses: Sequence[tuple[str, bool]], gold: str,
    rng: np.random.Generator) -> list[int]:
  """A labeler of `group` ranks (text, finished) responses to one prompt, best first."""
  return sample_ranking([utility(group, t, f, gold) for t, f in responses], rng)
