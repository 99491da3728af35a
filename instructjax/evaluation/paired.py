"""Paired comparison of two policies answering the same prompts: which differences between,
say, SFT's and PPO-ptx's hallucination rates a prompt sample can tell apart.

Pure numpy: the exact McNemar test on a binary judgement (discordant prompts only) and a
bootstrap interval, over prompts, of the difference of two per-prompt means.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
  """Two-sided exact McNemar p-value: of the prompts where exactly one policy is flagged,
  `only_a` flag policy a and `only_b` policy b; under "no difference" each such prompt is a
  fair coin. 1.0 when no prompt is discordant."""
  if only_a < 0 or only_b < 0:
    raise ValueError(f"counts must be >= 0, got {only_a}, {only_b}")
  n = only_a + only_b
  if n == 0:
    return 1.0
  k = min(only_a, only_b)
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)


def bootstrap_difference(a: Sequence[float], b: Sequence[float], num_resamples: int = 10000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
  """(mean(b) - mean(a), lower, upper): the percentile interval of that difference over
  `num_resamples` resamplings of the prompts (the same prompts for a and b: paired)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f"a and b must be non-empty and of one length, got {a.shape}, {b.shape}")
  rng = np.random.default_rng(seed)
  diff = b - a  # [prompts]
  idx = rng.integers(0, diff.size, size=(num_resamples, diff.size))  # [resamples, prompts]
  means = diff[idx].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(diff.mean()), float(lo), float(hi)


def compare_flags(a: Sequence[bool], b: Sequence[bool], num_resamples: int = 10000,
                  seed: int = 0) -> dict:
  """Rates, discordant counts, McNemar p and the bootstrap interval of rate(b) - rate(a)."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
  diff, lo, hi = bootstrap_difference(a, b, num_resamples, seed=seed)
  return {"rate_a": float(a.mean()), "rate_b": float(b.mean()), "only_a": only_a,
          "only_b": only_b, "both": int((a & b).sum()),
          "mcnemar_p": mcnemar_exact_p(only_a, only_b), "difference": diff, "ci_low": lo,
          "ci_high": hi}


def compare_means(a: Sequence[float], b: Sequence[float], num_resamples: int = 10000,
                  seed: int = 0) -> dict:
  """Means and the bootstrap interval of mean(b) - mean(a) (e.g. correctness in [0, 1])."""
  diff, lo, hi = bootstrap_difference(a, b, num_resamples, seed=seed)
  return {"mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)), "difference": diff,
          "ci_low": lo, "ci_high": hi}
