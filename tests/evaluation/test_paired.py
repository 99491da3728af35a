"""Paired comparison statistics (instructjax/evaluation/paired.py) against scipy and by hand,
and experiments/paired.py end to end on tiny model directories."""
import json

import numpy as np
import pytest
from scipy import stats

from instructjax.evaluation.paired import (bootstrap_difference, compare_flags, compare_means,
                                           mcnemar_exact_p)
from tests.evaluation.workdir_scripts import pipeline_workdir, run_script


@pytest.mark.parametrize("only_a,only_b", [(0, 1), (0, 5), (1, 2), (3, 3), (12, 44), (26, 11),
                                           (0, 30), (7, 0)])
def test_mcnemar_is_the_exact_two_sided_binomial_test(only_a, only_b):
  want = stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
  np.testing.assert_allclose(mcnemar_exact_p(only_a, only_b), want, rtol=1e-12)
  assert mcnemar_exact_p(only_a, only_b) == mcnemar_exact_p(only_b, only_a)


def test_mcnemar_without_discordant_prompts_is_1_and_rejects_negative_counts():
  assert mcnemar_exact_p(0, 0) == 1.0
  assert mcnemar_exact_p(0, 5) == 2 / 32
  with pytest.raises(ValueError, match=">= 0"):
    mcnemar_exact_p(-1, 3)


def test_bootstrap_of_a_constant_shift_is_that_shift():
  a = np.random.default_rng(0).random(50)
  diff, lo, hi = bootstrap_difference(a, a + 0.25, num_resamples=200)
  np.testing.assert_allclose([diff, lo, hi], 0.25, atol=1e-12)


def test_bootstrap_interval_matches_the_normal_approximation_on_many_prompts():
  rng = np.random.default_rng(1)
  a = rng.random(4000) < 0.02
  b = rng.random(4000) < 0.03
  diff, lo, hi = bootstrap_difference(a, b, num_resamples=4000, seed=3)
  d = b.astype(float) - a.astype(float)
  half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
  assert diff == pytest.approx(d.mean())
  assert lo < diff < hi
  assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
  assert (lo + hi) / 2 == pytest.approx(diff, abs=0.2 * half)


def test_bootstrap_is_paired():
  """The same per-prompt differences whatever the per-prompt level: a paired interval is
  narrow where the two policies agree on most prompts, however spread the prompts are."""
  rng = np.random.default_rng(2)
  a = rng.random(500)
  b = a.copy()
  b[:10] += 0.5
  _, lo, hi = bootstrap_difference(a, b, num_resamples=2000)
  assert 0 < lo < 0.01 < hi < 0.02


def test_bootstrap_rejects_unpaired_inputs():
  with pytest.raises(ValueError, match="one length"):
    bootstrap_difference([0.1, 0.2], [0.1])
  with pytest.raises(ValueError, match="non-empty"):
    bootstrap_difference([], [])


def test_compare_flags_counts_by_hand():
  a = [True, True, False, False, False, True]
  b = [True, False, True, True, False, False]
  r = compare_flags(a, b, num_resamples=100)
  assert (r["only_a"], r["only_b"], r["both"]) == (2, 2, 1)
  assert r["rate_a"] == 0.5 and r["rate_b"] == 0.5 and r["difference"] == 0.0
  assert r["mcnemar_p"] == 1.0
  m = compare_means([1.0, 0.5], [0.5, 0.5], num_resamples=100)
  assert (m["mean_a"], m["mean_b"], m["difference"]) == (0.75, 0.5, -0.25)


def test_cli_compares_two_stages_on_fresh_prompts(model_dirs, tmp_path):
  w = pipeline_workdir(tmp_path / "seed_0", model_dirs)
  out = tmp_path / "paired.json"
  proc = run_script("paired.py", [f"--workdirs={w}", "--first_prompt=4", "--num_draws=12",
                                  f"--output={out}"], max_new_tokens=8)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    result = json.load(f)
  (row,) = result["rows"]
  assert row["workdir"] == w and 1 <= row["prompts"] <= 12
  h = row["hallucination"]
  assert h["only_a"] + h["only_b"] + h["both"] <= row["prompts"]
  assert h["ci_low"] <= h["difference"] <= h["ci_high"]
  assert f"| {w} | {row['prompts']} |" in proc.stdout


def test_cli_names_a_missing_stage_in_one_line(model_dirs, tmp_path):
  w = pipeline_workdir(tmp_path / "seed_0", model_dirs)
  proc = run_script("paired.py", [f"--workdirs={w}", "--b=ppo", "--num_draws=4"],
                    max_new_tokens=8)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --workdirs: ")
  assert "ppo/model does not exist" in proc.stderr
  assert "Traceback" not in proc.stderr
