"""A catalogue of a user's mistakes: each ends the run with exit status 2 and one `error:`
message naming the file and line or the config key, without a traceback, before anything is
compiled where the mistake is knowable before, and with nothing written to the workdir.

Run with `-s` to print the catalogue (README "Reliability" lists it)."""
import contextlib
import gzip
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import jax
import pytest
from jax import monitoring

from instructjax import cli
from instructjax.model_io import save_model
from instructjax.models import DecoderLM, get_preset
from instructjax.stages.registry import run_stage
from instructjax.tokenizer import CharTokenizer
from instructjax.training import workdir as workdir_lib
from instructjax.training.state import init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
GOOD_SFT = {"prompt": "sort: 3 1 2\n", "response": "1 2 3"}
GOOD_CMP = {"prompt": "sort: 3 1 2\n", "responses": ["1 2 3", "3 2 1"], "ranking": [0, 1]}


def load_config(name, arg="tiny"):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A 'test'-sized LM and reward model saved as model directories, and a copy of the LM with
  its weights deleted."""
  root = tmp_path_factory.mktemp("models")
  tok = CharTokenizer()
  cfg = get_preset("test", vocab_size=tok.vocab_size, max_seq_len=96)
  dirs = {}
  for name, head in (("sft", "lm"), ("rm", "scalar"), ("broken", "lm")):
    dirs[name] = str(root / name)
    save_model(dirs[name], init_params(DecoderLM(cfg, head=head), jax.random.key(0))[0], cfg,
               tok, head=head,
               meta={"stage": name, "complete": True})
  shutil.rmtree(os.path.join(dirs["broken"], "params"))  # The weights are gone, not the config.
  os.mkdir(os.path.join(dirs["broken"], "params"))
  pickled = root / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text(json.dumps(dict(
      model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=74, hidden_size=32,
      intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=128)))
  (pickled / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
  dirs["pickled"] = str(pickled)
  bert = root / "bert"
  bert.mkdir()
  (bert / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 74}))
  dirs["bert"] = str(bert)
  return dirs


def sft_config(models, **data):
  c = load_config("sft.py")
  c.init_from = models["sft"]
  c.train.update(batch_size=8, num_steps=2, eval_batches=1)
  c.data.seq_len = 64
  if data:
    c.data.update(source="jsonl", **data)
  return c


def rm_config(models, **data):
  c = load_config("rm.py")
  c.init_from = models["sft"]
  c.train.update(batch_size=8, num_steps=2, eval_batches=1)
  c.data.seq_len = 64
  c.data.packed_len = 0
  c.data.update(source="jsonl", **data)
  return c


def ppo_config(models):
  c = load_config("ppo.py")
  c.init_from, c.reward_model = models["sft"], models["rm"]
  c.train.update(batch_size=8, num_steps=2, eval_batches=1)
  c.data.seq_len = 64
  return c


def write_lines(path, lines):
  with open(path, "w") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return str(path)


def set_key(config, key, value):
  section, _, name = key.rpartition(".")
  node = config
  for part in filter(None, section.split(".")):
    node = node[part]
  node[name] = value
  return config


def jsonl_case(stage, lines, expect, **extra):
  def build(models, tmp):
    path = write_lines(tmp / "data.jsonl", lines)
    config = (sft_config if stage == "sft" else rm_config)(models, train_path=path,
                                                           eval_path=path)
    for k, v in extra.items():
      set_key(config, k, v)
    return config
  return build, expect


def config_case(stage, key, value, expect):
  def build(models, tmp):
    base = {"sft": sft_config, "rm": rm_config, "ppo": ppo_config}[stage]
    config = base(models) if stage != "rm" else base(
        models, train_path=write_lines(tmp / "c.jsonl", [GOOD_CMP] * 8))
    return set_key(config, key, value)
  return build, expect


def path_case(stage, make_path, expect, key="train_path"):
  def build(models, tmp):
    path = make_path(models, tmp)
    if key in ("init_from", "reward_model"):
      config = {"sft": sft_config, "rm": rm_config, "ppo": ppo_config}[stage](models) if (
          stage != "rm") else rm_config(models, train_path=write_lines(tmp / "c.jsonl",
                                                                       [GOOD_CMP] * 8))
      config[key] = path
      return config
    return sft_config(models, **{key: path, "eval_path": path})
  return build, expect


def fake_gzip(models, tmp):
  return write_lines(tmp / "plain.jsonl.gz", [GOOD_SFT])


def non_utf8(models, tmp):
  path = tmp / "latin1.jsonl"
  path.write_bytes(json.dumps(GOOD_SFT).encode() + b"\n" +
                   '{"prompt": "caf\xe9\\n", "response": "x"}'.encode("latin-1") + b"\n")
  return str(path)


def truncated_gzip(models, tmp):
  data = gzip.compress(b"\n".join(json.dumps(GOOD_SFT).encode() for _ in range(50)))
  (tmp / "cut.jsonl.gz").write_bytes(data[:len(data) // 2])
  return str(tmp / "cut.jsonl.gz")


def empty_file(models, tmp):
  (tmp / "empty.jsonl").write_text("")
  return str(tmp / "empty.jsonl")


def a_directory(models, tmp):
  (tmp / "adir").mkdir()
  return str(tmp / "adir")


CASES = {
    "malformed JSON line": jsonl_case("sft", [GOOD_SFT, '{"prompt": "x"'],
                                      r"data\.jsonl:2: malformed JSON"),
    "missing field": jsonl_case("sft", [GOOD_SFT, {"prompt": "sort: 1 2\n"}],
                                r"data\.jsonl:2: .*missing field 'response'"),
    "mistyped field": jsonl_case("sft", [{"prompt": "sort: 1 2\n", "response": 5}],
                                 r"data\.jsonl:1: .*response"),
    "empty prompt": jsonl_case("sft", [{"prompt": "", "response": "1 2"}],
                               r"data\.jsonl:1: .*empty"),
    "JSON that is not an object": jsonl_case("sft", ["[1, 2]"],
                                             r"data\.jsonl:1: expected a JSON object"),
    "ranking not a permutation": jsonl_case(
        "rm", [GOOD_CMP, {**GOOD_CMP, "ranking": [0, 0]}], r"data\.jsonl:2: .*permutation"),
    "comparison with K=1": jsonl_case(
        "rm", [{"prompt": "sort: 1 2\n", "responses": ["1 2"], "ranking": [0]}],
        r"data\.jsonl:1: .*(at least 2|K >= 2|two)"),
    "prompt too long with truncation off": jsonl_case(
        "sft", [{"prompt": "reverse: " + "cat " * 40 + "\n", "response": "cat"}],
        r"data\.jsonl:1: prompt is \d+ tokens, more than max_prompt_len .*truncation disabled",
        **{"data.truncate": False}),
    "non-UTF-8 bytes": path_case("sft", non_utf8, r"latin1\.jsonl:2: byte \d+ .*not UTF-8"),
    "empty file": path_case("sft", empty_file, r"empty\.jsonl"),
    ".jsonl.gz that is not gzip": path_case("sft", fake_gzip, r"plain\.jsonl\.gz: .*not gzip"),
    "truncated .jsonl.gz": path_case("sft", truncated_gzip, r"cut\.jsonl\.gz: cannot be read"),
    "directory instead of a file": path_case("sft", a_directory, r"adir: is a directory"),
    "missing data path": path_case("sft", lambda m, t: str(t / "nope.jsonl"),
                                   r"nope\.jsonl: no such file"),
    "pickle-only HF directory": path_case("sft", lambda m, t: m["pickled"],
                                          r"config\.init_from: .*pytorch_model\.bin",
                                          key="init_from"),
    "unsupported HF architecture": path_case("sft", lambda m, t: m["bert"],
                                             r"config\.init_from: .*bert", key="init_from"),
    "corrupt model directory as init_from": path_case(
        "sft", lambda m, t: m["broken"], r"config\.init_from: cannot load the model",
        key="init_from"),
    "reward model as the RM's init_from": path_case(
        "rm", lambda m, t: m["rm"], r"config\.init_from: .* holds a reward/value model",
        key="init_from"),
    "language model as PPO's reward_model": path_case(
        "ppo", lambda m, t: m["sft"], r"config\.reward_model: .* holds a language model",
        key="reward_model"),
    "data path with the InstructWorld source": config_case(
        "sft", "data.train_path", "mine.jsonl", r"config\.data\.train_path=.*'instructworld'"),
    "adapter of another record kind": config_case(
        "rm", "data.adapter", "alpaca", r"config\.data\.adapter='alpaca' makes demonstrations"),
    "mesh that does not divide the batch": config_case(
        "sft", "train.batch_size", 6, r"config\.train\.batch_size=6 .*data-parallel"),
    "zero steps": config_case("sft", "train.num_steps", 0, r"config\.train\.num_steps"),
    "negative learning rate": config_case("ppo", "optim.lr", -1e-5, r"config\.optim\.lr"),
    "seq_len too short": config_case("sft", "data.seq_len", 2, r"config\.data\.seq_len=2"),
    "seq_len beyond the model": config_case("sft", "data.seq_len", 512,
                                            r"config\.data\.seq_len = 512 exceeds"),
    "gold metric for keep-best": config_case("ppo", "train.keep_best_metric", "correctness",
                                             r"config\.train\.keep_best_metric"),
    "unknown stage": config_case("sft", "stage", "dpo", r"config\.stage"),
}


@contextlib.contextmanager
def count_compiles():
  counts = []

  def listen(event, duration, **kwargs):
    if event == COMPILE_EVENT:
      counts.append(duration)
  monitoring.register_event_duration_secs_listener(listen)
  try:
    yield counts
  finally:
    monitoring.unregister_event_duration_listener(listen)


def tree(path):
  if not os.path.exists(path):
    return None
  return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_is_one_clear_line(name, models, tmp_path, capsys):
  build, expect = CASES[name]
  config = build(models, tmp_path)
  workdir = str(tmp_path / "run")
  with count_compiles() as compiles:
    status = cli.run_main(lambda: run_stage(config, workdir))
  err = capsys.readouterr().err
  print(f"\n{name}: exit {status}: {err.strip().splitlines()[0] if err.strip() else ''}")
  assert status == cli.USAGE_ERROR
  assert err.startswith("error: ") and "Traceback" not in err
  assert re.search(expect, err), err
  assert tree(workdir) is None, "the run left something in its workdir"
  assert not compiles, f"{len(compiles)} compilations before the mistake was reported"


def test_an_existing_workdir_is_left_as_it_was(models, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  os.makedirs(os.path.join(workdir, "checkpoints"))
  write_lines(os.path.join(workdir, "metrics.jsonl"), [{"step": 1}])
  before = tree(workdir)
  config = sft_config(models, train_path=str(tmp_path / "missing.jsonl"),
                      eval_path=str(tmp_path / "missing.jsonl"))
  assert cli.run_main(lambda: run_stage(config, workdir)) == cli.USAGE_ERROR
  assert tree(workdir) == before


def test_two_runs_on_one_workdir(models, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  with workdir_lib.claimed(workdir):  # Another run holds it.
    status = cli.run_main(lambda: run_stage(sft_config(models), workdir))
  err = capsys.readouterr().err
  assert status == cli.USAGE_ERROR and "is in use by another run" in err and "Traceback" not in err


def run_cli(*args, env=None):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train.py"), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **(env or {})})


def test_the_command_line_prints_one_line_and_shows_the_traceback_on_request(models, tmp_path):
  args = ["--config=configs/sft.py:tiny", f"--workdir={tmp_path / 'w'}",
          f"--config.init_from={models['sft']}", "--config.data.source=jsonl",
          f"--config.data.train_path={tmp_path / 'missing.jsonl'}",
          f"--config.data.eval_path={tmp_path / 'missing.jsonl'}"]
  out = run_cli(*args)
  assert out.returncode == 2
  assert "error: " in out.stderr and "missing.jsonl: no such file" in out.stderr
  assert "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "w")
  shown = run_cli(*args, env={cli.TRACEBACK_ENV: "1"})
  assert shown.returncode != 0 and "Traceback" in shown.stderr


@pytest.mark.parametrize("flag,expect", [
    ("--config.optim.lrr=1e-3", r"error: 'lrr' Did you mean \"lr\""),
    ("--config.train.num_steps=abc", r"error: flag --config.train.num_steps=abc: .*'abc'"),
])
def test_a_mistyped_config_key_or_value_is_named_on_the_command_line(tmp_path, flag, expect):
  out = run_cli("--config=configs/sft.py:tiny", f"--workdir={tmp_path / 'w'}", flag)
  assert out.returncode == 2 and re.search(expect, out.stderr), out.stderr
  assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("config,expect", [
    ("configs/sft.py:tinyy", r"unknown model preset 'tinyy'"),
    ("configs/sfft.py:tiny", r"error: --config: .*No such file or directory: 'configs/sfft.py'"),
])
def test_a_bad_config_file_or_variant_is_one_line(tmp_path, config, expect):
  out = run_cli(f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2 and re.search(expect, out.stderr), out.stderr
  assert "Traceback" not in out.stderr
