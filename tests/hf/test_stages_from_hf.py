"""The stages that README "Your own model and data" does not run from HF directories: a reward
model from an HF causal LM on TL;DR comparisons, and PPO against an HF sequence-classification
reward model (its value model from it), on chat prompts with BOS."""
import importlib.util
import json
import os

import numpy as np
import pytest
import transformers
from hf_testlib import build_hf_model

import instructjax
from instructjax.model_io import load_model
from instructjax.stages.ppo import run as ppo_run
from instructjax.stages.rm import run as rm_run

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ["cat", "dog", "mat", "park", "hello", "world", "story", "fox"]


def hf_config(stage, steps=1):
  spec = importlib.util.spec_from_file_location(stage, os.path.join(ROOT, "configs", stage))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"hf,steps={steps}")
  c.train.update(batch_size=8, log_every=1, eval_every=steps, eval_batches=1, save_every=steps)
  c.optim.warmup_steps = 0
  if "value_optim" in c:
    c.value_optim.warmup_steps = 0
  return c


def write(path, rows):
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_reward_model_from_an_hf_causal_lm_on_tldr_comparisons(hf_dirs, tmp_path):
  rows = [{"info": {"id": f"t{i % 3}", "post": f"the {w} sat on the mat", "title": w,
                    "subreddit": "cats"},
           "summaries": [{"text": f" a {w}"}, {"text": " the dog ran"}], "choice": i % 2}
          for i, w in enumerate(WORDS * 2)]
  c = hf_config("rm.py", steps=2)
  c.init_from = hf_dirs["llama"]
  c.data.update(adapter="tldr", train_path=write(tmp_path / "train.jsonl", rows),
                eval_path=write(tmp_path / "eval.jsonl", rows[:8]))
  c.rm.update(norm_samples=8, max_new_tokens=4, sample_batch_size=8)
  out = rm_run.run(c, str(tmp_path / "rm"))
  assert out["complete"] and out["heldout"]["num_prompts"] == 8 and "labeler_ceiling" not in out
  _, cfg, tok, head, meta = load_model(str(tmp_path / "rm" / "model"))
  assert head == "scalar" and cfg.max_seq_len == 128 and cfg.dtype == "float32"
  assert meta["init_from"] == os.path.abspath(hf_dirs["llama"])


def test_ppo_against_an_hf_sequence_classification_reward_model(hf_dirs, tmp_path):
  reward = str(tmp_path / "reward_model")
  build_hf_model("llama", reward, head="scalar", seed=4)
  prompts = [{"messages": [{"role": "user", "content": f"tell me a story about a {w}"}]}
             for w in WORDS]
  c = hf_config("ppo.py")
  c.init_from, c.reward_model = hf_dirs["llama"], reward
  c.data.update(add_bos=True, train_path=write(tmp_path / "prompts.jsonl", prompts),
                eval_path=write(tmp_path / "eval.jsonl", prompts),
                ptx_path=write(tmp_path / "text.jsonl", [{"text": f"the {w} ran"} for w in WORDS]))
  c.ppo.update(rollout_batch_size=8, minibatch_size=8, epochs=1, max_new_tokens=8,
               ptx_batch_size=8, eval_prompts=8)
  out = ppo_run.run(c, str(tmp_path / "ppo"))
  assert out["complete"] and out["final_eval"]["num_prompts"] == 8
  assert "courtesy_prefix_fraction" not in out["final_eval"]  # An InstructWorld measure.
  assert out["reward_model"] == os.path.abspath(reward)
  rm = instructjax.load(reward)
  assert rm.head == "scalar" and float(rm.params["score_bias"][0]) == 0.0
  # The value model started from it and exports with its bias for transformers.
  value = instructjax.load(str(tmp_path / "ppo" / "value_model"))
  exported = value.to_hf(str(tmp_path / "value_hf"))
  hf_value = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
  assert hf_value.config.num_labels == 1
  moved = np.abs(np.asarray(value.params["score_kernel"]) - np.asarray(rm.params["score_kernel"]))
  assert 0 < moved.max() < 0.1  # Trained, from the reward model's head.
