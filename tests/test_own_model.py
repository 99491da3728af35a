"""README "Your own model and data", run as written: its shell block (SFT -> reward model ->
PPO-ptx -> export) and its transformers snippet, on a tiny random HF Llama and Qwen2 built here
(byte-level BPE tokenizers with a chat template, PAD != EOS; the Qwen2 one without
`<|endoftext|>`, which transformers' Qwen2Tokenizer would add) and data in public layouts
(Alpaca demonstrations, Anthropic HH comparisons with a gzipped held-out file, chat-message
prompts, pretraining text). Only the README's variables are set (where the model and data are,
BOS, the numbers of steps); then the exports must give transformers the policy's logits (1e-4),
greedy tokens and reward scores (plus the recorded bias), and the source model's vocabulary.
"""
import gzip
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import instructjax  # noqa: E402
from instructjax.generation import SamplingConfig, make_sampler  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4

WORDS = ["cat", "dog", "mat", "park", "sky", "tree", "river", "moon", "bread", "song", "stone",
         "cloud", "apple", "train", "house", "garden"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama 3's layout: the template writes BOS itself (so data.add_bos adds no second one).
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
          "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
          "{% endif %}")


def readme_section() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  start = text.index("## Your own model and data")
  return text[start:text.index("\n## ", start + 1)]


def readme_blocks() -> tuple[str, str]:
  """The section's shell block and its Python block, as written."""
  section = readme_section()
  [shell] = re.findall(r"```bash\n(.*?)```", section, re.S)
  [python] = re.findall(r"```python\n(.*?)```", section, re.S)
  return shell, python


def with_variables(shell: str, **values: str) -> str:
  """The block with the README's `NAME=value` lines given these values (each must exist)."""
  for name, value in values.items():
    shell, n = re.subn(rf"^{name}=\S*", f"{name}={value}", shell, flags=re.M)
    assert n == 1, f"the README block sets no {name}"
  return shell


# ------------------------------------------------------------------------------------- data


def records(n: int, offset: int):
  return [(WORDS[(i + offset) % len(WORDS)], WORDS[(3 * i + offset + 1) % len(WORDS)])
          for i in range(n)]


def write_jsonl(path: str, rows) -> None:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wt") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))


def write_data(directory: str) -> list[str]:
  """Public-layout files the README names; returns their texts (the tokenizers' corpus)."""
  os.makedirs(directory)
  files = {}
  for split, n, offset in (("train", 64, 0), ("eval", 16, 7)):
    rows = records(n, offset)
    files[f"alpaca_{split}.jsonl"] = [
        {"instruction": f"Name something like a {a}.", "input": b if i % 2 else "",
         "output": f"A {b} is like a {a}."} for i, (a, b) in enumerate(rows)]
    files[f"hh_{'train' if split == 'train' else 'test'}.jsonl" + (
        "" if split == "train" else ".gz")] = [
            {"chosen": f"\n\nHuman: Where is the {a}?\n\nAssistant: The {a} is by the {b}.",
             "rejected": f"\n\nHuman: Where is the {a}?\n\nAssistant: No."} for a, b in rows]
    files[f"prompts_{split}.jsonl"] = [
        {"messages": ([{"role": "system", "content": "Be brief."}] if i % 3 == 0 else [])
         + [{"role": "user", "content": f"Where is the {a}?"}]} for i, (a, _) in enumerate(rows)]
    files[f"text_{split}.jsonl"] = [{"text": f"The {a} and the {b} went to the {a} by the {b}."}
                                    for a, b in rows]
  for name, rows in files.items():
    write_jsonl(os.path.join(directory, name), rows)
  return [json.dumps(r) for rows in files.values() for r in rows]


# ------------------------------------------------------------------------------------- models


def make_tokenizer(family: str, corpus: list[str]):
  """A byte-level BPE tokenizer with a chat template and a PAD that is not EOS."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  if family == "llama":
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|finetune_right_pad_id|>"]
    kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
              pad_token="<|finetune_right_pad_id|>")
  else:  # No <|endoftext|>: transformers' Qwen2Tokenizer defaults unk_token to it.
    specials = ["<|im_start|>", "<|im_end|>", "<pad>"]
    kw = dict(eos_token="<|im_end|>", pad_token="<pad>")
  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=600, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **kw)
  tok.chat_template = LLAMA3 if family == "llama" else CHATML
  return tok


def build_checkpoint(family: str, directory: str, corpus: list[str]) -> int:
  """A tiny random causal LM whose vocabulary is exactly its tokenizer's; returns its size."""
  tok = make_tokenizer(family, corpus)
  shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=64, vocab_size=len(tok),
               max_position_embeddings=256, pad_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
  if family == "llama":
    cfg = transformers.LlamaConfig(**shape, tie_word_embeddings=False)
  else:
    cfg = transformers.Qwen2Config(**shape, tie_word_embeddings=True)
  model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():  # Large weights: logits of O(1), so greedy choices are clear-cut.
    for name, p in model.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if "norm" in name else 0.0))
  model.save_pretrained(directory)
  tok.save_pretrained(directory)
  return len(tok)


# ------------------------------------------------------------------------------------- checks


def greedy_ours(lm, prompt_ids: list[int], max_new: int) -> list[int]:
  sampling = SamplingConfig(max_new_tokens=max_new, eos_id=lm.tokenizer.eos_id,
                            pad_id=lm.tokenizer.pad_id, temperature=0.0)
  tokens = np.asarray([prompt_ids], np.int32)
  out = make_sampler(lm.model, sampling)(lm.params, tokens, np.ones_like(tokens),
                                          jax.random.key(0))
  ids = np.asarray(out.response_tokens[0])[:int(out.lengths[0])].tolist()
  return ids[:-1] if bool(out.finished[0]) else ids


def greedy_hf(model, prompt_ids: list[int], max_new: int, eos: int, pad: int) -> list[int]:
  ids = torch.tensor([prompt_ids])
  with torch.no_grad():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                         do_sample=False, eos_token_id=eos, pad_token_id=pad)
  new = out[0, len(prompt_ids):].tolist()
  return new[:new.index(eos)] if eos in new else new


def check_exports(family: str, run_dir: str, vocab: int) -> None:
  """The exports of the README's run against the stages' models, in transformers."""
  hf_dir = f"{run_dir}/hf"
  # The vocabulary is the checkpoint's: no token added on the way (Qwen2Tokenizer's default
  # <|endoftext|> among them), in the weights and in the tokenizer transformers loads.
  policy_hf = transformers.AutoModelForCausalLM.from_pretrained(f"{hf_dir}/policy").eval()
  assert policy_hf.config.vocab_size == vocab
  assert len(transformers.AutoTokenizer.from_pretrained(f"{hf_dir}/policy")) == vocab
  assert policy_hf.dtype == torch.float32  # No bfloat16 switch of a float32 checkpoint.

  # Policy: the PPO stage's model and its export give the same logits and greedy tokens.
  policy = instructjax.load(f"{run_dir}/ppo/model")
  assert policy.config.dtype == "float32" and policy.config.vocab_size == vocab
  tok = policy.tokenizer
  prompts = [[{"role": "user", "content": f"Where is the {w}?"}] for w in WORDS[:3]] + [
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A song?"}]]
  prompt_ids = [tok.apply_chat_template(m) for m in prompts]
  worst = 0.0
  for ids in prompt_ids:
    ours = np.asarray(policy.logits([ids])[0])
    with torch.no_grad():
      ref = policy_hf(torch.tensor([ids])).logits[0].numpy()
    assert ours.shape == ref.shape == (len(ids), vocab)
    worst = max(worst, float(np.abs(ours - ref).max()))
  print(f"PARITY {family} policy logits: max |diff| = {worst:.2e}")
  assert worst <= TOL
  same = 0
  for ids in prompt_ids:
    ours = greedy_ours(policy, ids, 24)
    assert ours == greedy_hf(policy_hf, ids, 24, tok.eos_id, tok.pad_id)
    same += len(ours)
  print(f"GREEDY {family}: {same} of {same} tokens identical to transformers' generate")

  # Reward model: transformers' score plus the recorded bias is ours; instructjax.load of the
  # export is ours exactly.
  rm = instructjax.load(f"{run_dir}/rm/model")
  rm_hf = transformers.AutoModelForSequenceClassification.from_pretrained(
      f"{hf_dir}/reward_model").eval()
  responses = ["The cat is by the park.", "No.", "Over the river.", "A song."]
  texts = [tok.render_chat(m) for m in prompts]
  ours = np.asarray(rm.score(texts, responses), np.float64)
  hf = []
  for ids, response in zip(prompt_ids, responses):
    seq = ids + tok.encode(response) + [tok.eos_id]
    with torch.no_grad():
      hf.append(float(rm_hf(torch.tensor([seq])).logits[0, 0]))
  bias = rm_hf.config.instructjax_score_bias
  assert bias == float(rm.params["score_bias"][0]) != 0.0
  diff = float(np.abs(ours - (np.asarray(hf) + bias)).max())
  print(f"PARITY {family} reward scores: max |diff| = {diff:.2e} (scores {ours}, bias {bias:.3g})")
  assert diff <= TOL
  # A few steps leave the scores small, so also relative to them: a score read at another
  # token than transformers reads would differ by far more.
  np.testing.assert_allclose(ours - bias, hf, rtol=1e-3)
  np.testing.assert_array_equal(
      np.asarray(instructjax.load(f"{hf_dir}/reward_model").score(texts, responses)), ours)


def test_readme_path_from_an_hf_checkpoint_to_transformers(tmp_path):
  """Both families at once: the stages mostly compile, one core each."""
  shell, python = readme_blocks()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  runs = {}
  for family, bos in (("llama", "True"), ("qwen2", "False")):
    root = tmp_path / family
    corpus = write_data(str(root / "data"))
    vocab = build_checkpoint(family, str(root / "checkpoint"), corpus)
    work = root / "work"  # The README's relative paths (runs/mine, experiments/) from here.
    work.mkdir()
    for name in ("experiments", "configs"):
      os.symlink(os.path.join(ROOT, name), work / name)
    script = with_variables(shell, MODEL=str(root / "checkpoint"), DATA=str(root / "data"),
                            BOS=bos, STEPS="2", PPO_STEPS="2")
    log = open(root / "commands.log", "w")
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    runs[family] = (proc, log, work, vocab)
  for family, (proc, log, work, vocab) in runs.items():
    status = proc.wait(timeout=1500)
    log.close()
    with open(log.name) as f:
      assert status == 0, f"{family}: the README's commands failed:\n{f.read()[-6000:]}"
  for family, (proc, log, work, vocab) in runs.items():
    snippet = subprocess.run([sys.executable, "-c", python], cwd=work, env=env,
                             capture_output=True, text=True, timeout=600)
    assert snippet.returncode == 0, f"{family}: the README's snippet:\n{snippet.stderr[-4000:]}"
    print(f"README snippet ({family}): {snippet.stdout.strip()}")
    check_exports(family, str(work / "runs/mine"), vocab)
