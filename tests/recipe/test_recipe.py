"""The main job end to end on a miniature InstructWorld: every stage, the evaluation, the
plots, reuse of finished stages, and the notebook executed against the run."""
import importlib.util
import json
import os
import time

import pytest

from instructjax.recipe.run import STAGES, is_done, run_pipeline
from instructjax.recipe.evaluate import evaluate_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mini_config():
  spec = importlib.util.spec_from_file_location("pipeline_cfg",
                                                os.path.join(ROOT, "configs", "pipeline.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("tiny")
  c.world.update(num_sft=64, num_rm=16, num_ppo=32, num_heldout=8, num_pretrain=64,
                 num_pretrain_heldout=8)
  for name in [s.name for s in STAGES]:
    s = c[name]
    s.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)
    s.train.update(num_steps=2, log_every=1, eval_every=2, eval_batches=1, save_every=2,
                   batch_size=8)
    s.optim.warmup_steps = 1
  c.pretrain.data.seq_len = 64
  for name in ("rm", "rm_group"):
    c[name].rm.update(norm_samples=8, sample_batch_size=16)
  for name in ("ppo", "ppo_ptx", "ppo_group"):
    c[name].ppo.update(rollout_batch_size=8, minibatch_size=8, epochs=1, ptx_batch_size=8,
                       max_new_tokens=12, eval_prompts=8)
    c[name].value_optim.warmup_steps = 1
  c.eval.update(num_prompts=8, max_new_tokens=12, batch_size=8)
  # JAX picks a persistent cache once per process, and the tests' process already has the
  # session's from conftest; test_the_compile_cache_goes_in_the_workdir checks the pipeline asks
  # for its own.
  c.compile_cache = False
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The recipe stopped early in SFT (as after a preemption), then run again to the end."""
  workdir = str(tmp_path_factory.mktemp("pipeline"))
  stopped = mini_config()
  stopped.sft.train.stop_after = 1
  first = run_pipeline(stopped, workdir, evaluate=evaluate_pipeline)
  state_after_stop = {s.name: is_done(workdir, s.name) for s in STAGES}
  state_after_stop["rm_started"] = os.path.exists(os.path.join(workdir, "rm"))
  timings = run_pipeline(mini_config(), workdir, evaluate=evaluate_pipeline)
  return workdir, timings, first, state_after_stop


def test_a_stage_that_stopped_early_stops_the_recipe_and_is_resumed(run):
  workdir, timings, first, done_after_stop = run
  assert first["stopped"] == {"stage": "sft", "complete": False, "steps": 1,
                              "stop_reason": "num_steps"}
  assert done_after_stop == {**{s.name: s.name == "pretrain" for s in STAGES},
                             "rm_started": False}  # Nothing trained on a half model.
  with open(os.path.join(workdir, "sft", "lm_results.json")) as f:
    sft = json.load(f)
  assert sft["steps"] == 2 and sft["train"]["resumed_from"] == 1  # Resumed, not restarted.
  assert "sft" in timings and "evaluate" in timings


def test_every_stage_and_the_evaluation_are_written(run):
  workdir, *_ = run
  assert all(is_done(workdir, s.name) for s in STAGES)
  out = os.path.join(workdir, "eval")
  for name in ("results.md", "results.json", "comparison.png", "curves.png",
               "group_alignment.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  assert [r["model"] for r in results["rows"]] == ["base", "base_fewshot", "sft", "ppo", "ppo_ptx"]
  assert set(results["group_alignment"]) == {"plain", "polite"}
  with open(os.path.join(out, "results.md")) as f:
    assert "Group-aware alignment" in f.read()


def test_rerun_reuses_finished_stages(run):
  workdir, *_ = run
  marker = lambda s: os.path.getmtime(os.path.join(workdir, s.name, "model", "model_config.json"))
  before = {s.name: marker(s) for s in STAGES}
  t0 = time.time()
  run_pipeline(mini_config(), workdir, evaluate=None)
  assert {s.name: marker(s) for s in STAGES} == before  # No model was written again...
  assert time.time() - t0 < 30  # ...and nothing retrained.


def test_notebook_runs_against_the_pipeline(run):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  workdir, *_ = run
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "instructworld.ipynb"), as_version=4)
  os.environ["INSTRUCTJAX_RUN"] = workdir
  try:
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
  finally:
    del os.environ["INSTRUCTJAX_RUN"]
  assert os.path.exists(os.path.join(workdir, "eval", "notebook_curves.png"))


def test_the_compile_cache_goes_in_the_workdir(tmp_path, monkeypatch):
  from instructjax.recipe import run as run_lib
  asked = []
  monkeypatch.setattr(run_lib.compile_cache, "enable", asked.append)
  c = mini_config()
  c.skip_stages = tuple(s.name for s in STAGES)
  run_pipeline(c, str(tmp_path / "off"), evaluate=None)
  assert asked == []
  c.compile_cache = True
  run_pipeline(c, str(tmp_path / "on"), evaluate=None)
  assert asked == [os.path.join(str(tmp_path / "on"), run_lib.COMPILE_CACHE_DIR)]
