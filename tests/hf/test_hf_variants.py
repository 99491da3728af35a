"""configs/<stage>.py:hf on Hugging Face checkpoints: the model (architecture, dtype, positions)
is the checkpoint's, lengths left at 0 come from it, and the length checks name the key. Only
the stages' checks run here: nothing is loaded or compiled."""
import importlib.util
import os
import shutil

import pytest
import torch
import transformers
from hf_testlib import build_hf_model

from instructjax.config import ConfigError
from instructjax.stages.lm import run as lm_run
from instructjax.stages.ppo import checks as ppo_checks
from instructjax.stages.rm import checks as rm_checks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hf_config(stage, **data):
  spec = importlib.util.spec_from_file_location(stage, os.path.join(ROOT, "configs", stage))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("hf")
  c.data.update(train_path="train.jsonl", **data)
  return c


@pytest.fixture(scope="module")
def bf16_dir(hf_dirs, tmp_path_factory):
  """The llama checkpoint stored in bfloat16."""
  d = str(tmp_path_factory.mktemp("bf16"))
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["llama"])
  model.to(torch.bfloat16).save_pretrained(d)
  for f in os.listdir(hf_dirs["llama"]):
    if f.startswith(("tokenizer", "special_tokens")):
      shutil.copy(os.path.join(hf_dirs["llama"], f), d)
  return d


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("seqcls"))
  build_hf_model("llama", d, head="scalar", seed=3)
  return d


def test_sft_takes_the_model_and_its_length_from_the_checkpoint(hf_dirs):
  c = hf_config("sft.py")
  c.init_from = hf_dirs["llama"]
  resolved, model = lm_run.check(c)
  assert resolved.data.seq_len == 128 == model.max_seq_len  # min(512, its positions)
  assert c.data.seq_len == 0  # The given config is not changed.
  assert (model.dtype, model.param_dtype, model.remat, model.d_model) == (
      "float32", "float32", "none", 48)


def test_dtype_is_the_checkpoints_unless_the_config_sets_it(bf16_dir):
  c = hf_config("sft.py")
  c.init_from = bf16_dir
  _, model = lm_run.check(c)
  assert (model.dtype, model.param_dtype) == ("bfloat16", "float32")
  c.model.dtype = "float32"
  assert lm_run.check(c)[1].dtype == "float32"


def test_hf_variant_needs_a_checkpoint_and_data():
  c = hf_config("sft.py")
  with pytest.raises(ConfigError, match=r"config\.init_from: required: config\.model names no "
                                        r"architecture"):
    lm_run.check(c)


@pytest.mark.parametrize("stage", ["sft.py", "rm.py"])
def test_a_length_longer_than_the_checkpoint_is_refused_naming_the_key(stage, hf_dirs):
  c = hf_config(stage, seq_len=1024)
  c.init_from = hf_dirs["llama"]
  check = lm_run.check if stage == "sft.py" else rm_checks.check
  with pytest.raises(ConfigError, match=r"config\.data\.seq_len = 1024 exceeds the max_seq_len "
                                        r"128 of config\.init_from"):
    check(c)


def test_rm_fills_its_length_from_the_sft_model(hf_dirs):
  c = hf_config("rm.py", eval_path="test.jsonl.gz", adapter="hh")
  c.init_from = hf_dirs["qwen2"]
  resolved, model = rm_checks.check(c)
  assert resolved.data.seq_len == 128 and model.family == "qwen2" and model.dropout_rate == 0.0


def test_ppo_derives_its_lengths_from_both_models_or_names_the_key(hf_dirs, reward_dir):
  c = hf_config("ppo.py", ptx_path="texts.jsonl")
  c.init_from, c.reward_model = hf_dirs["llama"], reward_dir
  with pytest.raises(ConfigError, match=r"config\.ppo\.max_new_tokens=128 leaves no room"):
    ppo_checks.check(c)  # The default 128 new tokens do not fit 128 positions.
  c.ppo.max_new_tokens = 32
  resolved, _, policy, rm = ppo_checks.check(c)
  assert rm.family == "llama" and policy.max_seq_len == rm.max_seq_len == 128
  assert (resolved.data.prompt_len, resolved.data.seq_len) == (95, 128)
  c.data.prompt_len = 120
  with pytest.raises(ConfigError, match=r"config\.data\.prompt_len \+ config\.ppo\.max_new_tokens"
                                        r" = 152 exceeds the max_seq_len 128 of config\.init_from"):
    ppo_checks.check(c)
