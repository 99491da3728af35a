"""The seeds report: per-seed numbers read from pipeline workdirs, mean and Student-t interval
against a direct computation, the targets seed by seed, and the runner's reuse rules."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from instructjax.recipe import seeds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fake_workdir(root, seed, *, rm_acc, ptx_correct, ptx_halluc, ptx_loss=0.70):
  """A pipeline workdir with the files the report reads, as the pipeline writes them."""
  d = os.path.join(root, f"seed_{seed}")
  rows = [
      {"model": "base", "condition": "none", "correctness": 0.0},
      {"model": "sft", "condition": "none", "correctness": 0.90, "win_rate_plain": 0.5,
       "hallucination_rate": 0.10, "heldout_lm_loss": 0.68},
      {"model": "ppo", "condition": "none", "correctness": 0.92, "win_rate_plain": 0.7,
       "hallucination_rate": 0.12, "heldout_lm_loss": 0.74},
      {"model": "ppo_ptx", "condition": "none", "correctness": ptx_correct,
       "win_rate_plain": 0.65, "hallucination_rate": ptx_halluc, "heldout_lm_loss": ptx_loss},
  ]
  group = {"plain": {"average_aligned": 0.7, "group_conditioned": 0.6},
           "polite": {"average_aligned": 0.2, "group_conditioned": 0.4}}
  os.makedirs(os.path.join(d, "eval"))
  with open(os.path.join(d, "eval", "results.json"), "w") as f:
    json.dump({"rows": rows, "group_alignment": group}, f)
  for stage, acc in (("rm", rm_acc), ("rm_group", rm_acc + 0.05)):
    os.makedirs(os.path.join(d, stage))
    with open(os.path.join(d, stage, "rm_results.json"), "w") as f:
      json.dump({"heldout": {"accuracy": acc}, "labeler_ceiling": {
          "mixed_utility_pair_accuracy": 0.74, "group_utility_pair_accuracy": 0.82}}, f)
  os.makedirs(os.path.join(d, "ppo"))
  with open(os.path.join(d, "ppo", "metrics.jsonl"), "w") as f:
    for step, score in ((0, 0.0), (20, 0.3 + seed / 10), (40, 0.5)):
      f.write(json.dumps({"step": step, "split": "eval", "score": score,
                          "correctness": 0.9}) + "\n")
  return d


def test_mean_ci_is_the_student_t_interval():
  x = [0.61, 0.70, 0.66]
  mean, half = seeds.mean_ci(x)
  # t(0.975, 2 degrees of freedom) = 4.302653 (tables).
  assert mean == pytest.approx(np.mean(x))
  assert half == pytest.approx(4.302653 * np.std(x, ddof=1) / math.sqrt(3), rel=1e-6)
  assert seeds.mean_ci([0.5])[0] == 0.5 and math.isnan(seeds.mean_ci([0.5])[1])


def test_seed_metrics_read_rows_rm_and_group_tables(tmp_path):
  d = fake_workdir(tmp_path, 0, rm_acc=0.69, ptx_correct=0.895, ptx_halluc=0.09)
  m = seeds.seed_metrics(d)
  assert m["ppo_ptx/correctness"] == 0.895 and "base/correctness" not in m
  assert m["rm/heldout_accuracy"] == 0.69 and m["rm/labeler_ceiling"] == 0.74
  # The group-conditioned RM is measured against its own (group-utility) ceiling.
  assert m["rm_group/labeler_ceiling"] == 0.82
  assert m["group/polite/group_conditioned"] == 0.4


def test_targets_seed_by_seed(tmp_path):
  good = seeds.seed_metrics(fake_workdir(tmp_path, 0, rm_acc=0.69, ptx_correct=0.895,
                                         ptx_halluc=0.09))
  assert all(seeds.targets(good).values())
  bad = seeds.seed_metrics(fake_workdir(tmp_path, 1, rm_acc=0.60, ptx_correct=0.88,
                                        ptx_halluc=0.11, ptx_loss=0.72))
  t = seeds.targets(bad)
  assert not t["rm accuracy >= 0.68"]
  assert not t["ppo_ptx correctness >= sft - 0.01"]  # 0.88 < 0.90 - 0.01
  assert not t["ppo_ptx hallucination <= sft"]
  # PPO's regression is 0.06, PPO-ptx's 0.04: more than half.
  assert not t["ppo_ptx LM-loss regression <= ppo's / 2"]
  assert not t["rm_group accuracy >= 0.68"]  # 0.60 + 0.05
  # A number that is missing is not a pass.
  assert seeds.targets({})["rm accuracy >= 0.68"] is None


def test_report_over_seeds(tmp_path):
  dirs = {s: fake_workdir(tmp_path, s, rm_acc=0.66 + s / 100, ptx_correct=0.9,
                          ptx_halluc=0.1) for s in range(3)}
  paths = seeds.write_report(dirs, str(tmp_path / "out"), missing=[7])
  with open(paths["json"]) as f:
    out = json.load(f)
  acc = out["summary"]["rm/heldout_accuracy"]
  assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.67)
  assert acc["values"] == {"0": 0.66, "1": 0.67, "2": 0.68}
  assert out["missing_seeds"] == [7]
  steps, mean, _ = out["curves"]["ppo"]["eval/score"]
  assert steps == [0, 20, 40] and mean[1] == pytest.approx(0.4)
  md = open(paths["markdown"]).read()
  assert "| rm accuracy >= 0.68 | **no** | **no** | yes |" in md
  assert "Seeds without results (failed or unfinished): [7]" in md
  assert os.path.getsize(paths["plot"]) > 0 and os.path.getsize(paths["curves"]) > 0


def load_script():
  spec = importlib.util.spec_from_file_location("seeds_script",
                                                os.path.join(ROOT, "experiments", "seeds.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_runner_command_and_settings_check(tmp_path):
  module = load_script()
  settings = module.settings_of(2, "configs/pipeline.py:tiny",
                                overrides=["--config.ppo.train.num_steps=5"])
  cmd = module.seed_command(settings, "/w/seed_2")
  assert "--config.seed=2" in cmd and "--config.rm_group.seed=2" in cmd
  assert "--config.world.seed=2" not in cmd  # One world for every seed by default.
  assert cmd[-1] == "--config.ppo.train.num_steps=5"
  assert "--config.world.seed=2" in module.seed_command(dict(settings, world_seed="seed"), "/w")
  d = str(tmp_path / "seed_2")
  os.makedirs(d)
  with open(os.path.join(d, module.SETTINGS_FILE), "w") as f:
    json.dump(dict(settings, overrides=[]), f)
  with pytest.raises(module.app.UsageError, match="other settings"):
    module.check_workdir(d, settings)
  module.check_workdir(d, dict(settings, overrides=[]))
  assert not module.is_finished(d)
  # Every stage the recipe has gets the seed.
  from instructjax.recipe.run import STAGES
  assert module.STAGES == tuple(s.name for s in STAGES)
