"""Sweep files: product/zip/concatenation, override checks, run names, summaries, dry runs."""
import json
import os
import subprocess
import sys

import pytest

from instructjax.recipe import sweeps
from instructjax.config import ConfigError
from instructjax.recipe.sweeps import axis, chain, product, with_fixed, zip_

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT = os.path.join(ROOT, "configs", "sft.py") + ":tiny"


def test_product_zip_chain():
  assert product(axis("a", [1, 2]), b=["x", "y"]) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  assert zip_(axis("a", [1, 2]), optim__lr=[0.1, 0.2]) == [{"a": 1, "optim.lr": 0.1},
                                                            {"a": 2, "optim.lr": 0.2}]
  assert chain(axis("a", [1]), axis("b", [2, 3])) == [{"a": 1}, {"b": 2}, {"b": 3}]
  assert product(zip_(a=[1, 2], b=[3, 4]), c=[5]) == [{"a": 1, "b": 3, "c": 5},
                                                       {"a": 2, "b": 4, "c": 5}]
  assert with_fixed(axis("a", [1, 2]), ppo__kl__adaptive=False) == [
      {"a": 1, "ppo.kl.adaptive": False}, {"a": 2, "ppo.kl.adaptive": False}]


@pytest.mark.parametrize("build,match", [
    (lambda: zip_(a=[1, 2], b=[1]), "equal length"),
    (lambda: product(axis("a", [1]), axis("a", [2])), "set twice"),
    (lambda: axis("a", []), "no values"),
])
def test_malformed_sweeps(build, match):
  with pytest.raises(ConfigError, match=match):
    build()


def test_sweep_files_are_validated(tmp_path):
  good = tmp_path / "good.py"
  good.write_text("from instructjax.recipe.sweeps import product\n"
                  "def get_sweep():\n  return product(optim__lr=[1e-3, 3e-3])\n")
  assert sweeps.load_sweep(str(good)) == [{"optim.lr": 1e-3}, {"optim.lr": 3e-3}]
  bad = tmp_path / "bad.py"
  bad.write_text("def get_sweep():\n  return [{'optim.lr': [1, 2]}]\n")
  with pytest.raises(ConfigError, match="not a bool, int, float or str"):
    sweeps.load_sweep(str(bad))
  assert len(sweeps.load_sweep(os.path.join(ROOT, "configs", "sweeps", "kl_coef.py"))) == 2


def test_overrides_are_checked_against_the_config():
  base = sweeps.load_config(SFT)
  c = sweeps.apply_overrides(base, {"optim.lr": 0.5, "model.n_layers": 3})
  assert (c.optim.lr, c.model.n_layers, base.optim.lr) == (0.5, 3, 1e-3)
  with pytest.raises(ConfigError, match="'optim.lrr': no such config key"):
    sweeps.apply_overrides(base, {"optim.lrr": 0.5})
  with pytest.raises(ConfigError, match="model.n_layers"):
    sweeps.apply_overrides(base, {"model.n_layers": "three"})


def test_run_directories_are_named_by_what_varies():
  sweep = with_fixed(axis("ppo.kl.init_beta", [0.01, 0.2]), ppo__kl__adaptive=False)
  assert [os.path.basename(d) for d in sweeps.run_dirs("w", sweep)] == ["0-init_beta=0.01",
                                                                         "1-init_beta=0.2"]
  assert sweeps.run_dirs("w", [{"data.source": "a/b c"}]) == ["w/0-source=a_b_c"]


def fake_runner(config_spec, base_config, run_workdir, overrides):
  """Writes what a stage would: metrics.jsonl and a model dir; fails for lr 0.5."""
  del config_spec, base_config
  os.makedirs(os.path.join(run_workdir, "model"))
  with open(os.path.join(run_workdir, "metrics.jsonl"), "w") as f:
    for step in (1, 2):
      f.write(json.dumps({"step": step, "split": "train", "loss": overrides["optim.lr"] * step,
                          "lr": 1.0}) + "\n")
    f.write(json.dumps({"step": 2, "split": "eval", "loss": 0.25}) + "\n")
  if overrides["optim.lr"] == 0.5:
    return 3
  open(os.path.join(run_workdir, "model", "model_config.json"), "w").close()
  return 0


def test_run_sweep_summarises_final_metrics(tmp_path):
  sweep = product(optim__lr=[0.1, 0.5])
  rows = sweeps.run_sweep(sweep, SFT, str(tmp_path), {"train.num_steps": 2}, fake_runner)
  assert [(r["name"], r["status"], r["step"]) for r in rows] == [
      ("0-lr=0.1", "ok", 2), ("1-lr=0.5", "failed (rc 3)", 2)]
  assert rows[0]["metrics"] == {"train/loss": 0.2, "train/lr": 1.0, "eval/loss": 0.25}
  md, js = sweeps.write_summary(str(tmp_path), rows)
  table = open(md).read().splitlines()
  assert table[0] == "| # | run | optim.lr | status | step | eval/loss | train/loss |"
  assert table[2] == "| 0 | 0-lr=0.1 | 0.1 | ok | 2 | 0.25 | 0.2 |"
  assert json.load(open(js))[1]["status"] == "failed (rc 3)"
  # A second pass skips the finished run and retries the failed one.
  again = sweeps.run_sweep(sweep, SFT, str(tmp_path), {}, lambda *a: 0)
  assert [r["status"] for r in again] == ["done before", "ok"]


def test_cli_dry_run_prints_exact_commands(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "sweep.py"),
       "--sweep=configs/sweeps/kl_coef.py", "--config=configs/ppo.py:tiny",
       f"--workdir={tmp_path}", "--set=init_from=runs/sft/model",
       "--set=reward_model=runs/rm/model", "--dry_run"],
      cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
  train = os.path.join(ROOT, "experiments", "train.py")
  assert out == [
      f"{sys.executable} {train} --config=configs/ppo.py:tiny --workdir={tmp_path}/0-init_beta=0.01"
      " --config.init_from=runs/sft/model --config.reward_model=runs/rm/model"
      " --config.ppo.kl.init_beta=0.01 --config.ppo.kl.adaptive=False",
      f"{sys.executable} {train} --config=configs/ppo.py:tiny --workdir={tmp_path}/1-init_beta=0.2"
      " --config.init_from=runs/sft/model --config.reward_model=runs/rm/model"
      " --config.ppo.kl.init_beta=0.2 --config.ppo.kl.adaptive=False"]
  assert not os.listdir(tmp_path)  # A dry run writes nothing.
