"""Exports a model directory as a Hugging Face one that transformers loads.

  python experiments/export.py --model=runs/mine/ppo/model --output=runs/mine/hf/policy

MODEL: anything `instructjax.load` reads (a stage's `model/` or `value_model/`, a training
checkpoint directory, an HF directory). Policies become *ForCausalLM; reward and value models
*ForSequenceClassification (num_labels=1) with their normalisation bias, which that head cannot
hold, recorded in config.json as `instructjax_score_bias` (README "Your own model and data"
says how a transformers user applies it; `instructjax.load` of the export restores it).
A mistake (a missing directory, a model transformers cannot express) is one `error:` line,
exit status 2.
"""
from __future__ import annotations

import sys

from absl import app, flags

from instructjax.cli import run_main, setup_logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined when run as a script only, so that importing `export` (tests, notebooks) cannot
  clash with same-named flags of other scripts in one process."""
  flags.DEFINE_string("model", None, "Model directory to export.")
  flags.DEFINE_string("output", None, "Directory to write the HF model into.")
  flags.mark_flags_as_required(["model", "output"])


def export(model: str, output: str) -> str:
  """Writes the HF directory; returns what was written, in one line."""
  import os

  import instructjax
  from instructjax.config import ConfigError
  if not os.path.isdir(model):
    raise ConfigError(f"--model: {model} is not a directory")
  try:
    lm = instructjax.load(model)
  except FileNotFoundError as e:
    raise ConfigError(f"--model: {e}") from e
  lm.to_hf(output)
  what = "reward/value model" if lm.head == "scalar" else "language model"
  line = f"exported the {what} {model} to {output}"
  bias = float(lm.params["score_bias"][0]) if lm.head == "scalar" else 0.0
  if bias:
    line += f" (score bias {bias:.6g} recorded as config.instructjax_score_bias)"
  return line


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  sys.exit(run_main(lambda: print(export(FLAGS.model, FLAGS.output))))


if __name__ == "__main__":
  define_flags()
  app.run(main)
