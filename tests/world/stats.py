"""Statistical checks for the world's rates and distributions (fixed seeds, so deterministic).

Thresholds are p-values of 1e-4: loose enough that a correct sampler passes for essentially any
seed, tight enough (with the sample sizes used) that a wrong rate or distribution fails.
"""
from typing import Sequence

import numpy as np
from scipy import stats

P_MIN = 1e-4


def assert_rate(successes: int, n: int, p: float, what: str = "rate") -> None:
  pval = stats.binomtest(int(successes), int(n), p).pvalue
  assert pval > P_MIN, f"{what}: {successes}/{n} = {successes / n:.4f}, expected {p} (p={pval:.2g})"


def assert_distribution(counts: Sequence[int], probs: Sequence[float], what: str = "counts") -> None:
  counts = np.asarray(counts, dtype=np.float64)
  probs = np.asarray(probs, dtype=np.float64)
  assert abs(probs.sum() - 1) < 1e-9, f"{what}: probabilities sum to {probs.sum()}"
  expected = probs * counts.sum()
  chi2, pval = stats.chisquare(counts, expected)
  assert pval > P_MIN, (
      f"{what}: chi2={chi2:.1f}, p={pval:.2g}\nobserved {counts.tolist()}\n"
      f"expected {np.round(expected, 1).tolist()}")
