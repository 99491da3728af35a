"""Configs: every file builds, overrides are type-checked, bad keys and combinations fail early
with the key's name."""
import importlib.util
import os
import subprocess
import sys

import pytest

from instructjax import config as config_lib
from instructjax.config import ConfigError
from instructjax.models import PRESET_NAMES, get_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_builds_and_validates(name):
  config = load_config(name, "tiny")
  # A stage config has a stage; the pipeline's has one sub-config per stage.
  stages = [config] if "stage" in config else [
      config[k] for k in config if hasattr(config[k], "get") and "stage" in config[k]]
  assert stages
  for stage_config in stages:
    config_lib.validate_common(stage_config, num_devices=1)


@pytest.mark.parametrize("name", ["pretrain.py", "sft.py", "rm.py", "ppo.py"])
def test_hf_variants_leave_the_model_and_lengths_to_the_checkpoint(name):
  config = load_config(name, "hf")
  config_lib.validate_common(config, num_devices=1)
  assert config_lib.is_runtime_only(config.model)
  assert all(config.model[k] is None for k in config.model)  # As the checkpoint has it.
  assert config.data.source == "jsonl" and config.data.seq_len == 0
  assert config.get("data").get("prompt_len", 0) == 0
  config.model.dtype = "bfloat16"  # Still settable; a bad value is named.
  config.model.remat = "always"
  with pytest.raises(ConfigError, match=r"config\.model\.remat"):
    config_lib.validate_common(config, num_devices=1)


def test_model_presets_validate_and_have_expected_sizes():
  sizes = {name: get_preset(name).num_params() for name in PRESET_NAMES}
  assert 120e6 < sizes["gpt2-124m"] < 130e6
  assert 1.1e9 < sizes["llama-1b"] < 1.3e9
  assert 7.9e9 < sizes["llama-8b"] < 8.1e9


def test_invalid_combinations_name_the_key():
  config = load_config("pretrain.py", "tiny")
  config.train.batch_size = 6
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size=6 .*data-parallel size 4"):
    config_lib.validate_common(config, num_devices=4)
  config = load_config("pretrain.py", "tiny")
  config.model.n_kv_heads = 3
  with pytest.raises(ConfigError, match=r"config\.model\.n_kv_heads"):
    config_lib.validate_common(config, num_devices=1)
  config = load_config("pretrain.py", "tiny")
  config.mesh.tensor, config.mesh.rules = 8, "fsdp_tp"
  config.model.n_kv_heads = 2
  with pytest.raises(ConfigError, match=r"config\.model\.n_heads=4 is not divisible by config\.mesh\.tensor=8"):
    config_lib.validate_common(config, num_devices=8)
  config = load_config("pretrain.py", "tiny")
  config.mesh.rules = "zero"
  with pytest.raises(ConfigError, match=r"config\.mesh\.rules"):
    config_lib.validate_common(config, num_devices=1)


def test_config_arg_parsing():
  assert config_lib.parse_arg("tiny,steps=7", variant="x", steps=0).steps == 7
  with pytest.raises(ConfigError, match="stepz"):
    config_lib.parse_arg("tiny,stepz=7", variant="x", steps=0)


def _train(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train.py"), *flags],
                        capture_output=True, text=True, env=env, timeout=300)


def test_mistyped_override_fails_at_parse_time_naming_the_key(tmp_path):
  proc = _train("--config=configs/pretrain.py:tiny", "--config.optim.lrr=0.1",
                f"--workdir={tmp_path}/w")
  assert proc.returncode != 0
  assert "lrr" in proc.stderr
  assert not os.path.exists(tmp_path / "w")  # Nothing started.


def test_invalid_combination_fails_before_anything_is_written(tmp_path):
  proc = _train("--config=configs/pretrain.py:tiny", "--config.model.n_kv_heads=3",
                f"--workdir={tmp_path}/w")
  assert proc.returncode != 0
  assert "config.model.n_kv_heads" in proc.stderr
  assert not os.path.exists(tmp_path / "w")
