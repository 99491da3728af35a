"""The glue every stage shares: keep-best rule, completion, atomic model directories, the
workdir lock, and the one path that starts a stage from instructjax or HF model directories."""
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from instructjax import config as config_lib
from instructjax import model_io
from instructjax.config import ConfigError
from instructjax.hf.config import stored_dtype
from instructjax.models import DecoderLM, get_preset
from instructjax.stages import runner
from instructjax.tokenizer import CharTokenizer
from instructjax.training import LoopSummary
from instructjax.training import workdir as workdir_lib
from instructjax.training.state import init_params


def train_section(**kw):
  c = ml_collections.ConfigDict()
  c.stage = "rm"
  c.train = config_lib.train_config(batch_size=8, num_steps=10, **kw)
  return c


@pytest.mark.parametrize("metric,mode", [("loss", "min"), ("pretrain_heldout_loss", "min"),
                                         ("kl", "min"), ("accuracy", "max"), ("score", "max")])
def test_one_keep_best_rule(metric, mode):
  metrics = ("loss", "pretrain_heldout_loss", "kl", "accuracy", "score")
  assert runner.keep_best_mode(train_section(keep_best_metric=metric), metrics) == mode
  explicit = train_section(keep_best_metric=metric, keep_best_mode="max")
  assert runner.keep_best_mode(explicit, metrics) == "max"


def test_keep_best_refuses_gold_and_unknown_metrics():
  assert runner.keep_best_mode(train_section(), ("loss",)) is None
  with pytest.raises(ConfigError, match=r"keep_best_metric='correctness' is judged against gold"):
    runner.keep_best_mode(train_section(keep_best_metric="correctness"), ("correctness", "score"))
  with pytest.raises(ConfigError, match=r"not an evaluation metric of config.stage='rm'"):
    runner.keep_best_mode(train_section(keep_best_metric="acc"), ("accuracy",))
  with pytest.raises(ConfigError, match=r"config.train.keep_best_mode"):
    runner.keep_best_mode(train_section(keep_best_metric="loss", keep_best_mode="up"), ("loss",))


def summary(final_step, reason="num_steps"):
  return LoopSummary(start_step=0, final_step=final_step, resumed_from=None, stop_reason=reason,
                     skipped_updates=0, train_metrics={}, eval_metrics={}, checkpoint_steps=[],
                     best_step=None, wall_time_s=0.0)


def test_only_a_stage_that_reached_num_steps_is_finished():
  c = train_section()
  assert runner.is_finished(summary(10), c)
  assert not runner.is_finished(summary(4), c)  # train.stop_after
  assert not runner.is_finished(summary(10, "preempted"), c)  # Told to stop at the last step.
  assert not runner.is_finished(summary(7, "data_exhausted"), c)
  assert runner.is_finished(summary(7, "data_exhausted"), train_section(allow_early_end=True))
  out = runner.report_unfinished(summary(4), train_section(stop_after=4), "/w")
  assert out == {"stage": "rm", "complete": False, "steps": 4, "stop_reason": "num_steps"}


def test_weighted_mean():
  assert runner.weighted_mean([(1.0, 1.0), (4.0, 3.0)]) == pytest.approx(3.25)
  assert np.isnan(runner.weighted_mean([]))


@pytest.fixture(scope="module")
def tiny_model():
  tok = CharTokenizer()
  cfg = get_preset("test", vocab_size=tok.vocab_size)
  return init_params(DecoderLM(cfg), jax.random.key(0))[0], cfg, tok


def test_model_directories_are_written_whole(tiny_model, tmp_path, monkeypatch):
  params, cfg, tok = tiny_model
  path = str(tmp_path / "model")
  runner.write_model(path, params, cfg, tok, head="lm", meta={"stage": "sft", "steps": 3})
  assert runner.is_complete(path)
  assert model_io.read_model_dir_config(path)[2] == {"stage": "sft", "steps": 3, "complete": True}

  def dies_half_way(directory, *args, **kwargs):
    os.makedirs(directory)
    with open(os.path.join(directory, model_io.MODEL_CONFIG_FILE), "w") as f:
      f.write("{}")
    raise KeyboardInterrupt  # Killed after the config, before the weights.

  monkeypatch.setattr(model_io, "save_model", dies_half_way)
  with pytest.raises(KeyboardInterrupt):
    runner.write_model(path, params, cfg, tok, head="lm", meta={"stage": "sft", "steps": 4})
  assert runner.is_complete(path)  # The previous model is untouched...
  assert model_io.read_model_dir_config(path)[2]["steps"] == 3
  fresh = str(tmp_path / "fresh")
  with pytest.raises(KeyboardInterrupt):
    runner.write_model(fresh, params, cfg, tok, head="lm", meta={})
  assert not os.path.exists(fresh) and not runner.is_complete(fresh)  # ...and none appears.


def test_a_model_dir_without_the_complete_mark_is_not_a_finished_stage(tiny_model, tmp_path):
  params, cfg, tok = tiny_model
  model_io.save_model(str(tmp_path / "m"), params, cfg, tok, head="lm", meta={"stage": "sft"})
  assert model_io.is_model_dir(str(tmp_path / "m")) and not runner.is_complete(str(tmp_path / "m"))


def test_model_spec_names_the_key_and_checks_the_head(tiny_model, tmp_path):
  params, cfg, tok = tiny_model
  lm = str(tmp_path / "lm")
  model_io.save_model(lm, params, cfg, tok, head="lm")
  assert runner.model_spec(lm, "init_from", "lm") == cfg
  with pytest.raises(ConfigError, match=r"config.reward_model: .* holds a language model "
                                        r"\(head 'lm'\); this stage needs a reward/value model"):
    runner.model_spec(lm, "reward_model", "scalar")
  with pytest.raises(ConfigError, match=r"config.init_from: .* is not a directory"):
    runner.model_spec(str(tmp_path / "missing"), "init_from")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match=r"config.init_from: .* is neither an instructjax model"):
    runner.model_spec(str(empty), "init_from")
  shutil.rmtree(os.path.join(lm, "params"))  # The weights are gone, the config is not.
  os.mkdir(os.path.join(lm, "params"))
  with pytest.raises(ConfigError, match=r"config.init_from: cannot load the model in"):
    runner.load_start_model(lm, "init_from", "lm")


def test_a_workdir_is_claimed_by_one_run(tmp_path):
  path = str(tmp_path / "w")
  with workdir_lib.claimed(path):
    with pytest.raises(ConfigError, match=r"--workdir: .* is in use by another run \(pid "
                                          + str(os.getpid())):
      with workdir_lib.claimed(path):
        pass
  with workdir_lib.claimed(path):  # Released at the end of the first run.
    pass
  assert not os.path.exists(path)  # Created, left empty, removed.


def test_a_workdir_that_is_a_file_or_read_only_is_refused(tmp_path, monkeypatch):
  (tmp_path / "f").write_text("x")
  with pytest.raises(ConfigError, match=r"exists and is not a directory"):
    with workdir_lib.claimed(str(tmp_path / "f")):
      pass
  ro = str(tmp_path / "ro")
  os.mkdir(ro)
  # Permission bits do not stop root (CI runs as root): ask as an ordinary user would be told.
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if p == ro else real_access(p, mode))
  with pytest.raises(ConfigError, match=r"--workdir: .*/ro is not writable \(needed to create"):
    with workdir_lib.claimed(os.path.join(ro, "run")):
      pass
  assert os.listdir(ro) == []


def test_a_runtime_only_model_section_leaves_unset_fields_to_the_checkpoint():
  c = ml_collections.ConfigDict({"stage": "sft", "model": config_lib.runtime_model_config()})
  assert config_lib.is_runtime_only(c.model)
  assert runner.runtime_fields(c) == {}
  assert runner.runtime_fields(c, dropout=False) == {"dropout_rate": 0.0}
  c.model.dtype, c.model.scan_layers = "bfloat16", False
  assert runner.runtime_fields(c) == {"dtype": "bfloat16", "scan_layers": False}
  c.model.remat = "everything"
  with pytest.raises(ConfigError, match=r"config\.model\.remat"):
    config_lib.to_model_config(c.model)
  # A preset's section sets every field, as before.
  preset = ml_collections.ConfigDict({"stage": "sft", "model": config_lib.model_config("tiny")})
  assert set(runner.runtime_fields(preset)) == set(runner.RUNTIME_FIELDS)


@pytest.mark.parametrize("hf,want", [
    ({"torch_dtype": "bfloat16"}, "bfloat16"), ({"dtype": "float16"}, "float16"),
    ({"torch_dtype": "float32"}, "float32"), ({}, "float32"), ({"dtype": "int8"}, "float32"),
])
def test_stored_dtype(hf, want):
  assert stored_dtype(hf) == want


def test_add_bos_needs_a_tokenizer_with_one():
  from types import SimpleNamespace
  from instructjax.stages import inputs
  c = ml_collections.ConfigDict({"data": {"add_bos": True}})
  inputs.check_tokenizer(c, CharTokenizer())
  no_bos = SimpleNamespace(bos_id=None)  # Qwen2's tokenizers have none.
  with pytest.raises(ConfigError, match=r"config\.data\.add_bos=True, but the tokenizer of "
                                        r"config\.init_from has no BOS"):
    inputs.check_tokenizer(c, no_bos)
  c.data.add_bos = False
  inputs.check_tokenizer(c, no_bos)
