"""instructjax/evaluation/prefix.py (prompt selection, the prefix exclusion) and
experiments/prefix_effect.py end to end on tiny model directories (free / forced / forbidden
prefix)."""
import json
import os

from instructjax.evaluation.prefix import answerable_without_prefix, select_prompts
from instructjax.tokenizer import CharTokenizer
from tests.evaluation.workdir_scripts import pipeline_workdir, run_script


def test_select_prompts_by_family_and_repeated_arguments():
  prompts = ["sort: 3 1 3\n", "sort: 3 1 2\n", "reverse: cat cat\n", "repeat 3: sun\n",
             "upper: sun map\n"]
  assert select_prompts(prompts, ["sort"], "repeated") == ["sort: 3 1 3\n"]
  assert select_prompts(prompts, ["sort"], "distinct") == ["sort: 3 1 2\n"]
  assert select_prompts(prompts, ["reverse", "repeat"], "repeated") == [
      "reverse: cat cat\n"]
  assert select_prompts(prompts, ["repeat"], "distinct") == ["repeat 3: sun\n"]
  assert select_prompts(prompts, ["sort", "upper"], "any") == [
      "sort: 3 1 3\n", "sort: 3 1 2\n", "upper: sun map\n"]


def test_gold_answers_starting_like_the_prefix_are_left_out():
  prompts = ["reverse: cat sun\n", "reverse: sun cat\n", "upper: sun\n", "sort: 2 1 3\n"]
  # `sun cat` begins with `s`, the prefix's first character; `SUN` does not.
  assert answerable_without_prefix(prompts, CharTokenizer()) == [
      "reverse: sun cat\n", "upper: sun\n", "sort: 2 1 3\n"]


def test_cli_forces_and_forbids_the_prefix(model_dirs, tmp_path):
  w = pipeline_workdir(tmp_path / "seed_0", model_dirs)
  out = tmp_path / "prefix.json"
  proc = run_script("prefix_effect.py", [
      f"--workdirs={w}", "--families=sort,reverse,upper,repeat", "--arguments=any",
      "--first_prompt=4", "--num_draws=16", f"--output={out}"], max_new_tokens=10)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    rows = json.load(f)["rows"]
  assert [r["model"] for r in rows] == [os.path.join(w, s, "model") for s in ("sft", "ppo_ptx")]
  for r in rows:
    assert r["prompts"] >= 1
    assert r["forced"]["courtesy"] == 1.0  # Every forced answer carries the prefix...
    assert r["forbidden"]["courtesy"] == 0.0  # ...and no forbidden one can.
    for condition in ("free", "forced", "forbidden"):
      assert 0.0 <= r[condition]["correctness"] <= 1.0
    assert f"| {r['model']} | {r['prompts']} |" in proc.stdout


def test_cli_names_an_unknown_family_in_one_line(model_dirs, tmp_path):
  w = pipeline_workdir(tmp_path / "seed_0", model_dirs)
  proc = run_script("prefix_effect.py", [f"--workdirs={w}", "--families=sort,count"],
                    max_new_tokens=10)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --families: unknown ['count']")
  assert "Traceback" not in proc.stderr
