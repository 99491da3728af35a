"""experiments/generate.py end to end on a tiny exported model."""
import json
import os
import subprocess
import sys

import experiment_scripts
import pytest

import instructjax

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "experiments", "generate.py")


def _load_script():
  return experiment_scripts.load("generate")


@pytest.fixture(scope="module")
def exported(hf_dirs, tmp_path_factory):
  """An HF directory written by instructjax (tokenizer with the added PAD included)."""
  out = str(tmp_path_factory.mktemp("cli") / "model")
  return instructjax.from_hf(hf_dirs["qwen2"]).to_hf(out)


def _write(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def test_cli_end_to_end(exported, tmp_path):
  prompts = ["the cat sat", "hello world, how are you?", "a dog"]
  inp, out = str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")
  _write(inp, [json.dumps({"prompt": p, "id": i}) for i, p in enumerate(prompts)] + [""])
  cmd = [sys.executable, SCRIPT, f"--checkpoint={exported}", f"--prompts={inp}",
         f"--output={out}", "--temperature=0", "--max_new_tokens=12"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  print("CLI:", " ".join(os.path.basename(c) if c == sys.executable else c for c in cmd))
  print("CLI stdout:", proc.stdout.strip())
  with open(out) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    print("CLI out:", json.dumps(r))
  assert [r["prompt"] for r in records] == prompts
  assert all(set(r) == {"prompt", "response", "finished"} for r in records)
  assert all(isinstance(r["finished"], bool) and isinstance(r["response"], str) for r in records)
  # Greedy: the same as the API, which test_api checks against transformers.
  lm = instructjax.load(exported)
  expected = lm.generate(prompts, max_new_tokens=12, temperature=0.0)
  assert records == expected
  assert all("<|pad|>" not in r["response"] and "<|endoftext|>" not in r["response"]
             for r in records)


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "ok"', "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"text": "no prompt key"}', 'missing "prompt"'),
    ('{"prompt": 7}', "must be a string"),
    ('{"messages": [{"role": "user"}]}', '"messages" must be a non-empty list'),
    ('{"messages": []}', '"messages" must be a non-empty list'),
])
def test_bad_input_line_names_file_and_line(line, message, tmp_path):
  cli = _load_script()
  inp = str(tmp_path / "in.jsonl")
  _write(inp, [json.dumps({"prompt": "fine"}), "", line])
  with pytest.raises(ValueError, match=message) as err:
    cli.read_prompts(inp)
  assert str(err.value).startswith(f"{inp}:3: ")


def test_cli_reports_bad_line_and_exits_nonzero(exported, tmp_path):
  """The error names file:line, the exit status is 1 and nothing is written (the prompts are
  read before the model is loaded, so this is quick)."""
  inp, out = str(tmp_path / "bad.jsonl"), str(tmp_path / "out.jsonl")
  _write(inp, [json.dumps({"prompt": "fine"}), "{oops"])
  proc = subprocess.run([sys.executable, SCRIPT, f"--checkpoint={exported}", f"--prompts={inp}",
                         f"--output={out}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert f"error: {inp}:2: invalid JSON" in proc.stderr
  assert not os.path.exists(out)
  print("CLI bad line:", proc.stderr.strip())


def test_chat_prompts_from_an_instructjax_directory_without_orbax_chatter(exported, tmp_path):
  """{"messages"} prompts as PPO reads them; loading an instructjax model directory (orbax)
  logs none of orbax's INFO lines."""
  model = instructjax.load(exported).save(str(tmp_path / "model"))
  messages = [{"role": "user", "content": "hello world"}]
  inp, out = str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")
  _write(inp, [json.dumps({"messages": messages}), json.dumps({"prompt": "the cat"})])
  cmd = [sys.executable, SCRIPT, f"--checkpoint={model}", f"--prompts={inp}", f"--output={out}",
         "--max_new_tokens=6"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "orbax" not in proc.stderr.lower(), proc.stderr[-3000:]
  with open(out) as f:
    records = [json.loads(line) for line in f]
  assert records == instructjax.load(model).generate([messages, "the cat"], max_new_tokens=6,
                                                     temperature=0.0)
