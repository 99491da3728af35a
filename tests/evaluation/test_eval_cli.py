"""experiments/evaluate.py end to end on tiny model directories."""
import json
import os
import subprocess
import sys

import experiment_scripts
import pytest
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "evaluate.py")
SMALL_WORLD = ["--world_num_sft=30", "--world_num_rm=30", "--world_num_ppo=30",
               "--world_num_heldout=4", "--world_num_pretrain=20",
               "--world_num_pretrain_heldout=2"]


def _ppo_workdir(path):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for s in (1, 2, 3):
      f.write(json.dumps({"step": s, "split": "train", "score": 0.1 * s, "kl": 0.01 * s}) + "\n")
  return str(path)


def test_instructworld_cli_writes_results(model_dirs, tmp_path):
  d = model_dirs
  out = tmp_path / "eval"
  cmd = [sys.executable, SCRIPT, f"--models=base={d['base']},sft={d['sft']},ppo={d['ppo']}",
         f"--reward_model={d['rm']}", f"--ppo_workdirs=ppo={_ppo_workdir(tmp_path / 'ppo')}",
         "--num_prompts=3", "--max_new_tokens=8", "--batch_size=4", "--few_shot_k=1",
         f"--output_dir={out}", *SMALL_WORLD]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # One device is enough; eight would only slow the start.
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("results.md", "results.json", "comparison.png", "curves.png"):
    assert (out / name).is_file(), name
  with open(out / "results.json") as f:
    results = json.load(f)
  rows = {r["model"]: r for r in results["rows"]}
  assert list(rows) == ["base", "base_fewshot", "sft", "ppo"]
  assert rows["sft"]["win_rate_plain"] == 0.5 and rows["sft"]["kl_to_sft"] == 0.0
  assert all(r["reward_score"] is not None and r["heldout_lm_loss"] is not None
             and r["num_prompts"] == 3 for r in rows.values())
  assert results["settings"]["world"]["num_heldout"] == 4
  assert "| ppo | bare |" in proc.stdout  # The table is printed too.


@pytest.fixture
def evaluate_module():
  """experiments/evaluate.py imported in-process (its flags registered once per session)."""
  yield experiment_scripts.load("evaluate")
  flags.FLAGS.unparse_flags()


def test_truthfulqa_mode(model_dirs, tmp_path, evaluate_module):
  data = tmp_path / "mc.jsonl"
  data.write_text(json.dumps({
      "question": "Is snow cold?",
      "mc1_targets": {"choices": ["yes", "no"], "labels": [1, 0]},
      "mc2_targets": {"choices": ["yes", "it is", "no"], "labels": [1, 1, 0]}}) + "\n")
  out = tmp_path / "tqa"
  flags.FLAGS([SCRIPT, f"--models=sft={model_dirs['sft']},ppo={model_dirs['ppo']}",
               f"--truthfulqa={data}", f"--output_dir={out}"])
  evaluate_module.main([SCRIPT])
  with open(out / "truthfulqa.json") as f:
    results = json.load(f)["results"]
  assert set(results) == {"sft", "ppo"}
  assert all(r["mc1"] in (0.0, 1.0) and 0.0 <= r["mc2"] <= 1.0 for r in results.values())
  assert "| sft |" in (out / "truthfulqa.md").read_text()


def test_bad_model_list_is_a_usage_error(evaluate_module):
  with pytest.raises(app.UsageError, match="name=PATH"):
    evaluate_module.parse_named("base", "models")


def test_a_slice_of_the_held_out_prompts_for_development(evaluate_module):
  """--first_prompt: a larger held-out list keeps the first prompts and draws new ones after
  them (held-out, so in no training split)."""
  from instructjax.world.splits import WorldConfig, heldout_prompts
  small, large = WorldConfig(num_heldout=30), WorldConfig(num_heldout=90)
  dev = evaluate_module.prompt_slice(large, 30, 60)
  assert evaluate_module.prompt_slice(large, 0, 30) == heldout_prompts(small)
  assert dev == heldout_prompts(large)[30:] and len(dev) == 60
  with pytest.raises(app.UsageError, match=r"^--first_prompt=30 --num_prompts=61: the world "
                                           r"has 90 held-out prompts"):
    evaluate_module.prompt_slice(large, 30, 61)
