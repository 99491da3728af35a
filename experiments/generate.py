"""Samples responses for a JSONL file of prompts.

  python experiments/generate.py --checkpoint=DIR --prompts=IN.jsonl --output=OUT.jsonl \
      [--temperature=0] [--max_new_tokens=64] [--top_k=0] [--top_p=1.0] [--seed=0]

DIR: an instructjax model directory, a training checkpoint directory or a Hugging Face
directory (anything `instructjax.load` reads). IN lines are {"prompt": "..."} or chat prompts
{"messages": [{"role": ..., "content": ...}, ...]} (rendered with the tokenizer's chat
template, as PPO reads them), other keys ignored, blank lines skipped. OUT gets one line per
prompt, in input order:
{"prompt": ..., "response": ..., "finished": true|false}; finished means the response ended
with EOS, and the response text excludes EOS and PAD. Temperature 0 (the default) is greedy.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined when run as a script only: importing `read_prompts` / `run` (tests, notebooks)
  then cannot clash with same-named flags of other scripts (evaluate.py) in one process."""
  flags.DEFINE_string("checkpoint", None, "Model directory (instructjax or Hugging Face).")
  flags.DEFINE_string("prompts", None, "Input JSONL, one {\"prompt\": ...} per line.")
  flags.DEFINE_string("output", None, "Output JSONL.")
  flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
  flags.DEFINE_integer("max_new_tokens", 64, "Most response tokens (EOS included).")
  flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens; 0 = off.")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1.0 = off.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("batch_size", 32, "Prompts per sampler call.")
  flags.DEFINE_bool("chat", False, "Wrap each prompt as a user message of the chat template.")
  flags.DEFINE_bool("add_bos", False, "Prepend BOS to each prompt (match the training data).")


def read_prompts(path: str) -> list[Any]:
  """Prompts of a JSONL file (strings, or message lists for chat prompts); a malformed line
  raises ValueError naming `path:line`."""
  prompts = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object with a \"prompt\" key, got "
                         f"{type(record).__name__}")
      if "prompt" not in record and "messages" in record:
        prompts.append(_messages(record["messages"], f"{path}:{lineno}"))
        continue
      if "prompt" not in record:
        raise ValueError(f"{path}:{lineno}: missing \"prompt\" (keys: {sorted(record)})")
      if not isinstance(record["prompt"], str):
        raise ValueError(f"{path}:{lineno}: \"prompt\" must be a string, got "
                         f"{type(record['prompt']).__name__}")
      prompts.append(record["prompt"])
  return prompts


def _messages(messages: Any, where: str) -> list[dict[str, str]]:
  ok = isinstance(messages, list) and messages and all(
      isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
      for m in messages)
  if not ok:
    raise ValueError(f"{where}: \"messages\" must be a non-empty list of "
                     "{\"role\": str, \"content\": str}")
  return [{"role": m["role"], "content": m["content"]} for m in messages]


def write_results(path: str, results: list[dict[str, Any]]) -> None:
  """Writes atomically (temporary file + rename): a crash never leaves half an output."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in results:
      f.write(json.dumps({"prompt": r["prompt"], "response": r["response"],
                          "finished": bool(r["finished"])}, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def run(checkpoint: str, prompts_path: str, output_path: str, *, temperature: float = 0.0,
        max_new_tokens: int = 64, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
        batch_size: int = 32, chat: bool = False, add_bos: bool = False) -> list[dict[str, Any]]:
  """Reads prompts, samples, writes OUT; returns the result records."""
  prompts = read_prompts(prompts_path)  # Before loading the model: bad input fails fast.
  import instructjax  # Heavy import (jax) only once the input is known to be good.
  lm = instructjax.load(checkpoint)
  results = lm.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size, chat=chat,
                        add_bos=add_bos)
  write_results(output_path, results)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("checkpoint", "prompts", "output"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  from instructjax.cli import setup_logging  # Imports jax: only once the flags are good.
  setup_logging()  # Orbax would log every file it reads.
  try:
    results = run(FLAGS.checkpoint, FLAGS.prompts, FLAGS.output, temperature=FLAGS.temperature,
                  max_new_tokens=FLAGS.max_new_tokens, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                  seed=FLAGS.seed, batch_size=FLAGS.batch_size, chat=FLAGS.chat,
                  add_bos=FLAGS.add_bos)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  finished = sum(r["finished"] for r in results)
  print(f"wrote {len(results)} responses ({finished} finished with EOS) to {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
