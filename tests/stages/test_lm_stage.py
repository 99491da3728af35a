"""Pretrain -> SFT through the stage driver on a very small InstructWorld, and bitwise resume."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from instructjax.config import ConfigError
from instructjax.model_io import load_model
from instructjax.stages.lm import run as lm_driver
from instructjax.training import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_config(name, steps):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("tiny")
  c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64)
  c.data.world.update(num_pretrain=200, num_pretrain_heldout=20, num_sft=200, num_heldout=20)
  c.data.seq_len = 64
  c.train.update(batch_size=8, num_steps=steps, log_every=2, eval_every=steps, eval_batches=1,
                 save_every=2)
  c.optim.warmup_steps = 2
  return c


def params_of(workdir):
  return load_model(os.path.join(workdir, "model"))[0]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  out = lm_driver.run(small_config("pretrain.py", 6), workdir)
  return workdir, out


def test_pretrain_writes_model_metrics_and_checkpoints(pretrained):
  workdir, out = pretrained
  params, cfg, tokenizer, head, meta = load_model(os.path.join(workdir, "model"))
  assert head == "lm" and meta["stage"] == "pretrain" and cfg.d_model == 32
  assert tokenizer.eos_id != tokenizer.pad_id
  train = read_metrics(workdir, split="train")
  assert [r["step"] for r in train][-1] == 6 and np.isfinite(train[-1]["loss"])
  assert read_metrics(workdir, split="eval")
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert np.isfinite(out["eval_loss"])


def test_sft_starts_from_the_pretrained_model(pretrained, tmp_path):
  pre_dir, _ = pretrained
  c = small_config("sft.py", 2)
  c.init_from = os.path.join(pre_dir, "model")
  c.model.d_model = 48  # Architecture comes from the model directory, not the config.
  lm_driver.run(c, str(tmp_path))
  sft, cfg, _, _, meta = load_model(os.path.join(tmp_path, "model"))
  assert meta["stage"] == "sft" and cfg.d_model == 32
  start = params_of(pre_dir)
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(sft), jax.tree.leaves(start))]
  assert max(moved) > 0  # Trained...
  assert max(moved) < 0.1  # ...from the pretrained weights, not from a fresh init.


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
  straight = str(tmp_path / "straight")
  lm_driver.run(small_config("pretrain.py", 6), straight)
  resumed = str(tmp_path / "resumed")
  interrupted = small_config("pretrain.py", 6)
  interrupted.train.stop_after = 4
  first = lm_driver.run(interrupted, resumed)  # Stopped at step 4 (same schedule): no model...
  assert first == {"stage": "pretrain", "complete": False, "steps": 4, "stop_reason": "num_steps"}
  assert not os.path.exists(os.path.join(resumed, "model"))
  out = lm_driver.run(small_config("pretrain.py", 6), resumed)  # ...then run again to 6.
  assert out["complete"] and out["steps"] == 6 and out["train"]["resumed_from"] == 4
  assert load_model(os.path.join(resumed, "model"))[4]["steps"] == 6  # The steps done.
  for a, b in zip(jax.tree.leaves(params_of(straight)), jax.tree.leaves(params_of(resumed))):
    np.testing.assert_array_equal(a, b)
  steps = [r["step"] for r in read_metrics(resumed, split="train")]
  assert steps == sorted(set(steps))  # The log continues rather than repeating steps.


def test_sft_starts_from_a_hugging_face_directory(pretrained, tmp_path):
  import instructjax
  pre_dir, _ = pretrained
  hf_dir = str(tmp_path / "hf")
  instructjax.load(os.path.join(pre_dir, "model")).to_hf(hf_dir)
  c = small_config("sft.py", 2)
  c.init_from = hf_dir
  lm_driver.run(c, str(tmp_path / "sft"))
  _, cfg, tokenizer, head, meta = load_model(os.path.join(tmp_path, "sft", "model"))
  assert head == "lm" and meta["stage"] == "sft" and cfg.d_model == 32
  assert tokenizer.encode("sort: 1 2\n") == instructjax.load(hf_dir).tokenizer.encode("sort: 1 2\n")


def test_relative_workdir(tmp_path, monkeypatch):
  # Users pass --workdir=runs/x; orbax itself only takes absolute paths.
  monkeypatch.chdir(tmp_path)
  lm_driver.run(small_config("pretrain.py", 2), "runs/rel")
  assert os.path.isdir(tmp_path / "runs" / "rel" / "checkpoints" / "2")
  assert load_model(str(tmp_path / "runs" / "rel" / "model"))[3] == "lm"


def test_sft_without_held_out_records_trains_and_says_so(pretrained, tmp_path, caplog):
  """eval_path is optional: no held-out loss in results or logs, rather than a made-up one."""
  pre_dir, _ = pretrained
  path = tmp_path / "demos.jsonl"
  path.write_text("".join(json.dumps({"prompt": f"sort: {i} 1\n", "response": f"1 {i}"}) + "\n"
                          for i in range(2, 9)))
  c = small_config("sft.py", 2)
  c.init_from = os.path.join(pre_dir, "model")
  c.data.update(source="jsonl", train_path=str(path))
  with caplog.at_level("INFO"):
    out = lm_driver.run(c, str(tmp_path / "sft"))
  assert out["complete"] and "eval_loss" not in out
  assert "eval_loss" not in load_model(os.path.join(tmp_path, "sft", "model"))[4]
  assert "no held-out records (config.data.eval_path), no eval loss" in caplog.text
  c.train.keep_best_metric = "loss"
  with pytest.raises(ConfigError, match=r"keep_best_metric='loss' needs held-out data: set "
                                        r"config\.data\.eval_path"):
    lm_driver.run(c, str(tmp_path / "best"))


def test_sft_pretrain_mix_takes_the_first_pretraining_documents(tmp_path):
  from instructjax.stages.lm import data as lm_data
  from instructjax.world import splits, write_jsonl
  c = small_config("sft.py", 2)
  assert c.data.pretrain_docs == 0 and lm_data.pretrain_mix(c) is None  # Off by default.
  c.data.pretrain_docs = 7
  world = splits.WorldConfig(**c.data.world.to_dict())
  want = [{"text": d} for d in splits.pretrain_documents(world)[:7]]
  assert lm_data.pretrain_mix(c) == want
  c.data.source, c.data.train_path = "jsonl", str(tmp_path / "demos.jsonl")
  write_jsonl(c.data.train_path, [{"prompt": "a", "response": "b"}])
  with pytest.raises(ConfigError, match=r"^config\.data\.pretrain_mix_path: required"):
    lm_data.check_pretrain_mix(c)
  c.data.pretrain_mix_path = str(tmp_path / "missing.jsonl")
  with pytest.raises(ConfigError, match=r"^config\.data\.pretrain_mix_path: .*does not exist"):
    lm_data.check_pretrain_mix(c)
  c.data.pretrain_mix_path = str(tmp_path / "web.jsonl")
  write_jsonl(c.data.pretrain_mix_path, want + [{"text": "more"}])
  lm_data.check_pretrain_mix(c)
  assert lm_data.pretrain_mix(c) == want
  c.data.pretrain_docs = -1
  with pytest.raises(ConfigError, match=r"^config\.data\.pretrain_docs: must be an integer >= 0"):
    lm_data.check_pretrain_mix(c)


def test_sft_batches_are_unchanged_without_a_mix_and_mix_when_asked():
  """pretrain_docs = 0: the stage's SFT batches are bitwise those of the iterator without a
  mix; pretrain_docs > 0: the documents are in the batches."""
  from instructjax.stages import inputs
  from instructjax.stages.lm import data as lm_data
  from instructjax.tokenizer import CharTokenizer
  c = small_config("sft.py", 2)
  tok = CharTokenizer()
  got = lm_data.train_batches(c, tok, None)
  plain = lm_data._iterator(inputs.lm_records(c, "sft", "train"), tok, c, seed=c.seed)
  assert got.host_iter.fingerprint == plain.fingerprint
  for _ in range(3):
    x, y = next(got), next(plain)
    for k in lm_data.LM_KEYS:
      np.testing.assert_array_equal(np.asarray(x[k]), y[k])
  c.data.pretrain_docs = 50
  mixed = lm_data.train_batches(c, tok, None)
  assert mixed.host_iter.fingerprint["mixed_texts"] >= 50  # Long documents: several rows.
  # Unpacked rows: a document's every token but the last predicts the next (in the loss), a
  # demonstration's prompt does not.
  docs = sum(int((np.asarray(b["loss_mask"]).sum(-1)
                  == (np.asarray(b["segment_ids"]) != 0).sum(-1) - 1).sum())
             for b in (next(mixed) for _ in range(10)))
  assert c.data.pack is False and docs > 0
